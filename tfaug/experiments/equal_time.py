"""Comparisons at equal wall time: the costlier run of a pair as it stood at the other's time.

A run trained with ``train.budget_marks = n`` kept, at the end of each n-th of its final
stage, the checkpoint it had chosen so far, and its results.json holds that checkpoint's
test Dice (``checkpoints.best_at_<mark>``). Two runs of two methods on the same (draw, seed)
are compared at equal wall time by giving the costlier one the test Dice of its latest mark
reached within the cheaper one's training time: what it would have delivered, model
selection included, had it been stopped then.

The time of a mark is the training time of the stages before the final one plus the final
stage's time × mark / iterations: a stage's steps cost alike, so the proportion averages out
changes of the machine's load within the stage. The same marks give each method's test Dice
against its training time (:func:`time_curves`): what it delivers if stopped earlier.
Nothing is trained or evaluated here.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tfaug.experiments.results import CLOCK_WORDS, MEAN, RunResult

MARK_PREFIX = "best_at_"  # results.json checkpoints.best_at_<mark>


@dataclass(frozen=True)
class Cut:
    """The costlier run of one pair, cut to the cheaper run's training time.

    Attributes:
        label: the cut run's method label.
        mark: the final-stage step whose choice stands in for the run.
        iterations: the final stage's steps (``mark / iterations``: the share used).
        seconds: the cut run's training time at ``mark``.
        budget_s: the cheaper run's training time, which ``seconds`` does not exceed.
    """

    label: str
    mark: int
    iterations: int
    seconds: float
    budget_s: float


def marks(run: RunResult) -> list[int]:
    """The budget marks whose checkpoint ``run`` tested, in step order."""
    return sorted(
        int(name[len(MARK_PREFIX) :]) for name in run.kept_dice if name.startswith(MARK_PREFIX)
    )


def _timed(run: RunResult) -> bool:
    """Whether ``run``'s results.json records its training and final-stage times and steps."""
    return run.training_s is not None and run.final_s is not None and run.iterations > 0


def mark_seconds(run: RunResult, mark: int) -> float:
    """Training seconds ``run`` had spent at final-stage step ``mark``.

    Raises:
        ValueError: the run records no training or final-stage time, or no iterations.
    """
    if not _timed(run):
        raise ValueError(f"{run.name}: results.json records no stage times or iterations")
    return run.training_s - run.final_s + run.final_s * mark / run.iterations


def cut_to(run: RunResult, seconds: float) -> tuple[RunResult, Cut] | None:
    """``run`` with the test Dice of its latest budget mark reached within ``seconds``;
    ``None`` when it has no such mark (or no times)."""
    if not _timed(run):
        return None
    reached = [m for m in marks(run) if mark_seconds(run, m) <= seconds]
    if not reached:
        return None
    mark = reached[-1]
    cut = Cut(run.label, mark, run.iterations, mark_seconds(run, mark), seconds)
    return dataclasses.replace(run, dice=run.kept_dice[f"{MARK_PREFIX}{mark}"]), cut


def equal_time_runs(
    runs: Sequence[RunResult], a: str, b: str, clock: str = "wall"
) -> tuple[list[RunResult], list[Cut], list[str]]:
    """The runs of labels ``a`` and ``b`` paired per (draw, seed), each pair at equal time.

    In every pair the run with the longer training time is replaced by :func:`cut_to` the
    other's time. A pair is left out, with a note, when a run records no training time by
    ``clock`` (the clock ``runs`` were loaded with, for the note's words) or the costlier run
    has no budget mark within the other's time.

    Returns:
        ``(runs, cuts, notes)``: both runs of every kept pair (the costlier one cut), the
        :class:`Cut` of each kept pair, and one note per pair left out.
    """
    own = {label: {(r.draw, r.seed): r for r in runs if r.label == label} for label in (a, b)}
    kept: list[RunResult] = []
    cuts: list[Cut] = []
    notes: list[str] = []
    for key in sorted(set(own[a]) & set(own[b])):
        first, second = own[a][key], own[b][key]
        if first.training_s is None or second.training_s is None:
            missing = CLOCK_WORDS[clock][1]
            notes.append(f"{first.name} / {second.name}: no {missing} recorded")
            continue
        costly, cheap = (
            (first, second) if first.training_s >= second.training_s else (second, first)
        )
        found = cut_to(costly, cheap.training_s)
        if found is None:
            notes.append(
                f"{costly.name}: no budget mark within {cheap.name}'s "
                f"{cheap.training_s / 60:.1f} min (train.budget_marks)"
            )
            continue
        kept += [found[0], cheap]
        cuts.append(found[1])
    return kept, cuts, notes


@dataclass(frozen=True)
class TimePoint:
    """One method's test Dice at one share of its final stage.

    Attributes:
        share: the final-stage share, mark / iterations; 1.0 for the runs' final choice.
        minutes: the median over runs of their training time at that share, in minutes.
        dice: the mean over runs × test volumes of the mean foreground Dice of the
            checkpoint chosen by then.
        runs: how many runs the point rests on.
    """

    share: float
    minutes: float
    dice: float
    runs: int


def time_curves(runs: Sequence[RunResult]) -> dict[str, list[TimePoint]]:
    """Per method label, the test Dice of its choice by each budget mark and at the end,
    against its training time, in share order.

    Only runs with budget marks and recorded times count (:func:`marks`); a label without
    such runs is absent. Shares are mark / iterations rounded to 4 decimals, so runs of one
    label with the same marks share points.
    """
    found: dict[str, dict[float, tuple[list[float], list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: ([], []))
    )
    for run in runs:
        run_marks = marks(run)
        if not _timed(run) or not run_marks:
            continue
        stops = [
            (m / run.iterations, mark_seconds(run, m), run.kept_dice[f"{MARK_PREFIX}{m}"])
            for m in run_marks
        ]
        stops.append((1.0, run.training_s, run.dice))
        for share, seconds, dice in stops:
            times, values = found[run.label][round(share, 4)]
            times.append(seconds)
            values += [volume[MEAN] for volume in dice.values()]
    return {
        label: [
            TimePoint(share, float(np.median(times)) / 60.0, float(np.mean(values)), len(times))
            for share, (times, values) in sorted(by_share.items())
        ]
        for label, by_share in found.items()
    }
