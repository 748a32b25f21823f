"""CutMix between the slices of a batch, as weak-to-strong consistency methods use it.

A box of each slice is replaced by the same box of another slice (Yun et al. 2019; in
semi-supervised segmentation, French et al. 2020 and UniMatch, Yang et al. 2023): the
strongly augmented image, its pseudo-labels and their confidences are mixed with the same
boxes, so every pixel keeps the target of the image it shows.

* :func:`sample_boxes`: one random axis-aligned box per slice (or none), as UniMatch's
  ``obtain_cutmix_box`` draws it;
* :func:`mix_boxes`: one set of boxes applied to any number of tensors with a batch, height
  and width axis (images, one-hot labels, confidences, ...);
* :class:`CutMixBoxes`: a Keras layer that holds the settings and a seeded
  :class:`~tfaug.ops.seeds.ReplicaSeedGenerator` and draws the boxes of a batch.

The source of the mixed-in box is, by default, the batch rolled by one slice (slice i gets
its box from slice i − 1, slice 0 from the last), so no second batch is needed. With a
batch of one slice the source is the slice itself and mixing changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfaug.ops.augment import _check_range
from tfaug.ops.seeds import ReplicaSeedGenerator

# UniMatch's obtain_cutmix_box: p = 0.5, area 2–40 % of the slice, height/width 0.3–1/0.3.
DEFAULT_PROBABILITY = 0.5
DEFAULT_AREA_RANGE = (0.02, 0.4)
DEFAULT_ASPECT_RANGE = (0.3, 1.0 / 0.3)


def sample_boxes(
    batch_size: tf.Tensor | int,
    height: tf.Tensor | int,
    width: tf.Tensor | int,
    probability: float,
    area_range: Sequence[float],
    aspect_range: Sequence[float],
    seed: keras.random.SeedGenerator,
) -> tf.Tensor:
    """One box per slice, chosen with ``probability``; the other slices get none.

    Per slice: area A = a·H·W with a ~ U(area_range); aspect r = h/w ~ U over the part of
    ``aspect_range`` where the box fits in the slice (w = ⌊√(A/r)⌋ <= W, h = ⌊√(A·r)⌋ <= H);
    the top-left corner uniform over the positions where the whole box fits.

    Args:
        batch_size: B. height: H. width: W (pixels).
        probability: chance in [0, 1] that a slice gets a box.
        area_range: (min, max) share of the slice's area, in (0, 1].
        aspect_range: (min, max) height/width ratio, min <= 1 <= max.
        seed: the generator of the draws.

    Returns:
        (B,H,W) bool, true inside each slice's box.
    """
    rows = tf.reshape(batch_size, [1])
    height_f = tf.cast(height, tf.float32)
    width_f = tf.cast(width, tf.float32)
    chosen = keras.random.uniform(rows, seed=seed) < probability
    area = keras.random.uniform(rows, *area_range, seed=seed) * height_f * width_f
    # Aspect ratios for which w <= W (r >= A/W²) and h <= H (r <= H²/A).
    low = tf.maximum(aspect_range[0], area / tf.square(width_f))
    high = tf.maximum(low, tf.minimum(aspect_range[1], tf.square(height_f) / area))
    aspect = low + keras.random.uniform(rows, seed=seed) * (high - low)
    box_width = tf.minimum(tf.floor(tf.sqrt(area / aspect)), width_f)
    box_height = tf.minimum(tf.floor(tf.sqrt(area * aspect)), height_f)
    left = tf.floor(keras.random.uniform(rows, seed=seed) * (width_f - box_width + 1.0))
    top = tf.floor(keras.random.uniform(rows, seed=seed) * (height_f - box_height + 1.0))
    y = tf.range(height_f)[None, :, None]
    x = tf.range(width_f)[None, None, :]

    def per_row(values: tf.Tensor) -> tf.Tensor:
        return values[:, None, None]

    inside_y = (y >= per_row(top)) & (y < per_row(top + box_height))
    inside_x = (x >= per_row(left)) & (x < per_row(left + box_width))
    return inside_y & inside_x & per_row(chosen)


def mix_boxes(
    boxes: tf.Tensor,
    targets: Sequence[tf.Tensor],
    sources: Sequence[tf.Tensor] | None = None,
) -> list[tf.Tensor]:
    """Replace each target's boxes by the same pixels of its source, the same boxes for all.

    Args:
        boxes: (B,H,W) bool, e.g. from :func:`sample_boxes`.
        targets: tensors (B,H,W) or (B,H,W,C) of any dtype (images, one-hot or integer
            labels, confidences).
        sources: one tensor per target, of its shape and dtype; ``None``: each target rolled
            by one slice along the batch (slice i takes slice i − 1's box).

    Returns:
        The mixed targets, in order, shapes and dtypes unchanged.
    """
    if sources is None:
        sources = [tf.roll(target, shift=1, axis=0) for target in targets]
    mixed = []
    for target, source in zip(targets, sources, strict=True):
        inside = boxes if target.shape.rank == 3 else boxes[..., None]
        mixed.append(tf.where(inside, source, target))
    return mixed


@keras.saving.register_keras_serializable(package="tfaug")
class CutMixBoxes(keras.layers.Layer):
    """Draws the CutMix boxes of an image batch (:func:`sample_boxes`).

    ``call(images (B,H,W,C), training=True)`` returns (B,H,W) bool boxes, all false with
    ``training=False``; apply them with :func:`mix_boxes`. Under a ``tf.distribute``
    strategy each replica draws its own boxes for its own slices.

    Args:
        probability: chance per slice of a box (UniMatch: 0.5).
        area_range: (min, max) share of the slice's area in (0, 1] (UniMatch: 0.02, 0.4).
        aspect_range: (min, max) height/width ratio with min <= 1 <= max (UniMatch: 0.3,
            1/0.3).
        seed: integer seed of the draws (``None``: random).
    """

    def __init__(
        self,
        probability: float = DEFAULT_PROBABILITY,
        area_range: Sequence[float] = DEFAULT_AREA_RANGE,
        aspect_range: Sequence[float] = DEFAULT_ASPECT_RANGE,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.area_range = _check_range(owner, "area_range", area_range, 1e-6)
        self.aspect_range = _check_range(owner, "aspect_range", aspect_range, 1e-6)
        if not 0.0 <= probability <= 1.0 or self.area_range[1] > 1.0:
            raise ValueError(
                f"{owner}: expected probability in [0, 1] and area_range within (0, 1] (a "
                f"share of the slice), found probability={probability}, area_range="
                f"{list(area_range)}. Set ssl.cutmix_probability and ssl.cutmix_area_range."
            )
        if not self.aspect_range[0] <= 1.0 <= self.aspect_range[1]:
            raise ValueError(
                f"{owner}: expected aspect_range (min, max) with min <= 1 <= max, so a square "
                f"box is possible, found {list(aspect_range)}. Set ssl.cutmix_aspect_range."
            )
        self.probability = float(probability)
        self.seed = seed
        self.generator = ReplicaSeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> tf.Tensor:
        shape = tf.shape(images)
        if not training:
            return tf.zeros(shape[:3], tf.bool)
        return sample_boxes(
            shape[0],
            shape[1],
            shape[2],
            self.probability,
            self.area_range,
            self.aspect_range,
            self.generator,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            probability=self.probability,
            area_range=list(self.area_range),
            aspect_range=list(self.aspect_range),
            seed=self.seed,
        )
        return config
