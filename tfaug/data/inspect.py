"""What ``tfaug data inspect`` reports: every volume, its labels, the split, every problem."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfaug.config import Config
from tfaug.data.datasets import list_cases, load_case, verify_dataset
from tfaug.data.preprocess import normalise_volume
from tfaug.data.records import resolve_data_root
from tfaug.data.splits import split_cases
from tfaug.data.volume import DatasetError


def inspection_report(cfg: Config) -> dict[str, Any]:
    """What ``tfaug data inspect`` shows, gathered from the dataset library functions.

    Every case is loaded once more after :func:`verify_dataset` to read its shape,
    spacing and label values, so this reads every voxel twice; nothing is cached.

    Returns:
        ``dataset``, ``root``; ``cases``: one dict per loadable case with ``case_id``,
        ``group`` and ``frame`` (ACDC/phantom, else None), ``shape`` (X, Y, Z) in voxels,
        ``spacing`` (mm) and ``labels`` (sorted values found); ``split``: the
        :class:`Split` of draw 0 as a dict, or None if the dataset cannot be split;
        ``problems``: every problem found (messages), including images that
        ``preprocess.normalisation`` cannot normalise (constant ones).

    Raises:
        DatasetError: the dataset folder is missing or ``data.root`` is unset.
    """
    root = resolve_data_root(cfg)
    problems = verify_dataset(cfg.data, root)
    try:
        refs = list_cases(cfg.data, root)
    except DatasetError:
        refs = []  # the listing problems are already in `problems`
    cases = []
    for ref in refs:
        try:
            volume = load_case(cfg.data, ref)
        except DatasetError:
            continue  # reported by verify_dataset
        try:
            normalise_volume(volume.image, cfg.preprocess, name=str(ref.image_path))
        except DatasetError as error:
            problems.append(str(error))  # `data prepare` and training would stop on it
        cases.append(
            {
                "case_id": ref.case_id,
                "group": ref.meta.get("group"),
                "frame": ref.meta.get("frame"),
                "shape": [int(n) for n in volume.image.shape],
                "spacing": [round(float(s), 4) for s in volume.spacing],
                "labels": [int(v) for v in np.unique(volume.label)],
            }
        )
    split = None
    try:
        split = split_cases(refs, dataclasses.replace(cfg.split, draw=0)).to_dict()
    except DatasetError as error:
        problems.append(str(error))
    return {
        "dataset": cfg.data.dataset,
        "root": str(root),
        "cases": cases,
        "split": split,
        "problems": problems,
    }


def format_inspection(report: dict[str, Any]) -> str:
    """The report of :func:`inspection_report` as a plain-text table."""
    header = ("case", "group", "frame", "shape (X,Y,Z)", "spacing (mm)", "labels")
    rows = [
        (
            case["case_id"],
            str(case["group"] or "-"),
            str(case["frame"] or "-"),
            "x".join(str(n) for n in case["shape"]),
            "x".join(f"{s:g}" for s in case["spacing"]),
            ",".join(str(v) for v in case["labels"]),
        )
        for case in report["cases"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"{report['dataset']} dataset at {report['root']}: {len(rows)} volumes", ""]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    split = report["split"]
    if split is not None:
        lines += ["", f"split (draw {split['draw']}):"]
        for name in ("labeled", "unlabeled", "validation", "test", "pool"):
            lines.append(f"  {name:<10} {len(split[name]):>3}  {' '.join(split[name])}")
    problems = report["problems"]
    lines += ["", f"{len(problems)} problem(s)" + (":" if problems else "")]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)
