"""The joint (S, G, D) training step of Algorithm 1, stage 2 (docs/method.md §4–§5).

:class:`JointAugmentationModel` composes a segmenter S (:class:`tfaug.models.unet.UNet`), one
generator G (:class:`tfaug.models.generator.Generator`, deformation or intensity) and a
discriminator D (:class:`tfaug.models.discriminator.Discriminator`). Its ``train_step``
computes S(G(x, z)) inside one gradient tape, so that in ``"joint"`` mode the segmentation
loss reaches G's weights, the fix of the original code's defect (docs/method.md §5).
``"independent"`` mode feeds the generated pair to S through ``tf.stop_gradient``: the
Table I ablation.

Export and tune the sub-models (``model.segmenter``, ``model.generator``), not this wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfaug.losses import (
    deformation_ld_loss,
    discriminator_loss,
    generator_adversarial_loss,
    intensity_ld_loss,
    weighted_cross_entropy,
)
from tfaug.methods import GENERATOR_MODES
from tfaug.metrics import batch_dice
from tfaug.ops.generated import apply_field
from tfaug.training.distribute import (
    global_batch_size,
    replica_rows,
    scale_for_replicas,
)
from tfaug.training.gradients import step_gradients
from tfaug.training.precision import with_loss_scaling

_TRACKERS = (
    "seg_loss",
    "adv_loss",
    "ld_loss",
    "total_loss",
    "d_loss",
    "d_acc_real",
    "d_acc_fake",
    "field_magnitude",
    "field_norm",
    "field_peak",
    "foreground_lost",
)


@keras.saving.register_keras_serializable(package="tfaug")
class JointAugmentationModel(keras.Model):
    """Trains S and one generator G together against a discriminator D.

    ``train_step(data)`` takes ``data = ((x_l, y_l), x_u)``: labeled images x_l (B,H,W,1)
    float32, their labels y_l (B,H,W) int32 in [0, n_classes), and unlabeled images x_u
    (B_u,H,W,1) float32. Per step:

    1. one-hot y_l; affine-augment the labeled pair (if ``affine`` is given); draw
       z ~ N(0, I) of shape (B, z_dim); draw a number of rows n ∈ [round(f_min·B),
       round(f_max·B)] (at least round(f_min·B)) and which n rows of the labeled batch are
       replaced by their generated version;
    2. one tape over G and S: (x_g, y_g, field) = :meth:`generate` on all B rows;
       x_mix, y_mix = generated rows where chosen, original rows elsewhere;
       ``L_S`` = weighted cross-entropy of S(x_mix); ``L_adv`` from D(x_g) on *all* B
       generated rows (every generated image is judged, not only the rows mixed into S's
       batch); ``L_LD`` from the field; total = λ_S·L_S + λ_adv·L_adv + λ_LD·L_LD, applied to
       G's and S's weights;
    3. a second tape over D: real = x_u, fake = stop_gradient(x_g); update D;
    4. update and return the trackers (see :attr:`metrics`).

    ``test_step(data)`` takes ``(x, y)`` (as x_l, y_l) and evaluates S alone in inference
    mode: ``seg_loss`` and ``dice`` (mean foreground hard Dice of the batch taken as one
    volume).

    Args:
        segmenter: S, images (B,H,W,1) → logits (B,H,W,n_classes).
        generator: G, ``(image, z)`` → field; its ``kind`` must equal ``kind``.
        discriminator: D, images (B,H,W,1) → (B,1) logits.
        kind: ``"deformation"`` (x_g = warp(x, v), y_g = warp(one-hot y, v), soft labels)
            or ``"intensity"`` (x_g = x + ΔI, no clipping; y_g = y).
        n_classes: number of classes including background.
        class_weights: n_classes cross-entropy weights, background first.
        lambda_seg: λ_S, weight of L_S in the G/S objective.
        lambda_adv: λ_adv, weight of the non-saturating adversarial term.
        lambda_ld: λ_LD, weight of the large-deviation term ``−mean|field|``.
        lambda_diversity: weight of a diversity term beyond the paper (0: off, the paper).
            When > 0, G also transforms the batch with a second noise z' and the term
            ``−mean|f(x,z) − f(x,z')| / (mean|f(x,z)| + mean|f(x,z')|)`` (scale-free, in
            [−1, 0]) rewards fields that depend on z, against a generator that ignores its
            noise and so produces one transformation per image (mode-seeking, Mao et al.
            2019). The ``diversity`` tracker then reports the ratio.
        mode: ``"joint"`` (L_S reaches G, the paper) or ``"independent"`` (it does not).
        generated_fraction: (f_min, f_max) in [0, 1], the share of the labeled batch that is
            generated (0.25, 0.7 ≈ 5–14 of 20 rows, as the original code).
        affine: a layer taking ``{"images", "segmentation_masks"}`` and returning the same
            keys (e.g. :class:`tfaug.ops.augment.RandomAffine`), or ``None`` for no
            augmentation. It must be XLA-compilable for ``jit_compile=True``.
        z_dim: size of z; ``None`` takes ``generator.z_dim``.
        seed: seed of the step's own draws (z and the generated rows); ``None``: random.
        real_label: D's target for real images (1.0, the paper; e.g. 0.9 is one-sided label
            smoothing, which keeps D from saturating). Fakes always have target 0.

    Distribution and precision: the step runs per replica under
    ``tfaug.training.distribute`` (B is then the replica's share of the global batch; z and
    the generated rows are drawn for the global batch and sliced, so the distributed step
    equals the single-device one), and under ``mixed_float16`` (``compile`` wraps the
    optimisers in ``LossScaleOptimizer`` s; the losses, the field and the warp are float32).

    Does not: pre-train S, validate, or keep checkpoints (``tfaug.runs.algorithm``).
    """

    def __init__(
        self,
        segmenter: keras.Model,
        generator: keras.Model,
        discriminator: keras.Model,
        *,
        kind: str,
        n_classes: int,
        class_weights: Sequence[float],
        lambda_seg: float = 1.0,
        lambda_adv: float = 1.0,
        lambda_ld: float = 1e-3,
        lambda_diversity: float = 0.0,
        mode: str = "joint",
        generated_fraction: Sequence[float] = (0.25, 0.7),
        affine: keras.layers.Layer | None = None,
        z_dim: int | None = None,
        seed: int | None = None,
        real_label: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.5 < real_label <= 1.0:
            raise ValueError(
                f"JointAugmentationModel: real_label must be in (0.5, 1], found {real_label}. "
                "Use 1.0 (the paper) or e.g. 0.9 (one-sided label smoothing)."
            )
        _check_arguments(generator, kind, n_classes, class_weights, mode, generated_fraction)
        generator_z_dim = getattr(generator, "z_dim", z_dim)
        if z_dim is not None and generator_z_dim != z_dim:
            raise ValueError(
                f"JointAugmentationModel: z_dim={z_dim} differs from the generator's z_dim="
                f"{generator_z_dim}. Pass z_dim=None to use the generator's."
            )
        self.segmenter = segmenter
        self.generator = generator
        self.discriminator = discriminator
        self.affine = affine
        self.kind = kind
        self.n_classes = int(n_classes)
        self.class_weights = tuple(float(w) for w in class_weights)
        self.lambda_seg = float(lambda_seg)
        self.lambda_adv = float(lambda_adv)
        self.lambda_ld = float(lambda_ld)
        self.lambda_diversity = float(lambda_diversity)
        self.mode = mode
        self.generated_fraction = tuple(float(f) for f in generated_fraction)
        self.z_dim = int(generator_z_dim)
        self.seed = seed
        self.real_label = float(real_label)
        # Draws for the global batch, identical on every replica (then sliced per replica).
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.ld_loss = deformation_ld_loss if kind == "deformation" else intensity_ld_loss
        names = (*_TRACKERS, "diversity") if self.lambda_diversity > 0 else _TRACKERS
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.dice_tracker = keras.metrics.Mean(name="dice")
        self.g_optimizer: keras.optimizers.Optimizer | None = None
        self.s_optimizer: keras.optimizers.Optimizer | None = None
        self.d_optimizer: keras.optimizers.Optimizer | None = None

    def compile(
        self,
        g_optimizer: keras.optimizers.Optimizer,
        d_optimizer: keras.optimizers.Optimizer,
        s_optimizer: keras.optimizers.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Set the optimisers. ``g_optimizer`` updates G, and S too unless ``s_optimizer``.

        Under the ``mixed_float16`` policy each is wrapped in a ``LossScaleOptimizer``.

        Other keyword arguments (``jit_compile``, ``steps_per_execution``, ...) go to
        ``keras.Model.compile``; no Keras loss or optimizer is set there.
        """
        super().compile(optimizer=None, **kwargs)
        self.g_optimizer = with_loss_scaling(g_optimizer)
        self.d_optimizer = with_loss_scaling(d_optimizer)
        self.s_optimizer = None if s_optimizer is None else with_loss_scaling(s_optimizer)
        sub_models = (self.segmenter, self.generator, self.discriminator)
        if self.built or all(sub_model.built for sub_model in sub_models):
            # Slots now: a checkpoint restores them, and the first step creates no variable
            # (a tf.function creating variables traces twice).
            self._build_optimizers()

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create every weight from the image shape (B,H,W,1), optimiser slots included.

        Optional: the first ``train_step`` (eager, in ``fit`` or in a ``tf.function``) builds
        whatever is unbuilt. Building first lets weights be loaded before training.
        """
        image_shape = tuple(input_shape)
        self.segmenter.build(image_shape)
        self.generator.build((image_shape, (image_shape[0], self.z_dim)))
        self.discriminator.build(image_shape)
        self.built = True
        if self.g_optimizer is not None:
            self._build_optimizers()

    def _build_optimizers(self) -> None:
        g_weights = self.generator.trainable_weights
        s_weights = self.segmenter.trainable_weights
        if self.s_optimizer is None:
            self.g_optimizer.build(g_weights + s_weights)
        else:
            self.g_optimizer.build(g_weights)
            self.s_optimizer.build(s_weights)
        self.d_optimizer.build(self.discriminator.trainable_weights)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The trackers: seg_loss, adv_loss, ld_loss, total_loss, d_loss, d_acc_real,
        d_acc_fake, field_magnitude (mean |component| of v in px, or mean |ΔI|), field_norm
        (mean per-pixel length |v| in px, or mean |ΔI|), field_peak (per-slice maximum of
        that length, averaged over the batch), foreground_lost (per-slice share of the
        foreground label mass the warp removes, averaged; 0 for intensity), and dice (test_step)."""
        return [*self.trackers.values(), self.dice_tracker]

    # ----------------------------------------------------------------------- the method

    def generate(
        self, x: tf.Tensor, y_onehot: tf.Tensor, z: tf.Tensor, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Transform a labeled batch with G: returns ``(x_g, y_g, field)``.

        Args:
            x: (B,H,W,1) float32 images. y_onehot: (B,H,W,n_classes) float32 one-hot or soft
            labels. z: (B,z_dim) float32 noise. training: BatchNormalization mode of G.

        Returns:
            x_g (B,H,W,1) float32; y_g (B,H,W,n_classes) float32 (deformation: the one-hot
            map warped bilinearly, so soft; intensity: ``y_onehot`` unchanged); the field
            (B,H,W,2) flow in pixels or (B,H,W,1) ΔI in (−1, 1). Differentiable in G's
            weights. Does not clip x_g.
        """
        field = self.generator((x, z), training=training)
        x_g, y_g = apply_field(self.kind, x, y_onehot, field)
        return x_g, y_g, field

    def generator_segmenter_losses(
        self, x: tf.Tensor, y_onehot: tf.Tensor, z: tf.Tensor, generated_rows: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The G/S objective of one step (step 2 of the class docstring), run under a tape.

        Args:
            x: (B,H,W,1) float32 labeled images (already affine-augmented).
            y_onehot: (B,H,W,n_classes) float32 labels.
            z: (B,z_dim) float32 noise.
            generated_rows: (B,) bool, rows of the S batch replaced by generated pairs.

        Returns:
            float32 scalars ``seg_loss``, ``adv_loss``, ``ld_loss``, ``total_loss`` (and
            ``diversity`` with ``lambda_diversity > 0``) and tensors ``generated`` (x_g,
            (B,H,W,1)), ``generated_labels`` (y_g) and ``field``. Calls S, G and D with
            ``training=True`` (their BatchNormalization statistics move).
        """
        x_g, y_g, field = self.generate(x, y_onehot, z, training=True)
        if self.mode == "independent":
            # The generated pair reaches L_S as data: no L_S gradient flows back into G.
            x_g_seg, y_g_seg = tf.stop_gradient(x_g), tf.stop_gradient(y_g)
        else:
            # L_S reaches G's weights through both x_g (via S) and the warped labels y_g.
            x_g_seg, y_g_seg = x_g, y_g
        rows = tf.reshape(generated_rows, [-1, 1, 1, 1])
        x_mix = tf.where(rows, x_g_seg, x)
        y_mix = tf.where(rows, y_g_seg, y_onehot)
        logits = self.segmenter(x_mix, training=True)
        seg_loss = weighted_cross_entropy(y_mix, logits, self.class_weights)
        # L_adv reaches G's weights through D (D's weights are not updated by this loss).
        adv_loss = generator_adversarial_loss(self.discriminator(x_g, training=True))
        ld_loss = self.ld_loss(field)
        total = self.lambda_seg * seg_loss + self.lambda_adv * adv_loss + self.lambda_ld * ld_loss
        losses = {
            "seg_loss": seg_loss,
            "adv_loss": adv_loss,
            "ld_loss": ld_loss,
            "generated": x_g,
            "generated_labels": y_g,
            "field": field,
        }
        if self.lambda_diversity > 0:
            other = self.generator((x, self.draw_noise(tf.shape(x)[0])), training=True)
            losses["diversity"] = field_diversity(field, other)
            total -= self.lambda_diversity * losses["diversity"]
        losses["total_loss"] = total
        return losses

    def draw_step_randomness(self, batch_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Draw z (B,z_dim) ~ N(0, I) float32 and the generated-rows mask (B,) bool.

        The number of generated rows is uniform in [round(f_min·B), max(that,
        round(f_max·B))] (rounding half up); which rows is a uniform random subset. Under a
        distribution strategy, B is the replica's batch: both are drawn for the global batch
        (identically on every replica) and this replica's rows are returned.
        """
        rows = batch_size
        batch_size = global_batch_size(rows)
        size = tf.cast(batch_size, tf.float32)
        f_min, f_max = self.generated_fraction
        low = tf.cast(tf.floor(f_min * size + 0.5), tf.int32)
        high = tf.maximum(low, tf.cast(tf.floor(f_max * size + 0.5), tf.int32))
        count = keras.random.randint((), low, high + 1, seed=self.seed_generator)
        scores = keras.random.uniform(tf.reshape(batch_size, [1]), seed=self.seed_generator)
        generated_rows = tf.argsort(tf.argsort(scores)) < count
        z = keras.random.normal((batch_size, self.z_dim), seed=self.seed_generator)
        return replica_rows(z, rows), replica_rows(generated_rows, rows)

    def draw_noise(self, batch_size: tf.Tensor) -> tf.Tensor:
        """Another z (B,z_dim) ~ N(0, I) float32, drawn for the global batch and sliced."""
        rows = global_batch_size(batch_size)
        z = keras.random.normal((rows, self.z_dim), seed=self.seed_generator)
        return replica_rows(z, batch_size)

    # ----------------------------------------------------------------------- Keras steps

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One joint step on ``((x_l, y_l), x_u)`` (see the class docstring); tracker means."""
        if self.g_optimizer is None or self.d_optimizer is None:
            raise RuntimeError(
                "JointAugmentationModel: call compile(g_optimizer=..., d_optimizer=...) before "
                "training."
            )
        # 1. Unpack: x_l (B,H,W,1), y_l (B,H,W) int, x_u (B_u,H,W,1). Augment, draw z, rows.
        (x_l, y_l), x_u = data
        x_l, y_onehot = self._labeled_batch(x_l, y_l)
        if self.affine is not None:
            augmented = self.affine({"images": x_l, "segmentation_masks": y_onehot}, training=True)
            x_l, y_onehot = augmented["images"], augmented["segmentation_masks"]
        z, generated_rows = self.draw_step_randomness(tf.shape(x_l)[0])

        # 2. One tape over G and S: total = λ_S·L_S + λ_adv·L_adv + λ_LD·L_LD, divided by
        #    the number of replicas and scaled for mixed precision by each optimiser.
        with tf.GradientTape(persistent=self.s_optimizer is not None) as tape:
            losses = self.generator_segmenter_losses(x_l, y_onehot, z, generated_rows)
            total = scale_for_replicas(losses["total_loss"])
            g_scaled = self.g_optimizer.scale_loss(total)
            s_scaled = g_scaled if self.s_optimizer is None else self.s_optimizer.scale_loss(total)
        # Weights are listed after the forward pass, which builds unbuilt sub-models.
        g_weights = self.generator.trainable_weights
        s_weights = self.segmenter.trainable_weights
        # G's weights receive λ_adv·L_adv + λ_LD·L_LD, plus λ_S·L_S in joint mode only;
        # S's weights receive λ_S·L_S (on the mixed original/generated batch).
        if self.s_optimizer is None:
            weights = g_weights + s_weights
            gradients = step_gradients(tape, g_scaled, weights, "joint step, G and S")
            self.g_optimizer.apply(gradients, weights)
        else:
            gradients = step_gradients(tape, g_scaled, g_weights, "joint step, G")
            self.g_optimizer.apply(gradients, g_weights)
            gradients = step_gradients(tape, s_scaled, s_weights, "joint step, S")
            self.s_optimizer.apply(gradients, s_weights)

        # 3. Second tape over D only: real = unlabeled images, fake = generated (no G path).
        x_u = tf.cast(x_u, tf.float32)
        fake = tf.stop_gradient(losses["generated"])
        d_weights = self.discriminator.trainable_weights
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(x_u, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = discriminator_loss(real_logits, fake_logits, self.real_label)
            d_scaled = self.d_optimizer.scale_loss(scale_for_replicas(d_loss))
        self.d_optimizer.apply(
            step_gradients(tape, d_scaled, d_weights, "joint step, D"), d_weights
        )

        # 4. Trackers.
        names = ("seg_loss", "adv_loss", "ld_loss", "total_loss", "diversity")
        values = {name: losses[name] for name in names if name in losses}
        values["d_loss"] = d_loss
        values["d_acc_real"] = tf.reduce_mean(tf.cast(real_logits > 0.0, tf.float32))
        values["d_acc_fake"] = tf.reduce_mean(tf.cast(fake_logits < 0.0, tf.float32))
        values.update(field_statistics(losses["field"], y_onehot, losses["generated_labels"]))
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Evaluate S alone (inference mode) on ``(x (B,H,W,1), y (B,H,W) int)``."""
        x, y = data
        x, y_onehot = self._labeled_batch(x, y)
        logits = self.segmenter(x, training=False)
        seg_loss = weighted_cross_entropy(y_onehot, logits, self.class_weights)
        prediction = tf.one_hot(tf.argmax(logits, axis=-1), self.n_classes)
        self.trackers["seg_loss"].update_state(seg_loss)
        self.dice_tracker.update_state(tf.reduce_mean(batch_dice(y_onehot, prediction)))
        return {"seg_loss": self.trackers["seg_loss"].result(), "dice": self.dice_tracker.result()}

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """Segment ``inputs`` (B,H,W,1) with S: logits (B,H,W,n_classes), no softmax."""
        return self.segmenter(inputs, training=training)

    def _labeled_batch(self, x: Any, y: Any) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(x, tf.float32)
        y = tf.convert_to_tensor(y)
        if x.shape.rank != 4 or y.shape.rank != 3 or y.dtype.is_floating:
            raise ValueError(
                f"JointAugmentationModel: expected labeled images (B,H,W,1) float and labels "
                f"(B,H,W) int, found images {x.shape} and labels {y.shape} {y.dtype.name}. "
                "Batch the dataset and keep integer label maps (no channel axis, no one-hot)."
            )
        return x, tf.one_hot(tf.cast(y, tf.int32), self.n_classes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            segmenter=keras.saving.serialize_keras_object(self.segmenter),
            generator=keras.saving.serialize_keras_object(self.generator),
            discriminator=keras.saving.serialize_keras_object(self.discriminator),
            affine=keras.saving.serialize_keras_object(self.affine),
            kind=self.kind,
            n_classes=self.n_classes,
            class_weights=list(self.class_weights),
            lambda_seg=self.lambda_seg,
            lambda_adv=self.lambda_adv,
            lambda_ld=self.lambda_ld,
            lambda_diversity=self.lambda_diversity,
            mode=self.mode,
            generated_fraction=list(self.generated_fraction),
            z_dim=self.z_dim,
            seed=self.seed,
            real_label=self.real_label,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> JointAugmentationModel:
        config = dict(config)
        for key in ("segmenter", "generator", "discriminator", "affine"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def field_diversity(field: tf.Tensor, other: tf.Tensor) -> tf.Tensor:
    """``mean|f − f'| / (mean|f| + mean|f'|)``: how much two fields of the same images
    (drawn with different z) differ, relative to their size; float32 scalar in [0, 1]
    (0: G ignores z). Both fields (B,H,W,C) float."""
    field, other = tf.cast(field, tf.float32), tf.cast(other, tf.float32)
    size = tf.reduce_mean(tf.abs(field)) + tf.reduce_mean(tf.abs(other))
    return tf.math.divide_no_nan(tf.reduce_mean(tf.abs(field - other)), size)


def field_statistics(
    field: tf.Tensor, labels: tf.Tensor, generated_labels: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Size of a generated field and what it does to the labels, for diagnostics.

    Args:
        field: (B,H,W,2) flow in pixels or (B,H,W,1) intensity field.
        labels: (B,H,W,C) one-hot labels before the transformation (channel 0 background).
        generated_labels: (B,H,W,C) labels after it (soft for a warp).

    Returns:
        float32 scalars: ``field_magnitude`` (mean |component|, the quantity L_LD uses),
        ``field_norm`` (mean per-pixel vector length), ``field_peak`` (per-slice maximum
        length, averaged over slices) and ``foreground_lost`` (per slice, 1 − foreground mass
        after / before, at least 0 and 0 for a slice without foreground, averaged over the
        slices: the share of the structures moved out of the image or squeezed by the warp;
        0 for an intensity field). Every one is a mean over slices, so it averages exactly
        across the replicas of a distribution strategy.
    """
    field = tf.cast(field, tf.float32)
    length = tf.norm(field, axis=-1)
    before = tf.reduce_sum(tf.cast(labels[..., 1:], tf.float32), axis=[1, 2, 3])
    after = tf.reduce_sum(tf.cast(generated_labels[..., 1:], tf.float32), axis=[1, 2, 3])
    lost = tf.maximum(0.0, 1.0 - tf.math.divide_no_nan(after, before))
    return {
        "field_magnitude": tf.reduce_mean(tf.abs(field)),
        "field_norm": tf.reduce_mean(length),
        "field_peak": tf.reduce_mean(tf.reduce_max(length, axis=[1, 2])),
        "foreground_lost": tf.reduce_mean(tf.where(before > 0.0, lost, 0.0)),
    }


def _check_arguments(
    generator: keras.Model,
    kind: str,
    n_classes: int,
    class_weights: Sequence[float],
    mode: str,
    generated_fraction: Sequence[float],
) -> None:
    """Collect every problem with the constructor arguments and raise once."""
    problems = []
    if kind not in ("deformation", "intensity"):
        problems.append(f"kind must be 'deformation' or 'intensity', found {kind!r}")
    elif getattr(generator, "kind", kind) != kind:
        problems.append(f"kind={kind!r} but the generator's kind is {generator.kind!r}")
    if len(class_weights) != n_classes:
        problems.append(
            f"class_weights needs one weight per class ({n_classes}), found {list(class_weights)}"
        )
    if mode not in GENERATOR_MODES:
        problems.append(f"mode must be one of {GENERATOR_MODES}, found {mode!r}")
    fractions = tuple(generated_fraction)
    if len(fractions) != 2 or not 0.0 <= fractions[0] <= fractions[1] <= 1.0:
        problems.append(
            f"generated_fraction must be (min, max) with 0 <= min <= max <= 1, found {fractions}"
        )
    if problems:
        raise ValueError(
            "JointAugmentationModel: " + "; ".join(problems) + ". Fix the arguments (config "
            "train.generator_mode, train.class_weights, train.generated_fraction)."
        )


def segmentation_gradient_wrt_generator(
    model: JointAugmentationModel,
    x: tf.Tensor,
    y_onehot: tf.Tensor,
    z: tf.Tensor,
    generated_rows: tf.Tensor,
) -> list[tf.Tensor]:
    """Gradient of L_S w.r.t. G's trainable weights, through the training step's own code.

    Runs :meth:`JointAugmentationModel.generator_segmenter_losses` (what ``train_step``
    differentiates) under a tape and differentiates ``seg_loss`` alone. In ``"joint"`` mode
    it is non-zero whenever a generated row enters S's batch; in ``"independent"`` mode it
    is exactly zero (G is unconnected to L_S).

    Args:
        model: the joint model (its mode decides the result).
        x: (B,H,W,1) float32. y_onehot: (B,H,W,n_classes) float32. z: (B,z_dim) float32.
        generated_rows: (B,) bool.

    Returns:
        One float32 tensor per G trainable weight, in ``generator.trainable_weights`` order
        (zeros, not ``None``, where unconnected). Moves BatchNormalization statistics (the
        models run with ``training=True``); does not update any weight.
    """
    with tf.GradientTape() as tape:
        losses = model.generator_segmenter_losses(x, y_onehot, z, generated_rows)
    weights = model.generator.trainable_weights
    gradients = tape.gradient(losses["seg_loss"], weights)  # None where L_S does not reach
    return [
        tf.zeros(w.shape, tf.float32) if g is None else g
        for g, w in zip(gradients, weights, strict=True)
    ]
