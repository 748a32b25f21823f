"""The voxel order of the training volumes, recorded at export and restored at segmentation.

tfaug segments slice by slice along the third voxel axis, in the voxel order the volumes are
stored in; nothing reorients them during training. A scanner or converter may store the
same anatomy with the in-plane axes flipped or swapped (RAS against LAS, say), which the
network then sees mirrored. So ``tfaug export`` records the training volumes' axis codes
(``nib.aff2axcodes``: the world direction, R/L, A/P or S/I, each voxel axis points to) in
export.json, and ``tfaug segment`` brings an input with the same slice axis to them before
preprocessing and its probabilities back afterwards. Reorienting everything to RAS, as
MONAI's ``Orientation`` does, is not done: for an oblique short-axis stack it can move the
slice axis.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from tfaug.config import Config
from tfaug.data.datasets import list_cases
from tfaug.data.nifti import read_header
from tfaug.data.records import dataset_folder
from tfaug.data.volume import DatasetError, DatasetWarning

ORIENTATION_KEY = "orientation"
"""export.json key of :func:`training_orientation` (absent in older exports)."""


def _training_axcodes(cfg: Config) -> list[tuple[str, str, str]]:
    """Axis codes (``nib.aff2axcodes``) of every listed case's image, from its header only.

    Raises:
        DatasetError: the dataset folder is missing or cannot be listed, a header cannot be
            read, or no affine gives axis codes.
    """
    root = dataset_folder(cfg)
    codes = [nib.aff2axcodes(read_header(ref.image_path)[1]) for ref in list_cases(cfg.data, root)]
    usable = [triple for triple in codes if None not in triple]
    if not usable:
        raise DatasetError(f"{root}: no training image with a usable affine")
    return usable


def training_orientation(cfg: Config) -> dict[str, Any] | None:
    """Voxel-axis orientation codes of the run's training volumes, read from their headers.

    Every case :func:`tfaug.data.datasets.list_cases` lists is opened header-only (no voxel
    is read) and its affine turned into axis codes.

    Returns:
        ``{"axcodes": ["R", "A", "S"], "all_agree": bool, "agreeing": k, "volumes": n}``:
        the most common code triple, whether every volume has it, how many do, and how many
        volumes were read. ``None`` when the dataset is not readable on this machine
        (export elsewhere): a :class:`DatasetWarning` says so, export.json then has no
        ``orientation`` and ``tfaug segment`` does not check the voxel order of its inputs.
    """
    try:
        codes = _training_axcodes(cfg)
    except DatasetError as error:
        warnings.warn(
            f"training volumes not readable on this machine ({error}); export.json records no "
            f"'{ORIENTATION_KEY}', so 'tfaug segment' will not check the voxel order of its "
            "inputs. Export where the training data is to record it",
            DatasetWarning,
            stacklevel=2,
        )
        return None
    common, count = Counter(codes).most_common(1)[0]
    return {
        "axcodes": list(common),
        "all_agree": count == len(codes),
        "agreeing": count,
        "volumes": len(codes),
    }


def _varied_note(recorded: dict[str, Any]) -> str:
    """'' when the training volumes agreed, else a clause saying how many had these codes."""
    if recorded.get("all_agree", True):
        return ""
    agreeing = recorded.get("agreeing", "most")
    return (
        f" (the training volumes' own orientations varied: {agreeing} of "
        f"{recorded.get('volumes', '?')} had these codes, so the model may have seen this one)"
    )


def orientation_transform(
    affine: np.ndarray, manifest: dict[str, Any], name: str = "image"
) -> np.ndarray | None:
    """How to reorder an input's voxel axes so that it is stored like the training volumes.

    The axis codes (``nib.aff2axcodes``) of ``affine`` are compared with the training volumes'
    recorded in export.json (``orientation.axcodes``). tfaug segments slice by slice along the
    third voxel axis, so only flips and a swap of the two in-plane axes are undone; the slice
    axis is never moved (reorienting to RAS as a whole could move it for an oblique stack).

    Args:
        affine: the input's 4x4 voxel-to-world matrix (mm).
        manifest: the parsed export.json.
        name: the input's path, for the messages.

    Returns:
        A (3, 2) nibabel orientation for :func:`nibabel.orientations.apply_orientation`
        (row i: the axis input axis i becomes, and -1 where it is flipped) when the input's
        third voxel axis lies along the training volumes' slice axis but its codes differ; a
        :class:`DatasetWarning` names the file and both codes. ``None`` when nothing is to
        be done: export.json records no orientation (older exports, or exported away from the
        training data), the codes are the training codes, or the input's third voxel axis
        lies along another world axis than the training volumes' (then a
        :class:`DatasetWarning` names the file, both codes and the fix, and the input is
        segmented as stored).
    """
    recorded = manifest.get(ORIENTATION_KEY)
    codes = nib.aff2axcodes(affine)
    if recorded is None or None in codes:
        return None
    training = tuple(recorded["axcodes"])
    if codes == training:
        return None
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(training))
    if int(transform[2, 0]) != 2:
        warnings.warn(
            f"{name}: voxel axes {''.join(codes)} put the slice axis (the third voxel axis) "
            f"along {codes[2]}, the training volumes' ({''.join(training)}) along "
            f"{training[2]}{_varied_note(recorded)}; segmented as stored, in slices of another "
            "plane than most training volumes. Resample or reorient the volume so that its "
            "third voxel axis is the slice axis, as in the training volumes",
            DatasetWarning,
            stacklevel=2,
        )
        return None
    warnings.warn(
        f"{name}: voxel axes {''.join(codes)} reoriented to the training volumes' "
        f"{''.join(training)} for segmentation; the labels are written on the input's own grid",
        DatasetWarning,
        stacklevel=2,
    )
    return transform


def reorient_input(
    image: np.ndarray, nifti: nib.Nifti1Image, transform: np.ndarray
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """An input in the voxel order ``transform`` gives, with the geometry to match.

    Args:
        image: float32 (X, Y, Z) voxels.
        nifti: the input file (affine and zooms are read, not its voxels).
        transform: a (3, 2) orientation from :func:`orientation_transform`.

    Returns:
        ``(image, nifti)``: the reordered voxels, and a NIfTI holding them whose affine maps
        each voxel to the same world position (mm) as before and whose zooms are reordered
        alike.
    """
    affine = nifti.affine @ inv_ornt_aff(transform, image.shape[:3])
    data = np.ascontiguousarray(apply_orientation(image, transform))
    reoriented = nib.Nifti1Image(data, affine)
    zooms = nifti.header.get_zooms()[:3]
    sources = np.argsort(transform[:, 0])  # new axis j holds input axis sources[j]
    reoriented.header.set_zooms([zooms[int(i)] for i in sources])
    return data, reoriented


def inverse_orientation(transform: np.ndarray) -> np.ndarray:
    """The (3, 2) orientation that undoes ``transform`` (each axis back, with the same flip)."""
    targets = transform[:, 0].astype(int)
    inverse = np.empty_like(transform)
    inverse[targets, 0] = np.arange(len(transform))
    inverse[targets, 1] = transform[:, 1]
    return inverse
