"""What ``tfaug segment`` reads and writes: input volumes, their output files, the summary.

An input path is a NIfTI file, or a folder holding any mix of NIfTI files (directly in it)
and DICOM series (in it or in folders below it, one series per folder). Each volume becomes
one label file in the output folder: a NIfTI file keeps its name, a DICOM series is named
after its SeriesInstanceUID (``<uid>.nii.gz``: unique by the DICOM standard, stable from one
run to the next, and already safe for file names, where SeriesDescriptions repeat across
patients and repeated scans). Listing reads no voxel data.
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
from tfaug.data.volume import DatasetError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


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


def is_nifti_name(name: str) -> bool:
    return name.endswith(NIFTI_SUFFIXES)


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
