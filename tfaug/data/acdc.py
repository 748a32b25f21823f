"""The ACDC reader (MICCAI 2017 cardiac cine MRI): end-systole frames and their labels.

Layout, per patient folder ``patientXXX/``::

    Info.cfg                         ED: 1 / ES: 12 / Group: DCM / Height / NbFrame / Weight
    patientXXX_4d.nii.gz             the whole cine sequence (never read)
    patientXXX_frameYY.nii.gz        one 3D frame; YY is 1-based, two digits
    patientXXX_frameYY_gt.nii.gz     its labels: 0 background, 1 RV, 2 Myo, 3 LV

Accepted roots: the folder holding ``training/`` (and optionally ``testing/``), a folder of
patient folders (e.g. ``training/`` itself), or the 2023 re-release root holding
``database/training`` and ``database/testing``. A ``testing/`` folder is read only when it
holds ground truth (``*_gt`` files, as in the re-release); the 2017 challenge's testing set
has none and is skipped. ``.nii`` is accepted as well as ``.nii.gz``. The synthetic phantom
(``tfaug/data/phantom.py``) is written in this layout and read by this module.
"""

from __future__ import annotations

import re
from collections import abc
from pathlib import Path
from typing import Any

from tfaug.data.nifti import read_volume
from tfaug.data.volume import CaseRef, DatasetError, Volume

ACDC_LABELS: frozenset[int] = frozenset({0, 1, 2, 3})
"""Label values of ACDC: 0 background, 1 RV, 2 Myo, 3 LV."""

_PATIENT = re.compile(r"patient\d+")
_SUFFIXES = (".nii.gz", ".nii")


def _number(text: str) -> int | float | str:
    """``"12"`` → 12, ``"184.0"`` → 184.0, anything else unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def read_info_cfg(path: Path) -> dict[str, Any]:
    """Parse an ACDC ``Info.cfg`` file (lines ``Key: value``).

    Returns:
        ``{key: value}`` with integers and decimals converted to ``int`` / ``float``
        (``ED``, ``ES``, ``NbFrame``, ``Height`` in cm, ``Weight`` in kg) and other
        values (``Group``) as stripped strings. Blank lines are skipped. Keys are not
        validated here.

    Raises:
        DatasetError: the file is missing or a line is not ``Key: value``.
    """
    if not path.is_file():
        raise DatasetError(
            f"{path}: Info.cfg not found; every ACDC patient folder holds one (ED, ES, Group, "
            "Height, NbFrame, Weight). Restore it from the ACDC download."
        )
    info: dict[str, Any] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, separator, value = line.partition(":")
        if not separator or not key.strip():
            raise DatasetError(
                f"{path}, line {number}: expected 'Key: value', found {line!r}. "
                "Restore Info.cfg from the ACDC download."
            )
        info[key.strip()] = _number(value.strip())
    return info


def _es_frame(info: dict[str, Any], path: Path) -> int:
    """The 1-based end-systole frame number from a parsed Info.cfg."""
    es = info.get("ES")
    if es is None:
        raise DatasetError(
            f"{path}: no 'ES' key, expected a line 'ES: <frame number>' (found keys "
            f"{sorted(info)}). Restore Info.cfg from the ACDC download."
        )
    if isinstance(es, float) and es.is_integer():
        es = int(es)
    frames = info.get("NbFrame")
    if not isinstance(es, int) or es < 1 or (isinstance(frames, int) and es > frames):
        raise DatasetError(
            f"{path}: ES = {es!r}, expected a frame number between 1 and NbFrame "
            f"({frames}). Correct Info.cfg."
        )
    return es


def _find_nifti(folder: Path, stem: str, what: str, es: int) -> Path:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists."""
    for suffix in _SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise DatasetError(
        f"{folder / stem}.nii.gz: {what} not found (nor .nii); Info.cfg gives ES = {es}. "
        "Restore the file from the ACDC download, or correct ES in Info.cfg."
    )


def acdc_case(folder: Path) -> CaseRef:
    """Describe one patient folder's end-systole frame without reading voxels.

    Returns:
        CaseRef with ``case_id`` the folder name, the ES frame and its ``_gt`` label, and
        ``meta``: ``group`` (from Info.cfg, never from the id), ``frame`` (ES, 1-based),
        ``subset`` (``training`` / ``testing``, the parent folder name) and ``info`` (the
        whole parsed Info.cfg).

    Raises:
        DatasetError: missing Info.cfg, ES or Group; missing frame or ``_gt`` file.
    """
    config = folder / "Info.cfg"
    info = read_info_cfg(config)
    es = _es_frame(info, config)
    group = info.get("Group")
    if not isinstance(group, str) or not group:
        raise DatasetError(
            f"{config}: no 'Group' key, expected e.g. 'Group: DCM' (NOR, MINF, DCM, HCM, RV). "
            "Restore Info.cfg from the ACDC download."
        )
    stem = f"{folder.name}_frame{es:02d}"
    return CaseRef(
        case_id=folder.name,
        image_path=_find_nifti(folder, stem, "end-systole frame", es),
        label_path=_find_nifti(folder, f"{stem}_gt", "end-systole label (_gt)", es),
        meta={"group": group, "frame": es, "subset": folder.parent.name, "info": info},
    )


def _has_ground_truth(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("patient*/patient*_gt.nii*"))


def _patient_folders(root: Path) -> list[Path]:
    """Every patient folder under one of the accepted roots (see the module docstring)."""
    base = root / "database" if (root / "database" / "training").is_dir() else root
    if (base / "training").is_dir():
        subsets = [base / "training"]
        if _has_ground_truth(base / "testing"):
            subsets.append(base / "testing")
    else:
        subsets = [base]
    folders = [
        path
        for subset in subsets
        for path in sorted(subset.iterdir())
        if path.is_dir() and _PATIENT.fullmatch(path.name)
    ]
    if not folders:
        raise DatasetError(
            f"{root}: no patientXXX folders found. Expected the ACDC folder holding "
            "training/ (and optionally testing/), the training/ folder itself, or the 2023 "
            "release holding database/training; see docs/datasets.md."
        )
    return folders


def scan_acdc(root: Path) -> tuple[list[CaseRef], list[str]]:
    """List an ACDC dataset, collecting per-case problems instead of raising.

    Returns:
        ``(cases, problems)``: the readable cases sorted by id, and one message per
        patient folder that could not be described (see :func:`acdc_case`), plus one per
        duplicated patient id. No voxel data is read.

    Raises:
        DatasetError: ``root`` is not a folder or holds no patient folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: ACDC folder not found. Pass the dataset folder.")
    cases: dict[str, CaseRef] = {}
    problems: list[str] = []
    for folder in _patient_folders(root):
        try:
            case = acdc_case(folder)
        except DatasetError as error:
            problems.append(str(error))
            continue
        if case.case_id in cases:
            problems.append(
                f"{folder}: patient id {case.case_id} also found at "
                f"{cases[case.case_id].image_path.parent}. Keep one copy."
            )
            continue
        cases[case.case_id] = case
    return [cases[key] for key in sorted(cases)], problems


def load_acdc(ref: CaseRef, *, label_set: abc.Set[int] = ACDC_LABELS) -> Volume:
    """Load one ACDC case (its ES frame) as a :class:`Volume`.

    Returns:
        ``image`` float32 (X, Y, Z) in scanner units (not normalised), ``label`` uint8
        (X, Y, Z) with values in ``label_set``, ``spacing`` in mm from the header.

    Raises:
        DatasetError: unreadable files, a non-3D frame, a label off the image grid, NaN
            voxels or label values outside ``label_set``.
    """
    return read_volume(ref, label_set=set(label_set))
