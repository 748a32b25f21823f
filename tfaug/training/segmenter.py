"""Training the segmenter S on labeled slices with an augmentation method (docs/method.md §6).

Batch composition: every method except ``none`` includes random affine augmentation.
With a method layer, the first half of each batch is affine-augmented labeled data and
the second half is the affine-augmented labeled data passed through the method (random
elastic, random intensity, Mixup, or the frozen learned generators). Without one
(``aff``), the whole batch is affine-augmented; with neither (``none``) it is used as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfaug.losses import weighted_cross_entropy
from tfaug.ops.generated import augment_second_half
from tfaug.training.distribute import scale_for_replicas
from tfaug.training.gradients import step_gradients


class SegmenterModel(keras.Model):
    """Wraps S for the pre-training and final stages of Algorithm 1.

    Args:
        segmenter: the U-Net S, (B,H,W,1) → logits (B,H,W,C).
        n_classes: C, background included.
        class_weights: cross-entropy weight per class (length C).
        affine: a layer acting on ``{"images", "segmentation_masks"}`` dicts (RandomAffine),
            or ``None`` for no affine augmentation.
        augmentation: the method's layer (same dict convention), applied to the second half
            of the batch after the affine layer; ``None`` for none.

    ``train_step`` takes ``(images (B,H,W,1) float32, labels (B,H,W) int32)`` and returns
    ``{"seg_loss": ..., "total_loss": ...}`` (float32). It runs on one device or per replica
    under ``tfaug.training.distribute`` (B is then the replica's share of the global batch),
    and under the ``mixed_float16`` policy (the optimiser set by ``compile`` is then a
    ``LossScaleOptimizer``). Only S's weights are trained; the method layer (e.g. frozen
    generators) is called with ``training=False`` so its batch statistics do not move.
    """

    def __init__(
        self,
        segmenter: keras.Model,
        *,
        n_classes: int,
        class_weights: Sequence[float],
        affine: keras.layers.Layer | None = None,
        augmentation: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(class_weights) != n_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} entries but there are {n_classes} "
                "classes; give one weight per class, background first"
            )
        self.segmenter = segmenter
        self.n_classes = n_classes
        self.class_weights = list(class_weights)
        self.affine = affine
        self.augmentation = augmentation
        self.seg_loss_tracker = keras.metrics.Mean(name="seg_loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.seg_loss_tracker]

    def compile(self, optimizer: keras.optimizers.Optimizer, **kwargs) -> None:
        """Set the optimiser of S and create its slots now (a checkpoint restores them)."""
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.segmenter.trainable_variables)

    def augment_batch(self, images: tf.Tensor, onehot: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Apply the batch composition of docs/method.md §6.

        Args:
            images: (B,H,W,1) float32.
            onehot: (B,H,W,C) float32 one-hot labels.

        Returns:
            The training pair ``(images, soft labels)`` with the same shapes.
        """
        if self.affine is not None:
            out = self.affine({"images": images, "segmentation_masks": onehot}, training=True)
            images, onehot = out["images"], out["segmentation_masks"]
        if self.augmentation is None:
            return images, onehot
        return augment_second_half(self.augmentation, images, onehot)

    def train_step(self, data):
        images, labels = data  # (B,H,W,1) float32, (B,H,W) int32
        onehot = tf.one_hot(labels, self.n_classes, dtype=tf.float32)
        # 1. Augment (no gradient: the method layer is frozen).
        images, onehot = self.augment_batch(images, onehot)
        images, onehot = tf.stop_gradient(images), tf.stop_gradient(onehot)
        # 2. L_S on S's logits; the gradient reaches S's weights only. The loss is divided
        #    by the number of replicas (the optimiser sums their gradients) and scaled for
        #    mixed precision (the optimiser un-scales).
        with tf.GradientTape() as tape:
            logits = self.segmenter(images, training=True)
            loss = weighted_cross_entropy(onehot, logits, self.class_weights)
            scaled = self.optimizer.scale_loss(scale_for_replicas(loss))
        variables = self.segmenter.trainable_variables
        gradients = step_gradients(tape, scaled, variables, "segmenter step")
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        # 3. Trackers.
        self.seg_loss_tracker.update_state(loss)
        return {"seg_loss": self.seg_loss_tracker.result(), "total_loss": loss}

    def call(self, images, training=False):
        return self.segmenter(images, training=training)

    def get_config(self) -> dict:
        return {
            "n_classes": self.n_classes,
            "class_weights": self.class_weights,
        }
