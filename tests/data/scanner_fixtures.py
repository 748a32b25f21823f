"""Writers of untidy scanner data for tests: MR with a negative tail, CT, DICOM series.

Use from any test (``tests/`` is on ``sys.path`` through its conftest)::

    from data.scanner_fixtures import mr_with_negative_tail, write_dicom_series

Volumes are (X, Y, Z) arrays in the file's voxel order, as nibabel and tfaug read them. DICOM
series are written with SimpleITK (GDCM) one slice per file, with the tags a scanner writes
(ImagePositionPatient, ImageOrientationPatient, SeriesInstanceUID, SeriesDescription, ...), and
file names that do not follow the slice order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
from scipy import ndimage

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACING_BETWEEN_SLICES = "0018|0088"
"""Written by GDCM into every file from the image's slice spacing, whatever its metadata says."""


def _ellipse(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """bool (X, Y): inside the ellipse of ``radii`` (voxels) around ``centre`` (voxels from the
    middle)."""
    x, y = np.meshgrid(
        np.arange(shape[0]) - shape[0] / 2, np.arange(shape[1]) - shape[1] / 2, indexing="ij"
    )
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 < 1


def mr_with_negative_tail(shape: Sequence[int] = (96, 80, 6), seed: int = 0) -> np.ndarray:
    """int16 (X, Y, Z) MR-like volume whose cubic-spline rotation left a small negative tail.

    A body (450) with an organ (800) under a smooth multiplicative bias, non-negative noise,
    then every slice rotated by 7° with a cubic spline (as registration does): the spline
    overshoots below zero beside the sharp edges, a few % of the voxels down to about −90.
    """
    rng = np.random.default_rng(seed)
    body, organ = _ellipse(shape, (0, 0), (36, 28)), _ellipse(shape, (8, 0), (12, 10))
    plane = np.where(organ, 800.0, np.where(body, 450.0, 0.0))
    bias = np.exp(0.3 * np.arange(shape[0]) / shape[0])[:, None]
    noise = rng.normal(0.0, 4.0, shape) * body[..., None]
    volume = np.abs((plane * bias)[..., None] + noise)
    rotated = ndimage.rotate(volume, 7.0, axes=(0, 1), reshape=False, order=3, mode="constant")
    return np.round(rotated).astype(np.int16)


def ct_volume(shape: Sequence[int] = (96, 80, 6), seed: int = 0) -> np.ndarray:
    """int16 (X, Y, Z) abdominal CT in Hounsfield units, the body filling the field of view.

    Soft tissue 40 ± 10 HU, a fat layer (−100 HU), bowel gas (−1000 HU) and a vertebra (700 HU):
    far fewer than half the voxels are negative, but the negative tail reaches −1000.
    """
    rng = np.random.default_rng(seed)
    inner, gas = _ellipse(shape, (0, 0), (46, 38)), _ellipse(shape, (-15, 10), (8, 6))
    bone = _ellipse(shape, (0, -25), (7, 6))
    plane = np.where(inner, 40.0, -100.0)
    plane[gas], plane[bone] = -1000.0, 700.0
    return np.round(plane[..., None] + rng.normal(0.0, 10.0, shape)).astype(np.int16)


def signed_volume(shape: Sequence[int] = (96, 80, 6), seed: int = 0) -> np.ndarray:
    """int16 (X, Y, Z) phase-like data in [−3142, 3142]: about half the voxels negative."""
    return np.round(np.random.default_rng(seed).uniform(-3142, 3142, shape)).astype(np.int16)


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a DICOM series lies, in DICOM's patient coordinates (LPS, mm).

    Attributes:
        spacing: (column spacing, row spacing, slice distance) in mm.
        origin: position of the first voxel of the first slice.
        direction: 3x3, columns = the row direction, the column direction, the slice normal.
    """

    spacing: tuple[float, float, float] = (0.8, 0.9, 3.5)
    origin: tuple[float, float, float] = (10.0, -20.0, 30.0)
    direction: tuple[float, ...] = tuple(
        (
            np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]])
            @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0.0]])  # coronal, then turned 17°
        ).ravel()
    )

    def nifti_affine(self) -> np.ndarray:
        """The 4x4 NIfTI (RAS) voxel-to-world matrix of this geometry."""
        matrix = np.array(self.direction).reshape(3, 3) * np.array(self.spacing)
        affine = np.eye(4)
        affine[:3, :3] = LPS_TO_RAS @ matrix
        affine[:3, 3] = LPS_TO_RAS @ np.array(self.origin)
        return affine


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    geometry: SeriesGeometry | None = None,
    uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
    description: str = "t2_tse tra/4mm",
    modality: str = "MR",
    file_order: Sequence[int] | None = None,
    rescale: Sequence[tuple[float, float]] | None = None,
    gantry_tilt: float = 0.0,
    spacing_between_slices: float | None = None,
    tags: Mapping[str, str | None] | None = None,
) -> list[Path]:
    """Write an int16 (X, Y, Z) volume as a DICOM series, one file per slice.

    Args:
        folder: created if needed.
        volume: int16 (X, Y, Z); slice k is ``volume[:, :, k]``.
        geometry: spacing, origin, direction (:class:`SeriesGeometry` by default).
        uid: SeriesInstanceUID.
        description: SeriesDescription.
        modality: Modality tag.
        file_order: the number in the file name of each slice (default: reversed order), so
            sorting by name does not sort by position.
        rescale: (RescaleSlope, RescaleIntercept) of each slice (default: none written); the
            file then means ``volume * slope + intercept``, e.g. a slope of 0.01 on all slices
            but the first (PET, some Philips MR).
        gantry_tilt: degrees; each slice's ImagePositionPatient moves along the column
            direction by ``k * slice distance * tan(tilt)`` (a sheared stack, as a CT acquired
            with a tilted gantry), and GantryDetectorTilt is written.
        spacing_between_slices: SpacingBetweenSlices, mm (default: the slice distance, as MR
            scanners write it); GDCM writes it from each file's slice spacing.
        tags: more tags for every slice ("gggg|eeee" to value), replacing the defaults; a
            value of None leaves the tag out (e.g. ``{"0018|0050": None}``: no SliceThickness),
            or for SpacingBetweenSlices, which GDCM always writes, empties it (as a scanner
            may leave a type 2 tag).

    Returns:
        The files written, in slice order.
    """
    geometry = geometry or SeriesGeometry()
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.astype(np.int16).transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    direction = np.array(geometry.direction).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in [*direction[:, 0], *direction[:, 1]])
    order = list(file_order) if file_order is not None else list(range(volume.shape[2]))[::-1]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    shear = np.tan(np.deg2rad(gantry_tilt)) * geometry.spacing[2] * direction[:, 1]
    for k in range(volume.shape[2]):
        position = np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) + k * shear
        slice_tags = {
            "0008|0060": modality,
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": uid,
            "0020|0011": "3",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{geometry.spacing[2]:g}",
        }
        if gantry_tilt:
            slice_tags["0018|1120"] = f"{gantry_tilt:g}"
        slice_image = image[:, :, k : k + 1]  # one slice, 3D: its spacing is written
        slice_image.SetSpacing(
            (*geometry.spacing[:2], spacing_between_slices or geometry.spacing[2])
        )
        if rescale is not None:
            slice_image, rescale_tags = _rescaled(slice_image, *rescale[k])
            slice_tags.update(rescale_tags)
        slice_tags.update(tags or {})
        for tag, value in slice_tags.items():
            if value is not None:
                slice_image.SetMetaData(tag, value)
        path = folder / f"IM{order[k]:04d}"
        writer.SetFileName(str(path))
        writer.SetImageIO("GDCMImageIO")
        writer.Execute(slice_image)
        if SPACING_BETWEEN_SLICES in slice_tags and slice_tags[SPACING_BETWEEN_SLICES] is None:
            _empty_spacing_between_slices(path)
        written.append(path)
    return written


def _empty_spacing_between_slices(path: Path) -> None:
    """Blank the value of SpacingBetweenSlices (0018,0088) in ``path`` in place with spaces of
    the same length, so readers find it empty (little endian, implicit VR as GDCM writes by
    default, or explicit VR "DS")."""
    data = bytearray(path.read_bytes())
    start = data.find(b"\x18\x00\x88\x00")
    assert start >= 0, f"{path}: no SpacingBetweenSlices element"
    if data[start + 4 : start + 6] == b"DS":  # explicit VR: 2-byte length
        value, length = start + 8, int.from_bytes(data[start + 6 : start + 8], "little")
    else:  # implicit VR: 4-byte length
        value, length = start + 8, int.from_bytes(data[start + 4 : start + 8], "little")
    data[value : value + length] = b" " * length
    path.write_bytes(bytes(data))


def _rescaled(slice_image: sitk.Image, slope: float, intercept: float) -> tuple[sitk.Image, dict]:
    """An int16 slice as the float32 values it means with ``slope`` and ``intercept``, and the
    tags with which GDCM stores them back as int16 with that RescaleSlope/Intercept (GDCM
    refuses a non-integer slope on an integer image)."""
    values = sitk.Cast(slice_image, sitk.sitkFloat32) * slope + intercept
    values.CopyInformation(slice_image)
    tags = {
        "0028|1053": f"{slope:g}",
        "0028|1052": f"{intercept:g}",
        "0028|0100": "16",  # BitsAllocated, BitsStored, HighBit, PixelRepresentation (signed)
        "0028|0101": "16",
        "0028|0102": "15",
        "0028|0103": "1",
    }
    return values, tags


def write_multiframe_dicom(path: Path, volume: np.ndarray) -> Path:
    """Write an (X, Y, Z) volume as ONE multi-frame DICOM file (NumberOfFrames = Z), uint16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(volume.astype(np.uint16).transpose(2, 1, 0))
    )
    image.SetSpacing((0.8, 0.9, 3.0))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.Execute(image)
    return path


def write_colour_dicom_series(folder: Path, slices: int, uid: str) -> list[Path]:
    """Write a series of ``slices`` uint8 RGB files (16 x 20 pixels, 2 mm apart, axial), as a
    screenshot or fused-overlay series is stored; returns the files in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    for k in range(slices):
        rgb = sitk.GetImageFromArray(np.full((16, 20, 3), 40 * k, np.uint8), isVector=True)
        tags = {
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, value in tags.items():
            rgb.SetMetaData(tag, value)
        path = folder / f"IM{k}"
        writer.SetFileName(str(path))
        writer.SetImageIO("GDCMImageIO")
        writer.Execute(rgb)
        written.append(path)
    return written
