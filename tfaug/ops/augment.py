"""Random augmentations of image/label pairs as batched TensorFlow ops (docs/method.md §6).

Two layers of API:

* pure, parameterised transforms that tests and callers can drive with chosen parameters:
  :func:`affine_matrices`, :func:`affine_transform`, :func:`elastic_field`,
  :func:`elastic_transform`, :func:`intensity_transform`, :func:`mixup`;
* Keras 3 layers (:class:`RandomAffine`, :class:`RandomElastic`, :class:`RandomIntensity`,
  :class:`Mixup`) that draw the parameters once per slice with a seeded
  ``keras.random.SeedGenerator`` (:meth:`PairedAugmentation.sample_parameters`) and apply
  them to image and mask alike.

The layers take and return Keras preprocessing layers' dict convention::

    {"images": (B,H,W,C_img) float32, "segmentation_masks": (B,H,W,n_classes) float32}

``segmentation_masks`` are one-hot or soft label maps with the background class in channel
0; the key may be omitted (images only, e.g. an unlabeled batch). They run eagerly, inside
``tf.function`` and inside ``tf.data.Dataset.map`` (batched datasets; a dynamic batch size is
fine), are deterministic under a seed, and are the identity when called with
``training=False``. They do not clip intensities, and none of them accepts integer label
maps: convert labels to one-hot first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfaug.ops.seeds import ReplicaSeedGenerator
from tfaug.ops.warp import dense_image_warp

IMAGES = "images"
MASKS = "segmentation_masks"

# Ids of the affine transforms one slice may get; -1 means "left unchanged".
AFFINE_TRANSFORMS = ("scale", "flip", "rotation", "rotation45")
_SCALE, _FLIP, _ROTATION, _ROTATION45 = range(4)


def sigma_px_from_mm(sigma_mm: float, spacing_mm: float) -> float:
    """Convert the elastic σ from mm (as configured) to pixels of the preprocessed grid.

    Example: 13.67 mm at 1.367 mm spacing is 10 px (the paper's σ at 224×224).
    """
    if not spacing_mm > 0 or not sigma_mm >= 0:
        raise ValueError(
            f"sigma_px_from_mm: expected sigma_mm >= 0 and spacing_mm > 0 (in mm), found "
            f"sigma_mm={sigma_mm}, spacing_mm={spacing_mm}. Pass the preprocessed in-plane "
            "spacing (config preprocess.spacing_mm)."
        )
    return float(sigma_mm) / float(spacing_mm)


# --------------------------------------------------------------------------- pure transforms


def affine_matrices(
    scale: tf.Tensor, flip: tf.Tensor, angle_degrees: tf.Tensor, height: int, width: int
) -> tf.Tensor:
    """Per-slice 3x3 matrices mapping output pixel (x, y, 1) to input pixel coordinates.

    ``input = c + (1 / scale) · R(angle) · F · (output − c)`` with ``c = ((W−1)/2, (H−1)/2)``
    the image centre in pixel-index coordinates (x along W, y along H), ``F`` the mirror
    ``x → −x`` where ``flip`` is true, and ``R`` the rotation by ``angle``. A positive angle
    turns the content counter-clockwise as displayed with row 0 at the top (the direction
    of ``np.rot90``); ``scale > 1`` enlarges the content (zoom in).

    Args:
        scale: (B,) float32, isotropic scale factor (1 = unchanged), > 0.
        flip: (B,) bool, mirror along x (the W axis).
        angle_degrees: (B,) float32, rotation in degrees.
        height: H in pixels. width: W in pixels.

    Returns:
        (B, 3, 3) float32, last row (0, 0, 1): the format of :func:`affine_transform`.
    """
    scale = tf.cast(scale, tf.float32)
    angle = tf.cast(angle_degrees, tf.float32) * (math.pi / 180.0)
    mirror = tf.where(tf.cast(flip, tf.bool), -1.0, 1.0)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # L = (1/s) R F: F negates the first column of R.
    l00, l01, l10, l11 = cos * mirror, -sin, sin * mirror, cos
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    tx = cx - (l00 * cx + l01 * cy)
    ty = cy - (l10 * cx + l11 * cy)
    zeros, ones = tf.zeros_like(cos), tf.ones_like(cos)
    rows = [[l00, l01, tx], [l10, l11, ty], [zeros, zeros, ones]]
    return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=1)


def _sample_points(matrices: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Input pixel coordinates (B,H,W,2) as (y, x) float32 of every output pixel.

    ``x_in = m00·x + m01·y + m02``, ``y_in = m10·x + m11·y + m12`` with the terms in the order
    ``ImageProjectiveTransformV3`` sums them; the projective row of ``matrices`` is ignored.
    """
    m = tf.cast(tf.reshape(matrices, [-1, 9]), tf.float32)[:, None, None, :]  # (B,1,1,9)
    rows, cols = tf.meshgrid(
        tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
    )
    x_in = m[..., 0] * cols + m[..., 1] * rows + m[..., 2]
    y_in = m[..., 3] * cols + m[..., 4] * rows + m[..., 5]
    return tf.stack([y_in, x_in], axis=-1)


def _gather_pixels(values: tf.Tensor, y: tf.Tensor, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``values[b, y, x, :]`` at integer (B,H,W) indices, and whether each is inside the image.

    Returns (B,H,W,C) gathered values (indices clamped into the image) and a (B,H,W,1) bool
    mask, true where ``0 <= y < H`` and ``0 <= x < W``; callers replace the outside values.
    """
    shape = tf.shape(values)
    height, width = shape[1], shape[2]
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    y = tf.clip_by_value(y, 0, height - 1)
    x = tf.clip_by_value(x, 0, width - 1)
    offsets = tf.reshape(tf.range(shape[0]) * height * width, [-1, 1, 1])
    flat = tf.reshape(values, [-1, shape[3]])  # (B*H*W, C)
    return tf.gather(flat, offsets + y * width + x), inside[..., None]


def _resample_bilinear(images: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
    """Bilinear samples of (B,H,W,C) images at (B,H,W,2) (y, x) points; 0 outside the image.

    Each of the four neighbours outside the image counts as 0 (so the image fades to 0 over
    the last pixel at the border), ``ImageProjectiveTransformV3``'s ``CONSTANT`` fill.
    """
    y, x = points[..., 0], points[..., 1]
    y0, x0 = tf.floor(y), tf.floor(x)
    # Weights written as the kernel does: (x0 + 1 − x) and (x − x0), exact at integers.
    weights_x = [x0 + 1.0 - x, x - x0]
    weights_y = [y0 + 1.0 - y, y - y0]
    row0, col0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    rows = []
    for dy in (0, 1):
        row = 0.0
        for dx in (0, 1):
            value, inside = _gather_pixels(images, row0 + dy, col0 + dx)
            weight = tf.cast(weights_x[dx][..., None], images.dtype)
            row = row + weight * tf.where(inside, value, tf.zeros_like(value))
        rows.append(tf.cast(weights_y[dy][..., None], images.dtype) * row)
    return rows[0] + rows[1]


def _resample_nearest(masks: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
    """Nearest samples of (B,H,W,C) masks at (B,H,W,2) points; the background class outside.

    Rounds half away from zero (``std::round``, as ``ImageProjectiveTransformV3``), so a
    one-hot mask stays one-hot; outside the image the result is (1, 0, ..., 0).
    """
    rounded = tf.cast(tf.sign(points) * tf.floor(tf.abs(points) + 0.5), tf.int32)
    value, inside = _gather_pixels(masks, rounded[..., 0], rounded[..., 1])
    background = tf.one_hot(0, tf.shape(masks)[-1], dtype=masks.dtype)
    return tf.where(inside, value, background)


def affine_transform(
    images: tf.Tensor, masks: tf.Tensor | None, matrices: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Resample images (bilinear) and masks (nearest) with one affine matrix per slice.

    Fill: points that fall outside the image are filled with intensity 0 and with the
    background class (channel 0 = 1, others 0). Constant fill rather than reflect, because
    the images are normalised with ``(x − p2)/(p98 − p2)`` so 0 is the background intensity,
    and because a reflection would invent mirrored anatomy (with mirrored labels) at the
    border; the original code filled with 0 and label 0 (``scipy.ndimage`` constant mode).
    The results are those of ``ImageProjectiveTransformV3`` (``CONSTANT`` fill), computed
    with ``tf.gather`` so that the op compiles with XLA (``jit_compile=True``), which the
    projective-transform kernel does not.

    Args:
        images: (B,H,W,C) float tensor, any range.
        masks: (B,H,W,n_classes) float one-hot or soft labels, background in channel 0,
            n_classes >= 2; or ``None``.
        matrices: (B,3,3) output→input pixel maps, e.g. from :func:`affine_matrices`; the
            last row is taken as (0, 0, 1) (no projective part).

    Returns:
        ``(images, masks)`` with the input shapes and dtypes; a one-hot mask stays one-hot
        (nearest interpolation picks one source pixel for all channels).

    Does not: interpolate masks linearly, or move intensities (no clipping, no rescaling).
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    points = _sample_points(matrices, shape[1], shape[2])
    images = _resample_bilinear(images, points)
    if masks is None:
        return images, None
    masks = tf.convert_to_tensor(masks)
    _check_background_channel(masks, "affine_transform")
    return images, _resample_nearest(masks, points)


def elastic_field(displacements: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Dense flow from a coarse grid of control-point displacements (bicubic resize).

    Args:
        displacements: (B, g, g, 2) float32, displacements in pixels (dy, dx).
        height: H. width: W (pixels of the output field).

    Returns:
        (B,H,W,2) float32 flow in pixels, in :func:`tfaug.ops.warp.dense_image_warp`'s
        convention. Bicubic interpolation may overshoot the control values slightly.
    """
    return tf.image.resize(tf.cast(displacements, tf.float32), [height, width], "bicubic")


def elastic_transform(
    images: tf.Tensor, masks: tf.Tensor | None, flow: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Warp images and one-hot/soft masks with the same (B,H,W,2) flow, both bilinear.

    Masks come out soft (per-pixel sums stay 1); outside the image the border is repeated
    (the warp clamps its sample points). Returns ``(images, masks)`` in the input shapes.
    """
    images = dense_image_warp(images, flow)
    return images, None if masks is None else dense_image_warp(masks, flow)


def intensity_transform(images: tf.Tensor, contrast: tf.Tensor, brightness: tf.Tensor) -> tf.Tensor:
    """``x ← (x − mean)·c + mean`` then ``x ← x + b``, per slice.

    Args:
        images: (B,H,W,C) float32; the mean is taken per slice and channel over (H, W).
        contrast: (B,) contrast factor c (1 = unchanged).
        brightness: (B,) additive brightness b in image units (0 = unchanged).

    Returns:
        (B,H,W,C) float32, not clipped.
    """
    images = tf.convert_to_tensor(images)
    contrast = tf.reshape(tf.cast(contrast, images.dtype), [-1, 1, 1, 1])
    brightness = tf.reshape(tf.cast(brightness, images.dtype), [-1, 1, 1, 1])
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return (images - mean) * contrast + mean + brightness


def mixup(
    images: tf.Tensor, masks: tf.Tensor | None, lam: tf.Tensor, permutation: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Mix every slice i with slice ``permutation[i]``: ``λ_i · a_i + (1 − λ_i) · a_perm(i)``.

    Args:
        images: (B,H,W,C) float. masks: (B,H,W,n_classes) float one-hot/soft, or ``None``.
        lam: (B,) mixing weights in [0, 1]. permutation: (B,) int, a permutation of 0..B−1.

    Returns:
        ``(images, masks)``; masks mixed with the same λ become soft (sums stay 1).
    """

    def mix(values: tf.Tensor) -> tf.Tensor:
        weight = tf.reshape(tf.cast(lam, values.dtype), [-1, 1, 1, 1])
        return weight * values + (1.0 - weight) * tf.gather(values, permutation)

    return mix(images), None if masks is None else mix(masks)


# --------------------------------------------------------------------------- checks


def _check_background_channel(masks: tf.Tensor, where: str) -> None:
    if masks.shape.rank != 4 or (masks.shape[-1] is not None and masks.shape[-1] < 2):
        raise ValueError(
            f"tfaug.ops.augment.{where}: expected segmentation_masks (B,H,W,n_classes) one-hot "
            f"with the background in channel 0 and n_classes >= 2, found shape {masks.shape}. "
            "Convert label maps with tf.one_hot(labels, n_classes)."
        )


def _check_range(
    owner: str, name: str, value: Sequence[float], low: float | None
) -> tuple[float, float]:
    """A (min, max) pair with min <= max (and min >= low when given), as floats."""
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1] or (low is not None and pair[0] < low):
        bound = "" if low is None else f" and min >= {low}"
        raise ValueError(
            f"{owner}: expected {name} as (min, max) with min <= max{bound}, found {value!r}."
        )
    return pair


def _unpack(data: Any, owner: str) -> tuple[tf.Tensor, tf.Tensor | None]:
    if not isinstance(data, dict) or IMAGES not in data or set(data) - {IMAGES, MASKS}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{owner}: expected a dict with key {IMAGES!r} and optionally {MASKS!r}, found "
            f"{found}. Wrap a batch as {{'images': x, 'segmentation_masks': y}}."
        )
    images = tf.convert_to_tensor(data[IMAGES])
    masks = tf.convert_to_tensor(data[MASKS]) if MASKS in data else None
    mask_shape = images.shape if masks is None else masks.shape
    if (
        images.shape.rank != 4
        or mask_shape.rank != 4
        or not images.shape[:3].is_compatible_with(mask_shape[:3])
    ):
        raise ValueError(
            f"{owner}: expected images (B,H,W,C) and segmentation_masks (B,H,W,n_classes) "
            f"with equal (B,H,W), found images {images.shape} and masks "
            f"{mask_shape}. Batch the dataset before mapping."
        )
    return images, masks


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="tfaug")
class PairedAugmentation(keras.layers.Layer):
    """Base of the random layers: draw parameters once per slice, apply to image and mask.

    Subclasses implement :meth:`sample_parameters` (the random part) and :meth:`transform`
    (a pure function of the parameters). ``call(data, training=True)`` takes and returns
    ``{"images": ..., "segmentation_masks": ...}`` (masks optional) and is the identity
    when ``training`` is false.

    Args:
        seed: integer seed of the layer's ``keras.random.SeedGenerator`` (``None``: random);
            under a ``tf.distribute`` strategy each replica draws from its own stream.
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = ReplicaSeedGenerator(seed)  # one device: keras.random.SeedGenerator

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """Draw the random parameters of a batch: a dict of (B, ...) tensors."""
        raise NotImplementedError

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Apply drawn parameters; returns ``(images, masks)``."""
        raise NotImplementedError

    def call(self, data: dict[str, tf.Tensor], training: bool = True) -> dict[str, tf.Tensor]:
        images, masks = _unpack(data, type(self).__name__)
        if training:
            parameters = self.sample_parameters(tf.shape(images)[0])
            images, masks = self.transform(images, masks, parameters)
        return {IMAGES: images} if masks is None else {IMAGES: images, MASKS: masks}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["seed"] = self.seed
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class RandomAffine(PairedAugmentation):
    """With probability p per slice, exactly one of scale / x-flip / rotation / k·45° turn.

    The transform is drawn uniformly among ``transforms`` (default all four, docs/method.md §6):
    ``"scale"`` isotropic scale U(scale_range); ``"flip"`` mirror along x (the W axis);
    ``"rotation"`` U(−rotation_degrees, rotation_degrees); ``"rotation45"`` k·45°,
    k ∈ {0..7}; all about the image centre. Images are bilinear, masks nearest (one-hot stays
    one-hot); outside the image: intensity 0 and background (see :func:`affine_transform`).

    Args:
        probability: p in [0, 1]. scale_range: (min, max), min > 0.
        rotation_degrees: r >= 0, in degrees. transforms: a non-empty subset of
        :data:`AFFINE_TRANSFORMS`. seed: see :class:`PairedAugmentation`.
    """

    def __init__(
        self,
        probability: float = 0.8,
        scale_range: Sequence[float] = (0.9, 1.1),
        rotation_degrees: float = 15.0,
        transforms: Sequence[str] = AFFINE_TRANSFORMS,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        unknown = sorted(set(transforms) - set(AFFINE_TRANSFORMS))
        if not 0.0 <= probability <= 1.0 or rotation_degrees < 0 or unknown or not transforms:
            raise ValueError(
                f"RandomAffine: expected probability in [0, 1], rotation_degrees >= 0 and "
                f"transforms a non-empty subset of {AFFINE_TRANSFORMS}; found probability="
                f"{probability}, rotation_degrees={rotation_degrees}, transforms={transforms}."
            )
        self.probability = float(probability)
        self.scale_range = _check_range("RandomAffine", "scale_range", scale_range, 1e-6)
        self.rotation_degrees = float(rotation_degrees)
        self.transforms = tuple(dict.fromkeys(transforms))

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """Draw, per slice, which transform applies and its parameter.

        Returns:
            ``choice`` (B,) int32: index into :data:`AFFINE_TRANSFORMS`, −1 for unchanged;
            ``scale`` (B,) float32 (1 unless choice is scale); ``flip`` (B,) bool;
            ``angle_degrees`` (B,) float32 (0 unless a rotation is chosen; k·45 ∈ [0, 315]
            for ``rotation45``).
        """
        shape = tf.reshape(batch_size, [1])
        seed = self.generator
        applied = keras.random.uniform(shape, seed=seed) < self.probability
        enabled = tf.constant([AFFINE_TRANSFORMS.index(t) for t in self.transforms], tf.int32)
        pick = keras.random.randint(shape, 0, len(self.transforms), seed=seed)
        choice = tf.where(applied, tf.gather(enabled, pick), -1)
        low, high = self.scale_range
        scale = keras.random.uniform(shape, low, high, seed=seed)
        small = keras.random.uniform(
            shape, -self.rotation_degrees, self.rotation_degrees, seed=seed
        )
        turns = tf.cast(keras.random.randint(shape, 0, 8, seed=seed), tf.float32)
        angle = tf.where(
            choice == _ROTATION, small, tf.where(choice == _ROTATION45, 45.0 * turns, 0.0)
        )
        return {
            "choice": choice,
            "scale": tf.where(choice == _SCALE, scale, 1.0),
            "flip": choice == _FLIP,
            "angle_degrees": angle,
        }

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        size = tf.shape(images)
        matrices = affine_matrices(
            parameters["scale"], parameters["flip"], parameters["angle_degrees"], size[1], size[2]
        )
        return affine_transform(images, masks, matrices)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            probability=self.probability,
            scale_range=list(self.scale_range),
            rotation_degrees=self.rotation_degrees,
            transforms=list(self.transforms),
        )
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class RandomElastic(PairedAugmentation):
    """Random smooth deformation: a g×g×2 grid of N(0, σ) displacements, bicubic to H×W.

    The same field warps image and mask with :func:`tfaug.ops.warp.dense_image_warp` (masks
    warped as one-hot → soft labels). Unlike Keras' RandomElasticTransform, image and mask
    always share the field.

    Args:
        sigma_px: σ in pixels of the preprocessed grid, >= 0; the config stores σ in mm, use
            :func:`sigma_px_from_mm`. grid_size: control points per axis g >= 1.
        seed: see :class:`PairedAugmentation`.
    """

    def __init__(
        self, sigma_px: float, grid_size: int = 3, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        if not sigma_px >= 0 or int(grid_size) != grid_size or grid_size < 1:
            raise ValueError(
                f"RandomElastic: expected sigma_px >= 0 (pixels) and an integer grid_size >= "
                f"1, found sigma_px={sigma_px}, grid_size={grid_size}. Convert a σ in mm with "
                "sigma_px_from_mm(sigma_mm, spacing_mm)."
            )
        self.sigma_px = float(sigma_px)
        self.grid_size = int(grid_size)

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """``displacements``: (B, g, g, 2) float32 ~ N(0, σ) pixels (dy, dx)."""
        shape = tf.stack([batch_size, self.grid_size, self.grid_size, 2])
        return {
            "displacements": keras.random.normal(shape, stddev=self.sigma_px, seed=self.generator)
        }

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        size = tf.shape(images)
        flow = elastic_field(parameters["displacements"], size[1], size[2])
        return elastic_transform(images, masks, flow)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(sigma_px=self.sigma_px, grid_size=self.grid_size)
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class RandomIntensity(PairedAugmentation):
    """Random contrast c ~ U(contrast_range) then brightness b ~ U(brightness_range).

    See :func:`intensity_transform`; masks pass through unchanged.

    Args:
        contrast_range: (min, max), min >= 0. brightness_range: (min, max) in image units.
        seed: see :class:`PairedAugmentation`.
    """

    def __init__(
        self,
        contrast_range: Sequence[float] = (0.8, 1.2),
        brightness_range: Sequence[float] = (-0.1, 0.1),
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.contrast_range = _check_range("RandomIntensity", "contrast_range", contrast_range, 0)
        self.brightness_range = _check_range(
            "RandomIntensity", "brightness_range", brightness_range, None
        )

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """``contrast`` (B,) and ``brightness`` (B,), float32, uniform in their ranges."""
        shape = tf.reshape(batch_size, [1])
        return {
            "contrast": keras.random.uniform(shape, *self.contrast_range, seed=self.generator),
            "brightness": keras.random.uniform(shape, *self.brightness_range, seed=self.generator),
        }

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        return intensity_transform(images, parameters["contrast"], parameters["brightness"]), masks

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            contrast_range=list(self.contrast_range), brightness_range=list(self.brightness_range)
        )
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class Mixup(PairedAugmentation):
    """Mix each slice with a random other slice of the batch, λ ~ Beta(α, α) per pair.

    Pairs are the batch and a random permutation of itself; images and masks are mixed
    linearly with the same λ (:func:`mixup`), so masks become soft labels.

    Args:
        alpha: α > 0 of Beta(α, α) (0.2 in the paper). seed: see :class:`PairedAugmentation`.
    """

    def __init__(self, alpha: float = 0.2, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        if not alpha > 0:
            raise ValueError(f"Mixup: expected alpha > 0 for Beta(alpha, alpha), found {alpha}.")
        self.alpha = float(alpha)

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """``lam`` (B,) float32 in [0, 1]; ``permutation`` (B,) int32 of 0..B−1."""
        shape = tf.reshape(batch_size, [1])
        lam = keras.random.beta(shape, self.alpha, self.alpha, seed=self.generator)
        permutation = keras.random.shuffle(tf.range(batch_size), seed=self.generator)
        return {"lam": lam, "permutation": permutation}

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        return mixup(images, masks, parameters["lam"], parameters["permutation"])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
