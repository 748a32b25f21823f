"""The one entry point to the dataset readers: list, load and verify by ``data.dataset``.

``acdc``, ``acdc_ssl`` (the same data under the semi-supervised literature's protocol:
``configs/acdc_ssl.yaml``) and ``phantom`` are read by :mod:`tfaug.data.acdc` (the phantom is
written in the ACDC layout); ``prostate`` and ``pancreas`` by :mod:`tfaug.data.msd`. The label
set of a dataset is ``range(len(data.class_names))`` after ``data.merge_labels`` is applied.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from tfaug.config import DataConfig
from tfaug.data.acdc import load_acdc, scan_acdc
from tfaug.data.msd import load_msd, scan_msd
from tfaug.data.nifti import problems_message
from tfaug.data.volume import CaseRef, DatasetError, Volume

_ACDC_READER = ("acdc", "acdc_ssl", "phantom")
_MSD_READER = ("prostate", "pancreas")

_ACDC_HINT = (
    "Download ACDC from https://www.creatis.insa-lyon.fr/Challenge/acdc/databases.html "
    "(the 2023 release is on https://humanheart-project.creatis.insa-lyon.fr/database/) "
    "and pass its folder with --data-root"
)

DOWNLOAD_HINTS: dict[str, str] = {
    "acdc": _ACDC_HINT,
    "acdc_ssl": _ACDC_HINT,
    "prostate": (
        "Download Task05_Prostate from the Medical Segmentation Decathlon "
        "(http://medicaldecathlon.com/), extract it, and pass the Task05_Prostate folder "
        "with --data-root"
    ),
    "pancreas": (
        "Download Task07_Pancreas from the Medical Segmentation Decathlon "
        "(http://medicaldecathlon.com/), extract it, and pass the Task07_Pancreas folder "
        "with --data-root"
    ),
    "phantom": (
        "Generate the phantom with tfaug.data.phantom (leave data.root unset to generate "
        "it into the cache) or pass the folder it was written to with --data-root"
    ),
}
"""Where each dataset comes from, quoted when its folder is missing (docs/datasets.md)."""


def label_set(data: DataConfig) -> set[int]:
    """Valid label values after merging: ``{0, ..., len(data.class_names) - 1}``."""
    return set(range(len(data.class_names)))


def _check_known(data: DataConfig) -> None:
    if data.dataset not in _ACDC_READER + _MSD_READER:
        raise DatasetError(
            f"data.dataset {data.dataset!r}: no reader for it; expected one of "
            f"{', '.join(_ACDC_READER + _MSD_READER)}."
        )
    if data.frames != "es" and data.dataset not in _ACDC_READER:
        raise DatasetError(
            f"data.frames={data.frames!r}: frames exist only in the ACDC layout "
            f"({', '.join(_ACDC_READER)}), found data.dataset {data.dataset!r}; set "
            "data.frames=es."
        )


def scan_cases(data: DataConfig, root: Path) -> tuple[list[CaseRef], list[str]]:
    """Every case that could be listed, and one message per entry that could not.

    No voxel data is read. :func:`list_cases` refuses a dataset with any listing problem;
    ``tfaug data inspect`` reports the problems beside the good cases.

    Raises:
        DatasetError: ``root`` itself is unusable (missing), or ``data`` names an unknown
            dataset or frames outside the ACDC layout.
    """
    _check_known(data)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: {data.dataset} dataset folder not found. {DOWNLOAD_HINTS[data.dataset]}."
        )
    if data.dataset in _ACDC_READER:
        return scan_acdc(root, data.frames)
    return scan_msd(root, data.class_names, data.merge_labels)


def list_cases(data: DataConfig, root: Path) -> list[CaseRef]:
    """List every labeled case of the configured dataset; no voxel data is read.

    Args:
        data: the data config (``data.dataset`` selects the reader).
        root: the dataset folder (see docs/datasets.md for each layout).

    Returns:
        CaseRefs sorted by id.

    Raises:
        DatasetError: an unknown dataset, a missing folder (the message says where to
            download it), or one error listing every listing problem.
    """
    cases, problems = scan_cases(data, root)
    if problems:
        raise DatasetError(problems_message(root, problems))
    return cases


def load_case(data: DataConfig, ref: CaseRef) -> Volume:
    """Load one case: ``image`` float32 (X, Y, Z), ``label`` uint8 (X, Y, Z), spacing in mm.

    ACDC/phantom read the frame the CaseRef names (``data.frames``); MSD reads channel
    ``data.modality`` of 4D images and applies ``data.merge_labels``. No preprocessing (bias
    correction, normalisation, resampling) is done here.

    Raises:
        DatasetError: an unknown dataset or any problem with the case's files.
    """
    _check_known(data)
    if data.dataset in _ACDC_READER:
        return load_acdc(ref, label_set=label_set(data))
    return load_msd(
        ref,
        modality=data.modality,
        merge_labels=data.merge_labels,
        label_set=label_set(data),
    )


def image_digest(volume: Volume) -> str:
    """SHA-256 of a volume's image shape and float32 voxels: the same for one scan stored
    twice, whatever the file names, formats (``.nii``/``.nii.gz``) or stored dtypes."""
    voxels = np.ascontiguousarray(volume.image, dtype="<f4")
    digest = hashlib.sha256(repr(voxels.shape).encode())
    digest.update(voxels.tobytes())
    return digest.hexdigest()


def same_image_problems(digests: list[tuple[CaseRef, str]]) -> list[str]:
    """One message per group of cases whose images hold the same voxels.

    Args:
        digests: ``(case, image_digest)`` for every loaded case.

    Returns:
        Messages naming every file of each group; such a volume could otherwise land in
        both the training and the test set (listing compares paths, not contents).
    """
    groups: dict[str, list[CaseRef]] = defaultdict(list)
    for ref, digest in digests:
        groups[digest].append(ref)
    return [
        f"{', '.join(str(ref.image_path) for ref in refs)}: cases "
        f"{', '.join(ref.case_id for ref in refs)} hold the same image voxels, one scan "
        "under several names that could land in both the training and the test set. Keep "
        "one of them (with its label) and remove the others."
        for refs in groups.values()
        if len(refs) > 1
    ]


def _verify(data: DataConfig, root: Path) -> tuple[list[CaseRef], list[str]]:
    """Listed cases and the problems of listing, of loading every case in full, and of
    cases holding the same image."""
    cases, problems = scan_cases(data, root)
    digests = []
    for ref in cases:
        try:
            digests.append((ref, image_digest(load_case(data, ref))))
        except DatasetError as error:
            problems.append(str(error))
    return cases, problems + same_image_problems(digests)


def verify_dataset(data: DataConfig, root: Path) -> list[str]:
    """Collect every problem of every case without raising.

    Lists the dataset, then loads each listed case in full (headers, voxels, label grid
    and values), as nnU-Net's ``verify_dataset_integrity`` does, and finds cases whose
    images hold the same voxels (:func:`same_image_problems`). Slow for large datasets:
    every voxel is read once; only a digest per case is kept in memory.

    Returns:
        One message per problem (empty when the dataset is usable). A missing folder, an
        unknown dataset or an unreadable dataset.json is a single message.
    """
    try:
        return _verify(data, root)[1]
    except DatasetError as error:
        return [str(error)]


def check_dataset(data: DataConfig, root: Path) -> list[CaseRef]:
    """Verify the dataset as :func:`verify_dataset` does and return its cases.

    Raises:
        DatasetError: one error listing every problem found.
    """
    cases, problems = _verify(data, root)
    if problems:
        raise DatasetError(problems_message(root, problems))
    return cases
