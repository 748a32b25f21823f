"""The Medical Segmentation Decathlon reader (Task05_Prostate, Task07_Pancreas, ...).

A task folder holds ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and ``imagesTs/``.
File lists come only from ``dataset.json``'s ``training`` entries (``{"image":
"./imagesTr/prostate_16.nii.gz", "label": "./labelsTr/prostate_16.nii.gz"}``), with paths
relative to the task folder. The ``test`` images have no labels and are not listed.

Decisions:
- An entry whose path is absolute or resolves outside the task folder (``../``, a symlink
  pointing elsewhere) is an error naming the entry.
- macOS metadata files (``._prostate_16.nii.gz``, AppleDouble) found in the folders are
  never read, since nothing is globbed. A ``._*`` file *listed* in dataset.json is an
  error: it is not an image, and silently dropping a listed case would change the splits.
- Case ids are the file names without ``.nii.gz`` or ``.nii``, in any case (``prostate_16``
  from ``prostate_16.NII.GZ`` too); gaps in the numbering are normal. Cases are sorted in
  natural order (``prostate_2`` before ``prostate_10``).
- A file used by two entries (the same path, or a symlink to another entry's file) is an
  error naming both entries: that volume could land in both the training and the test set.
"""

from __future__ import annotations

import json
import re
from collections import abc
from pathlib import Path, PurePosixPath
from typing import Any

from tfaug.data.inputs import is_nifti_name, nifti_stem, reused_file_problem
from tfaug.data.nifti import read_header, read_volume, spatial_shape
from tfaug.data.volume import CaseRef, DatasetError, Volume

_REUSED_FIX = "Remove the duplicated entry from dataset.json, or point it to its own files."


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _int_keyed(table: Any, key: str, path: Path) -> dict[int, str]:
    """``{"0": "T2", "1": "ADC"}`` → ``{0: "T2", 1: "ADC"}``."""
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in table.items()
    ):
        raise DatasetError(
            f"{path}: '{key}' must map channel/label numbers to names, e.g. "
            f'{{"0": "T2", "1": "ADC"}}; found {table!r}. Restore dataset.json from the '
            "Decathlon download."
        )
    return {int(k): v for k, v in table.items()}


def read_dataset_json(root: Path) -> dict[str, Any]:
    """Read and check the top level of a Decathlon ``dataset.json``.

    Returns:
        The parsed JSON object, unchanged. Only ``training`` is checked here (a list);
        :func:`scan_msd` checks ``modality`` and ``labels``. Other keys (``name``,
        ``description``, ``reference``, ``licence``, ``relase``, ``tensorImageSize``,
        ``numTraining``, ``numTest``, ``test``) are kept but not interpreted.

    Raises:
        DatasetError: the file is missing, not JSON, or has no ``training`` list.
    """
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DatasetError(
            f"{path}: dataset.json not found. Pass the Decathlon task folder (e.g. "
            "Task05_Prostate) that holds dataset.json, imagesTr/ and labelsTr/."
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"{path}: not valid JSON ({error}). Restore dataset.json from the Decathlon download."
        ) from error
    if not isinstance(content, dict) or not isinstance(content.get("training"), list):
        raise DatasetError(
            f"{path}: expected an object with a 'training' list of image/label entries. "
            "Restore dataset.json from the Decathlon download."
        )
    return content


def _resolve(root: Path, text: Any, where: str) -> Path:
    """Path of one dataset.json entry, checked to be a real file inside ``root``."""
    if not isinstance(text, str) or not text:
        raise DatasetError(f"{where}: expected a relative path string, found {text!r}.")
    relative = PurePosixPath(text)
    if relative.is_absolute():
        raise DatasetError(
            f"{where}: absolute path {text!r}, expected a path relative to the task folder "
            "(e.g. './imagesTr/prostate_16.nii.gz'). Fix the entry."
        )
    if relative.name.startswith("._"):
        raise DatasetError(
            f"{where}: {text!r} is a macOS metadata file (AppleDouble '._*'), not an image; "
            "it is never read. Remove the entry from dataset.json."
        )
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise DatasetError(
            f"{where}: {text!r} resolves to {path.resolve()}, outside the task folder "
            f"{root}. Copy the file into the task folder and list it relative to it."
        )
    if not path.is_file():
        raise DatasetError(
            f"{where}: {path} not found. Restore the file from the Decathlon download or "
            "remove the entry."
        )
    return path


def _case_id(path: Path, where: str) -> str:
    """``prostate_16`` from ``prostate_16.nii.gz`` (any case of ``.nii.gz`` / ``.nii``)."""
    if is_nifti_name(path.name):
        return nifti_stem(path.name)
    raise DatasetError(f"{where}: {path.name!r} is not a .nii.gz or .nii file. Fix the entry.")


def msd_case(root: Path, entry: Any, where: str, meta: dict[str, Any]) -> CaseRef:
    """Describe one ``training`` entry of dataset.json without reading voxels.

    Args:
        root: the task folder.
        entry: ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``.
        where: how to name the entry in messages, e.g. ``"dataset.json training[3]"``.
        meta: the dataset-level metadata stored in ``CaseRef.meta``.

    Raises:
        DatasetError: a malformed entry, or a path that escapes ``root``, names a ``._*``
            file, or does not exist.
    """
    if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
        raise DatasetError(
            f"{where}: expected {{'image': ..., 'label': ...}}, found {entry!r}. Fix the entry."
        )
    image = _resolve(root, entry["image"], f"{where} image")
    label = _resolve(root, entry["label"], f"{where} label")
    return CaseRef(_case_id(image, f"{where} image"), image, label, dict(meta))


def label_name_problems(
    labels: dict[int, str],
    class_names: abc.Sequence[str],
    merge_labels: abc.Mapping[int, int],
    path: Path,
) -> list[str]:
    """Compare dataset.json's ``labels`` with the config's class names.

    A label value that ``merge_labels`` leaves alone keeps its number, so its name in
    dataset.json must be the config's name of that class (case-insensitive); merged values
    are not compared (pancreas: ``cancer`` is merged into ``pancreas``).

    Args:
        labels: dataset.json's ``{value: name}``.
        class_names: ``data.class_names``, index = label value after merging.
        merge_labels: ``data.merge_labels``, ``{source: target}``.
        path: the dataset.json file, for the message.

    Returns:
        One message when some names disagree (every disagreement listed), else none.
    """
    differ = [
        (value, name, class_names[value])
        for value, name in sorted(labels.items())
        if value not in merge_labels
        and value < len(class_names)
        and name.strip().lower() != class_names[value].strip().lower()
    ]
    if not differ:
        return []
    listed = "; ".join(f"{v} is {name!r} there, {config!r} here" for v, name, config in differ)
    in_file_order = [labels.get(v, name) for v, name in enumerate(class_names)]
    return [
        f"{path}: dataset.json's labels disagree with data.class_names {list(class_names)}: "
        f"{listed}. Training would name the classes wrongly. If dataset.json is right, set "
        f"data.class_names to {in_file_order}; otherwise fix dataset.json's labels."
    ]


def scan_msd(
    root: Path, class_names: abc.Sequence[str], merge_labels: abc.Mapping[int, int]
) -> tuple[list[CaseRef], list[str]]:
    """List a Decathlon task, collecting per-entry problems instead of raising.

    Args:
        root: the task folder.
        class_names: ``data.class_names``, checked against dataset.json's ``labels``.
        merge_labels: ``data.merge_labels`` (merged values are not name-checked).

    Returns:
        ``(cases, problems)``: the readable training cases in natural id order, each with
        ``meta`` ``modality`` ({channel: name}, e.g. ``{0: "T2", 1: "ADC"}``), ``labels``
        ({value: name}) and ``dataset`` (dataset.json's ``name``); and one message per bad
        entry, per repeated case id, per entry using a file another entry uses (compared
        by resolved path), and for label names that disagree with ``class_names``
        (:func:`label_name_problems`). A bad entry is left out of ``cases``. No voxel data
        is read.

    Raises:
        DatasetError: ``root`` or its dataset.json is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Decathlon task folder not found. Pass the task folder.")
    content = read_dataset_json(root)
    path = root / "dataset.json"
    meta = {
        "modality": _int_keyed(content.get("modality"), "modality", path),
        "labels": _int_keyed(content.get("labels"), "labels", path),
        "dataset": content.get("name"),
    }
    cases: dict[str, CaseRef] = {}
    owners: dict[Path, str] = {}
    problems = label_name_problems(meta["labels"], class_names, merge_labels, path)
    for index, entry in enumerate(content["training"]):
        where = f"{path} training[{index}]"
        try:
            case = msd_case(root, entry, where, meta)
        except DatasetError as error:
            problems.append(str(error))
            continue
        if case.case_id in cases:
            problems.append(f"{where}: case {case.case_id} is listed twice. Remove one entry.")
            continue
        reused = reused_file_problem(case, where, owners, _REUSED_FIX)
        if reused:
            problems.append(reused)
            continue
        cases[case.case_id] = case
    if not cases and not problems:
        problems.append(f"{path}: the 'training' list is empty; expected labeled cases.")
    return [cases[key] for key in sorted(cases, key=_natural_key)], problems


def _channel(ref: CaseRef, shape: tuple[int, ...], modality: str | None) -> int | None:
    """Channel of a 4D image holding ``modality``; ``None`` for a 3D image.

    The image must hold as many channels as dataset.json's ``modality`` lists: a 3D file
    (or (X, Y, Z, 1)) in a multi-modality task, or a 4D one with another channel count,
    holds channels whose names are unknown, and reading it as ``modality`` would be a guess.
    """
    channels: dict[int, str] = ref.meta.get("modality", {})
    found = shape[3] if len(shape) == 4 else 1
    if channels and len(shape) in (3, 4) and found != len(channels):
        raise DatasetError(
            f"{ref.image_path}: image of shape {shape} holds {found} channel(s), but "
            f"dataset.json's modality lists {len(channels)}: {channels}; which channel is "
            "which is unknown. Replace the file with the (X, Y, Z, "
            f"{len(channels)}) image of all modalities, or, if every file holds one modality, "
            "list only that one in dataset.json's modality."
        )
    if modality is None:
        if len(shape) == 4:
            raise DatasetError(
                f"{ref.image_path}: 4D image of shape {shape} with channels {channels}, but "
                f"no modality is configured. Set data.modality to one of "
                f"{sorted(channels.values())} (the paper uses T2 for the prostate)."
            )
        return None
    matches = [index for index, name in channels.items() if name.lower() == modality.lower()]
    if not matches:
        raise DatasetError(
            f"{ref.image_path}: data.modality {modality!r} is not in dataset.json's modality "
            f"{channels}. Set data.modality to one of {sorted(channels.values())}."
        )
    return matches[0] if len(shape) == 4 else None


def load_msd(
    ref: CaseRef,
    *,
    modality: str | None,
    merge_labels: dict[int, int],
    label_set: abc.Set[int],
) -> Volume:
    """Load one Decathlon case as a :class:`Volume`.

    Args:
        ref: a case from :func:`tfaug.data.datasets.list_cases` (its ``meta["modality"]``
            maps channels to names).
        modality: the channel to read from a 4D (X, Y, Z, C) image, by name (``"T2"``,
            case-insensitive); ``None`` for 3D images. Only that channel is read.
        merge_labels: ``{source: target}`` label remapping (pancreas: ``{2: 1}``).
        label_set: valid label values after merging, e.g. ``{0, 1}``.

    Returns:
        ``image`` float32 (X, Y, Z) in scanner units (CT: HU; not normalised), ``label``
        uint8 (X, Y, Z) in ``label_set``, ``spacing`` = the first three header zooms (mm).

    Raises:
        DatasetError: a 4D image without ``modality``, an unknown modality, and every
            problem :func:`tfaug.data.nifti.read_volume` checks.
    """
    shape, _, _ = read_header(ref.image_path, what="image")
    return read_volume(
        ref,
        label_set=set(label_set),
        channel=_channel(ref, spatial_shape(shape), modality),
        merge_labels=merge_labels,
    )
