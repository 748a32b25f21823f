"""Tests for tfaug/experiments/equal_time.py: pairs of runs compared at equal wall time."""

from __future__ import annotations

import pytest

from tfaug.experiments.equal_time import (
    Cut,
    TimePoint,
    cut_to,
    equal_time_runs,
    mark_seconds,
    marks,
    time_curves,
)
from tfaug.experiments.results import MEAN, RunResult

CASES = ("a", "b")


def _dice(value: float) -> dict[str, dict[str, float]]:
    return {case: {"LV": value, MEAN: value} for case in CASES}


def _run(method: str, draw: int, total_s: float | None, final_s: float | None, marks=()):
    """A run of 100 final-stage steps whose chosen checkpoint scores 0.9 and whose mark m's
    scores m / 100."""
    return RunResult(
        name=f"{method}-{draw}",
        dataset="phantom",
        n_labeled=1,
        generator_mode="joint",
        method=method,
        draw=draw,
        seed=0,
        dice=_dice(0.9),
        training_s=total_s,
        iterations=100,
        kept_dice={f"best_at_{m}": _dice(m / 100) for m in marks} | {"last": _dice(0.1)},
        final_s=final_s,
    )


def test_the_costlier_run_takes_its_latest_mark_within_the_cheaper_runs_time():
    # 100 s before the final stage, 900 s in it: mark m is reached at 100 + 9·m seconds.
    costly = _run("unimatch", 0, 1000.0, 900.0, marks=(20, 40, 60, 80))
    assert marks(costly) == [20, 40, 60, 80]
    assert mark_seconds(costly, 40) == pytest.approx(460.0)
    cut, how = cut_to(costly, 500.0)
    assert how == Cut("unimatch", 40, 100, pytest.approx(460.0), 500.0)
    assert cut.dice == _dice(0.4)
    assert cut_to(costly, 250.0) is None  # mark 20 is reached at 280 s


def test_pairs_are_cut_on_whichever_side_is_costlier_and_notes_name_the_pairs_left_out():
    runs = [
        _run("unimatch", 0, 1000.0, 900.0, marks=(20, 40, 60, 80)),
        _run("rdri", 0, 500.0, 500.0, marks=(50,)),
        _run("unimatch", 1, 300.0, 200.0, marks=(50,)),  # cheaper here: rdri is cut
        _run("rdri", 1, 400.0, 400.0, marks=(25, 50, 75)),  # mark m at 4·m s: 75 → 300 s
        _run("unimatch", 2, 1000.0, 900.0),  # no marks: its pair is left out
        _run("rdri", 2, 500.0, 500.0),
        _run("unimatch", 3, None, None, marks=(50,)),  # no times: left out
        _run("rdri", 3, 500.0, 500.0),
    ]
    kept, cuts, notes = equal_time_runs(runs, "unimatch", "rdri")

    assert [(c.label, c.mark) for c in cuts] == [("unimatch", 40), ("rdri", 75)]
    by_key = {(r.label, r.draw): r.dice[CASES[0]][MEAN] for r in kept}
    assert by_key == {
        ("unimatch", 0): 0.4,
        ("rdri", 0): 0.9,
        ("unimatch", 1): 0.9,
        ("rdri", 1): 0.75,
    }
    assert notes == [
        "unimatch-2: no budget mark within rdri-2's 8.3 min (train.budget_marks)",
        "unimatch-3 / rdri-3: no wall-clock time recorded",
    ]


def test_mark_seconds_needs_the_stage_times():
    with pytest.raises(ValueError, match="no stage times"):
        mark_seconds(_run("unimatch", 0, None, None, marks=(50,)), 50)


def test_time_curves_give_each_methods_dice_by_mark_against_its_median_time():
    runs = [
        _run("unimatch", 0, 1000.0, 900.0, marks=(50,)),  # mark 50 at 100 + 450 s
        _run("unimatch", 1, 1600.0, 1500.0, marks=(50,)),  # at 100 + 750 s
        _run("rdri", 0, 600.0, 600.0, marks=(25, 50)),  # at 150 and 300 s
        _run("rdri", 1, 600.0, 600.0),  # no marks: left out
        _run("heavy", 0, None, None, marks=(50,)),  # no times: left out
    ]
    curves = time_curves(runs)
    assert set(curves) == {"unimatch", "rdri"}
    assert curves["unimatch"] == [
        TimePoint(0.5, pytest.approx(700.0 / 60), pytest.approx(0.5), 2),
        TimePoint(1.0, pytest.approx(1300.0 / 60), pytest.approx(0.9), 2),
    ]
    assert [(p.share, p.minutes, p.dice, p.runs) for p in curves["rdri"]] == [
        (0.25, pytest.approx(2.5), pytest.approx(0.25), 1),
        (0.5, pytest.approx(5.0), pytest.approx(0.5), 1),
        (1.0, pytest.approx(10.0), pytest.approx(0.9), 1),
    ]
