"""The report's model-selection section: is the budget enough, and is the choice noise?

For the runs of one setting, per method label:

- the final stage's iterations and the plateau check: the mean validation Dice over the last
  fifth of the validations minus the mean over the fifth before it (per run, then the median
  over runs; the wide validation set when the runs have one, as it is less noisy). A
  difference near 0 means the curve has flattened; a clearly positive one means the budget
  is too short for that method;
- the test Dice (mean over runs and test volumes of the mean foreground Dice) of the
  checkpoint the run chose, of its last step, and of the checkpoint chosen on the wider
  validation set (``split.n_extra_validation``), with the methods' rank by each: when the
  ranks differ, the ranking depends on the checkpoint rule;
- a figure of the validation curves (mean over runs per method).

Nothing is trained or evaluated here; the values come from results.json and metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfaug.experiments import plots
from tfaug.experiments.results import RunResult, ordered_methods

KEPT = ("chosen", "last", "best_wide")  # the tested checkpoints, in column order
KEPT_TITLES = {"chosen": "chosen", "last": "last step", "best_wide": "chosen on wide val."}
PLATEAU_FRACTION = 0.2  # the plateau check compares the last fifth of the curve with the one before
PLATEAU_TOLERANCE = 0.01  # a rise below this (Dice) counts as flattened


def plateau_rise(curve: Sequence[tuple[int, float, float | None]]) -> float | None:
    """Mean validation Dice over the last fifth of ``curve`` minus the mean over the fifth
    before it; the wide validation Dice when every row has one. ``None`` below 4 rows."""
    if len(curve) < 4:
        return None
    wide = all(row[2] is not None for row in curve)
    values = np.array([row[2] if wide else row[1] for row in curve], np.float64)
    k = max(1, int(round(PLATEAU_FRACTION * len(values))))
    return float(values[-k:].mean() - values[-2 * k : -k].mean())


def _mean_curve(runs: Sequence[RunResult]) -> tuple[list[int], list[float], list[float] | None]:
    """Steps every run validated at, the mean validation Dice there, and the mean wide one."""
    steps = sorted(set.intersection(*(set(row[0] for row in r.curve) for r in runs)))
    by_run = [{row[0]: row for row in r.curve} for r in runs]
    values = [float(np.mean([rows[s][1] for rows in by_run])) for s in steps]
    if all(rows[s][2] is not None for rows in by_run for s in steps):
        wide = [float(np.mean([rows[s][2] for rows in by_run])) for s in steps]
        return steps, values, wide
    return steps, values, None


def _ranks(means: dict[str, float]) -> dict[str, int]:
    order = sorted(means, key=lambda method: -means[method])
    return {method: order.index(method) + 1 for method in means}


def selection_section(runs: Sequence[RunResult], out_dir: Path, slug: str) -> list[str]:
    """Markdown lines (and ``<slug>-validation.png`` in ``out_dir``) for one setting's runs;
    no lines when no run recorded its final stage's curve or checkpoints."""
    methods = ordered_methods({r.label for r in runs})
    own = {m: [r for r in runs if r.label == m] for m in methods}
    if not any(r.curve or len(r.checkpoints) > 1 for r in runs):
        return []
    means = {
        kept: {
            m: float(np.mean([r.checkpoints[kept][1] for r in own[m]]))
            for m in methods
            if all(kept in r.checkpoints for r in own[m])
        }
        for kept in KEPT
    }
    ranks = {kept: _ranks(values) for kept, values in means.items()}
    header = (
        "| method | runs | iterations | chosen step (median) | validation rise, last fifth |"
        + "".join(f" test, {KEPT_TITLES[k]} (rank) |" for k in KEPT)
    )
    lines = [
        "### Budget and model selection",
        "",
        "*validation rise* is the mean validation Dice over the last fifth of the final "
        "stage's validations minus the mean over the fifth before (median over runs; on the "
        "wide validation set when the runs have one): below "
        f"{PLATEAU_TOLERANCE} (marked ✓) the curve has flattened within the budget. The test "
        "columns give the mean foreground Dice of the checkpoint each run chose, of its last "
        "step, and of its best step on the wider validation set, with the method's rank by "
        "each column; different ranks mean the ranking depends on the checkpoint rule.",
        "",
        header,
        "|" + "---|" * (5 + len(KEPT)),
    ]
    for m in methods:
        rises = [rise for r in own[m] if (rise := plateau_rise(r.curve)) is not None]
        rise = "–"
        if rises:
            median = float(np.median(rises))
            rise = f"{median:+.3f}" + (" ✓" if median < PLATEAU_TOLERANCE else "")
        chosen = [r.checkpoints["chosen"][0] for r in own[m] if "chosen" in r.checkpoints]
        step = f"{np.median(chosen):.0f}" if chosen else "–"
        iterations = "/".join(str(n) for n in sorted({r.iterations for r in own[m]}))
        cells = [f"{means[k][m]:.3f} ({ranks[k][m]})" if m in means[k] else "–" for k in KEPT]
        lines.append(
            f"| {m} | {len(own[m])} | {iterations} | {step} | {rise} | " + " | ".join(cells) + " |"
        )
    curves = {m: _mean_curve(own[m]) for m in methods if all(r.curve for r in own[m])}
    if curves:
        path = plots.save_validation_curves(curves, out_dir / f"{slug}-validation.png", slug)
        lines += ["", f"![Validation Dice during the final stage]({path.name})"]
    return lines + [""]
