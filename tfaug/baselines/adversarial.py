"""Adversarial semi-supervised segmentation, the ``adv_pixel`` and ``adv_image`` comparisons.

:class:`AdversarialSegmentationModel` composes the segmenter S with a discriminator D that
tells S's predictions from ground truth:

- ``level="pixel"`` (Hung et al. 2018): D is a fully convolutional
  :class:`tfaug.models.pixel_discriminator.PixelDiscriminator` on class-probability maps;
  real = one-hot ground truth of the labeled slices, fake = S's softmax on the same slices.
  S is trained with L_S on labeled slices + λ_adv · L_adv on its softmax maps of the labeled
  and the unlabeled slices, + λ_semi · a self-taught cross-entropy on unlabeled pixels whose
  D confidence σ(D) exceeds a threshold (targets: S's own argmax), from a start iteration.
- ``level="image"`` (image-level, in the style of Souly et al. 2017): D is the image
  :class:`tfaug.models.discriminator.Discriminator` on the concatenation (image, class map),
  C + 1 channels; real = (labeled image, one-hot ground truth), fake = (unlabeled image, S's
  softmax). S is trained with L_S on labeled slices + λ_adv · L_adv on the unlabeled pairs.

Export the segmenter (``model.segmenter``), never this wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfaug.losses import discriminator_loss, generator_adversarial_loss, weighted_cross_entropy
from tfaug.training.distribute import scale_for_replicas
from tfaug.training.gradients import step_gradients
from tfaug.training.precision import with_loss_scaling

LEVELS = ("pixel", "image")
_TRACKERS = (
    "seg_loss",
    "adv_loss",
    "semi_loss",
    "total_loss",
    "d_loss",
    "d_acc_real",
    "d_acc_fake",
)


class AdversarialSegmentationModel(keras.Model):
    """Trains S against a discriminator on its predictions (see the module docstring).

    ``train_step(data)`` takes ``data = ((x_l, y_l), x_u)``: labeled images x_l (B_l,H,W,1)
    float32, labels y_l (B_l,H,W) int32 in [0, n_classes), unlabeled images x_u (B_u,H,W,1)
    float32 (the algorithm uses B_l = B_u = half the batch). Per step:

    1. one-hot y_l; affine-augment the labeled pair (if ``affine``); the unlabeled slices are
       used as they are;
    2. one tape over S: logits = S(concat(x_l, x_u)) (one pass, shared BatchNorm statistics);
       ``seg_loss`` = weighted cross-entropy on the labeled rows; ``adv_loss`` = non-saturating
       loss of D on S's fake inputs (the pixel level: labeled and unlabeled softmax maps; the
       image level: unlabeled (image, softmax) pairs); ``semi_loss`` (pixel level, from
       ``semi_start``): cross-entropy of the unlabeled rows against their own argmax, only on
       pixels with σ(D) > ``semi_threshold``; total = seg + λ_adv·adv + λ_semi·semi. The
       gradient is applied to S's weights only (D's are not updated by this loss);
    3. a second tape over D only: real = ground truth (with the labeled image at the image
       level), fake = stop_gradient of S's softmax as in step 2 (the pixel level: labeled
       rows only, as Hung et al.); update D;
    4. update and return the trackers (:attr:`metrics`).

    Args:
        segmenter: S, images (B,H,W,1) → logits (B,H,W,n_classes).
        discriminator: D; pixel level: (B,H,W,n_classes) → (B,H,W,1) logits; image level:
            (B,H,W,n_classes + 1) → (B,1) logits.
        level: ``"pixel"`` or ``"image"``.
        n_classes: number of classes including background.
        class_weights: n_classes cross-entropy weights, background first.
        lambda_adv: λ_adv, weight of S's adversarial term.
        lambda_semi: λ_semi, weight of the self-taught term (pixel level; 0 disables it).
        semi_threshold: σ(D) threshold of the self-taught term, in (0, 1).
        semi_start: optimiser iteration of S from which the self-taught term counts.
        affine: a ``{"images", "segmentation_masks"}`` layer for the labeled pair, or ``None``.

    Does not validate, keep checkpoints, or augment the unlabeled slices.
    """

    def __init__(
        self,
        segmenter: keras.Model,
        discriminator: keras.Model,
        *,
        level: str,
        n_classes: int,
        class_weights: Sequence[float],
        lambda_adv: float = 0.01,
        lambda_semi: float = 0.1,
        semi_threshold: float = 0.2,
        semi_start: int = 0,
        affine: keras.layers.Layer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        problems = []
        if level not in LEVELS:
            problems.append(f"level must be one of {LEVELS}, found {level!r}")
        if len(class_weights) != n_classes:
            problems.append(
                f"class_weights needs one weight per class ({n_classes}), found "
                f"{list(class_weights)}"
            )
        if not 0.0 < semi_threshold < 1.0:
            problems.append(f"semi_threshold must be in (0, 1), found {semi_threshold}")
        if problems:
            raise ValueError(
                "AdversarialSegmentationModel: " + "; ".join(problems) + ". Fix the config "
                "(method, train.class_weights, train.semi_threshold)."
            )
        self.segmenter = segmenter
        self.discriminator = discriminator
        self.level = level
        self.n_classes = int(n_classes)
        self.class_weights = tuple(float(w) for w in class_weights)
        self.lambda_adv = float(lambda_adv)
        self.lambda_semi = float(lambda_semi)
        self.semi_threshold = float(semi_threshold)
        self.semi_start = int(semi_start)
        self.affine = affine
        self.trackers = {name: keras.metrics.Mean(name=name) for name in _TRACKERS}
        self.s_optimizer: keras.optimizers.Optimizer | None = None
        self.d_optimizer: keras.optimizers.Optimizer | None = None

    def compile(
        self,
        s_optimizer: keras.optimizers.Optimizer,
        d_optimizer: keras.optimizers.Optimizer,
        **kwargs: Any,
    ) -> None:
        """Set S's and D's optimisers and create their slots now (a checkpoint restores them).

        Under the ``mixed_float16`` policy each is wrapped in a ``LossScaleOptimizer``.

        S and D must be built. Other keyword arguments go to ``keras.Model.compile``.
        """
        super().compile(optimizer=None, **kwargs)
        self.s_optimizer = with_loss_scaling(s_optimizer)
        self.d_optimizer = with_loss_scaling(d_optimizer)
        self.s_optimizer.build(self.segmenter.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """seg_loss, adv_loss, semi_loss, total_loss, d_loss, d_acc_real, d_acc_fake."""
        return list(self.trackers.values())

    def discriminator_input(self, images: tf.Tensor, class_maps: tf.Tensor) -> tf.Tensor:
        """What D sees: the class map (B,H,W,C) at the pixel level, (image, map) concatenated
        to (B,H,W,C+1) at the image level."""
        if self.level == "pixel":
            return class_maps
        return tf.concat([images, class_maps], axis=-1)

    def segmenter_losses(
        self, x_l: tf.Tensor, y_onehot: tf.Tensor, x_u: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """S's objective (step 2 of the class docstring), to be run under a tape.

        Args:
            x_l: (B_l,H,W,1) float32 labeled images (already affine-augmented).
            y_onehot: (B_l,H,W,C) float32 labels.
            x_u: (B_u,H,W,1) float32 unlabeled images.

        Returns:
            float32 scalars ``seg_loss``, ``adv_loss``, ``semi_loss``, ``total_loss`` and
            ``probabilities`` (B_l + B_u,H,W,C), S's softmax (labeled rows first).
        """
        n_labeled = tf.shape(x_l)[0]
        logits = tf.cast(self.segmenter(tf.concat([x_l, x_u], 0), training=True), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        seg_loss = weighted_cross_entropy(y_onehot, logits[:n_labeled], self.class_weights)
        if self.level == "pixel":
            # L_adv reaches S's weights through D's input (Hung et al.: all rows).
            fake_logits = self.discriminator(probabilities, training=True)
            adv_loss = generator_adversarial_loss(fake_logits)
            semi_loss = self._self_taught_loss(logits[n_labeled:], fake_logits[n_labeled:])
        else:
            fake = self.discriminator_input(x_u, probabilities[n_labeled:])
            adv_loss = generator_adversarial_loss(self.discriminator(fake, training=True))
            semi_loss = tf.constant(0.0)
        total = seg_loss + self.lambda_adv * adv_loss + self.lambda_semi * semi_loss
        return {
            "seg_loss": seg_loss,
            "adv_loss": adv_loss,
            "semi_loss": semi_loss,
            "total_loss": total,
            "probabilities": probabilities,
        }

    def _self_taught_loss(self, logits_u: tf.Tensor, d_logits_u: tf.Tensor) -> tf.Tensor:
        """Cross-entropy of unlabeled logits against their own argmax where σ(D) > threshold.

        The targets and the confidence mask carry no gradient; masked pixels count as zero
        in the pixel mean (the convention of :func:`weighted_cross_entropy`). Zero before
        ``semi_start``.
        """
        confident = tf.cast(tf.sigmoid(d_logits_u) > self.semi_threshold, tf.float32)
        targets = tf.one_hot(tf.argmax(logits_u, axis=-1), self.n_classes) * confident
        loss = weighted_cross_entropy(tf.stop_gradient(targets), logits_u, self.class_weights)
        active = tf.cast(self.s_optimizer.iterations >= self.semi_start, tf.float32)
        return active * loss

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One step on ``((x_l, y_l), x_u)`` (see the class docstring); tracker means."""
        if self.s_optimizer is None or self.d_optimizer is None:
            raise RuntimeError(
                "AdversarialSegmentationModel: call compile(s_optimizer=..., d_optimizer=...) "
                "before training."
            )
        # 1. Unpack: x_l (B_l,H,W,1), y_l (B_l,H,W) int, x_u (B_u,H,W,1); augment the pair.
        (x_l, y_l), x_u = data
        x_l, x_u = tf.cast(x_l, tf.float32), tf.cast(x_u, tf.float32)
        y_onehot = tf.one_hot(tf.cast(y_l, tf.int32), self.n_classes)
        if self.affine is not None:
            augmented = self.affine({"images": x_l, "segmentation_masks": y_onehot}, training=True)
            x_l, y_onehot = augmented["images"], augmented["segmentation_masks"]

        # 2. One tape over S; the gradient is applied to S's weights only.
        s_weights = self.segmenter.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.segmenter_losses(x_l, y_onehot, x_u)
            # Divided by the replicas (their gradients are summed), scaled for mixed precision.
            s_scaled = self.s_optimizer.scale_loss(scale_for_replicas(losses["total_loss"]))
        gradients = step_gradients(tape, s_scaled, s_weights, "adversarial step, S")
        self.s_optimizer.apply(gradients, s_weights)

        # 3. Second tape over D only: real = ground truth, fake = S's softmax (no S path).
        n_labeled = tf.shape(x_l)[0]
        probabilities = tf.stop_gradient(losses["probabilities"])
        if self.level == "pixel":
            real = y_onehot
            fake = probabilities[:n_labeled]
        else:
            real = self.discriminator_input(x_l, y_onehot)
            fake = self.discriminator_input(x_u, probabilities[n_labeled:])
        d_weights = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d_loss = discriminator_loss(real_logits, fake_logits)
            d_scaled = self.d_optimizer.scale_loss(scale_for_replicas(d_loss))
        gradients = step_gradients(tape, d_scaled, d_weights, "adversarial step, D")
        self.d_optimizer.apply(gradients, d_weights)

        # 4. Trackers.
        values = {name: losses[name] for name in ("seg_loss", "adv_loss", "semi_loss")}
        values["total_loss"] = losses["total_loss"]
        values["d_loss"] = d_loss
        values["d_acc_real"] = tf.reduce_mean(tf.cast(real_logits > 0.0, tf.float32))
        values["d_acc_fake"] = tf.reduce_mean(tf.cast(fake_logits < 0.0, tf.float32))
        for name, value in values.items():
            self.trackers[name].update_state(value)
        result = {name: tracker.result() for name, tracker in self.trackers.items()}
        result["total_loss"] = losses["total_loss"]  # this step's loss (NaN check)
        return result

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """Segment ``inputs`` (B,H,W,1) with S: logits (B,H,W,n_classes), no softmax."""
        return self.segmenter(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "level": self.level,
            "n_classes": self.n_classes,
            "class_weights": list(self.class_weights),
            "lambda_adv": self.lambda_adv,
            "lambda_semi": self.lambda_semi,
            "semi_threshold": self.semi_threshold,
            "semi_start": self.semi_start,
        }
