"""Volume preprocessing (docs/method.md §7) and its inverse for predictions.

Forward, per volume, in this order:

1. N4 bias-field correction (optional, MR only; SimpleITK) on the 3D volume, after the
   small negative tail of MR reconstructions is clipped to 0 (:func:`positive_for_n4`).
2. Intensity normalisation over the whole volume: ``(x - p2) / (p98 - p2)`` (the paper,
   ``preprocess.normalisation: percentile``) or ``(x - min) / (max - min)`` (``minmax``, as
   SSL4MIS, BCP and UniMatch preprocess ACDC).
3. ``preprocess.resize: spacing`` (the paper): slice-wise in-plane resampling to a fixed
   spacing, then a centre crop/pad of every slice to ``S x S``. ``fixed``: every slice is
   resized to ``S x S`` whatever its size and spacing (``scipy.ndimage.zoom`` with factors
   ``S / X`` and ``S / Y``, as those three codes do; the aspect ratio is not kept). Images are
   interpolated as ``preprocess.image_interpolation`` says (linear by default; those codes use
   nearest), labels always with nearest neighbour. Slices are never resampled along z.

Axis convention: a :class:`~tfaug.data.volume.Volume` is (X, Y, Z); the output is (Z, S, S)
with slice ``k`` = ``volume.image[:, :, k]`` resampled, output axis 1 ↔ X, axis 2 ↔ Y
(no transpose, no flip).

Resampling uses ``scipy.ndimage.affine_transform`` rather than SimpleITK: it works on the
numpy (X, Y, Z) array directly (SimpleITK arrays are (Z, Y, X)), resamples every slice in one
call with the z axis mapped onto itself (integer positions, so slices are copied, not mixed),
and the voxel-centre geometry below is explicit, which makes the inverse exact by construction.
Geometry: the output grid has exactly the target spacing and shares its centre with the native
field of view; positions outside the native grid take the nearest edge value.

Padding value: 0 for labels (background) and 0 for normalised images, i.e. the p2 intensity,
which is the background level of MR and CT; unlike the image minimum it does not depend on
outliers.

The ``fixed`` resize uses scipy's corner-aligned zoom (``grid_mode=False``): output pixel
``i`` of ``S`` samples input position ``i (n - 1) / (S - 1)``; nearest neighbour rounds
halves up. A label resized to ``S`` and back is therefore exact when ``n <= S`` and loses
rows and columns when ``n > S`` (as in those codes).

Inverse (:func:`restore_labels`, :func:`restore_probabilities`): ``spacing``: undo the
crop/pad (pad back with background, or crop back) then resample to the exact native in-plane
shape; ``fixed``: resize back to the native in-plane shape. :func:`restore_prediction` maps a
prediction to native labels as ``preprocess.restore_interpolation`` says.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
from scipy import ndimage

from tfaug.config import PreprocessConfig
from tfaug.data.volume import DatasetError, DatasetWarning, Volume

Interpolation = Literal["linear", "nearest"]
_ORDERS = {"linear": 1, "nearest": 0}
RESIZE_MODES = ("spacing", "fixed")
NORMALISATIONS = ("percentile", "minmax")

MOSTLY_NEGATIVE = 0.5
"""More than this fraction of negative voxels: signed data (phase, a difference), not MR."""
LARGE_NEGATIVE_FRACTION = 0.05
"""With more than this fraction of negative voxels, a deep negative tail means CT (air at
−1000 HU, fat at −100 HU), not the small tail of an MR reconstruction."""
DEEP_NEGATIVE_RATIO = 0.2
"""A negative tail is deep when its 99th-percentile magnitude exceeds this fraction of the
99th percentile of the positive voxels (the bright-tissue level)."""


@dataclass
class SliceGeometry:
    """Everything needed to map a (Z, S, S) prediction back onto the native grid.

    JSON-serialisable through :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        native_shape: (X, Y, Z) of the original volume, in voxels.
        native_spacing: (sx, sy, sz) of the original volume, in mm.
        target_spacing: in-plane spacing after resampling, in mm (``fixed``: the nominal
            ``preprocess.spacing_mm``, unused by the inverse).
        resampled_shape: in-plane (H, W) after resampling, before crop/pad, in pixels
            (``fixed``: (S, S)).
        crop_size: S, the side of the square crop/pad (``fixed``: of the resized slice), in
            pixels.
        resize: ``spacing`` or ``fixed`` (``preprocess.resize``); dicts written before the
            key existed are ``spacing``.
    """

    native_shape: tuple[int, int, int]
    native_spacing: tuple[float, float, float]
    target_spacing: float
    resampled_shape: tuple[int, int]
    crop_size: int
    resize: str = "spacing"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, ints and floats (JSON-serialisable)."""
        values = asdict(self)
        values["native_shape"] = [int(v) for v in self.native_shape]
        values["native_spacing"] = [float(v) for v in self.native_spacing]
        values["resampled_shape"] = [int(v) for v in self.resampled_shape]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SliceGeometry:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a key is missing or unknown, or an unknown ``resize``.
        """
        expected = {"native_shape", "native_spacing", "target_spacing", "resampled_shape"}
        expected |= {"crop_size"}
        if set(values) - {"resize"} != expected:
            raise ValueError(
                f"SliceGeometry.from_dict: expected keys {sorted(expected)} (and 'resize'), "
                f"found {sorted(values)}; pass the dict written by SliceGeometry.to_dict"
            )
        resize = str(values.get("resize", "spacing"))
        if resize not in RESIZE_MODES:
            raise ValueError(
                f"SliceGeometry.from_dict: resize {resize!r} is not one of "
                f"{', '.join(RESIZE_MODES)}; pass the dict written by SliceGeometry.to_dict"
            )
        return cls(
            native_shape=tuple(int(v) for v in values["native_shape"]),
            native_spacing=tuple(float(v) for v in values["native_spacing"]),
            target_spacing=float(values["target_spacing"]),
            resampled_shape=tuple(int(v) for v in values["resampled_shape"]),
            crop_size=int(values["crop_size"]),
            resize=resize,
        )


@dataclass
class PreprocessedVolume:
    """One volume after :func:`preprocess_volume`.

    Attributes:
        case_id: as in the source :class:`~tfaug.data.volume.Volume`.
        image: float32 (Z, S, S), normalised (p2 → 0, p98 → 1, not clipped; or min → 0,
            max → 1).
        label: uint8 (Z, S, S) with the source label values, or ``None``.
        geometry: how to map predictions back (:func:`restore_labels`).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: SliceGeometry


def preprocess_volume(volume: Volume, cfg: PreprocessConfig) -> PreprocessedVolume:
    """N4 (if ``cfg.n4``), normalise, then resample and crop/pad or resize the slices.

    Args:
        volume: image float (X, Y, Z), label uint8 (X, Y, Z) or ``None``, spacing in mm.
        cfg: normalisation, resize mode, target spacing (mm), crop size (px), interpolation,
            N4 settings and percentiles.

    Returns:
        A :class:`PreprocessedVolume` with image float32 (Z, S, S) and label uint8 (Z, S, S).
        The label values are not remapped or one-hot encoded.

    Raises:
        DatasetError: the image is not 3D or not finite, the label shape differs, the spacing
            is not positive, or the image is constant.
    """
    where = _case_name(volume)
    image = np.asarray(volume.image, dtype=np.float32)
    if image.ndim != 3:
        raise DatasetError(
            f"{where}: expected a 3D image (X, Y, Z), found shape {image.shape}; "
            "select one frame or modality in the reader"
        )
    if not np.all(np.isfinite(image)):
        raise DatasetError(
            f"{where}: image has {int(np.sum(~np.isfinite(image)))} non-finite voxels; "
            "fix or remove the case"
        )
    if volume.label is not None and volume.label.shape != image.shape:
        raise DatasetError(
            f"{where}: label shape {volume.label.shape} differs from image shape {image.shape}; "
            "resample the label onto the image grid or remove the case"
        )
    spacing = _check_spacing(volume.spacing, where)
    _warn_if_slice_axis_is_not_the_thickest(spacing, where)
    if cfg.n4:
        image = n4_correct(
            image, spacing, cfg.n4_shrink, cfg.n4_iterations, name=where, negatives=cfg.n4_negatives
        )
    image = normalise_volume(image, cfg, name=where)
    geometry = slice_geometry(tuple(int(n) for n in volume.image.shape), spacing, cfg)
    image = to_network_grid(image, geometry, cfg.image_interpolation)
    label = None
    if volume.label is not None:
        label = to_network_grid(np.asarray(volume.label, dtype=np.uint8), geometry, "nearest")
    return PreprocessedVolume(volume.case_id, image, label, geometry)


def slice_geometry(
    native_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    cfg: PreprocessConfig,
) -> SliceGeometry:
    """The :class:`SliceGeometry` ``cfg`` gives a volume of ``native_shape`` voxels and
    ``spacing`` mm.

    Raises:
        ValueError: ``cfg.resize`` is not one of :data:`RESIZE_MODES`.
    """
    if cfg.resize not in RESIZE_MODES:
        raise ValueError(
            f"preprocess.resize: {cfg.resize!r} is not one of {', '.join(RESIZE_MODES)}"
        )
    size = int(cfg.crop_size)
    fixed = cfg.resize == "fixed"
    return SliceGeometry(
        native_shape=native_shape,
        native_spacing=spacing,
        target_spacing=float(cfg.spacing_mm),
        resampled_shape=(size, size)
        if fixed
        else resampled_shape(native_shape, spacing, cfg.spacing_mm),
        crop_size=size,
        resize=cfg.resize,
    )


def to_network_grid(
    volume_xyz: np.ndarray, geometry: SliceGeometry, order: Interpolation
) -> np.ndarray:
    """(X, Y, Z) on the native grid → (Z, S, S) slices, as ``geometry`` says.

    ``spacing``: resample to ``geometry.target_spacing``, then centre crop/pad (padding 0);
    ``fixed``: resize each slice to S x S (:func:`resize_slices`). Same dtype as the input.
    """
    if geometry.resize == "fixed":
        return resize_slices(volume_xyz, geometry.crop_size, order)
    spacing, target = geometry.native_spacing, geometry.target_spacing
    return crop_or_pad(resample_slices(volume_xyz, spacing, target, order), geometry.crop_size)


def n4_correct(
    image: np.ndarray,
    spacing: Sequence[float],
    shrink: Sequence[int],
    iterations: Sequence[int],
    name: str = "image",
    negatives: str = "clip",
) -> np.ndarray:
    """SimpleITK N4 bias-field correction of a 3D MR volume.

    The filter fits on a copy shrunk by ``shrink`` per axis (each factor capped at half that
    axis' size: ITK's B-spline fit needs >= 2 voxels per axis, so a volume with few slices is
    never shrunk away along z) inside an Otsu
    foreground mask; the log bias field is then evaluated at full resolution and the
    *original* image is divided by ``exp(log_bias)`` (as in SimpleITK's N4 example).

    Args:
        image: float (X, Y, Z), MR intensities: non-negative, or with the small negative tail
            that :func:`positive_for_n4` clips.
        spacing: (sx, sy, sz) in mm.
        shrink: per-axis shrink factors (x, y, z), each >= 1.
        iterations: maximum iterations per fitting level (one level per entry).
        name: what to call the image in error messages (the case).
        negatives: ``"clip"`` or ``"refuse"`` (``preprocess.n4_negatives``), see
            :func:`positive_for_n4`.

    Returns:
        float32 (X, Y, Z), corrected; zeros (and clipped voxels) stay zero. Intensities are not
        rescaled.

    Raises:
        DatasetError: intensities that are not an MR magnitude image (N4 models a positive
            multiplicative bias; disable ``preprocess.n4`` for CT), bad shrink/iterations, or a
            non-finite result.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise DatasetError(f"{name}: N4 expects a 3D (X, Y, Z) image, found shape {array.shape}")
    array = positive_for_n4(array, name, negatives)
    if len(shrink) != 3 or any(int(f) < 1 for f in shrink):
        raise DatasetError(
            f"{name}: preprocess.n4_shrink must be three factors >= 1 (x, y, z), found "
            f"{list(shrink)}"
        )
    if len(iterations) < 1 or any(int(n) < 1 for n in iterations):
        raise DatasetError(
            f"{name}: preprocess.n4_iterations must list >= 1 iterations per level, found "
            f"{list(iterations)}"
        )
    full = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    full.SetSpacing([float(s) for s in spacing])
    mask = sitk.OtsuThreshold(full, 0, 1, 200)
    if min(array.shape) < 2:
        raise DatasetError(
            f"{name}: N4 fits a 3D B-spline and needs >= 2 voxels along every axis, found shape "
            f"{array.shape}; set preprocess.n4=false for single-slice volumes"
        )
    factors = [max(1, min(int(f), n // 2)) for f, n in zip(shrink, array.shape, strict=True)]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(n) for n in iterations])
    corrector.Execute(sitk.Shrink(full, factors), sitk.Shrink(mask, factors))
    log_bias = corrector.GetLogBiasFieldAsImage(full)
    corrected = sitk.GetArrayFromImage(full / sitk.Exp(log_bias)).transpose(2, 1, 0)
    if not np.all(np.isfinite(corrected)):
        raise DatasetError(
            f"{name}: N4 produced non-finite values; check the image or set preprocess.n4=false"
        )
    return np.ascontiguousarray(corrected, dtype=np.float32)


def positive_for_n4(image: np.ndarray, name: str = "image", negatives: str = "clip") -> np.ndarray:
    """Clip the small negative tail of an MR volume to 0 before N4, or refuse the volume.

    MR magnitude images are non-negative; reconstruction filters, registration and spline
    resampling leave a few voxels slightly below zero, mostly in the background. Clipping them
    to 0 (rather than shifting every voxel up by the minimum) changes only those voxels, keeps
    the background at 0 as N4's multiplicative model needs (a shift would add a constant that
    N4 then divides by the bias field), and does not depend on the single most negative voxel.

    Refused whatever ``negatives`` says: more than :data:`MOSTLY_NEGATIVE` of the voxels
    negative (signed data), or more than :data:`LARGE_NEGATIVE_FRACTION` negative with a tail
    deeper than :data:`DEEP_NEGATIVE_RATIO` of the bright-tissue level (CT: air, fat).

    Args:
        image: float32 (X, Y, Z) in scanner units.
        name: the volume, for messages.
        negatives: ``"clip"`` (warn with the count, then clip) or ``"refuse"``.

    Returns:
        float32 (X, Y, Z) without negative voxels (``image`` itself if it had none).

    Raises:
        DatasetError: a volume refused as above, or ``negatives="refuse"`` and any negative voxel.
        ValueError: ``negatives`` is neither ``"clip"`` nor ``"refuse"``.
    """
    if negatives not in ("clip", "refuse"):
        raise ValueError(
            f"positive_for_n4: negatives must be 'clip' or 'refuse', found {negatives!r}"
        )
    below = image < 0
    count = int(np.count_nonzero(below))
    if count == 0:
        return image
    fraction = count / image.size
    depth = float(np.percentile(-image[below], 99))
    positive = image[image > 0]
    bright = float(np.percentile(positive, 99)) if positive.size else 0.0
    found = (
        f"found {count} negative voxels ({100 * fraction:.3g} % of {image.size}) down to "
        f"{float(image.min()):.4g}"
    )
    if fraction > MOSTLY_NEGATIVE or (
        fraction > LARGE_NEGATIVE_FRACTION and depth > DEEP_NEGATIVE_RATIO * bright
    ):
        raise DatasetError(
            f"{name}: N4 expects non-negative MR intensities, {found}, a tail reaching "
            f"{depth:.4g} against a bright-tissue level of {bright:.4g}: this is CT "
            "(Hounsfield units) or signed data, not an MR magnitude image; set "
            "preprocess.n4=false for CT or signed data"
        )
    if negatives == "refuse":
        raise DatasetError(
            f"{name}: N4 expects non-negative MR intensities, {found}, and "
            "preprocess.n4_negatives=refuse; set preprocess.n4_negatives=clip to clip them to "
            "0 before N4 (or preprocess.n4=false for CT or signed data)"
        )
    warnings.warn(
        f"{name}: {found}; clipped to 0 before N4 (preprocess.n4_negatives=clip)",
        DatasetWarning,
        stacklevel=2,
    )
    return np.maximum(image, 0.0)


def normalise(
    image: np.ndarray, percentiles: Sequence[float] = (2, 98), name: str = "image"
) -> np.ndarray:
    """Per-volume ``(x - p_low) / (p_high - p_low)`` over all voxels.

    Args:
        image: float array of any shape (one volume).
        percentiles: (low, high) in [0, 100], low < high.
        name: what to call the image in error messages (the case).

    Returns:
        float32, same shape; p_low → 0, p_high → 1. Values are not clipped.

    Raises:
        DatasetError: bad percentiles, non-finite voxels, or a constant image
            (p_high == p_low), which cannot be normalised.
    """
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise DatasetError(
            f"{name}: percentiles must satisfy 0 <= low < high <= 100, found {list(percentiles)}"
        )
    array = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise DatasetError(f"{name}: cannot normalise an image with non-finite voxels")
    p_low, p_high = np.percentile(array, [low, high])
    if not p_high > p_low:
        raise DatasetError(
            f"{name}: image is constant between its percentiles {low:g} and {high:g} (both "
            f"{p_low:.6g}): at least {high - low:g} % of its voxels have that value, so it "
            "cannot be normalised. Remove the case if it is blank; if it is mostly padding, "
            "widen preprocess.percentiles (e.g. [0.5, 99.5]) or set "
            "preprocess.normalisation=minmax"
        )
    return ((array - p_low) / (p_high - p_low)).astype(np.float32)


def normalise_minmax(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Per-volume ``(x - min) / (max - min)`` over all voxels (SSL4MIS, BCP and UniMatch).

    Args:
        image: float array of any shape (one volume).
        name: what to call the image in error messages (the case).

    Returns:
        float32, same shape, in [0, 1]: the minimum → 0, the maximum → 1.

    Raises:
        DatasetError: non-finite voxels, or a constant image.
    """
    array = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise DatasetError(f"{name}: cannot normalise an image with non-finite voxels")
    low, high = float(array.min()), float(array.max())
    if not high > low:
        raise DatasetError(
            f"{name}: image is constant ({low:.6g}), so it cannot be normalised to [0, 1]; "
            "remove the case or check the reader"
        )
    return ((array - low) / (high - low)).astype(np.float32)


def normalise_volume(image: np.ndarray, cfg: PreprocessConfig, name: str = "image") -> np.ndarray:
    """The intensity normalisation ``cfg.normalisation`` names: :func:`normalise`
    (``percentile``, with ``cfg.percentiles``) or :func:`normalise_minmax` (``minmax``).

    Raises:
        DatasetError: as the chosen function; an unknown ``cfg.normalisation``.
    """
    if cfg.normalisation == "percentile":
        return normalise(image, tuple(cfg.percentiles), name=name)
    if cfg.normalisation == "minmax":
        return normalise_minmax(image, name=name)
    raise DatasetError(
        f"{name}: preprocess.normalisation {cfg.normalisation!r} is not one of "
        f"{', '.join(NORMALISATIONS)}"
    )


def resize_slices(
    volume_xyz: np.ndarray, size: int | Sequence[int], order: Interpolation
) -> np.ndarray:
    """Resize every slice ``volume_xyz[:, :, k]`` to ``size`` pixels, whatever its spacing.

    Args:
        volume_xyz: (X, Y, Z) array (float image or integer labels).
        size: S (square) or (H, W), in pixels.
        order: ``"linear"`` or ``"nearest"``.

    Returns:
        (Z, H, W), same dtype; axis 1 ↔ X, axis 2 ↔ Y. Corner-aligned as
        ``scipy.ndimage.zoom`` (see the module docstring).
    """
    out_hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    resized = _zoom_plane(np.asarray(volume_xyz), out_hw, order)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def resampled_shape(
    shape_xy: Sequence[int], spacing: Sequence[float], target_spacing: float
) -> tuple[int, int]:
    """In-plane shape after resampling: ``round(n * spacing / target)`` per axis (>= 1)."""
    return tuple(
        max(1, int(np.floor(n * s / target_spacing + 0.5)))
        for n, s in zip(shape_xy[:2], spacing[:2], strict=True)
    )


def resample_slices(
    volume_xyz: np.ndarray,
    spacing: Sequence[float],
    target_spacing: float,
    order: Interpolation,
) -> np.ndarray:
    """Resample every slice ``volume_xyz[:, :, k]`` to ``target_spacing`` in plane.

    Args:
        volume_xyz: (X, Y, Z) array (float image or integer labels).
        spacing: (sx, sy[, sz]) in mm; only sx, sy are used.
        target_spacing: in-plane spacing of the output, in mm.
        order: ``"linear"`` (images) or ``"nearest"`` (labels).

    Returns:
        (Z, H, W) with H, W from :func:`resampled_shape`, same dtype as the input;
        axis 1 ↔ X, axis 2 ↔ Y. Slices are not mixed along z.
    """
    if not target_spacing > 0:
        raise ValueError(
            f"resample_slices: target spacing must be > 0 mm, found {target_spacing}; "
            "check preprocess.spacing_mm"
        )
    out_hw = resampled_shape(volume_xyz.shape[:2], spacing, target_spacing)
    step = [target_spacing / float(s) for s in spacing[:2]]
    resampled = _resample_plane(np.asarray(volume_xyz), out_hw, step, order)
    return np.ascontiguousarray(resampled.transpose(2, 0, 1))


def crop_or_pad(
    slices_zhw: np.ndarray, size: int | Sequence[int], pad_value: float = 0.0
) -> np.ndarray:
    """Centre crop or pad axes 1 and 2 of (Z, H, W, ...) to ``size``.

    Where the difference ``d`` between sizes is odd, the extra row/column is cropped or
    padded at the end: the first ``d // 2`` are removed or added at the start.

    Args:
        slices_zhw: (Z, H, W, ...) array; trailing axes are untouched.
        size: S (square) or (H', W').
        pad_value: value of added pixels.

    Returns:
        (Z, H', W', ...), same dtype.
    """
    target = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(target) != 2 or min(target) < 1:
        raise ValueError(f"crop_or_pad: expected a size >= 1 or (H, W), found {size!r}")
    array = np.asarray(slices_zhw)
    for axis, wanted in zip((1, 2), target, strict=True):
        array = _fit_axis(array, axis, wanted, pad_value)
    return array


def restore_labels(labels: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Map a (Z, S, S) label prediction back onto the native (X, Y, Z) grid.

    ``spacing``: undoes the crop/pad (regions outside the crop become background 0) then
    resamples each slice to the native in-plane shape with nearest neighbour. ``fixed``:
    resizes each slice back to the native in-plane shape with nearest neighbour.

    Args:
        labels: integer (Z, S, S) class indices in [0, 255] (argmax of the network output).
        geometry: the :class:`SliceGeometry` of the volume.

    Returns:
        uint8 (X, Y, Z), exactly ``geometry.native_shape``.
    """
    array = np.asarray(labels)
    _check_prediction_shape(array, geometry, "restore_labels", "labels", 3)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"restore_labels: expected integer class indices, found dtype {array.dtype}; "
            "take the argmax over classes first, or use restore_probabilities"
        )
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"restore_labels: class indices must lie in [0, 255], found "
            f"[{array.min()}, {array.max()}]"
        )
    if geometry.resize == "fixed":
        return _from_fixed(array.astype(np.uint8), geometry, "nearest")
    uncropped = crop_or_pad(array.astype(np.uint8), geometry.resampled_shape, 0)
    return _to_native(uncropped, geometry, "nearest")


def restore_probabilities(probabilities: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Map (Z, S, S, C) class probabilities back onto the native (X, Y, Z, C) grid.

    ``spacing``: undoes the crop/pad (regions outside the crop become background: channel
    0 = 1) then resamples each slice and channel linearly to the native in-plane shape.
    ``fixed``: resizes each slice and channel linearly back to the native in-plane shape. No
    softmax is applied: the input must already sum to one over C.

    Args:
        probabilities: float (Z, S, S, C), non-negative, summing to 1 over C (tolerance 1e-3);
            channel 0 is background.
        geometry: the :class:`SliceGeometry` of the volume.

    Returns:
        float32 (X, Y, Z, C), summing to one over C.
    """
    array = np.asarray(probabilities, dtype=np.float32)
    _check_prediction_shape(array, geometry, "restore_probabilities", "probabilities", 4)
    sums = array.sum(axis=-1)
    if not np.all(np.isfinite(array)) or array.min() < 0 or np.abs(sums - 1.0).max() > 1e-3:
        raise ValueError(
            "restore_probabilities: expected finite, non-negative probabilities summing to 1 "
            f"over the last axis, found sums in [{sums.min():.4g}, {sums.max():.4g}] and minimum "
            f"{array.min():.4g}; apply a softmax to the logits first"
        )
    if geometry.resize == "fixed":
        native = _from_fixed(array, geometry, "linear")
    else:
        channels = [
            crop_or_pad(array[..., c], geometry.resampled_shape, 1.0 if c == 0 else 0.0)
            for c in range(array.shape[-1])
        ]
        native = _to_native(np.stack(channels, axis=-1), geometry, "linear")
    return (native / native.sum(axis=-1, keepdims=True)).astype(np.float32)


def restore_prediction(
    probabilities: np.ndarray, geometry: SliceGeometry, interpolation: Interpolation = "linear"
) -> np.ndarray:
    """Class labels on the native (X, Y, Z) grid from (Z, S, S, C) probabilities.

    Args:
        probabilities: float (Z, S, S, C), summing to 1 over C.
        geometry: the :class:`SliceGeometry` of the volume.
        interpolation: ``preprocess.restore_interpolation``: ``"linear"`` maps the
            probabilities back (:func:`restore_probabilities`) and takes the argmax there
            (tfaug's default); ``"nearest"`` takes the argmax on the network's grid and maps
            the labels back (:func:`restore_labels`), as SSL4MIS's and BCP's
            ``test_single_volume`` do.

    Returns:
        uint8 (X, Y, Z) class indices.
    """
    if interpolation == "linear":
        return restore_probabilities(probabilities, geometry).argmax(axis=-1).astype(np.uint8)
    if interpolation == "nearest":
        return restore_labels(np.asarray(probabilities).argmax(axis=-1), geometry)
    raise ValueError(
        f"restore_prediction: interpolation must be 'linear' or 'nearest', found "
        f"{interpolation!r} (preprocess.restore_interpolation)"
    )


def _to_native(slices: np.ndarray, geometry: SliceGeometry, order: Interpolation) -> np.ndarray:
    """(Z, H, W, ...) on the resampled grid → (X, Y, Z, ...) on the native grid."""
    step = [float(s) / geometry.target_spacing for s in geometry.native_spacing[:2]]
    plane_first = np.moveaxis(slices, 0, 2)
    native = _resample_plane(plane_first, geometry.native_shape[:2], step, order)
    return np.ascontiguousarray(native)


def _from_fixed(slices: np.ndarray, geometry: SliceGeometry, order: Interpolation) -> np.ndarray:
    """(Z, S, S, ...) resized slices → (X, Y, Z, ...) on the native grid."""
    plane_first = np.moveaxis(slices, 0, 2)
    return np.ascontiguousarray(_zoom_plane(plane_first, geometry.native_shape[:2], order))


def _zoom_plane(array: np.ndarray, out_hw: Sequence[int], order: Interpolation) -> np.ndarray:
    """Resize axes 0, 1 of (A, B, ...) to (H, W) as ``scipy.ndimage.zoom`` does (corner-aligned:
    output ``i`` samples input ``i (n - 1) / (H - 1)``); trailing axes map onto themselves."""
    if order not in _ORDERS:
        raise ValueError(f"resizing order must be 'linear' or 'nearest', found {order!r}")
    if min(out_hw[:2]) < 1:
        raise ValueError(f"resize: expected a size >= 1, found {tuple(out_hw)}")
    factors = [out / n for out, n in zip(out_hw[:2], array.shape[:2], strict=True)]
    factors += [1.0] * (array.ndim - 2)
    zoomed = ndimage.zoom(array, factors, order=_ORDERS[order], mode="nearest", grid_mode=False)
    expected = tuple(int(n) for n in out_hw[:2]) + array.shape[2:]
    if zoomed.shape != expected:  # scipy rounds n * factor; never seen to differ
        raise ValueError(f"resize: scipy gave shape {zoomed.shape}, expected {expected}")
    return zoomed


def _resample_plane(
    array: np.ndarray, out_hw: Sequence[int], step: Sequence[float], order: Interpolation
) -> np.ndarray:
    """Resample axes 0, 1 of (A, B, ...) onto an (H, W) grid centred on the input grid.

    Output pixel ``i`` samples input position ``c_in + (i - c_out) * step`` with
    ``c = (n - 1) / 2``; ``step`` is the output pixel size in input pixels. Trailing axes map
    onto themselves. Out-of-grid positions take the nearest edge value.
    """
    if order not in _ORDERS:
        raise ValueError(f"resampling order must be 'linear' or 'nearest', found {order!r}")
    rank = array.ndim
    matrix = np.ones(rank)
    offset = np.zeros(rank)
    for axis in (0, 1):
        matrix[axis] = step[axis]
        offset[axis] = (array.shape[axis] - 1) / 2 - (out_hw[axis] - 1) / 2 * step[axis]
    return ndimage.affine_transform(
        array,
        matrix,
        offset=offset,
        output_shape=tuple(out_hw[:2]) + array.shape[2:],
        order=_ORDERS[order],
        mode="nearest",
        prefilter=False,
    )


def _fit_axis(array: np.ndarray, axis: int, size: int, pad_value: float) -> np.ndarray:
    """Centre crop or pad one axis to ``size`` (the first ``d // 2`` at the start)."""
    current = array.shape[axis]
    if current > size:
        start = (current - size) // 2
        return np.take(array, np.arange(start, start + size), axis=axis)
    if current < size:
        before = (size - current) // 2
        widths = [(0, 0)] * array.ndim
        widths[axis] = (before, size - current - before)
        return np.pad(array, widths, mode="constant", constant_values=pad_value)
    return array


def _check_prediction_shape(
    array: np.ndarray, geometry: SliceGeometry, function: str, what: str, rank: int
) -> None:
    """Raise unless ``array`` is (Z, S, S) (rank 3) or (Z, S, S, C) (rank 4) for ``geometry``."""
    z, size = geometry.native_shape[2], geometry.crop_size
    expected = (z, size, size)
    if array.ndim != rank or array.shape[:3] != expected:
        wanted = "(Z, S, S)" if rank == 3 else "(Z, S, S, C)"
        raise ValueError(
            f"{function}: expected {what} of shape {wanted} with (Z, S, S) = {expected} for "
            f"this volume's geometry, found {array.shape}; pass every slice of the volume in "
            "slice order, as produced by preprocess_volume"
        )


def _check_spacing(spacing: Sequence[float], where: str) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DatasetError(
            f"{where}: expected three positive voxel sizes in mm, found {list(spacing)}; "
            "check the NIfTI header (pixdim)"
        )
    return values


THICK_AXIS_RATIO = 1.5
"""An in-plane voxel size this many times the slice spacing or more means the volume is
stored with its thick (slice) axis in plane: a coronal stack in an axial voxel order, say."""


def _warn_if_slice_axis_is_not_the_thickest(
    spacing: tuple[float, float, float], where: str
) -> None:
    """Warn when an in-plane voxel size (mm) is :data:`THICK_AXIS_RATIO` times the third's.

    tfaug cuts 2D slices along the third voxel axis; a volume whose thickest axis is one of
    the first two gives slices resampled across its thick axis, which the model never saw in
    training and which segment badly. Isotropic volumes never warn.
    """
    thickest = int(np.argmax(spacing[:2]))
    if spacing[thickest] < THICK_AXIS_RATIO * spacing[2]:
        return
    sizes = ", ".join(f"{size:g}" for size in spacing)
    warnings.warn(
        f"{where}: voxel sizes ({sizes}) mm: axis {thickest} ({spacing[thickest]:g} mm) is "
        f"thicker than the slice axis (the third, {spacing[2]:g} mm), so each 2D slice is "
        "resampled across the thick axis. Reorient the volume so that its thickest axis is "
        "the third (nibabel: img.as_reoriented(...); SimpleITK: PermuteAxes), as in the "
        "other volumes",
        DatasetWarning,
        stacklevel=3,
    )


def _case_name(volume: Volume) -> str:
    path = volume.meta.get("image_path")
    return f"{path} ({volume.case_id})" if path else volume.case_id
