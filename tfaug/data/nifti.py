"""Reading NIfTI files with nibabel, the checks every dataset reader shares, safe writing.

nibabel (not SimpleITK) reads the files: several ACDC headers have non-orthonormal
direction cosines that SimpleITK >= 2.1 rejects. Every problem raises
:class:`~tfaug.data.volume.DatasetError` with a message that names the file, what was
expected, what was found and the fix. Nothing here resamples, reorients or normalises.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from tfaug.data.volume import CaseRef, DatasetError, Volume

AFFINE_ATOL_MM = 1e-3
"""Largest element-wise difference (mm) tolerated between an image and a label affine."""

_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)


def _open(path: Path, what: str) -> nib.Nifti1Image:
    """Open a NIfTI file (header only) or raise a :class:`DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: {what} file not found. Check the dataset layout (docs/datasets.md) "
            "or restore the file from the original download."
        )
    if path.stat().st_size == 0:
        raise DatasetError(
            f"{path}: {what} file is empty (0 bytes), expected a NIfTI image. "
            "Re-download or re-extract the dataset."
        )
    try:
        image = nib.load(path)
    except _READ_ERRORS as error:
        raise DatasetError(
            f"{path}: cannot read the {what} as NIfTI ({error}). The file is damaged or "
            "not a NIfTI image; re-download or re-extract the dataset."
        ) from error
    if not isinstance(image, nib.Nifti1Image):
        raise DatasetError(
            f"{path}: expected a NIfTI-1/NIfTI-2 {what}, found {type(image).__name__}. "
            "Convert it to .nii.gz."
        )
    return image


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A file's array shape without its length-1 axes after the third.

    Converters and ITK/FSL tools often store a 3D volume as (X, Y, Z, 1) or (X, Y, Z, 1, 1)
    (a time or vector axis of length 1); tfaug reads it as (X, Y, Z), as MONAI's readers do.
    Every other shape is returned unchanged.
    """
    spatial = tuple(int(n) for n in shape)
    while len(spatial) > 3 and spatial[-1] == 1:
        spatial = spatial[:-1]
    return spatial


def _describe(
    image: nib.Nifti1Image, path: Path, what: str
) -> tuple[tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Shape, affine and zooms of an opened file; rejects a zero-length axis."""
    shape = tuple(int(n) for n in image.shape)
    if not shape or min(shape) == 0:
        raise DatasetError(
            f"{path}: {what} array is empty (shape {shape}), expected every axis to have at "
            "least one voxel. Re-export the file or remove the case."
        )
    zooms = tuple(float(z) for z in image.header.get_zooms())
    return shape, np.asarray(image.affine, dtype=np.float64), zooms


def read_header(
    path: Path, *, what: str = "image"
) -> tuple[tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Read only the header of a NIfTI file; no voxel data is decompressed.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: a word naming the file in error messages (``"image"``, ``"label"``).

    Returns:
        ``(shape, affine, zooms)``: the array shape, the 4x4 float64 voxel-to-world
        matrix (mm), and the voxel sizes of every axis (mm for spatial axes).

    Raises:
        DatasetError: a missing, empty (0 bytes) or unreadable file, or a shape with a
            zero-length axis.
    """
    return _describe(_open(path, what), Path(path), what)


def load_nifti(
    path: Path, *, what: str = "image", channel: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI file's voxels, affine and voxel sizes.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: a word naming the file in error messages (``"image"``, ``"label"``).
        channel: for a 4D file (X, Y, Z, C), read only ``data[..., channel]``; ``None``
            reads the whole array, without the length-1 axes after the third
            (:func:`spatial_shape`). Must be ``None`` for files with fewer than 4 axes.

    Returns:
        ``(data, affine, zooms)``. ``data`` keeps the file's integer dtype when the file
        stores integers without intensity scaling, otherwise it is float32 (scaled by the
        header's ``scl_slope``/``scl_inter`` as nibabel does). ``affine`` is the 4x4
        float64 voxel-to-world matrix in mm; ``zooms`` holds the voxel size of every axis
        of the file (mm for the first three). The data is not reoriented or resampled.

    Raises:
        DatasetError: a missing, empty, unreadable or truncated file; an array with a
            zero-length axis; a channel that does not exist; NaN or infinite voxels
            (the message says how many).
    """
    image = _open(path, what)
    shape, affine, zooms = _describe(image, path, what)
    if channel is not None and (len(shape) != 4 or not 0 <= channel < shape[3]):
        raise DatasetError(
            f"{path}: cannot read channel {channel} of the {what}: its shape is {shape}, "
            "expected a 4D (X, Y, Z, C) array with that channel. Check data.modality against "
            "the dataset's dataset.json."
        )
    try:
        proxy = image.dataobj
        data = np.asanyarray(proxy[..., channel] if channel is not None else proxy)
        if channel is None:
            data = data.reshape(spatial_shape(data.shape))
    except _READ_ERRORS as error:
        raise DatasetError(
            f"{path}: the {what} voxels cannot be read ({error}); the file is truncated or "
            "damaged. Re-download or re-extract the dataset."
        ) from error
    if data.dtype.kind not in "iub":
        data = data.astype(np.float32)
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DatasetError(
                f"{path}: {what} has {bad} NaN or infinite voxel(s) out of {data.size}, "
                "expected finite values. Repair the file or remove the case."
            )
    return data, affine, zooms


def check_label_matches_image(
    image_shape: tuple[int, ...],
    image_affine: np.ndarray,
    label_shape: tuple[int, ...],
    label_affine: np.ndarray,
    image_path: Path,
    label_path: Path,
    *,
    atol_mm: float = AFFINE_ATOL_MM,
) -> None:
    """Check that a label map lies on its image's voxel grid.

    Compares the shapes exactly and the 4x4 affines element-wise with an absolute
    tolerance of ``atol_mm`` (mm). Pass the image's spatial shape (X, Y, Z) for a 4D image.
    Does not look at voxel values.

    Raises:
        DatasetError: the shapes differ, or the affines differ by more than ``atol_mm``.
    """
    if tuple(label_shape) != tuple(image_shape):
        raise DatasetError(
            f"{label_path}: label shape {tuple(label_shape)} differs from image shape "
            f"{tuple(image_shape)} ({image_path}). Resample the label onto the image grid "
            "or remove the case."
        )
    difference = float(np.max(np.abs(np.asarray(label_affine) - np.asarray(image_affine))))
    if difference > atol_mm:
        raise DatasetError(
            f"{label_path}: label affine differs from the image affine ({image_path}) by up "
            f"to {difference:.4g} mm, expected at most {atol_mm:g} mm.\n"
            f"image affine:\n{np.round(image_affine, 4)}\nlabel affine:\n"
            f"{np.round(label_affine, 4)}\nCopy the image header onto the label if they "
            "truly share a grid, otherwise resample the label or remove the case."
        )


def check_label_values(label: np.ndarray, allowed: set[int], path: Path) -> None:
    """Check that a label map holds only whole numbers from ``allowed``.

    Args:
        label: label array of any shape and numeric dtype (floats must be integral).
        allowed: the valid label values, e.g. ``{0, 1, 2, 3}``.
        path: the label file, for the message.

    Raises:
        DatasetError: non-integer values, or values outside ``allowed`` (all offending
            values are listed with their voxel counts).
    """
    values, counts = np.unique(label, return_counts=True)
    if label.dtype.kind not in "iub":
        fractional = values[values != np.round(values)]
        if fractional.size:
            raise DatasetError(
                f"{path}: label has non-integer values {fractional[:10].tolist()}, expected "
                f"whole numbers in {sorted(allowed)}. Round the label map or re-export it "
                "with an integer type."
            )
    offending = {
        int(v): int(c) for v, c in zip(values, counts, strict=True) if int(v) not in allowed
    }
    if offending:
        listed = ", ".join(f"{v} ({c} voxels)" for v, c in sorted(offending.items()))
        raise DatasetError(
            f"{path}: label values outside {sorted(allowed)}: {listed}. Fix the label file, "
            "or map the values with data.merge_labels and list the classes in "
            "data.class_names."
        )


def read_volume(
    ref: CaseRef,
    *,
    label_set: set[int],
    channel: int | None = None,
    merge_labels: dict[int, int] | None = None,
) -> Volume:
    """Load one labeled case into a :class:`Volume` and check it.

    Args:
        ref: the case; ``ref.label_path`` must not be ``None``.
        label_set: valid label values after merging, e.g. ``{0, 1, 2, 3}``.
        channel: channel of a 4D image to read (see :func:`load_nifti`); ``None`` for 3D.
        merge_labels: ``{source: target}`` remapping applied to the label on load; the
            raw file may hold the sources, the result holds only ``label_set`` values.

    Returns:
        A Volume with ``image`` float32 (X, Y, Z) in the file's intensity units,
        ``label`` uint8 (X, Y, Z), ``spacing`` the first three header zooms (mm),
        ``affine`` the image's 4x4 matrix, and ``meta`` = ``ref.meta`` plus the
        ``image_path`` / ``label_path`` strings. No preprocessing is applied.

    Raises:
        DatasetError: any problem found by :func:`load_nifti`,
            :func:`check_label_matches_image` or :func:`check_label_values`; an image
            that is not 3D after channel selection; a merge target outside ``label_set``.
    """
    merge_labels = dict(merge_labels or {})
    if ref.label_path is None:
        raise DatasetError(f"{ref.image_path}: case {ref.case_id} has no label file to load.")
    stray = sorted(t for t in merge_labels.values() if t not in label_set)
    if stray:
        raise DatasetError(
            f"{ref.label_path}: data.merge_labels {merge_labels} maps to {stray}, outside the "
            f"label set {sorted(label_set)}. Fix data.merge_labels or data.class_names."
        )
    image, affine, zooms = load_nifti(ref.image_path, what="image", channel=channel)
    if image.ndim != 3:
        raise DatasetError(
            f"{ref.image_path}: expected a 3D image (X, Y, Z), found shape {image.shape}. "
            "For a 4D multi-modal image set data.modality; otherwise remove the case."
        )
    label, label_affine, _ = load_nifti(ref.label_path, what="label")
    check_label_matches_image(
        image.shape, affine, label.shape, label_affine, ref.image_path, ref.label_path
    )
    check_label_values(label, set(label_set) | set(merge_labels), ref.label_path)
    merged = label.astype(np.uint8)
    for source, target in merge_labels.items():
        merged[label == source] = target
    meta = {**ref.meta, "image_path": str(ref.image_path), "label_path": str(ref.label_path)}
    return Volume(
        case_id=ref.case_id,
        image=image.astype(np.float32),
        label=merged,
        spacing=(zooms[0], zooms[1], zooms[2]),
        affine=affine,
        meta=meta,
    )


def problems_message(root: Path, problems: list[str]) -> str:
    """One message listing every problem found in the dataset at ``root``."""
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return f"{root}: {len(problems)} problem(s) in the dataset:\n{listed}"


def save_nifti_atomic(image: nib.Nifti1Image, path: Path) -> Path:
    """Write ``image`` to ``path`` without ever leaving a half-written ``path``.

    The file is written under a hidden temporary name in the same folder (same extension, so
    nibabel compresses ``.nii.gz``), then renamed over ``path``; the temporary file is removed
    if writing fails or is interrupted. Parent folders are created.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((s for s in (".nii.gz", ".nii") if path.name.endswith(s)), "")
    stem = path.name[: len(path.name) - len(suffix)]
    temporary = path.with_name(f".{stem}.partial-{os.getpid()}{suffix}")
    try:
        nib.save(image, str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
