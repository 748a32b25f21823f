"""Recorded wall time against the median step rate, per stage of finished runs.

Usage: ``python docs/results/phantom-ssl/step_rates.py RUN_DIR [RUN_DIR ...]``.

Runs trained before tfaug recorded CPU time have only their wall-clock stage times, which
count every pause of the process and every other job on the machine. This prints, for each
stage that logged to the run's TensorBoard folder, its recorded ``wall_time_s`` (done.json)
beside an estimate that ignores such stretches: the median, over consecutive validations, of
seconds per step (from the events' timestamps) × the stage's steps. Nothing is written.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def validation_times(run_dir: Path) -> dict[str, dict[int, float]]:
    """stage → step → wall-clock timestamp of its logged ``total_loss`` (one per validation)."""
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for events in sorted((run_dir / "tb").glob("events*")):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            stage, _, name = tag.partition("/")
            if name == "total_loss":
                found[stage].update({e.step: e.wall_time for e in accumulator.Tensors(tag)})
    return found


def median_seconds_per_step(times: dict[int, float]) -> float | None:
    """The median seconds per step between consecutive validations; ``None`` below two."""
    steps = sorted(times)
    rates = [(times[b] - times[a]) / (b - a) for a, b in zip(steps, steps[1:], strict=False)]
    return statistics.median(rates) if rates else None


def main() -> None:
    print("run | stage | steps | recorded wall min | median-rate min")
    for run_dir in map(Path, sys.argv[1:]):
        for stage, times in validation_times(run_dir).items():
            done = run_dir / "checkpoints" / stage / "done.json"
            rate = median_seconds_per_step(times)
            if rate is None or not done.is_file():
                continue
            result = json.loads(done.read_text(encoding="utf-8"))
            recorded = result["wall_time_s"] / 60
            estimate = rate * result["iterations"] / 60
            print(
                f"{run_dir.name} | {stage} | {result['iterations']} | {recorded:.0f} | "
                f"{estimate:.0f}"
            )


if __name__ == "__main__":
    main()
