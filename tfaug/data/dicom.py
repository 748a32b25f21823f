"""Reading DICOM series with SimpleITK: one folder, one series, one 3D volume.

GDCM (through SimpleITK's ``ImageSeriesReader``) groups a folder's files by
SeriesInstanceUID; the slices are then sorted here by their position along the slice normal
(ImagePositionPatient · normal), never by file name (GDCM's own sort falls back to the names
when positions repeat). Before the pixels are read, every file's header is checked: one
frame per file (multi-frame files are refused), grey levels (colour files are refused), one
orientation and one in-plane size, evenly spaced slice positions (a gap or a repeated
position means missing slices or several stacks in one series), and positions stacked along
the slice normal (a drift in the slice plane is a gantry-tilted, sheared stack, which one
affine cannot describe; it is refused, not resampled). Every problem raises a
:class:`~tfaug.data.volume.DatasetError` naming the folder, what was expected, what was found
and the fix.

The volume is returned as tfaug reads NIfTI files: float32 (X, Y, Z) in the file's
intensity units (each slice's own RescaleSlope and RescaleIntercept applied by GDCM; the
series is read as float32, so slices scaled differently, as in PET, keep their fractions),
X along the rows' direction (columns), Y down the rows, Z the sorted slices, with the 4x4
NIfTI (RAS) voxel-to-world matrix of the series' spacing, origin and direction (DICOM's LPS
axes, x and y negated).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)

from tfaug.data.volume import DatasetError, DatasetWarning

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACING_TOLERANCE = 0.01
"""Largest relative deviation of a gap between slice positions from their median."""
ORIENTATION_TOLERANCE = 1e-4
TILT_TOLERANCE = 0.1
"""Largest in-plane drift of a slice's position from the first slice's normal, as a fraction of
the smaller in-plane pixel spacing, accepted as an unsheared stack.

A gantry-tilted series (a sheared stack) drifts by ``distance along the normal * tan(tilt)``,
e.g. 5.5 mm over 15 mm at 20°; one affine cannot describe it, and ignoring the drift misplaces
each slice by its drift. Below a tenth of a pixel that misplacement is below the grid's own
resolution, and well above the rounding of positions and orientation cosines as scanners
write them (about 1e-3 mm over a 300 mm stack for cosines given to 6 digits).
"""
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".json", ".txt", ".md", ".csv", ".yaml", ".yml")
"""Files never handed to GDCM when looking for series (so NIfTI folders are not scanned)."""

TAGS = {
    "description": "0008|103e",
    "frames": "0028|0008",
    "position": "0020|0032",
    "orientation": "0020|0037",
    "slice_thickness": "0018|0050",
    "spacing_between_slices": "0018|0088",
}


@contextmanager
def _itk_warnings_muted() -> Iterator[None]:
    """Silence ITK's console warnings (e.g. "No Series were found") for the block."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _candidate_files(folder: Path) -> list[Path]:
    """The visible files of ``folder`` that may be DICOM (any name; NIfTI, JSON, text excluded)."""
    return [
        path
        for path in sorted(folder.iterdir())
        if path.is_file()
        and not path.name.startswith(".")
        and not path.name.lower().endswith(NOT_DICOM_SUFFIXES)
    ]


def series_uids(folder: Path) -> list[str]:
    """The SeriesInstanceUIDs of the DICOM files directly in ``folder`` (not below), sorted.

    Returns an empty list for a folder without DICOM files, without scanning NIfTI files.
    """
    if not _candidate_files(folder):
        return []
    with _itk_warnings_muted():
        return sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def series_files(folder: Path, uid: str) -> list[Path]:
    """The files of series ``uid`` in ``folder``, sorted by position along the slice normal."""
    with _itk_warnings_muted():
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    return [Path(name) for name in names]


def find_series_folders(
    root: Path, _seen: set[Path] | None = None
) -> Iterator[tuple[Path, list[str]]]:
    """``(folder, series uids)`` for ``root`` and every folder below it holding DICOM files.

    Folders are visited in sorted order, each once (a symbolic link back up is not followed
    again); hidden folders (``.*``) are skipped.
    """
    seen = set() if _seen is None else _seen
    if root.resolve() in seen:
        return
    seen.add(root.resolve())
    uids = series_uids(root)
    if uids:
        yield root, uids
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        yield from find_series_folders(child, seen)


def mixed_series_message(folder: Path, uids: Sequence[str]) -> str:
    """Why a folder holding several series is not segmented, listing them."""
    listed = "; ".join(
        f"{uid} ({len(series_files(folder, uid))} files, '{_description(folder, uid)}')"
        for uid in uids
    )
    return (
        f"{folder}: expected one DICOM series per folder, found {len(uids)}: {listed}. Move "
        "each series into its own folder (one folder per SeriesInstanceUID) and pass their "
        "parent folder"
    )


def _description(folder: Path, uid: str) -> str:
    files = series_files(folder, uid)
    return _header_value(_read_header(files[0]), "description") if files else ""


def _read_header(path: Path) -> sitk.ImageFileReader:
    """A reader holding ``path``'s header (no pixel data read)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise DatasetError(
            f"{path}: cannot read the DICOM header ({str(error).strip().splitlines()[-1]}); "
            "the file is damaged or not DICOM. Remove it or re-export the series"
        ) from error
    return reader


def _header_value(reader: sitk.ImageFileReader, name: str) -> str:
    """A tag's value without DICOM's padding (trailing spaces, NUL); '' if absent."""
    tag = TAGS[name]
    return reader.GetMetaData(tag).strip(" \x00") if reader.HasMetaDataKey(tag) else ""


def _numbers(text: str, count: int, path: Path, what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        values = np.array([])
    if values.size != count:
        raise DatasetError(
            f"{path}: expected {what} ({count} numbers), found {text!r}; the slices cannot be "
            "placed in space. Export the series with its geometry tags, or convert it to NIfTI"
        )
    return values


def _check_grey(folder: Path, path: Path, reader: sitk.ImageFileReader) -> None:
    """Raise for a colour file: read as float32, SimpleITK would turn it into grey silently."""
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise DatasetError(
            f"{folder}: expected a grey-level series, found {components} component(s) per "
            f"voxel in {path.name} (a colour image, e.g. a screenshot or a fused overlay); "
            "segment the grey-level series it was made from, or convert it to NIfTI"
        )


def _check_frames(folder: Path, path: Path, reader: sitk.ImageFileReader) -> None:
    frames = _header_value(reader, "frames")
    size = reader.GetSize()
    if (frames and int(float(frames)) > 1) or (len(size) > 2 and size[2] > 1):
        raise DatasetError(
            f"{folder}: {path.name} is a multi-frame DICOM file ({frames or size[2]} frames); "
            "expected one slice per file. Convert the series to NIfTI (e.g. with dcm2niix) and "
            "segment the .nii.gz"
        )


def sort_slices(folder: Path, files: Sequence[Path]) -> list[Path]:
    """A series' files sorted by position along the slice normal, after checking their headers.

    Raises:
        DatasetError: a multi-frame or colour file, differing orientations or sizes, missing
            geometry tags, slice positions that are repeated or unevenly spaced, or that
            drift in the slice plane (gantry tilt).
    """
    readers = [_read_header(path) for path in files]
    for path, reader in zip(files, readers, strict=True):
        _check_frames(folder, path, reader)
        _check_grey(folder, path, reader)
    if len(files) < 2:
        return list(files)
    sizes = {tuple(reader.GetSize()[:2]) for reader in readers}
    orientations = [
        _numbers(_header_value(r, "orientation"), 6, p, "ImageOrientationPatient")
        for p, r in zip(files, readers, strict=True)
    ]
    if len(sizes) > 1 or np.ptp(np.array(orientations), axis=0).max() > ORIENTATION_TOLERANCE:
        raise DatasetError(
            f"{folder}: the slices of one series differ in size ({sorted(sizes)}) or "
            "orientation; expected one stack. Split the series into one folder per stack"
        )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    positions = np.array(
        [
            _numbers(_header_value(r, "position"), 3, p, "ImagePositionPatient")
            for p, r in zip(files, readers, strict=True)
        ]
    )
    order = np.argsort(positions @ normal, kind="stable")
    _check_gaps(folder, np.diff(positions[order] @ normal))
    _check_tilt(folder, positions[order], orientations[0], min(readers[0].GetSpacing()[:2]))
    return [files[i] for i in order]


def _check_gaps(folder: Path, gaps: np.ndarray) -> None:
    """Raise unless the distances between consecutive sorted slices (mm) are equal, non-zero."""
    median = float(np.median(gaps))
    deviation = float(np.max(np.abs(gaps - median)))
    if median < 1e-3 or gaps.min() < 1e-3 or deviation > SPACING_TOLERANCE * median:
        shown = ", ".join(f"{g:.3g}" for g in gaps[:12])
        raise DatasetError(
            f"{folder}: expected evenly spaced slices, found distances between consecutive "
            f"slice positions of {shown} mm; slices are missing, repeated (several time points "
            "or echoes in one series) or unevenly spaced. Export the complete series, or "
            "split it into one folder per stack"
        )


def _check_tilt(folder: Path, positions: np.ndarray, orientation: np.ndarray, pixel: float) -> None:
    """Raise if the sorted slices' positions drift in the slice plane (a gantry-tilted stack).

    Args:
        positions: (N, 3) ImagePositionPatient of the sorted slices, mm.
        orientation: (6,) ImageOrientationPatient, the row then the column direction.
        pixel: the smaller in-plane pixel spacing, mm (:data:`TILT_TOLERANCE` is a fraction
            of it).
    """
    steps = positions - positions[0]
    drift = np.linalg.norm(steps @ np.stack([orientation[:3], orientation[3:]]).T, axis=1)
    worst = int(np.argmax(drift))
    if drift[worst] <= TILT_TOLERANCE * pixel:
        return
    along = float(steps[worst] @ np.cross(orientation[:3], orientation[3:]))
    tilt = float(np.degrees(np.arctan2(drift[worst], along)))
    raise DatasetError(
        f"{folder}: expected the slices stacked along their normal, found their positions "
        f"drifting in the slice plane by {drift[worst]:.3g} mm over {along:.3g} mm, a gantry "
        f"tilt of {tilt:.1f}° (a sheared stack, which one affine cannot place without "
        "misplacing every slice but the first). Convert the series with dcm2niix, which also "
        "writes a copy resampled onto an unsheared grid (the file ending in _Tilt_1), and "
        "segment that NIfTI file"
    )


def nifti_affine(image: sitk.Image) -> np.ndarray:
    """The 4x4 NIfTI (RAS) voxel-to-world matrix of a SimpleITK (LPS) image, in mm."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=np.float64)
    return affine


def nifti_like_series(image: np.ndarray, affine: np.ndarray, description: str) -> nib.Nifti1Image:
    """A NIfTI image of ``image`` (X, Y, Z) with the series' geometry (qform and sform
    'scanner', zooms in mm) and its SeriesDescription; outputs are written with its header."""
    nifti = nib.Nifti1Image(image, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    nifti.header.set_xyzt_units("mm", "sec")
    nifti.header["descrip"] = description.encode("ascii", "replace")[:79]
    return nifti


def read_series(folder: Path, uid: str) -> tuple[np.ndarray, nib.Nifti1Image, str]:
    """Read DICOM series ``uid`` of ``folder`` as one 3D volume.

    Returns:
        ``(image, nifti, description)``: float32 (X, Y, Z) intensities, a NIfTI image of them
        with the series' spacing, origin and direction (its affine and header are what the
        label volume is written with), and the SeriesDescription ('' if absent).

    A series of one file takes its slice spacing from SpacingBetweenSlices, else SliceThickness,
    else 1 mm with a :class:`~tfaug.data.volume.DatasetWarning` naming the file.

    Raises:
        DatasetError: no file of that series, any problem of :func:`sort_slices`, or a file
            SimpleITK cannot read.
    """
    files = series_files(folder, uid)
    if not files:
        raise DatasetError(f"{folder}: no DICOM file of series {uid} found")
    files = sort_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in files])
    # Each slice in its own rescaled values: by default the series would be read with the
    # first slice's pixel type, truncating the others' when their RescaleSlope differs.
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _itk_warnings_muted():
            volume = reader.Execute()
    except RuntimeError as error:
        raise DatasetError(
            f"{folder}: cannot read DICOM series {uid} "
            f"({str(error).strip().splitlines()[-1]}); re-export the series or convert it to NIfTI"
        ) from error
    if volume.GetDimension() != 3 or volume.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"{folder}: expected a 3D grey-level series, found {volume.GetDimension()}D with "
            f"{volume.GetNumberOfComponentsPerPixel()} component(s) per voxel; convert it to NIfTI"
        )
    header = _read_header(files[0])
    if len(files) == 1:
        volume.SetSpacing((*volume.GetSpacing()[:2], _one_slice_spacing(files[0], header)))
    image = np.ascontiguousarray(sitk.GetArrayFromImage(volume).transpose(2, 1, 0), np.float32)
    description = _header_value(header, "description")
    return image, nifti_like_series(image, nifti_affine(volume), description), description


def _one_slice_spacing(path: Path, header: sitk.ImageFileReader) -> float:
    """The slice spacing (mm) of a series of one file, which has no second position to measure
    it from: SpacingBetweenSlices, else SliceThickness, else 1 mm with a
    :class:`~tfaug.data.volume.DatasetWarning` naming the file."""
    for name in ("spacing_between_slices", "slice_thickness"):
        try:
            value = abs(float(_header_value(header, name)))
        except ValueError:  # absent ('') or not a number
            continue
        if np.isfinite(value) and value > 0:
            return value
    warnings.warn(
        f"{path}: a series of one slice without SpacingBetweenSlices or SliceThickness; its "
        "slice spacing is taken as 1 mm, so the label's affine and pixdim say 1 mm along the "
        "slice normal. Write the slice thickness into the label's header if you need it",
        DatasetWarning,
        stacklevel=3,
    )
    return 1.0


def safe_file_name(text: str, fallback: str = "series") -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by ``_``, without leading or trailing ``.``/``_``/``-``; ``fallback`` if empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or fallback


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False
