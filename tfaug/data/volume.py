"""The objects every dataset reader returns.

A reader first *lists* a dataset (cheap: file paths and metadata, as :class:`CaseRef`)
and then *loads* one case at a time (as :class:`Volume`), so a 281-case CT dataset is
never held in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """A dataset folder or file is missing, malformed or inconsistent.

    The message names the file, what was expected, what was found, and the fix.
    """


class DatasetWarning(UserWarning):
    """A volume was accepted after a change the user should know about.

    The message names the file, what was found and what was done with it (e.g. negative
    voxels clipped before N4, or a preprocessing setting overridden at inference).
    """


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk, before anything is read.

    Attributes:
        case_id: stable identifier, e.g. ``"patient001"`` or ``"prostate_16"``.
        image_path: the image NIfTI file.
        label_path: the label NIfTI file, or ``None`` for an unlabeled case.
        meta: dataset-specific metadata (ACDC: ``group``, ``frame``, ``info``).
    """

    case_id: str
    image_path: Path
    label_path: Path | None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Volume:
    """One 3D image with its label map, in the file's voxel order.

    Attributes:
        case_id: as in :class:`CaseRef`.
        image: float32 array of shape (X, Y, Z); slices are ``image[:, :, k]``.
        label: uint8 array of shape (X, Y, Z) with values in the dataset's label set,
            or ``None`` for an unlabeled case.
        spacing: voxel size (sx, sy, sz) in mm.
        affine: 4x4 voxel-to-world matrix of the image file.
        meta: metadata from the reader plus ``image_path`` / ``label_path`` strings.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[2])
