"""What ``tfaug data inspect`` reports: every volume, its labels, the split, every problem.

Unlike ``tfaug data prepare`` and training, which refuse a dataset with any bad entry
(:func:`~tfaug.data.datasets.list_cases`), inspect lists every good case and reports every
bad entry (a dataset.json entry, a patient folder) as a problem of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfaug.config import Config
from tfaug.data.datasets import image_digest, load_case, same_image_problems, scan_cases
from tfaug.data.preprocess import normalise_volume
from tfaug.data.records import resolve_data_root
from tfaug.data.splits import split_cases
from tfaug.data.volume import DatasetError


def inspection_report(cfg: Config) -> dict[str, Any]:
    """What ``tfaug data inspect`` shows, gathered from the dataset library functions.

    Lists the dataset as :func:`~tfaug.data.datasets.verify_dataset` does, keeping the
    cases that could be listed, then loads each of them once in full (every voxel is read;
    nothing is cached). The split is drawn only when every entry could be listed: a split of
    the good cases alone would not be the split ``data prepare`` draws once they are fixed.

    Returns:
        ``dataset``, ``root``; ``cases``: one dict per loadable case with ``case_id``,
        ``group`` and ``frame`` (ACDC/phantom, else None), ``shape`` (X, Y, Z) in voxels,
        ``spacing`` (mm) and ``labels`` (sorted values found); ``split``: the
        :class:`Split` of draw 0 as a dict, or None if the dataset cannot be split or was
        not split; ``split_skipped``: why the split was not drawn (entries that could not
        be listed), else None; ``problems``: every problem found (messages), one per bad
        entry, including images that ``preprocess.normalisation`` cannot normalise
        (constant ones) and cases holding the same image voxels.

    Raises:
        DatasetError: the dataset folder is missing, its dataset.json is unreadable,
            ``data.dataset`` is unknown or ``data.root`` is unset.
    """
    root = resolve_data_root(cfg)
    refs, listing_problems = scan_cases(cfg.data, root)
    problems = list(listing_problems)
    cases, digests = [], []
    for ref in refs:
        try:
            volume = load_case(cfg.data, ref)
        except DatasetError as error:
            problems.append(str(error))
            continue
        digests.append((ref, image_digest(volume)))
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
    problems += same_image_problems(digests)
    split, split_skipped = None, None
    if listing_problems:
        split_skipped = (
            f"not drawn, because of the {len(listing_problems)} listing problem(s) below; fix "
            "them and run 'tfaug data inspect' again"
        )
    else:
        try:
            split = split_cases(refs, dataclasses.replace(cfg.split, draw=0)).to_dict()
        except DatasetError as error:
            problems.append(str(error))
    return {
        "dataset": cfg.data.dataset,
        "root": str(root),
        "cases": cases,
        "split": split,
        "split_skipped": split_skipped,
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
    if report["split_skipped"]:
        lines += ["", f"split: {report['split_skipped']}"]
    problems = report["problems"]
    lines += ["", f"{len(problems)} problem(s)" + (":" if problems else "")]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)
