"""The ACDC reader (MICCAI 2017 cardiac cine MRI): end-systole (and end-diastole) frames.

Layout, per patient folder ``patientXXX/``::

    Info.cfg                         ED: 1 / ES: 12 / Group: DCM / Height / NbFrame / Weight
    patientXXX_4d.nii.gz             the whole cine sequence (never read)
    patientXXX_frameYY.nii.gz        one 3D frame; YY is 1-based, two digits
    patientXXX_frameYY_gt.nii.gz     its labels: 0 background, 1 RV, 2 Myo, 3 LV

Accepted roots: the folder holding ``training/`` (and optionally ``testing/``), a folder of
patient folders (e.g. ``training/`` itself), or the 2023 re-release root holding
``database/training`` and ``database/testing``. A ``testing/`` folder is read only when it
holds ground truth (``*_gt`` files, as in the re-release); the 2017 challenge's testing set
has none and is skipped. ``.nii`` is accepted as well as ``.nii.gz``, and file names match in
any case (``patient001_frame12.NII.GZ``), as they do on macOS and Windows disks; two files
matching one expected name (``_gt.nii`` and ``_gt.nii.gz``) are an error. A file used by two
cases (a frame linked to another patient's file) is an error too. The synthetic phantom
(``tfaug/data/phantom.py``) is written in this layout and read by this module.

Frames (``data.frames``): ``es`` (the default, the paper's protocol) gives one case per
patient, its end-systole frame, with the patient folder's name as case id. ``both`` (the
semi-supervised literature's protocol) gives two cases per patient, ``patientXXX_ED`` and
``patientXXX_ES``; their ``meta["patient"]`` names the patient so that a split keeps both
frames of a patient in one set.
"""

from __future__ import annotations

import re
from collections import abc
from pathlib import Path
from typing import Any

from tfaug.data.inputs import NIFTI_SUFFIXES, is_nifti_name, nifti_stem, reused_file_problem
from tfaug.data.nifti import read_volume
from tfaug.data.volume import CaseRef, DatasetError, Volume

ACDC_LABELS: frozenset[int] = frozenset({0, 1, 2, 3})
"""Label values of ACDC: 0 background, 1 RV, 2 Myo, 3 LV."""

FRAMES: tuple[str, ...] = ("es", "both")
"""Values of ``data.frames``: the ES frame only, or the ED and the ES frame of every patient."""

_PATIENT = re.compile(r"patient\d+")
_FRAME_FILE = re.compile(r"(patient\d+)_frame\d+", re.IGNORECASE)
_PHASES = {"ED": "end-diastole", "ES": "end-systole"}
_REUSED_FIX = "Remove the patient folder that duplicates another one, or give it its own files."


def _number(text: str) -> int | float | str:
    """``"12"`` → 12, ``"184.0"`` → 184.0, anything else unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _read_text(path: Path) -> str:
    """A text file decoded as UTF-8 (ASCII is a subset), without a leading byte-order mark."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}, line {line}: byte 0x{data[error.start]:02x} at offset {error.start} is "
            "not UTF-8, expected a UTF-8 or ASCII text file. Save Info.cfg as UTF-8 (or ASCII), "
            "or restore it from the ACDC download."
        ) from error


def read_info_cfg(path: Path) -> dict[str, Any]:
    """Parse an ACDC ``Info.cfg`` file (lines ``Key: value``, UTF-8 or ASCII).

    A UTF-8 byte-order mark is ignored and Windows line ends (CRLF) are accepted.

    Returns:
        ``{key: value}`` with integers and decimals converted to ``int`` / ``float``
        (``ED``, ``ES``, ``NbFrame``, ``Height`` in cm, ``Weight`` in kg) and other
        values (``Group``) as stripped strings. Blank lines are skipped. Keys are not
        validated here.

    Raises:
        DatasetError: the file is missing, is not UTF-8 text, or a line is not
            ``Key: value``.
    """
    if not path.is_file():
        raise DatasetError(
            f"{path}: Info.cfg not found; every ACDC patient folder holds one (ED, ES, Group, "
            "Height, NbFrame, Weight). Restore it from the ACDC download."
        )
    info: dict[str, Any] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
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


def _phase_frame(info: dict[str, Any], phase: str, path: Path) -> int:
    """The 1-based frame number of ``phase`` (``"ED"`` or ``"ES"``) from a parsed Info.cfg."""
    frame = info.get(phase)
    if frame is None:
        raise DatasetError(
            f"{path}: no '{phase}' key, expected a line '{phase}: <frame number>' (found keys "
            f"{sorted(info)}). Restore Info.cfg from the ACDC download."
        )
    if isinstance(frame, float) and frame.is_integer():
        frame = int(frame)
    frames = info.get("NbFrame")
    if not isinstance(frame, int) or frame < 1 or (isinstance(frames, int) and frame > frames):
        raise DatasetError(
            f"{path}: {phase} = {frame!r}, expected a frame number between 1 and NbFrame "
            f"({frames}). Correct Info.cfg."
        )
    return frame


def _find_nifti(folder: Path, stem: str, what: str, phase: str, frame: int) -> Path:
    """The one file ``folder/stem.nii.gz`` or ``folder/stem.nii``, its name in any case."""
    wanted = {f"{stem}{suffix}".lower() for suffix in NIFTI_SUFFIXES}
    found = sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file())
    if len(found) > 1:
        raise DatasetError(
            f"{folder}: {len(found)} files hold the {what} ({', '.join(p.name for p in found)}), "
            f"expected one; Info.cfg gives {phase} = {frame}. Keep one file and delete the others."
        )
    if found:
        return found[0]
    raise DatasetError(
        f"{folder / stem}.nii.gz: {what} not found (nor .nii); Info.cfg gives {phase} = {frame}. "
        f"Restore the file from the ACDC download, or correct {phase} in Info.cfg."
    )


def _group(info: dict[str, Any], config: Path) -> str:
    group = info.get("Group")
    if not isinstance(group, str) or not group:
        raise DatasetError(
            f"{config}: no 'Group' key, expected e.g. 'Group: DCM' (NOR, MINF, DCM, HCM, RV). "
            "Restore Info.cfg from the ACDC download."
        )
    return group


def _frame_case(folder: Path, info: dict[str, Any], phase: str, case_id: str) -> CaseRef:
    """The CaseRef of one frame (``phase`` ``"ED"`` or ``"ES"``) of a patient folder."""
    config = folder / "Info.cfg"
    frame = _phase_frame(info, phase, config)
    group = _group(info, config)
    stem = f"{folder.name}_frame{frame:02d}"
    name = _PHASES[phase]
    return CaseRef(
        case_id=case_id,
        image_path=_find_nifti(folder, stem, f"{name} frame", phase, frame),
        label_path=_find_nifti(folder, f"{stem}_gt", f"{name} label (_gt)", phase, frame),
        meta={
            "group": group,
            "frame": frame,
            "subset": folder.parent.name,
            "info": info,
        },
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
    return _frame_case(folder, read_info_cfg(folder / "Info.cfg"), "ES", folder.name)


def acdc_cases(folder: Path, frames: str = "es") -> list[CaseRef]:
    """Describe the cases of one patient folder for ``data.frames`` without reading voxels.

    Args:
        folder: a ``patientXXX`` folder.
        frames: ``"es"``: the ES frame (:func:`acdc_case`); ``"both"``: the ED and the ES
            frame, as cases ``<folder>_ED`` and ``<folder>_ES`` whose ``meta`` also holds
            ``phase`` (``"ED"`` / ``"ES"``) and ``patient`` (the folder name).

    Returns:
        One CaseRef (``es``) or two, ED first (``both``).

    Raises:
        DatasetError: as :func:`acdc_case`, for ED too with ``both``; ED equal to ES; an
            unknown ``frames``.
    """
    if frames not in FRAMES:
        raise DatasetError(
            f"data.frames: {frames!r} is not one of {', '.join(FRAMES)}; use 'es' (one case "
            "per patient) or 'both' (its ED and ES frames)"
        )
    if frames == "es":
        return [acdc_case(folder)]
    config = folder / "Info.cfg"
    info = read_info_cfg(config)
    cases = [_frame_case(folder, info, p, f"{folder.name}_{p}") for p in ("ED", "ES")]
    if cases[0].meta["frame"] == cases[1].meta["frame"]:
        raise DatasetError(
            f"{config}: ED and ES are both frame {cases[0].meta['frame']}, expected two "
            "different frames. Correct Info.cfg, or set data.frames=es."
        )
    for case, phase in zip(cases, ("ED", "ES"), strict=True):
        case.meta.update(phase=phase, patient=folder.name)
    return cases


def _has_ground_truth(folder: Path) -> bool:
    """Whether a patient folder in ``folder`` holds a ``*_gt`` NIfTI file (any case)."""
    return folder.is_dir() and any(
        is_nifti_name(path.name) and nifti_stem(path.name).lower().endswith("_gt")
        for path in folder.glob("patient*/patient*")
    )


def _misnamed_patient_folder(folder: Path) -> str | None:
    """Why ``folder``, not named ``patientXXX``, is a patient folder tfaug does not list;
    ``None`` when it holds no ``Info.cfg`` (in any case) and so is not a patient folder."""
    if not any(path.name.lower() == "info.cfg" for path in folder.iterdir()):
        return None
    named = (_FRAME_FILE.match(path.name) for path in sorted(folder.iterdir()))
    suggested = next((match.group(1).lower() for match in named if match), "patientXXX")
    return (
        f"{folder}: holds Info.cfg but its name is not patientXXX (lower case, digits only), "
        f"so it is not listed. Rename the folder to {suggested}, the name its files carry."
    )


def _patient_folders(root: Path) -> tuple[list[Path], list[str]]:
    """Every patient folder under one of the accepted roots (see the module docstring),
    and one message per folder beside them that holds an ``Info.cfg`` under another name
    (``Patient003``, ``patient004 (1)`` from a download, ``patient_005``)."""
    base = root / "database" if (root / "database" / "training").is_dir() else root
    if (base / "training").is_dir():
        subsets = [base / "training"]
        if _has_ground_truth(base / "testing"):
            subsets.append(base / "testing")
    else:
        subsets = [base]
    folders, misnamed = [], []
    for path in (path for subset in subsets for path in sorted(subset.iterdir())):
        if not path.is_dir():
            continue
        if _PATIENT.fullmatch(path.name):
            folders.append(path)
        elif (problem := _misnamed_patient_folder(path)) is not None:
            misnamed.append(problem)
    if not folders and not misnamed:
        raise DatasetError(
            f"{root}: no patientXXX folders found. Expected the ACDC folder holding "
            "training/ (and optionally testing/), the training/ folder itself, or the 2023 "
            "release holding database/training; see docs/datasets.md."
        )
    return folders, misnamed


def scan_acdc(root: Path, frames: str = "es") -> tuple[list[CaseRef], list[str]]:
    """List an ACDC dataset, collecting per-case problems instead of raising.

    Args:
        root: one of the accepted roots (see the module docstring).
        frames: ``data.frames``, ``"es"`` or ``"both"`` (see :func:`acdc_cases`).

    Returns:
        ``(cases, problems)``: the readable cases sorted by id, and one message per
        patient folder that could not be described (see :func:`acdc_cases`) or is not
        named ``patientXXX`` (a folder holding Info.cfg), plus one per duplicated case id
        and one per case using a file another case uses (compared by resolved path). A
        case with a problem is left out of ``cases``. No voxel data is read.

    Raises:
        DatasetError: ``root`` is not a folder or holds no patient folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: ACDC folder not found. Pass the dataset folder.")
    cases: dict[str, CaseRef] = {}
    owners: dict[Path, str] = {}
    folders, problems = _patient_folders(root)
    for folder in folders:
        try:
            found = acdc_cases(folder, frames)
        except DatasetError as error:
            problems.append(str(error))
            continue
        for case in found:
            if case.case_id in cases:
                problems.append(
                    f"{folder}: case id {case.case_id} also found at "
                    f"{cases[case.case_id].image_path.parent}. Keep one copy."
                )
                continue
            owner = f"{folder} case {case.case_id}"
            reused = reused_file_problem(case, owner, owners, _REUSED_FIX)
            if reused:
                problems.append(reused)
                continue
            cases[case.case_id] = case
    return [cases[key] for key in sorted(cases)], problems


def _not_a_frame_message(ref: CaseRef, shape: tuple[int, ...]) -> str:
    """Why an ACDC case's image of ``shape`` is refused: a case names one 3D time frame."""
    return (
        f"{ref.image_path}: expected one 3D frame (X, Y, Z) of the cine sequence (frame "
        f"{ref.meta['frame']}), found shape {shape}. ACDC's '_4d' files hold the whole "
        "sequence and are not frames; restore this frame file from the original "
        "download or remove the case."
    )


def load_acdc(ref: CaseRef, *, label_set: abc.Set[int] = ACDC_LABELS) -> Volume:
    """Load one ACDC case (the frame its CaseRef names) as a :class:`Volume`.

    Returns:
        ``image`` float32 (X, Y, Z) in scanner units (not normalised), ``label`` uint8
        (X, Y, Z) with values in ``label_set``, ``spacing`` in mm from the header.

    Raises:
        DatasetError: unreadable files, a non-3D frame, a label off the image grid, NaN
            voxels or label values outside ``label_set``.
    """
    return read_volume(ref, label_set=set(label_set), not_3d_message=_not_a_frame_message)
