"""nnU-Net-style heavy random 2D augmentation of image/label pairs, as Keras 3 layers.

Two layers, in :mod:`tfaug.ops.augment`'s conventions (dict in, dict out, parameters drawn
once per slice with a seeded :class:`~tfaug.ops.seeds.ReplicaSeedGenerator`, identity with
``training=False``, in-graph, XLA-compilable, usable in ``tf.data.Dataset.map``)::

    {"images": (B,H,W,C) float32, "segmentation_masks": (B,H,W,n_classes) float32}

* :class:`HeavyIntensity`: nnU-Net's intensity transforms only (noise, blur, brightness,
  contrast, simulated low resolution, inverted gamma, gamma); masks pass through unchanged,
  and may be omitted (unlabeled slices: the strong perturbation of a semi-supervised method);
* :class:`HeavyAugmentation`: rotation, scaling and (optionally) elastic deformation in one
  resampling, then the intensity transforms, then mirroring, in nnU-Net v2's order.

Under ``jit_compile=True`` a seeded layer draws other (equally deterministic) parameters
and noise than eagerly, as every ``keras.random`` draw does (XLA's stateless generators
differ from the CPU kernels); given the same parameters, the other transforms agree.

Every transform has its own probability per slice; the defaults, the ways parameters are
drawn and the order are those of nnU-Net v2's default trainer for 2D data
(``nnUNetTrainer.get_training_transforms`` and the batchgeneratorsv2 transforms it builds).
Where tfaug differs from nnU-Net:

* nnU-Net samples a patch larger than the network's input, rotates/scales it and crops the
  centre, so the corners are mostly real anatomy; here each slice is transformed in place,
  and what comes from outside the slice is intensity 0 and the background class;
* nnU-Net chooses ±180° only for 2D patches with aspect ratio <= 1.5 (else ±15°); here the
  range is an argument (default ±180°);
* nnU-Net interpolates one-hot labels linearly and takes the argmax (hard labels); here
  ``mask_interpolation="linear"`` keeps the soft result (per-pixel sums 1) and ``"nearest"``
  gives hard one-hot labels;
* nnU-Net's ``noise_variance=(0, 0.1)`` is used as the standard deviation of the noise (the
  drawn value multiplies N(0, 1)); here the argument is named ``noise_std_range`` for that;
* nnU-Net applies blur and simulated low resolution to each channel with probability 0.5
  once the transform is chosen (p = 0.2 and 0.25), so a one-channel slice is blurred with
  probability 0.1 and made low-resolution with probability 0.125; here a chosen transform
  applies to all channels of the slice, with ``p_blur=0.2`` and ``p_low_resolution=0.25`` as
  defaults (pass 0.1 and 0.125 for nnU-Net's rates on one-channel images);
* elastic deformation (off by default, as in nnU-Net v2) is parametrised as
  :class:`~tfaug.ops.augment.RandomElastic` (a g×g grid of N(0, σ) displacements in pixels,
  bicubic to H×W), not as nnU-Net's Fourier-smoothed field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tfaug.ops.augment import (
    PairedAugmentation,
    _check_background_channel,
    _check_range,
    _resample_bilinear,
    _resample_nearest,
    _sample_points,
    affine_matrices,
    intensity_transform,
)

# The intensity transforms in the order they are applied (nnU-Net v2's order).
INTENSITY_STEPS = (
    "noise",
    "blur",
    "brightness",
    "contrast",
    "low_resolution",
    "inverted_gamma",
    "gamma",
)
MASK_INTERPOLATIONS = ("linear", "nearest")
_EPSILON = 1e-7  # floor of a slice's intensity range and std before dividing by them

# --------------------------------------------------------------------------- small helpers


def _per_row(values: tf.Tensor | Sequence[float], like: tf.Tensor) -> tf.Tensor:
    """(B,) values as (B,1,1,1) of ``like``'s dtype, to broadcast over (B,H,W,C)."""
    return tf.reshape(tf.cast(values, like.dtype), [-1, 1, 1, 1])


def _select_rows(applied: tf.Tensor, changed: tf.Tensor, original: tf.Tensor) -> tf.Tensor:
    """Per slice: ``changed`` where the (B,) bool ``applied`` is true, else ``original``."""
    return tf.where(tf.reshape(applied, [-1, 1, 1, 1]), changed, original)


def _along_both_axes(
    function: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    images: tf.Tensor,
    along_height: tf.Tensor,
    along_width: tf.Tensor,
) -> tf.Tensor:
    """Apply a 1D op along H (axis 1) with one (B,) parameter, then along W with another."""
    images = function(images, along_height)
    swapped = tf.transpose(images, [0, 2, 1, 3])
    return tf.transpose(function(swapped, along_width), [0, 2, 1, 3])


def _slice_stats(images: tf.Tensor) -> dict[str, tf.Tensor]:
    """Min, max, mean and std of each slice and channel over (H, W), as (B,1,1,C)."""
    axes = [1, 2]
    return {
        "min": tf.reduce_min(images, axes, keepdims=True),
        "max": tf.reduce_max(images, axes, keepdims=True),
        "mean": tf.reduce_mean(images, axes, keepdims=True),
        "std": tf.math.reduce_std(images, axes, keepdims=True),
    }


def _sample_around_one(
    shape: tf.Tensor, value_range: tuple[float, float], seed: keras.random.SeedGenerator
) -> tf.Tensor:
    """Factors in ``value_range``: U(min, 1) or U(1, max) with probability ½ each.

    nnU-Net's ``BGContrast`` sampling (as many factors below 1 as above, whatever the
    range's asymmetry) when min < 1 < max; otherwise U(min, max).
    """
    low, high = value_range
    if not low < 1.0 < high:
        return keras.random.uniform(shape, low, high, seed=seed)
    below = keras.random.uniform(shape, low, 1.0, seed=seed)
    above = keras.random.uniform(shape, 1.0, high, seed=seed)
    return tf.where(keras.random.uniform(shape, seed=seed) < 0.5, below, above)


def _check_probability(owner: str, name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{owner}: expected {name} in [0, 1] (a probability per slice), found {value!r}. "
            "Pass 0 to switch the transform off and 1 to apply it to every slice."
        )
    return float(value)


def _plain(value: Any) -> Any:
    """Config value: tuples as lists (what ``get_config`` conventionally returns)."""
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- intensity ops


def gaussian_noise(images: tf.Tensor, std: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``x + σ · N(0, 1)``, independent noise per pixel and channel, σ per slice.

    Args:
        images: (B,H,W,C) float. std: (B,) σ >= 0 in image units.
        seed: (2,) int32 seed of the noise field (``tf.random.stateless_normal``).

    Returns:
        (B,H,W,C), the images' dtype, not clipped.
    """
    images = tf.convert_to_tensor(images)
    noise = tf.random.stateless_normal(tf.shape(images), seed, dtype=images.dtype)
    return images + _per_row(std, images) * noise


def blur_radius(max_sigma_px: float) -> int:
    """Half-width in pixels of the blur kernel: ⌈3σ⌉ (nnU-Net's kernel is ~6σ wide)."""
    return math.ceil(3.0 * max_sigma_px)


def _blur_rows(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Gaussian blur along H with a (B,) σ per slice; reflected border."""
    taps = tf.range(-radius, radius + 1, dtype=images.dtype)
    kernel = tf.exp(-0.5 * tf.square(taps[None, :] / tf.cast(sigma, images.dtype)[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # (B, 2·radius + 1)
    padded = tf.pad(images, [[0, 0], [radius, radius], [0, 0], [0, 0]], mode="REFLECT")
    height = tf.shape(images)[1]
    shifted = [padded[:, k : k + height] for k in range(2 * radius + 1)]
    return tf.add_n([_per_row(kernel[:, k], images) * rows for k, rows in enumerate(shifted)])


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur with its own σ per slice and axis.

    Args:
        images: (B,H,W,C) float, H and W > ``radius``.
        sigma: (B,2) float, (σ_H, σ_W) in pixels, > 0.
        radius: kernel half-width in pixels (static), e.g. :func:`blur_radius` of the largest σ;
            the kernel is truncated there and normalised to sum 1.

    Returns:
        (B,H,W,C), the images' dtype; the border is reflected (``x[-1] = x[1]``, as nnU-Net).
    """
    images = tf.convert_to_tensor(images)
    sigma = tf.convert_to_tensor(sigma)

    def blur(values: tf.Tensor, axis_sigma: tf.Tensor) -> tf.Tensor:
        return _blur_rows(values, axis_sigma, radius)

    return _along_both_axes(blur, images, sigma[:, 0], sigma[:, 1])


def contrast_preserving_range(images: tf.Tensor, contrast: tf.Tensor) -> tf.Tensor:
    """``x ← (x − mean)·c + mean``, then clipped to the slice's original [min, max].

    Args:
        images: (B,H,W,C) float; mean, min and max per slice and channel over (H, W).
        contrast: (B,) factor c >= 0 (1 = unchanged).

    Returns:
        (B,H,W,C), every value inside the slice's original [min, max] (reached when c > 1).
    """
    images = tf.convert_to_tensor(images)
    stats = _slice_stats(images)
    changed = intensity_transform(images, contrast, tf.zeros_like(contrast, tf.float32))
    return tf.clip_by_value(changed, stats["min"], stats["max"])


def _low_resolution_rows(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Along H: nearest-exact down to ``round(H·f)`` rows, linear (half-pixel) back up to H.

    The composition is computed directly: each output row blends two source rows, so the
    shapes stay static although every slice has its own coarse size.
    """
    size = tf.cast(tf.shape(images)[1], tf.float32)
    coarse = tf.maximum(tf.round(size * tf.cast(factor, tf.float32)), 1.0)[:, None]  # (B,1)
    # Linear upsampling, align_corners=False: output row i sits at coarse position u.
    position = (tf.range(size)[None, :] + 0.5) * coarse / size - 0.5
    position = tf.maximum(position, 0.0)  # (B,H)
    lower = tf.floor(position)
    upper = tf.minimum(lower + 1.0, coarse - 1.0)
    weight = tf.cast(position - lower, images.dtype)[:, :, None, None]  # (B,H,1,1)

    def source_rows(node: tf.Tensor) -> tf.Tensor:  # nearest-exact: coarse node j ← row
        index = tf.minimum(tf.floor((node + 0.5) * size / coarse), size - 1.0)
        return tf.gather(images, tf.cast(index, tf.int32), axis=1, batch_dims=1)

    return (1.0 - weight) * source_rows(lower) + weight * source_rows(upper)


def simulate_low_resolution(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Downsample by ``factor`` with nearest-exact and upsample back with linear interpolation.

    The coarse size is ``max(round(H·f), 1)`` × ``max(round(W·f), 1)``, the same factor on both
    axes; nearest-exact and linear (``align_corners=False``) are PyTorch's ``interpolate``
    modes that nnU-Net uses. Values are convex blends of input pixels (no overshoot).

    Args:
        images: (B,H,W,C) float. factor: (B,) in (0, 1] (1 = unchanged).

    Returns:
        (B,H,W,C), the images' dtype.
    """
    images = tf.convert_to_tensor(images)
    factor = tf.convert_to_tensor(factor)
    return _along_both_axes(_low_resolution_rows, images, factor, factor)


def gamma_transform(
    images: tf.Tensor, gamma: tf.Tensor, invert: bool = False, retain_stats: bool = True
) -> tf.Tensor:
    """nnU-Net's gamma: ``x ← ((x − min)/(max − min))^γ · (max − min) + min`` per slice.

    The power acts on the slice rescaled to [0, 1] and the result is mapped back to the
    original [min, max] (min and max are fixed points). With ``retain_stats`` the result is
    then shifted and scaled to the slice's original mean and standard deviation (nnU-Net's
    ``p_retain_stats=1``; the min and max then move). With ``invert`` the transform acts on
    ``−x`` and the result is negated back (gamma of the inverted image: γ > 1 brightens).

    Args:
        images: (B,H,W,C) float; statistics per slice and channel over (H, W).
        gamma: (B,) γ > 0 (1 = unchanged). invert, retain_stats: static switches.

    Returns:
        (B,H,W,C), the images' dtype. A constant slice is returned unchanged.
    """
    images = tf.convert_to_tensor(images)
    values = -images if invert else images
    stats = _slice_stats(values)
    span = stats["max"] - stats["min"]
    unit = (values - stats["min"]) / tf.maximum(span, _EPSILON)
    changed = tf.pow(unit, _per_row(gamma, values)) * span + stats["min"]
    if retain_stats:
        new = _slice_stats(changed)
        scale = stats["std"] / tf.maximum(new["std"], _EPSILON)
        changed = (changed - new["mean"]) * scale + stats["mean"]
    return -changed if invert else changed


# --------------------------------------------------------------------------- spatial ops


def _cubic_resize_matrix(out_size: tf.Tensor, in_size: int) -> tf.Tensor:
    """(out, in) float32 matrix of ``tf.image.resize(..., "bicubic")`` along one axis.

    Keys' cubic kernel (a = −0.5) at half-pixel centres; taps outside the input get weight 0
    and the rest are renormalised, as TensorFlow's kernel does (which tabulates the weights
    at 1/1024 px, so the two differ by ~1e-3 of the values).
    """
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = (tf.range(tf.cast(out_size, tf.float32)) + 0.5) * scale - 0.5
    taps = tf.floor(position)[:, None] + tf.constant([-1.0, 0.0, 1.0, 2.0])  # (out, 4)
    t = tf.abs(position[:, None] - taps)
    near = (1.5 * t - 2.5) * t * t + 1.0  # |t| <= 1
    far = ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0  # 1 < |t| < 2
    weights = tf.where(t <= 1.0, near, far)
    weights = tf.where((taps >= 0) & (taps <= in_size - 1), weights, 0.0)
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
    index = tf.cast(tf.clip_by_value(taps, 0.0, in_size - 1.0), tf.int32)
    return tf.reduce_sum(tf.one_hot(index, in_size) * weights[..., None], axis=1)


def cubic_elastic_field(displacements: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Dense flow from a g×g grid of control-point displacements, XLA-compilable.

    The same field as :func:`tfaug.ops.augment.elastic_field` (bicubic resize of the grid),
    computed as two matrix products because ``tf.image.resize``'s bicubic kernel does not
    compile with XLA.

    Args:
        displacements: (B,g,g,2) float32, (dy, dx) in pixels; g static.
        height: H. width: W (pixels of the output field).

    Returns:
        (B,H,W,2) float32 flow in :func:`tfaug.ops.warp.dense_image_warp`'s convention.
    """
    displacements = tf.cast(displacements, tf.float32)
    rows = _cubic_resize_matrix(height, displacements.shape[1])
    cols = _cubic_resize_matrix(width, displacements.shape[2])
    return tf.einsum("hg,bgkc,wk->bhwc", rows, displacements, cols)


def _flow_in_input_space(matrices: tf.Tensor, flow: tf.Tensor) -> tf.Tensor:
    """The linear part of each affine matrix applied to a (B,H,W,2) (dy, dx) flow."""
    m = tf.reshape(tf.cast(matrices, tf.float32), [-1, 9])[:, None, None, :]
    dy, dx = flow[..., 0], flow[..., 1]
    return tf.stack([m[..., 3] * dx + m[..., 4] * dy, m[..., 0] * dx + m[..., 1] * dy], axis=-1)


def spatial_transform(
    images: tf.Tensor,
    masks: tf.Tensor | None,
    matrices: tf.Tensor,
    flow: tf.Tensor | None = None,
    mask_interpolation: str = "linear",
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Deform (optional ``flow``), then apply an affine matrix, in one resampling per slice.

    Output pixel p samples the input at ``M · (p − flow(p))`` (nnU-Net deforms its grid, then
    rotates and scales it). Images are bilinear with intensity 0 outside the slice. Masks
    are bilinear on the one-hot channels (``"linear"``: soft labels whose per-pixel sums stay
    1, the background class coming in from outside) or ``"nearest"`` (one-hot stays one-hot,
    background outside), as :func:`tfaug.ops.augment.affine_transform`.

    Args:
        images: (B,H,W,C) float. masks: (B,H,W,n_classes) float one-hot/soft with the
            background in channel 0, n_classes >= 2; or ``None``.
        matrices: (B,3,3) output→input pixel maps (:func:`tfaug.ops.augment.affine_matrices`).
        flow: (B,H,W,2) float32 (dy, dx) in pixels (:func:`cubic_elastic_field`), or ``None``.
        mask_interpolation: one of :data:`MASK_INTERPOLATIONS`.

    Returns:
        ``(images, masks)`` in the input shapes and dtypes.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    points = _sample_points(matrices, shape[1], shape[2])
    if flow is not None:
        points = points - _flow_in_input_space(matrices, flow)
    images = _resample_bilinear(images, points)
    if masks is None:
        return images, None
    masks = tf.convert_to_tensor(masks)
    _check_background_channel(masks, "spatial_transform")
    if mask_interpolation == "nearest":
        return images, _resample_nearest(masks, points)
    # Resampling (mask − background) with zero fill, then adding the background back, fills
    # outside with the background class; the bilinear weights sum to 1, so the sums stay 1.
    background = tf.one_hot(0, tf.shape(masks)[-1], dtype=masks.dtype)
    return images, _resample_bilinear(masks - background, points) + background


def mirror(
    images: tf.Tensor, masks: tf.Tensor | None, flips: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Reverse each slice along H and/or W: ``flips`` (B,2) bool, (along H, along W)."""

    def flip(values: tf.Tensor) -> tf.Tensor:
        for axis in (1, 2):
            values = _select_rows(flips[:, axis - 1], tf.reverse(values, [axis]), values)
        return values

    return flip(tf.convert_to_tensor(images)), None if masks is None else flip(masks)


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="tfaug")
class HeavyIntensity(PairedAugmentation):
    """nnU-Net v2's random intensity transforms, each with its own probability per slice.

    In order (each on the previous one's output; a slice not chosen for a step passes it
    unchanged; steps with probability 0 are not computed):

    1. ``noise``: ``x + σ·N(0, 1)``, σ ~ U(noise_std_range) (:func:`gaussian_noise`);
    2. ``blur``: Gaussian, σ ~ U(blur_sigma_range) px drawn per axis (:func:`gaussian_blur`);
    3. ``brightness``: ``x · m`` (multiplicative);
    4. ``contrast``: around the mean, clipped to the original range
       (:func:`contrast_preserving_range`);
    5. ``low_resolution``: down by f ~ U(low_resolution_range) with nearest, up with linear
       (:func:`simulate_low_resolution`);
    6. ``inverted_gamma`` then 7. ``gamma``: γ on the slice rescaled to [0, 1]
       (:func:`gamma_transform`, of ``−x`` for the inverted one).

    Brightness, contrast and both gammas draw their factor as nnU-Net's ``BGContrast``: from
    U(min, 1) or U(1, max) with probability ½ each (when min < 1 < max). Statistics (mean,
    min, max, std) are per slice and channel; intensities are not clipped beyond that.
    Masks, when given, pass through unchanged; the key may be omitted. Images are
    (B,H,W,C) float with H and W > :func:`blur_radius` of the largest blur σ (3 px by
    default), the reflected border of the blur.

    Args:
        p_noise: 0.1. noise_std_range: (0, 0.1), σ in image units (nnU-Net's
            ``noise_variance``, used by nnU-Net as the standard deviation).
        p_blur: 0.2. blur_sigma_range: (0.5, 1.0) px, min > 0.
        p_brightness: 0.15. brightness_range: (0.75, 1.25), min >= 0.
        p_contrast: 0.15. contrast_range: (0.75, 1.25), min >= 0.
        p_low_resolution: 0.25. low_resolution_range: (0.5, 1.0), the factor f, min > 0.
        p_inverted_gamma: 0.1. p_gamma: 0.3. gamma_range: (0.7, 1.5), min > 0, both gammas.
        gamma_retain_stats: True, restore each slice's mean and std after the gammas.
        clip_to_input_range: False (nnU-Net); True: the result is clipped to each input
            slice's [min, max] (the strong views of the consistency methods: UniMatch's
            8-bit colour jitter keeps its [0, 1] images in [0, 1]).
        seed: see :class:`~tfaug.ops.augment.PairedAugmentation`.

    Every probability is in [0, 1]; every range is (min, max) with min <= max.
    """

    _CONFIG_KEYS: tuple[str, ...] = (
        "p_noise",
        "noise_std_range",
        "p_blur",
        "blur_sigma_range",
        "p_brightness",
        "brightness_range",
        "p_contrast",
        "contrast_range",
        "p_low_resolution",
        "low_resolution_range",
        "p_inverted_gamma",
        "p_gamma",
        "gamma_range",
        "gamma_retain_stats",
        "clip_to_input_range",
    )

    def __init__(
        self,
        p_noise: float = 0.1,
        noise_std_range: Sequence[float] = (0.0, 0.1),
        p_blur: float = 0.2,
        blur_sigma_range: Sequence[float] = (0.5, 1.0),
        p_brightness: float = 0.15,
        brightness_range: Sequence[float] = (0.75, 1.25),
        p_contrast: float = 0.15,
        contrast_range: Sequence[float] = (0.75, 1.25),
        p_low_resolution: float = 0.25,
        low_resolution_range: Sequence[float] = (0.5, 1.0),
        p_inverted_gamma: float = 0.1,
        p_gamma: float = 0.3,
        gamma_range: Sequence[float] = (0.7, 1.5),
        gamma_retain_stats: bool = True,
        clip_to_input_range: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        owner = type(self).__name__
        self.clip_to_input_range = bool(clip_to_input_range)
        probabilities = (p_noise, p_blur, p_brightness, p_contrast, p_low_resolution)
        probabilities += (p_inverted_gamma, p_gamma)
        self.intensity_probabilities = {
            step: _check_probability(owner, f"p_{step}", value)
            for step, value in zip(INTENSITY_STEPS, probabilities, strict=True)
        }
        for step, value in self.intensity_probabilities.items():
            setattr(self, f"p_{step}", value)
        self.noise_std_range = _check_range(owner, "noise_std_range", noise_std_range, 0.0)
        self.blur_sigma_range = _check_range(owner, "blur_sigma_range", blur_sigma_range, 1e-6)
        self.brightness_range = _check_range(owner, "brightness_range", brightness_range, 0.0)
        self.contrast_range = _check_range(owner, "contrast_range", contrast_range, 0.0)
        self.low_resolution_range = _check_range(
            owner, "low_resolution_range", low_resolution_range, 1e-6
        )
        self.gamma_range = _check_range(owner, "gamma_range", gamma_range, 1e-6)
        self.gamma_retain_stats = bool(gamma_retain_stats)

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """Draw, per slice, which steps apply and their parameters.

        Returns:
            ``apply_<step>`` (B,) bool for each step of :data:`INTENSITY_STEPS`;
            ``noise_std`` (B,); ``noise_seed`` (2,) int32, the seed of the noise field;
            ``blur_sigma`` (B,2) px (σ_H, σ_W); ``brightness``, ``contrast``,
            ``low_resolution``, ``inverted_gamma``, ``gamma``: (B,) factors. All float32,
            in their ranges; drawn whether or not the step applies.
        """
        rows = tf.reshape(batch_size, [1])
        seed = self.generator
        parameters = {
            f"apply_{step}": keras.random.uniform(rows, seed=seed) < probability
            for step, probability in self.intensity_probabilities.items()
        }
        parameters.update(
            noise_std=keras.random.uniform(rows, *self.noise_std_range, seed=seed),
            noise_seed=keras.random.randint([2], 0, 2**31 - 1, seed=seed, dtype="int32"),
            blur_sigma=keras.random.uniform(
                tf.stack([batch_size, 2]), *self.blur_sigma_range, seed=seed
            ),
            brightness=_sample_around_one(rows, self.brightness_range, seed),
            contrast=_sample_around_one(rows, self.contrast_range, seed),
            low_resolution=keras.random.uniform(rows, *self.low_resolution_range, seed=seed),
            inverted_gamma=_sample_around_one(rows, self.gamma_range, seed),
            gamma=_sample_around_one(rows, self.gamma_range, seed),
        )
        return parameters

    def _intensity_step(self, step: str, images: tf.Tensor, p: dict[str, tf.Tensor]) -> tf.Tensor:
        """One step of :data:`INTENSITY_STEPS` applied to every slice."""
        if step == "noise":
            return gaussian_noise(images, p["noise_std"], p["noise_seed"])
        if step == "blur":
            return gaussian_blur(images, p["blur_sigma"], blur_radius(self.blur_sigma_range[1]))
        if step == "brightness":
            return images * _per_row(p["brightness"], images)
        if step == "contrast":
            return contrast_preserving_range(images, p["contrast"])
        if step == "low_resolution":
            return simulate_low_resolution(images, p["low_resolution"])
        invert = step == "inverted_gamma"
        return gamma_transform(images, p[step], invert, self.gamma_retain_stats)

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Apply the steps in order, each only to the slices chosen for it; masks untouched."""
        images = tf.convert_to_tensor(images)
        original = _slice_stats(images) if self.clip_to_input_range else None
        for step, probability in self.intensity_probabilities.items():
            if probability > 0:
                changed = self._intensity_step(step, images, parameters)
                images = _select_rows(parameters[f"apply_{step}"], changed, images)
        if original is not None:
            images = tf.clip_by_value(images, original["min"], original["max"])
        return images, masks

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({key: _plain(getattr(self, key)) for key in self._CONFIG_KEYS})
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class HeavyAugmentation(HeavyIntensity):
    """nnU-Net v2's default heavy 2D augmentation: spatial, intensity, then mirroring.

    1. Spatial, one resampling per slice (:func:`spatial_transform`, about the slice centre):
       rotation by U(−rotation_degrees, rotation_degrees) with probability ``p_rotation``;
       scaling of the sampling grid by s ~ U(scaling_range) with probability ``p_scaling``
       (nnU-Net's convention: s > 1 samples a larger region, so the content gets smaller);
       optionally an elastic deformation with probability ``p_elastic`` (0 by default, as in
       nnU-Net v2): a g×g grid of N(0, elastic_sigma_px) displacements, bicubic to H×W
       (:func:`cubic_elastic_field`). Images bilinear with 0 outside; masks per
       ``mask_interpolation`` with the background class outside.
    2. The intensity transforms of :class:`HeavyIntensity` (masks unchanged).
    3. Mirroring along H and along W, each with probability ``p_mirror`` (exact reversal of
       image and mask).

    Slices without a spatial transform are not resampled (returned bit for bit).

    Args:
        p_rotation: 0.2. rotation_degrees: 180.0 (>= 0, degrees).
        p_scaling: 0.2. scaling_range: (0.7, 1.4), min > 0.
        p_elastic: 0.0. elastic_sigma_px: 10.0 (>= 0, pixels; the paper's σ at 224×224, see
            :func:`tfaug.ops.augment.sigma_px_from_mm`). elastic_grid_size: 3 (g >= 1).
        p_mirror: 0.5 per axis.
        mask_interpolation: ``"linear"`` (soft one-hot, default) or ``"nearest"``.
        seed: see :class:`~tfaug.ops.augment.PairedAugmentation`.
        **kwargs: the arguments of :class:`HeavyIntensity` (same defaults), and Keras'.
    """

    _CONFIG_KEYS = (
        *HeavyIntensity._CONFIG_KEYS,
        "p_rotation",
        "rotation_degrees",
        "p_scaling",
        "scaling_range",
        "p_elastic",
        "elastic_sigma_px",
        "elastic_grid_size",
        "p_mirror",
        "mask_interpolation",
    )

    def __init__(
        self,
        p_rotation: float = 0.2,
        rotation_degrees: float = 180.0,
        p_scaling: float = 0.2,
        scaling_range: Sequence[float] = (0.7, 1.4),
        p_elastic: float = 0.0,
        elastic_sigma_px: float = 10.0,
        elastic_grid_size: int = 3,
        p_mirror: float = 0.5,
        mask_interpolation: str = "linear",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        owner = type(self).__name__
        self.p_rotation = _check_probability(owner, "p_rotation", p_rotation)
        self.p_scaling = _check_probability(owner, "p_scaling", p_scaling)
        self.p_elastic = _check_probability(owner, "p_elastic", p_elastic)
        self.p_mirror = _check_probability(owner, "p_mirror", p_mirror)
        self.scaling_range = _check_range(owner, "scaling_range", scaling_range, 1e-6)
        if not rotation_degrees >= 0 or not elastic_sigma_px >= 0:
            raise ValueError(
                f"{owner}: expected rotation_degrees >= 0 (degrees) and elastic_sigma_px >= 0 "
                f"(pixels), found rotation_degrees={rotation_degrees}, elastic_sigma_px="
                f"{elastic_sigma_px}. Give the half-width of the rotation range and σ."
            )
        if int(elastic_grid_size) != elastic_grid_size or elastic_grid_size < 1:
            raise ValueError(
                f"{owner}: expected elastic_grid_size an integer >= 1 (control points per "
                f"axis), found {elastic_grid_size!r}; nnU-Net-like smooth fields use 3."
            )
        if mask_interpolation not in MASK_INTERPOLATIONS:
            raise ValueError(
                f"{owner}: expected mask_interpolation in {MASK_INTERPOLATIONS}, found "
                f"{mask_interpolation!r}. Use 'nearest' for hard one-hot masks."
            )
        self.rotation_degrees = float(rotation_degrees)
        self.elastic_sigma_px = float(elastic_sigma_px)
        self.elastic_grid_size = int(elastic_grid_size)
        self.mask_interpolation = mask_interpolation

    def sample_parameters(self, batch_size: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """Draw the spatial and mirror parameters, then :class:`HeavyIntensity`'s.

        Returns:
            Besides :meth:`HeavyIntensity.sample_parameters`: ``apply_spatial`` (B,) bool
            (rotation, scaling or elastic chosen); ``angle_degrees`` (B,) (0 where no
            rotation); ``scaling`` (B,) (1 where no scaling); ``displacements`` (B,g,g,2) px
            (0 where no elastic deformation); ``mirror`` (B,2) bool (along H, along W).
        """
        rows = tf.reshape(batch_size, [1])
        seed = self.generator

        def chosen(probability: float) -> tf.Tensor:
            return keras.random.uniform(rows, seed=seed) < probability

        rotate, scale, deform = (
            chosen(p) for p in (self.p_rotation, self.p_scaling, self.p_elastic)
        )
        angle = keras.random.uniform(rows, -self.rotation_degrees, self.rotation_degrees, seed=seed)
        scaling = keras.random.uniform(rows, *self.scaling_range, seed=seed)
        grid = tf.stack([batch_size, self.elastic_grid_size, self.elastic_grid_size, 2])
        displacements = keras.random.normal(grid, stddev=self.elastic_sigma_px, seed=seed)
        mirror_draws = keras.random.uniform(tf.stack([batch_size, 2]), seed=seed)
        parameters = {
            "apply_spatial": rotate | scale | deform,
            "angle_degrees": tf.where(rotate, angle, 0.0),
            "scaling": tf.where(scale, scaling, 1.0),
            "displacements": displacements * _per_row(deform, displacements),
            "mirror": mirror_draws < self.p_mirror,
        }
        parameters.update(super().sample_parameters(batch_size))
        return parameters

    def _spatial(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Rotation, scaling and elastic deformation of the chosen slices, one resampling."""
        size = tf.shape(images)
        angle = parameters["angle_degrees"]
        matrices = affine_matrices(
            1.0 / parameters["scaling"], tf.zeros_like(angle, tf.bool), angle, size[1], size[2]
        )
        flow = None
        if self.p_elastic > 0:
            flow = cubic_elastic_field(parameters["displacements"], size[1], size[2])
        warped, warped_masks = spatial_transform(
            images, masks, matrices, flow, self.mask_interpolation
        )
        applied = parameters["apply_spatial"]
        images = _select_rows(applied, warped, images)
        return images, None if masks is None else _select_rows(applied, warped_masks, masks)

    def transform(
        self, images: tf.Tensor, masks: tf.Tensor | None, parameters: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Spatial (if any probability > 0), intensity, then mirroring (if p_mirror > 0)."""
        images = tf.convert_to_tensor(images)
        if max(self.p_rotation, self.p_scaling, self.p_elastic) > 0:
            images, masks = self._spatial(images, masks, parameters)
        images, masks = super().transform(images, masks, parameters)
        if self.p_mirror > 0:
            images, masks = mirror(images, masks, parameters["mirror"])
        return images, masks
