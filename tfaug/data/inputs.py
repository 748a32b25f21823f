"""What ``tfaug segment`` reads and writes: input volumes, their output files, the summary.

An input path is a NIfTI file, or a folder holding any mix of NIfTI files (directly in it)
and DICOM series (in it or in folders below it, one series per folder). Each volume becomes
one label file in the output folder: a NIfTI file keeps its name, a DICOM series is named
after its SeriesInstanceUID (``<uid>.nii.gz``: unique by the DICOM standard, stable from one
run to the next, and already safe for file names, where SeriesDescriptions repeat across
patients and repeated scans). Listing reads no voxel data.

The file-name rules every reader shares live here too: a NIfTI name ends in ``.nii.gz`` or
``.nii`` in any case (``.NII.GZ``, as nibabel reads it), and no file may serve as two listed
volumes (:func:`reused_file_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tfaug.data.dicom import (
    find_series_folders,
    is_dicom_file,
    mixed_series_message,
    safe_file_name,
)
from tfaug.data.volume import CaseRef, DatasetError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""NIfTI file name endings, lower case; names are matched against them in any case."""


@dataclass(frozen=True)
class SegmentInput:
    """One volume to segment.

    Attributes:
        source: a NIfTI file, or the folder holding a DICOM series.
        series_uid: the DICOM series' SeriesInstanceUID; ``None`` for a NIfTI file.
        problem: why it cannot be segmented, when that is known from listing alone (a folder
            of several series, two series with one output name); ``None`` otherwise.
    """

    source: Path
    series_uid: str | None = None
    problem: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.series_uid is not None

    @property
    def label(self) -> str:
        """How the summary names the input."""
        return (
            f"{self.source} (DICOM series {self.series_uid})" if self.is_dicom else str(self.source)
        )

    def output_name(self) -> str:
        """The label file's name: the NIfTI file's own name, or ``<SeriesInstanceUID>.nii.gz``."""
        if self.series_uid is None:
            return self.source.name
        return f"{safe_file_name(self.series_uid, self.source.name)}.nii.gz"


def nifti_suffix(name: str) -> str | None:
    """The NIfTI ending of a file name as written, matched in any case; ``None`` if none.

    ``"case_0.NII.GZ"`` → ``".NII.GZ"``, ``"case_0.nii"`` → ``".nii"``, ``"notes.txt"`` → ``None``.
    """
    lowered = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lowered.endswith(suffix):
            return name[len(name) - len(suffix) :]
    return None


def is_nifti_name(name: str) -> bool:
    """Whether ``name`` ends in ``.nii.gz`` or ``.nii``, in any case."""
    return nifti_suffix(name) is not None


def nifti_stem(name: str) -> str:
    """A file name without its NIfTI ending (any case): ``"case_0.NII.GZ"`` → ``"case_0"``.

    A name without a NIfTI ending is returned unchanged.
    """
    suffix = nifti_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def reused_file_problem(case: CaseRef, owner: str, owners: dict[Path, str], fix: str) -> str | None:
    """Claim ``case``'s image and label files for ``owner``; a message if one is already claimed.

    Files are compared by resolved path (:meth:`Path.resolve`), so a symlink to another
    entry's file, or an entry whose path was copied from another one, is caught: such a
    volume would otherwise be listed twice and could land in both the training and the test
    set. Byte-identical copies under different paths are not detected (no file is read).

    Args:
        case: the listed case (``label_path`` may be ``None``).
        owner: how to name the case in messages, e.g. ``"dataset.json training[5]"``.
        owners: ``{resolved path: "<owner> image"}`` of the files claimed so far; updated
            with every file of ``case`` up to the first reused one.
        fix: the last sentence of the message, saying how to repair the listing.

    Returns:
        ``None`` if every file of ``case`` is new, else one message naming both users.
    """
    for what, path in (("image", case.image_path), ("label", case.label_path)):
        if path is None:
            continue
        resolved = path.resolve()
        if resolved in owners:
            via = "" if path == resolved else f" (resolves to {resolved})"
            return (
                f"{owner} {what}: {path}{via} is already listed as {owners[resolved]}; a volume "
                f"listed twice can end up in both the training and the test set. {fix}"
            )
        owners[resolved] = f"{owner} {what}"
    return None


def find_inputs(path: Path) -> list[SegmentInput]:
    """The volumes of an input path: a NIfTI file, or a folder's NIfTI files and DICOM series.

    A folder's NIfTI files are listed first (sorted; hidden ``._*`` files skipped), then its
    DICOM series by folder. A folder holding several series is listed with a ``problem``.

    Raises:
        DatasetError: a missing path, a single DICOM file (pass its series' folder), or a
            folder holding no NIfTI file and no DICOM series.
    """
    if path.is_file():
        if not is_nifti_name(path.name) and is_dicom_file(path):
            raise DatasetError(
                f"{path}: a single DICOM file, expected a NIfTI file or a folder; pass the "
                f"folder holding the whole series ({path.parent})"
            )
        return [SegmentInput(path)]
    if not path.is_dir():
        raise DatasetError(
            f"{path}: input not found; pass a NIfTI file, a DICOM series folder or a folder of them"
        )
    niftis = [
        SegmentInput(p)
        for p in sorted(path.iterdir())
        if p.is_file() and not p.name.startswith(".") and is_nifti_name(p.name)
    ]
    series = [
        SegmentInput(folder, uids[0])
        if len(uids) == 1
        else SegmentInput(folder, problem=mixed_series_message(folder, uids))
        for folder, uids in find_series_folders(path)
    ]
    if not niftis and not series:
        raise DatasetError(
            f"{path}: no .nii or .nii.gz file and no DICOM series found; pass a NIfTI file, a "
            "DICOM series folder or a folder of them"
        )
    return niftis + series


def plan_outputs(input_path: Path, output: Path) -> list[tuple[SegmentInput, Path]]:
    """(input, label file) pairs.

    ``output`` ending in ``.nii``/``.nii.gz`` is the label file of a single volume (a NIfTI
    file or a folder holding one series); otherwise it is a folder receiving
    ``output/<SegmentInput.output_name()>`` for each volume. An input whose output name
    repeats an earlier one gets a ``problem`` instead of overwriting it.

    Raises:
        DatasetError: see :func:`find_inputs`; or a file name as ``output`` for several volumes.
    """
    inputs = find_inputs(input_path)
    if is_nifti_name(output.name):
        if len(inputs) != 1:
            raise DatasetError(
                f"{output}: -o names one label file but {input_path} holds {len(inputs)} "
                "volumes; pass a folder as -o"
            )
        return [(inputs[0], output)]
    pairs: list[tuple[SegmentInput, Path]] = []
    owners: dict[str, SegmentInput] = {}
    for item in inputs:
        name = item.output_name()
        if name in owners and item.problem is None:
            item = replace(
                item,
                problem=f"{item.label}: its output {output / name} is also the output of "
                f"{owners[name].label} (the same series twice?); keep one copy",
            )
        owners.setdefault(name, item)
        pairs.append((item, output / name))
    return pairs


@dataclass
class SegmentReport:
    """What became of every input of a ``tfaug segment`` call, in input order.

    Attributes:
        written: (input, label file) pairs segmented now.
        skipped: (input, label file) pairs whose outputs existed (not redone without overwrite).
        failed: (input, reason) pairs that could not be segmented.
    """

    written: list[tuple[SegmentInput, Path]] = field(default_factory=list)
    skipped: list[tuple[SegmentInput, Path]] = field(default_factory=list)
    failed: list[tuple[SegmentInput, str]] = field(default_factory=list)

    @property
    def outputs(self) -> list[Path]:
        """Label files written now, then those found from an earlier run."""
        return [path for _, path in self.written + self.skipped]

    def summary(self) -> str:
        """Counts, then one line per input: written, skipped (and how to redo it) or failed."""
        total = len(self.written) + len(self.skipped) + len(self.failed)
        lines = [
            f"{total} input(s): {len(self.written)} segmented, {len(self.skipped)} skipped "
            f"(output already there), {len(self.failed)} failed"
        ]
        lines += [f"  written  {item.label} -> {path}" for item, path in self.written]
        lines += [f"  skipped  {item.label} -> {path}" for item, path in self.skipped]
        lines += [f"  FAILED   {_named(item, reason)}" for item, reason in self.failed]
        if self.skipped:
            lines.append(
                f"{len(self.skipped)} output(s) already existed, e.g. from an interrupted run, "
                "and were kept; pass --overwrite to segment them again"
            )
        return "\n".join(lines)


def _named(item: SegmentInput, reason: str) -> str:
    """``reason``, prefixed with the input unless it already starts with its path."""
    return reason if reason.startswith(str(item.source)) else f"{item.label}: {reason}"
