"""Writers of tiny, real-format datasets for tests (NIfTI via nibabel, real layouts).

Use from any test (``tests/`` is on ``sys.path`` through its conftest)::

    from data.fixtures import write_acdc_case, write_msd_dataset

Every writer returns what it wrote, so a test can compare loaded arrays with the truth.
Arrays are tiny (e.g. 12x10x3); label maps hold every class as a block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

APPLEDOUBLE_BYTES = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(66)
"""The start of a macOS ``._*`` metadata file (AppleDouble), as found in MSD archives."""

MSD_TASKS: dict[str, dict] = {
    "Task05_Prostate": {
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "id_digits": 2,
    },
    "Task07_Pancreas": {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "id_digits": 3,
    },
}
"""dataset.json facts of the two Decathlon tasks the paper uses."""


@dataclass(frozen=True)
class WrittenCase:
    """One case as written: its paths and the exact arrays stored in them."""

    case_id: str
    image_path: Path
    label_path: Path
    image: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class WrittenDataset:
    """A written Decathlon task folder and its training cases by id."""

    root: Path
    cases: dict[str, WrittenCase] = field(default_factory=dict)


def grid_affine(
    spacing: Sequence[float], origin: Sequence[float] = (-10.0, -20.0, 5.0)
) -> np.ndarray:
    """A 4x4 axis-aligned voxel-to-world matrix with the given spacing (mm) and origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}
"""Millimetres per NIfTI spatial unit (nibabel's names for ``xyzt_units``)."""


def write_nifti(
    path: Path,
    data: np.ndarray,
    *,
    spacing: Sequence[float] = (1.5, 1.5, 10.0),
    affine: np.ndarray | None = None,
    units: str | None = None,
) -> Path:
    """Write ``data`` (its dtype kept) as NIfTI-1; parent folders are created.

    The header zooms follow the affine (``grid_affine(spacing)`` unless given, in mm).
    ``units`` (``"mm"``, ``"meter"`` or ``"micron"``) sets the header's spatial unit and
    stores the affine converted to it, so every ``units`` describes the same grid; ``None``
    leaves the unit unknown (read as mm), as most converters do.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.array(grid_affine(spacing) if affine is None else affine, dtype=np.float64)
    if units is not None:
        matrix[:3] /= MM_PER_UNIT[units]
    image = nib.Nifti1Image(data, matrix)
    if units is not None:
        image.header.set_xyzt_units(units)
    nib.save(image, path)
    return path


def make_label(shape: Sequence[int], n_classes: int = 4, shift: int = 0) -> np.ndarray:
    """uint8 label map of ``shape`` (X, Y, Z) where classes 1..n_classes-1 are blocks.

    ``shift`` rolls the map along X, to make a second, different label of the same shape.
    """
    label = np.zeros(tuple(shape), dtype=np.uint8)
    x, y = shape[0], shape[1]
    for value in range(1, n_classes):
        start = (value - 1) * x // max(n_classes - 1, 1)
        label[start : start + max(x // n_classes, 1), y // 4 : y // 4 + max(y // 2, 1)] = value
    return np.roll(label, shift, axis=0)


def make_image(label: np.ndarray, rng: np.random.Generator, offset: float = 0.0) -> np.ndarray:
    """float32 image: 100 per label value, Gaussian noise (σ 5), plus ``offset``."""
    noise = rng.normal(0.0, 5.0, label.shape)
    return (label.astype(np.float32) * 100.0 + noise + offset).astype(np.float32)


def write_acdc_patient(
    root: Path,
    case_id: str,
    group: str,
    es: int,
    shape: Sequence[int] = (12, 10, 3),
    *,
    ed: int = 1,
    n_frames: int | None = None,
    spacing: Sequence[float] = (1.5, 1.5, 10.0),
    suffix: str = ".nii.gz",
    write_4d: bool = True,
    seed: int = 0,
) -> dict[str, WrittenCase]:
    """Write one ACDC patient folder ``root/case_id/`` in the real layout.

    Writes ``Info.cfg`` (ED, ES, Group, Height, NbFrame, Weight), the ED and ES frames with
    their ``_gt`` labels (different arrays, so a reader picking the wrong frame fails), and
    a ``_4d`` decoy (X, Y, Z, NbFrame) of constant -1 that a reader must never use.

    Args:
        root: the folder holding patient folders (e.g. ``<tmp>/training``).
        case_id: e.g. ``"patient007"``.
        group: written to Info.cfg (NOR, MINF, DCM, HCM, RV, or anything for tests).
        es: end-systole frame, 1-based; ``ed`` likewise (must differ from ``es``).
        shape: (X, Y, Z) of a frame; a few voxels are enough for tests that only list.
        n_frames: NbFrame; default ``max(ed, es) + 2``.
        spacing: voxel size in mm.
        suffix: ``.nii.gz`` or ``.nii``.
        write_4d: also write the ``_4d`` decoy.

    Returns:
        ``{"ED": case, "ES": case}`` as written (images float32 (X, Y, Z), labels uint8 with
        values 0..3; the case ids are the folder name).
    """
    if ed == es:
        raise ValueError(f"write_acdc_patient: ed and es must differ, both are {es}")
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    frames = n_frames if n_frames is not None else max(ed, es) + 2
    (folder / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 172.0\nNbFrame: {frames}\nWeight: 70.5\n",
        encoding="utf-8",
    )
    rng = np.random.default_rng(seed)
    written = {}
    for phase, frame, shift in (("ED", ed, 1), ("ES", es, 0)):
        label = make_label(shape, shift=shift)
        image = make_image(label, rng, offset=10.0 * frame)
        stem = folder / f"{case_id}_frame{frame:02d}"
        image_path = write_nifti(Path(f"{stem}{suffix}"), image, spacing=spacing)
        label_path = write_nifti(Path(f"{stem}_gt{suffix}"), label, spacing=spacing)
        written[phase] = WrittenCase(case_id, image_path, label_path, image, label)
    if write_4d:
        cine = np.full((*shape, frames), -1.0, dtype=np.float32)
        write_nifti(folder / f"{case_id}_4d{suffix}", cine, spacing=spacing)
    return written


def write_acdc_case(root: Path, case_id: str, group: str, es: int, *args, **kwargs) -> WrittenCase:
    """:func:`write_acdc_patient` (same arguments), returning the ES case only."""
    return write_acdc_patient(root, case_id, group, es, *args, **kwargs)["ES"]


ACDC_GROUP_BLOCKS = ("DCM", "HCM", "MINF", "NOR", "RV")
"""ACDC's training set holds its five groups in blocks of 20 patients, in this order."""


def write_acdc_training_set(
    root: Path, numbers: Sequence[int] = range(1, 101), shape: Sequence[int] = (2, 2, 1)
) -> Path:
    """Write ``root/training/patientXXX/`` for ``numbers`` (ACDC's 100 by default), both
    frames of each (ED frame 1, ES frame 5; groups as ACDC's blocks of 20), no ``_4d`` decoy.

    The volumes are tiny (``shape`` voxels): enough for listing, splitting and inspecting.

    Returns:
        ``root``, the folder to pass as ``--data-root``.
    """
    for number in numbers:
        group = ACDC_GROUP_BLOCKS[((number - 1) // 20) % 5]
        write_acdc_patient(
            root / "training", f"patient{number:03d}", group, 5, shape, write_4d=False, seed=number
        )
    return root


def write_msd_dataset(
    root: Path,
    task: str,
    ids: Sequence[int],
    *,
    shape: Sequence[int] = (12, 10, 3),
    spacing: Sequence[float] = (0.6, 0.6, 3.6),
    modality: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    image_dtype: type = np.float32,
    test_ids: Sequence[int] = (),
    hidden_files: bool = True,
    vector_images: bool = False,
    seed: int = 0,
) -> WrittenDataset:
    """Write a Decathlon task folder ``root/task/`` in the real layout.

    Writes ``dataset.json`` with the real keys (``name``, ``description``, ``reference``,
    ``licence``, ``relase``, ``tensorImageSize``, ``modality``, ``labels``,
    ``numTraining``, ``numTest``, ``training``, ``test``), ``imagesTr/<prefix>_<id>.nii.gz``
    (4D (X, Y, Z, C) when there are several modalities; channel c is the base image
    times (c + 1) plus 500 c, so channels differ), ``labelsTr/`` (uint8, every label value
    present), ``imagesTs/`` for ``test_ids``, and, with ``hidden_files``, an AppleDouble
    ``._<name>`` beside every training image and label (never listed in dataset.json).

    Args:
        root: parent folder of the task folder.
        task: ``TaskNN_Name``; the file prefix is ``name`` lower-cased. ``Task05_Prostate``
            and ``Task07_Pancreas`` have default ``modality``/``labels`` (:data:`MSD_TASKS`).
        ids: case numbers, listed in dataset.json in this order (gaps are fine).
        image_dtype: dtype of the stored images (``np.int16`` for CT-like files).
        vector_images: store images of several modalities as ITK/SimpleITK write vector
            images, (X, Y, Z, 1, C) (the NIfTI layout: a time axis of length 1, then the
            components), instead of (X, Y, Z, C).

    Returns:
        The task folder and the training cases by id (``prostate_16``, ...).
    """
    preset = MSD_TASKS.get(task, {})
    if not (modality or preset) or not (labels or preset):
        raise ValueError(f"write_msd_dataset: give modality and labels for task {task!r}")
    modality = dict(modality or preset["modality"])
    labels = dict(labels or preset["labels"])
    digits = preset.get("id_digits", 3)
    prefix = task.split("_", 1)[1].lower()
    folder = root / task
    rng = np.random.default_rng(seed)

    def name(number: int) -> str:
        return f"{prefix}_{number:0{digits}d}"

    def image_for(label: np.ndarray) -> np.ndarray:
        base = make_image(label, rng)
        if len(modality) == 1:
            return base.astype(image_dtype)
        channels = [base * (c + 1) + 500.0 * c for c in range(len(modality))]
        stacked = np.stack(channels, axis=-1).astype(image_dtype)
        return stacked[:, :, :, None, :] if vector_images else stacked

    cases = {}
    for number in ids:
        label = make_label(shape, n_classes=len(labels), shift=number)
        image = image_for(label)
        image_path = write_nifti(
            folder / "imagesTr" / f"{name(number)}.nii.gz", image, spacing=spacing
        )
        label_path = write_nifti(
            folder / "labelsTr" / f"{name(number)}.nii.gz", label, spacing=spacing
        )
        cases[name(number)] = WrittenCase(name(number), image_path, label_path, image, label)
        if hidden_files:
            for path in (image_path, label_path):
                (path.parent / f"._{path.name}").write_bytes(APPLEDOUBLE_BYTES)
    for number in test_ids:
        image = image_for(make_label(shape, n_classes=len(labels)))
        write_nifti(folder / "imagesTs" / f"{name(number)}.nii.gz", image, spacing=spacing)
    content = {
        "name": task.split("_", 1)[1],
        "description": f"{task} test fixture",
        "reference": "test fixture",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",
        "tensorImageSize": "4D" if len(modality) > 1 else "3D",
        "modality": modality,
        "labels": labels,
        "numTraining": len(ids),
        "numTest": len(test_ids),
        "training": [
            {"image": f"./imagesTr/{name(n)}.nii.gz", "label": f"./labelsTr/{name(n)}.nii.gz"}
            for n in ids
        ],
        "test": [f"./imagesTs/{name(n)}.nii.gz" for n in test_ids],
    }
    (folder / "dataset.json").write_text(json.dumps(content, indent=4), encoding="utf-8")
    return WrittenDataset(folder, cases)
