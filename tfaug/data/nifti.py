"""Reading NIfTI files with nibabel, the checks every dataset reader shares, safe writing.

nibabel (not SimpleITK) reads the files: several ACDC headers have non-orthonormal
direction cosines that SimpleITK >= 2.1 rejects. Every problem raises
:class:`~tfaug.data.volume.DatasetError` with a message that names the file, what was
expected, what was found and the fix. Nothing here resamples, reorients or normalises.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.filebasedimages import ImageFileError

from tfaug.data.inputs import nifti_suffix
from tfaug.data.volume import CaseRef, DatasetError, DatasetWarning, Volume

AFFINE_ATOL_MM = 1e-3
"""Largest element-wise difference (mm) tolerated between an image and a label affine."""

ZOOM_RTOL = 1e-3
"""Largest relative difference tolerated between a header voxel size (pixdim) and the length
of the matching affine column. Scanner converters store both in float32 (relative rounding
~1e-7) and derive the affine from DICOM direction cosines written with ~6 decimals (~1e-5);
1e-3 leaves a 100-fold margin over that and still catches any real mismatch (0.1 % or more)."""

MAX_FRACTIONAL_LABEL_VALUES = 50
"""More distinct non-integer values than this and a "label" is taken for an intensity image."""

MM_PER_SPATIAL_UNIT = {1: 1000.0, 3: 0.001}
"""Millimetres per unit of the NIfTI spatial unit codes other than mm (the low three bits of
the header's ``xyzt_units``): 1 metre, 3 micron. Code 2 (mm) and 0 (unknown, which converters
write for mm, the NIfTI default) read as mm."""

_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_HEADER_SIZES = (348, 540)
"""``sizeof_hdr``, the first 4 bytes of a NIfTI-1 and a NIfTI-2 header."""


def _open(path: Path, what: str) -> nib.Nifti1Image:
    """Open a NIfTI file (header only) or raise a :class:`DatasetError`.

    A file whose gzip compression its name contradicts is refused with the name to give it
    (:func:`_check_compression_matches_name`).
    """
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
    _check_compression_matches_name(path, what)
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


def _check_compression_matches_name(path: Path, what: str) -> None:
    """Refuse a NIfTI file whose gzip compression (its first two bytes) contradicts its name.

    nibabel decides from the name whether to decompress, so a gzipped file named ``.nii`` or
    a plain one named ``.nii.gz`` cannot be read, although its content is intact. The file is
    not read anyway: a wrong name usually comes from a wrong step upstream, and renaming it
    is the fix. A file whose content is no NIfTI header either way is left to
    :func:`nib.load` (damaged, or not NIfTI), and so is a name without a NIfTI ending.
    """
    suffix = nifti_suffix(path.name)
    if suffix is None:
        return
    named_compressed = suffix.lower() == ".nii.gz"
    with open(path, "rb") as file:
        compressed = file.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
    if compressed == named_compressed or not _starts_with_nifti_header(path, compressed):
        return
    stem = path.name[: len(path.name) - len(suffix)]
    if compressed:
        found, new_name = "is gzip-compressed but named .nii", f"{stem}.nii.gz"
    else:
        found, new_name = "is not compressed but named .nii.gz", f"{stem}.nii"
    raise DatasetError(
        f"{path}: {what} file {found}, expected .nii.gz for a gzip-compressed NIfTI file and "
        f".nii for a plain one. Rename it to {new_name} (and its dataset.json entry, if it is "
        "listed there); the content starts as a NIfTI file does, so the name is what is "
        "wrong: check the step that named it."
    )


def _starts_with_nifti_header(path: Path, compressed: bool) -> bool:
    """Whether ``path`` (decompressed if ``compressed``) starts with a NIfTI-1 or NIfTI-2
    ``sizeof_hdr`` (348 or 540, in either byte order)."""
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as file:
            start = file.read(4)
    except _READ_ERRORS:
        return False
    sizes = {int.from_bytes(start, order) for order in ("little", "big")}
    return len(start) == 4 and not sizes.isdisjoint(_NIFTI_HEADER_SIZES)


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A file's array shape without its length-1 axes after the third.

    Converters and ITK/FSL tools often store a 3D volume as (X, Y, Z, 1) or (X, Y, Z, 1, 1)
    (a time or vector axis of length 1); tfaug reads it as (X, Y, Z), as MONAI's readers do.
    ITK/SimpleITK store a vector image (several values per voxel, e.g. one per modality) in
    the NIfTI layout (X, Y, Z, 1, C): the 4th axis is time, of length 1, and the 5th holds
    the C components; tfaug reads it as (X, Y, Z, C). Every other shape is returned
    unchanged.
    """
    spatial = tuple(int(n) for n in shape)
    return spatial[:3] + tuple(n for n in spatial[3:] if n != 1)


def _check_one_channel_axis(shape: tuple[int, ...], path: Path, what: str) -> None:
    """Refuse a shape with more than one axis longer than 1 after the third, e.g. the
    (X, Y, Z, T, C) of a time series of vector images: tfaug reads one 3D volume, or one
    channel of (X, Y, Z, C), from a file."""
    if len(spatial_shape(shape)) <= 4:
        return
    further = f" and further axes {shape[5:]}" if len(shape) > 5 else ""
    raise DatasetError(
        f"{path}: {what} has shape {shape}, the NIfTI layout (X, Y, Z, T, C): {shape[3]} "
        f"time points of {shape[4]} components per voxel{further}; expected (X, Y, Z), "
        "(X, Y, Z, C) or the vector layout (X, Y, Z, 1, C), one volume or one set of "
        "channels. Save the volume to use as a file of its own (nibabel, time point t: "
        "nib.Nifti1Image(img.dataobj[:, :, :, t, :], img.affine)), or remove the case."
    )


def mm_per_unit(header: nib.Nifti1Header) -> float:
    """Millimetres per spatial unit of a NIfTI header (the low three bits of ``xyzt_units``):
    1000 for metres, 0.001 for microns, 1 for mm and for unknown (:data:`MM_PER_SPATIAL_UNIT`).
    """
    return MM_PER_SPATIAL_UNIT.get(int(header["xyzt_units"]) & 7, 1.0)


def in_mm(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """``image`` with its spatial geometry in mm, for reading it; no voxel is read.

    A header whose spatial unit is metres or microns gets its spatial voxel sizes (pixdim),
    qform offsets and sform rows converted to mm and its unit set to mm, so the affine and
    zooms read from the result are in mm; the quaternion and every other field are kept
    (a pixdim that disagrees with the affine still does). An image already in mm, or with
    the unit unknown, is returned as it is. Outputs are written with the input's own header
    instead (:func:`tfaug.deploy.inference.write_like`), so they overlay it in any viewer.
    """
    scale = mm_per_unit(image.header)
    if scale == 1.0:
        return image
    header = image.header.copy()
    header["pixdim"][1:4] = header["pixdim"][1:4] * scale
    for field in ("qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"):
        header[field] = header[field] * scale
    header["xyzt_units"] = (int(header["xyzt_units"]) & ~7) | 2  # 2: mm
    return type(image)(image.dataobj, header.get_best_affine(), header)


def _describe(
    image: nib.Nifti1Image, path: Path, what: str
) -> tuple[tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Shape, affine and zooms of an opened file, in mm whatever its spatial unit
    (:func:`in_mm`).

    Rejects a zero-length axis, more than one axis longer than 1 after the third
    (:func:`_check_one_channel_axis`), a voxel type that is not a real number (RGB, complex)
    and spatial zooms that disagree with the affine (:func:`_check_zooms_match_affine`).
    """
    shape = tuple(int(n) for n in image.shape)
    if not shape or min(shape) == 0:
        raise DatasetError(
            f"{path}: {what} array is empty (shape {shape}), expected every axis to have at "
            "least one voxel. Re-export the file or remove the case."
        )
    _check_one_channel_axis(shape, path, what)
    _check_real_dtype(image.get_data_dtype(), path, what)
    image = in_mm(image)
    zooms = tuple(float(z) for z in image.header.get_zooms())
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_zooms_match_affine(zooms[: min(3, len(shape))], affine, path, what)
    return shape, affine, zooms


def _check_real_dtype(dtype: np.dtype, path: Path, what: str) -> None:
    """Accept bool, integer and float voxels; reject complex and RGB (structured) ones."""
    if dtype.kind in "biuf":
        return
    if dtype.kind == "c":
        found, fix = f"complex voxels ({dtype})", "Take the magnitude (np.abs) and save it"
    else:
        fields = ", ".join(dtype.names or ())
        found = f"voxels of type {dtype}" if not fields else f"colour voxels ({fields})"
        fix = "Convert the image to grey levels and save it"
    raise DatasetError(
        f"{path}: {what} has {found}, expected real numbers (bool, integer or float). "
        f"{fix} as float32, or remove the case."
    )


def _check_zooms_match_affine(
    zooms: Sequence[float], affine: np.ndarray, path: Path, what: str
) -> None:
    """Check the header voxel sizes (pixdim, mm) against the affine's column lengths (mm).

    tfaug takes the spacing from the zooms, while nibabel and viewers place the voxels with
    the affine, so a file whose sform gives another voxel size than its pixdim would be
    resampled with the wrong spacing. Files without sform/qform (affine built from pixdim)
    and qform-only files agree by construction. nibabel reads a pixdim of 0 as 1.
    """
    columns = np.linalg.norm(affine[:3, : len(zooms)], axis=0)
    header = np.asarray(zooms, dtype=np.float64)
    wrong = (np.abs(header - columns) > ZOOM_RTOL * columns) | (header <= 0)
    if not np.any(wrong):
        return
    read_as_one = " (nibabel reads a pixdim of 0 as 1)" if np.any(header[wrong] == 1.0) else ""
    raise DatasetError(
        f"{path}: {what} header voxel size (pixdim) {_mm(header)} mm{read_as_one} differs "
        f"from the affine's voxel size {_mm(columns)} mm (the lengths of its columns), "
        f"expected them equal within {ZOOM_RTOL:.1%}. Find which is right and rewrite the "
        "header to match (nibabel: img.header.set_zooms(...) with the affine's sizes, or "
        "img.set_sform(...) with a corrected affine, then nib.save), or remove the case."
    )


def _mm(values: np.ndarray) -> tuple[float, ...]:
    """Voxel sizes rounded for a message."""
    return tuple(round(float(v), 5) for v in values)


def read_header(
    path: Path, *, what: str = "image"
) -> tuple[tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Read only the header of a NIfTI file; no voxel data is decompressed.

    A gzipped file's CRC is therefore not checked here (it sits at the end of the stream);
    :func:`load_nifti` checks it.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: a word naming the file in error messages (``"image"``, ``"label"``).

    Returns:
        ``(shape, affine, zooms)``: the array shape, the 4x4 float64 voxel-to-world
        matrix (mm), and the voxel sizes of every axis (mm for spatial axes). A header
        whose spatial unit is metres or microns is converted to mm (:func:`in_mm`).

    Raises:
        DatasetError: a missing, empty (0 bytes) or unreadable file, a gzipped file named
            ``.nii`` or a plain one named ``.nii.gz`` (the message gives the new name), a
            shape with a zero-length axis or with more than one axis longer than 1 after the
            third (a time series of vector images, (X, Y, Z, T, C)), a voxel type that is not
            a real number (RGB, complex), or spatial header voxel sizes (pixdim) that
            disagree with the affine.
    """
    return _describe(_open(path, what), Path(path), what)


def load_nifti(
    path: Path, *, what: str = "image", channel: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI file's voxels, affine and voxel sizes.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: a word naming the file in error messages (``"image"``, ``"label"``).
        channel: for a file of channels, (X, Y, Z, C) or the vector layout (X, Y, Z, 1, C)
            (:func:`spatial_shape`), read only that channel, as (X, Y, Z); a file stored as
            (X, Y, Z, 1) has the one channel 0. ``None`` reads the whole array, without
            the length-1 axes after the third. Must be ``None`` for files with fewer than
            4 axes.

    Returns:
        ``(data, affine, zooms)``. ``data`` keeps the file's integer dtype when the file
        stores integers without intensity scaling, otherwise it is float32 (scaled by the
        header's ``scl_slope``/``scl_inter`` as nibabel does). ``affine`` is the 4x4
        float64 voxel-to-world matrix in mm; ``zooms`` holds the voxel size of every axis
        of the file (mm for the first three), both converted from the header's metres or
        microns if it says so (:func:`in_mm`). The data is not reoriented or resampled.

    Raises:
        DatasetError: a missing, empty, unreadable, truncated or damaged file (a gzipped
            file is decompressed to its end, so a failed CRC check is caught); every problem
            :func:`read_header` checks; a channel that does not exist; NaN or infinite
            voxels, or values beyond float32's range (the message says how many).
    """
    image = _open(path, what)
    shape, affine, zooms = _describe(image, path, what)
    index = _channel_index(shape, channel) if channel is not None else ()
    if index is None:
        raise DatasetError(
            f"{path}: cannot read channel {channel} of the {what}: its shape is {shape}, "
            "expected a 4D (X, Y, Z, C) array, or the vector layout (X, Y, Z, 1, C), with "
            "that channel. Check data.modality against the dataset's dataset.json."
        )
    try:
        proxy = _fully_decompressed(image, Path(path)).dataobj
        data = np.asanyarray(proxy[index] if channel is not None else proxy)
        if channel is None:
            data = data.reshape(spatial_shape(data.shape))
    except _READ_ERRORS as error:
        raise DatasetError(
            f"{path}: the {what} voxels cannot be read ({error}); the file is truncated or "
            "damaged. Re-download or re-extract the dataset."
        ) from error
    if data.dtype.kind not in "iub":
        data = _finite_float32(data, path, what)
    return data, affine, zooms


def _channel_index(shape: tuple[int, ...], channel: int) -> tuple[int | slice, ...] | None:
    """The index that reads ``channel`` of a file of ``shape`` as (X, Y, Z); ``None`` if the
    file has no such channel.

    The channels lie along the one axis after the third longer than 1 (there is at most one,
    :func:`_check_one_channel_axis`); the other axes after the third are read at 0. A file
    whose axes after the third all have length 1 holds the one channel 0.
    """
    spatial = spatial_shape(shape)
    count = spatial[3] if len(spatial) == 4 else 1
    if len(shape) < 4 or not 0 <= channel < count:
        return None
    return (slice(None),) * 3 + tuple(channel if n > 1 else 0 for n in shape[3:])


def _fully_decompressed(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    """``image`` backed by the whole decompressed content of a gzipped ``path``.

    nibabel decompresses only the bytes it needs, so gzip's CRC-32 and length check at the
    end of the stream never runs and a flipped byte silently changes voxels. Decompressing
    the whole stream once, in memory, runs that check. A file that is not gzipped (plain
    ``.nii``) is returned as opened.

    Raises:
        OSError, EOFError, zlib.error: a damaged (CRC mismatch) or truncated gzip stream.
    """
    with open(path, "rb") as file:
        if file.read(len(_GZIP_MAGIC)) != _GZIP_MAGIC:
            return image
        file.seek(0)
        content = gzip.decompress(file.read())
    return type(image).from_bytes(content)


def _finite_float32(data: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``data`` as float32; rejects NaN or infinite voxels and values beyond float32's range."""
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DatasetError(
            f"{path}: {what} has {bad} NaN or infinite voxel(s) out of {data.size}, "
            "expected finite values. Repair the file or remove the case."
        )
    with np.errstate(over="ignore"):  # overflow is counted and reported below
        converted = data.astype(np.float32, copy=False)
    if converted.dtype != data.dtype:
        overflow = int(np.count_nonzero(~np.isfinite(converted)))
        if overflow:
            largest = float(np.max(np.abs(data)))
            raise DatasetError(
                f"{path}: {what} has {overflow} voxel(s) out of {data.size} whose magnitude "
                f"(up to {largest:.3g}) exceeds float32's range ({np.finfo(np.float32).max:.3g}), "
                "expected values float32 can hold. Rescale the intensities and save the "
                "file as float32, or remove the case."
            )
    return converted


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
            A label that covers the image's grid with its axes flipped or permuted gets
            its own message (reorient it; copying the image header would misalign it).
    """
    image_affine, label_affine = np.asarray(image_affine), np.asarray(label_affine)
    same_shape = tuple(label_shape) == tuple(image_shape)
    difference = float(np.max(np.abs(label_affine - image_affine)))
    if same_shape and difference <= atol_mm:
        return
    axes = _reoriented_axes(image_shape, image_affine, label_shape, label_affine, atol_mm)
    if axes:
        raise DatasetError(
            f"{label_path}: label covers the image's voxel grid ({image_path}) but stores it "
            f"in another axis order ({axes}), expected the image's voxel order. Reorient the "
            "label to the image's order (nibabel: label.as_reoriented(ornt_transform("
            "io_orientation(label.affine), io_orientation(image.affine)))) or resample it "
            "onto the image grid; do not copy the image header onto it, that would "
            "misalign it."
        )
    if not same_shape:
        raise DatasetError(
            f"{label_path}: label shape {tuple(label_shape)} differs from image shape "
            f"{tuple(image_shape)} ({image_path}). Resample the label onto the image grid "
            "or remove the case."
        )
    raise DatasetError(
        f"{label_path}: label affine differs from the image affine ({image_path}) by up "
        f"to {difference:.4g} mm, expected at most {atol_mm:g} mm.\n"
        f"image affine:\n{np.round(image_affine, 4)}\nlabel affine:\n"
        f"{np.round(label_affine, 4)}\nCopy the image header onto the label if they "
        "truly share a grid, otherwise resample the label or remove the case."
    )


def _reoriented_axes(
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    atol_mm: float,
) -> str:
    """How a 3D label's voxel axes map onto the image's when it covers the same grid.

    Returns e.g. ``"label axis 0 = image axis 0 reversed"`` when reorienting the label
    (flipping and/or permuting its axes, no resampling) gives the image's shape and an
    affine within ``atol_mm`` of the image's; otherwise ``""`` (also when no flip or
    permutation is involved, or the affines have no clear axis directions).
    """
    if len(image_shape) != 3 or len(label_shape) != 3:
        return ""
    start = orientations.io_orientation(label_affine)
    end = orientations.io_orientation(image_affine)
    if np.isnan(start).any() or np.isnan(end).any():
        return ""
    transform = orientations.ornt_transform(start, end)
    reoriented = label_affine @ orientations.inv_ornt_aff(transform, label_shape)
    shape = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        shape[int(target)] = int(label_shape[axis])
    if tuple(shape) != tuple(image_shape) or np.max(np.abs(reoriented - image_affine)) > atol_mm:
        return ""
    return ", ".join(
        f"label axis {axis} = image axis {int(target)}{' reversed' if flip < 0 else ''}"
        for axis, (target, flip) in enumerate(transform)
        if int(target) != axis or flip < 0
    )


def check_label_values(label: np.ndarray, allowed: set[int], path: Path) -> None:
    """Check that a label map holds only whole numbers from ``allowed``.

    Args:
        label: label array of any shape and numeric dtype (floats must be integral).
        allowed: the valid label values, e.g. ``{0, 1, 2, 3}``.
        path: the label file, for the message.

    Raises:
        DatasetError: non-integer values (more than ``MAX_FRACTIONAL_LABEL_VALUES``
            distinct ones are reported as "not a label map"), or values outside ``allowed``
            (all offending values are listed with their voxel counts).
    """
    values, counts = np.unique(label, return_counts=True)
    if label.dtype.kind not in "iub":
        fractional = values[values != np.round(values)]
        if fractional.size > MAX_FRACTIONAL_LABEL_VALUES:
            examples = [float(f"{v:.4g}") for v in fractional[:5]]
            raise DatasetError(
                f"{path}: label has {fractional.size} distinct non-integer values (e.g. "
                f"{examples}), expected whole numbers in {sorted(allowed)}; "
                "it does not look like a label map. Check that the image and label files "
                "are not swapped, or replace it with the case's label map."
            )
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
    not_3d_message: Callable[[CaseRef, tuple[int, ...]], str] | None = None,
) -> Volume:
    """Load one labeled case into a :class:`Volume` and check it.

    Args:
        ref: the case; ``ref.label_path`` must not be ``None``.
        label_set: valid label values after merging, e.g. ``{0, 1, 2, 3}``.
        channel: channel of a 4D image to read (see :func:`load_nifti`); ``None`` for 3D.
        merge_labels: ``{source: target}`` remapping applied to the label on load; the
            raw file may hold the sources, the result holds only ``label_set`` values.
        not_3d_message: the reader's message for an image that is not 3D after channel
            selection, from the case and the shape found (default: set data.modality).

    Returns:
        A Volume with ``image`` float32 (X, Y, Z) in the file's intensity units,
        ``label`` uint8 (X, Y, Z), ``spacing`` the first three header zooms (mm),
        ``affine`` the image's 4x4 matrix, and ``meta`` = ``ref.meta`` plus the
        ``image_path`` / ``label_path`` strings. No preprocessing is applied.

    Raises:
        DatasetError: any problem found by :func:`load_nifti`,
            :func:`check_label_matches_image` or :func:`check_label_values`; an image
            that is not 3D after channel selection; a merge target outside ``label_set``.
    Warns:
        DatasetWarning: the label (after merging) holds background only.
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
        raise DatasetError((not_3d_message or _not_3d_message)(ref, image.shape))
    label, label_affine, _ = load_nifti(ref.label_path, what="label")
    check_label_matches_image(
        image.shape, affine, label.shape, label_affine, ref.image_path, ref.label_path
    )
    check_label_values(label, set(label_set) | set(merge_labels), ref.label_path)
    merged = label.astype(np.uint8)
    for source, target in merge_labels.items():
        merged[label == source] = target
    if not merged.any():
        warnings.warn(
            f"{ref.label_path}: the label of case {ref.case_id} is background (0) in every "
            "voxel, so the case teaches only background. If the label was exported empty "
            "or is the wrong file, replace it; if the structures are truly absent, keep it.",
            DatasetWarning,
            stacklevel=2,
        )
    meta = {**ref.meta, "image_path": str(ref.image_path), "label_path": str(ref.label_path)}
    return Volume(
        case_id=ref.case_id,
        image=image.astype(np.float32),
        label=merged,
        spacing=(zooms[0], zooms[1], zooms[2]),
        affine=affine,
        meta=meta,
    )


def _not_3d_message(ref: CaseRef, shape: tuple[int, ...]) -> str:
    """Why ``ref``'s image of ``shape`` is refused: multi-channel images are read one
    channel at a time through data.modality."""
    return (
        f"{ref.image_path}: expected a 3D image (X, Y, Z), found shape {shape}. "
        "For a 4D multi-modal image set data.modality; otherwise remove the case."
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
    suffix = nifti_suffix(path.name) or ""
    stem = path.name[: len(path.name) - len(suffix)]
    # lower case, so that nibabel knows the type (and compresses .nii.gz) whatever the case
    temporary = path.with_name(f".{stem}.partial-{os.getpid()}{suffix.lower()}")
    try:
        nib.save(image, str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
