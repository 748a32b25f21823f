"""``unimatch_gdgi_joint``: UniMatch whose learned views come from generators trained with
the student in the same step.

:class:`JointConsistencyModel` is :class:`tfaug.baselines.consistency.ConsistencyModel` with
GV, GI and a discriminator D inside the step instead of a frozen layer of generators. The
transformation GI(GV(x, z), z) is computed under the step's tape, so the student's losses on
the generated labeled pairs and on the learned strong view reach GV's and GI's weights, as
the segmentation loss reaches G in Algorithm 1's ``joint`` mode (docs/method.md §5); D keeps
the generated images plausible against the unlabeled ones, and the large-deviation term keeps
them from collapsing to the identity.

Export ``model.segmenter`` (and the generators), never this wrapper.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfaug.baselines.consistency import ConsistencyModel
from tfaug.losses import (
    deformation_ld_loss,
    discriminator_loss,
    generator_adversarial_loss,
    intensity_ld_loss,
)
from tfaug.methods import LEARNED_VIEWS
from tfaug.ops.generated import apply_generators
from tfaug.training.distribute import global_batch_size, replica_rows, scale_for_replicas
from tfaug.training.gradients import step_gradients
from tfaug.training.joint import field_diversity, field_statistics
from tfaug.training.precision import with_loss_scaling

FIELD_TRACKERS = (
    "deformation_field_norm",
    "deformation_field_peak",
    "deformation_foreground_lost",
    "intensity_field_norm",
    "intensity_field_peak",
)
"""The generators' field statistics (:func:`tfaug.training.joint.field_statistics`) over
every generated row of a step, prefixed by the generator's kind; the generator stages log
the same statistics unprefixed (:mod:`tfaug.analysis.diagnostics` reads both)."""

GENERATOR_TRACKERS = ("adv_loss", "ld_loss", "d_loss", "d_acc_real", "d_acc_fake", *FIELD_TRACKERS)
DIVERSITY_TRACKERS = ("deformation_diversity", "intensity_diversity")
"""With ``lambda_diversity > 0``: how much each generator's field changes with z
(:func:`tfaug.training.joint.field_diversity`, in [0, 1]), as the generator stages log it."""


@keras.saving.register_keras_serializable(package="tfaug")
class JointConsistencyModel(ConsistencyModel):
    """UniMatch with GV, GI and D trained in the same step as the student S.

    ``train_step(data)`` takes ``((x_l, y_l), x_u)`` as :class:`ConsistencyModel` does and
    runs its steps, with these changes (G(x, z) = GI(GV(x, z) applied to x, z), one z
    ~ N(0, I) per slice, the fields used as the networks give them, in training mode):

    - **Generated labeled pairs** (``learned_view`` ``both`` or ``labeled``): inside the tape,
      the second half of the B_l labeled rows (after ``labeled``/``weak``) is replaced by
      (G(x), the labels warped by GV's flow).
    - **Learned strong view** (``both`` or ``unlabeled``): G on the weak x_u, the teacher's
      pseudo-labels and confidence warped by the same flow, a pixel kept where the warped
      confidence is still >= ``threshold`` (the keep mask carries no gradient).
    - **Objective**: the consistency total (every term as in :class:`ConsistencyModel`) +
      λ_adv·L_adv + λ_LD·L_LD − λ_div·(div_GV + div_GI), where L_adv is the non-saturating
      loss of D on every generated image of the step, L_LD = −mean|v| − mean|ΔI| over its
      fields, and div_G the mode-seeking ratio of the generator stages (each generator
      run again on the same inputs with a second z; only with ``lambda_diversity > 0``). One
      gradient of it updates S, GV and GI together (one optimiser: Adam's updates are
      per weight). The student's losses reach G through the generated images and through
      the warped labels and pseudo-labels; the teacher's outputs carry no gradient.
    - **D**, after that update, on a second tape: real = the weak x_u, fake = the step's
      generated images (no gradient to G); ``discriminator_loss`` with ``real_label``.

    Trackers: :class:`ConsistencyModel`'s and :data:`GENERATOR_TRACKERS`: L_adv, L_LD,
    D's loss and accuracies, and :data:`FIELD_TRACKERS`, the size of v (px) and ΔI over
    every generated row and the share of the foreground the warp removed from the labels
    and pseudo-labels it carried.

    Args:
        segmenter: S (a :class:`tfaug.models.unet.UNet`).
        deformation: GV, ``(image, z)`` → flow (B,H,W,2) in px.
        intensity: GI, ``(image, z)`` → ΔI (B,H,W,1).
        discriminator: D, images (B,H,W,1) → logits.
        learned_view: ``"both"``, ``"labeled"`` or ``"unlabeled"`` (:data:`LEARNED_VIEWS`).
        lambda_adv: weight of L_adv in the objective (Algorithm 1's λ_adv).
        lambda_ld: weight of L_LD (Algorithm 1's λ_LD).
        real_label: D's target for real images, in (0.5, 1].
        lambda_diversity: weight of the generators' mode-seeking term (``train.lambda_diversity``
            of the generator stages; 0: off, one pass of each generator per generated row).
        z_dim: size of z (the generators').
        **kwargs: :class:`ConsistencyModel`'s arguments, except ``learned``.

    Distribution and precision as :class:`ConsistencyModel`; z is drawn for the global batch
    and this replica's rows taken, as the dropout masks; the fields and warps are float32.
    """

    NESTED_OBJECTS = (
        "segmenter", "weak", "labeled", "strong", "cutmix", "deformation", "intensity",
        "discriminator",
    )  # fmt: skip

    def __init__(
        self,
        segmenter: keras.Model,
        *,
        deformation: keras.Model,
        intensity: keras.Model,
        discriminator: keras.Model,
        learned_view: str = "both",
        lambda_adv: float = 1.0,
        lambda_ld: float = 1e-3,
        real_label: float = 1.0,
        lambda_diversity: float = 0.0,
        z_dim: int,
        **kwargs: Any,
    ) -> None:
        if learned_view not in LEARNED_VIEWS:
            raise ValueError(
                f"JointConsistencyModel: learned_view must be one of {LEARNED_VIEWS}, found "
                f"{learned_view!r} (config ssl.learned_view)."
            )
        if not 0.5 < real_label <= 1.0 or min(lambda_adv, lambda_ld, lambda_diversity) < 0:
            raise ValueError(
                "JointConsistencyModel: real_label must be in (0.5, 1] and lambda_adv, "
                f"lambda_ld, lambda_diversity >= 0, found {real_label}, {lambda_adv}, "
                f"{lambda_ld}, {lambda_diversity} (config train.real_label, train.lambda_adv, "
                "train.lambda_ld, train.lambda_diversity)."
            )
        self.deformation = deformation
        self.intensity = intensity
        self.discriminator = discriminator
        self.learned_view_where = learned_view
        self.lambda_diversity = float(lambda_diversity)  # read by tracker_names
        super().__init__(segmenter, **kwargs)
        self.lambda_adv = float(lambda_adv)
        self.lambda_ld = float(lambda_ld)
        self.real_label = float(real_label)
        self.z_dim = int(z_dim)
        self.d_optimizer: keras.optimizers.Optimizer | None = None

    @property
    def has_learned_view(self) -> bool:
        return self.learned_view_where != "labeled"

    @property
    def generates_labeled(self) -> bool:
        """Whether generated pairs replace the second half of the labeled rows."""
        return self.learned_view_where != "unlabeled"

    @property
    def trained_weights(self) -> list:
        """S's, GV's and GI's weights: one objective updates all three."""
        generators = self.deformation.trainable_weights + self.intensity.trainable_weights
        return self.segmenter.trainable_weights + generators

    @property
    def tracker_names(self) -> tuple[str, ...]:
        diversity = DIVERSITY_TRACKERS if self.lambda_diversity > 0 else ()
        return (*super().tracker_names, *GENERATOR_TRACKERS, *diversity)

    def compile(
        self,
        s_optimizer: keras.optimizers.Optimizer,
        d_optimizer: keras.optimizers.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """``s_optimizer`` updates S, GV and GI; ``d_optimizer`` D (both wrapped in a
        ``LossScaleOptimizer`` under ``mixed_float16``; their slots are created now)."""
        if d_optimizer is None:
            raise ValueError("JointConsistencyModel: compile(..., d_optimizer=...) is needed.")
        super().compile(s_optimizer, **kwargs)
        self.d_optimizer = with_loss_scaling(d_optimizer)
        self.d_optimizer.build(self.discriminator.trainable_weights)

    # ----------------------------------------------------------------------- generation

    def generate(self, images: tf.Tensor, masks: tf.Tensor) -> dict[str, tf.Tensor]:
        """G on a batch, differentiable in GV's and GI's weights (training mode).

        Args:
            images: (B,H,W,1) float. masks: (B,H,W,K) soft maps warped with the image.

        Returns:
            float32 ``images`` (B,H,W,1), x ∘ v + ΔI with v = GV(x, z) and ΔI = GI(x ∘ v, z);
            ``masks`` (B,H,W,K), the masks ∘ v; ``flow`` (B,H,W,2) and ``delta`` (B,H,W,1);
            with ``lambda_diversity > 0`` also :data:`DIVERSITY_TRACKERS`: GV run again on x
            and GI on x ∘ v with a second z, each field's ratio to the first.
        """
        images, masks = tf.cast(images, tf.float32), tf.cast(masks, tf.float32)
        z = self._noise(tf.shape(images)[0])
        warped, masks, flow, _ = apply_generators(
            self.deformation, None, images, masks, z, training=True
        )
        out, _, _, delta = apply_generators(None, self.intensity, warped, masks, z, training=True)
        generated = {"images": out, "masks": masks, "flow": flow, "delta": delta}
        if self.lambda_diversity > 0:
            other = self._noise(tf.shape(images)[0])
            other_flow = self.deformation((images, other), training=True)
            other_delta = self.intensity((warped, other), training=True)
            generated["deformation_diversity"] = field_diversity(flow, other_flow)
            generated["intensity_diversity"] = field_diversity(delta, other_delta)
        return generated

    def _noise(self, rows: tf.Tensor) -> tf.Tensor:
        """z (rows, z_dim) ~ N(0, I): drawn for the global batch, this replica's rows taken."""
        z = keras.random.normal((global_batch_size(rows), self.z_dim), seed=self.seed_generator)
        return replica_rows(z, rows)

    def learned_view(
        self, x_u: tf.Tensor, pseudo_labels: tf.Tensor, confidence: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The learned strong view from the training generators: as
        :meth:`ConsistencyModel.learned_view`, but the images and labels keep their gradient
        to GV and GI (the keep mask does not); adds ``flow``, ``delta`` and, with
        ``lambda_diversity > 0``, the fields' diversities (:meth:`generate`)."""
        targets = tf.concat([pseudo_labels, confidence[..., None]], axis=-1)
        view = self.generate(x_u, targets)
        warped = view.pop("masks")
        view["kept"] = tf.stop_gradient(tf.cast(warped[..., -1] >= self.threshold, tf.float32))
        view["labels"] = warped[..., :-1]
        return view

    def compute_losses(
        self,
        x_l: tf.Tensor,
        y_onehot: tf.Tensor,
        x_u: tf.Tensor,
        strong: list[tf.Tensor],
        boxes: list[tf.Tensor],
    ) -> dict[str, tf.Tensor]:
        """:meth:`ConsistencyModel.compute_losses` with the generated labeled rows, the
        learned view of the training generators, and G's adversarial and large-deviation
        terms added to ``total_loss`` (see the class docstring). Adds ``generated`` (every
        generated image of the step, (N,H,W,1)) for D's update."""
        images, flows, deltas, before, after, diversities = [], [], [], [], [], []
        if self.generates_labeled:
            half = tf.shape(x_l)[0] // 2
            pairs = self.generate(x_l[half:], y_onehot[half:])
            x_g, y_g = pairs["images"], pairs["masks"]
            images, flows, deltas = [x_g], [pairs["flow"]], [pairs["delta"]]
            before, after = [tf.cast(y_onehot[half:], tf.float32)], [y_g]
            if self.lambda_diversity > 0:
                diversities.append({n: pairs[n] for n in DIVERSITY_TRACKERS})
            x_l = tf.concat([x_l[:half], tf.cast(x_g, x_l.dtype)], axis=0)
            y_onehot = tf.concat([y_onehot[:half], tf.cast(y_g, y_onehot.dtype)], axis=0)
        losses = super().compute_losses(x_l, y_onehot, x_u, strong, boxes)
        if self.has_learned_view:
            images.append(losses["learned_images"])
            flows.append(losses["learned_flow"])
            deltas.append(losses["learned_delta"])
            before.append(tf.cast(losses["pseudo_labels"], tf.float32))
            after.append(losses["learned_labels"])
            if self.lambda_diversity > 0:
                diversities.append({n: losses[f"learned_{n}"] for n in DIVERSITY_TRACKERS})
        generated, flow, delta, before, after = (
            tf.concat(t, axis=0) for t in (images, flows, deltas, before, after)
        )
        losses["adv_loss"] = generator_adversarial_loss(
            self.discriminator(generated, training=True)
        )
        losses["ld_loss"] = deformation_ld_loss(flow) + intensity_ld_loss(delta)
        losses["total_loss"] += self.lambda_adv * losses["adv_loss"]
        losses["total_loss"] += self.lambda_ld * losses["ld_loss"]
        if self.lambda_diversity > 0:  # the mean over the step's generate() calls
            for name in DIVERSITY_TRACKERS:
                losses[name] = tf.add_n([d[name] for d in diversities]) / len(diversities)
                losses["total_loss"] -= self.lambda_diversity * losses[name]
        losses["generated"] = generated
        losses.update(_field_trackers(flow, delta, before, after))
        return losses

    def after_update(self, x_u: tf.Tensor, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """D's update: real = the weak x_u, fake = the step's generated images."""
        fake = tf.stop_gradient(losses["generated"])
        weights = self.discriminator.trainable_weights
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(tf.cast(x_u, tf.float32), training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = discriminator_loss(real_logits, fake_logits, self.real_label)
            scaled = self.d_optimizer.scale_loss(scale_for_replicas(d_loss))
        gradients = step_gradients(tape, scaled, weights, "consistency step, D")
        self.d_optimizer.apply(gradients, weights)
        return {
            "d_loss": d_loss,
            "d_acc_real": tf.reduce_mean(tf.cast(real_logits > 0.0, tf.float32)),
            "d_acc_fake": tf.reduce_mean(tf.cast(fake_logits < 0.0, tf.float32)),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["learned"]
        config.update(
            deformation=keras.saving.serialize_keras_object(self.deformation),
            intensity=keras.saving.serialize_keras_object(self.intensity),
            discriminator=keras.saving.serialize_keras_object(self.discriminator),
            learned_view=self.learned_view_where,
            lambda_adv=self.lambda_adv,
            lambda_ld=self.lambda_ld,
            real_label=self.real_label,
            lambda_diversity=self.lambda_diversity,
            z_dim=self.z_dim,
        )
        return config


def _field_trackers(
    flow: tf.Tensor, delta: tf.Tensor, labels: tf.Tensor, warped_labels: tf.Tensor
) -> dict[str, tf.Tensor]:
    """:data:`FIELD_TRACKERS` of a step's generated rows, without gradient.

    Args:
        flow: (N,H,W,2) GV's flows in px. delta: (N,H,W,1) GI's ΔI.
        labels: (N,H,W,C) the labels and pseudo-labels the rows carried before the warp.
        warped_labels: (N,H,W,C) the same after it.
    """
    flow, delta, labels, warped_labels = (
        tf.stop_gradient(t) for t in (flow, delta, labels, warped_labels)
    )
    deformation = field_statistics(flow, labels, warped_labels)
    intensity = field_statistics(delta, labels, labels)
    return {
        "deformation_field_norm": deformation["field_norm"],
        "deformation_field_peak": deformation["field_peak"],
        "deformation_foreground_lost": deformation["foreground_lost"],
        "intensity_field_norm": intensity["field_norm"],
        "intensity_field_peak": intensity["field_peak"],
    }
