"""The consistency steps' cost relative to the S and joint steps, on a busy machine.

Usage (from the repository root, tfaug installed): ``python bench/step_ratios.py
[--configs phantom,paper] [--modes tf.function,xla] [--rounds N]``.

``bench/train_step.py`` times each step in its own block of steps; when the machine's load
changes between blocks (another job starts), its ratios drift with it. Here the six steps
S, joint (S, GV, DV), unimatch, fixmatch, unimatch_gdgi and unimatch_gdgi_joint (built as in
``bench/train_step.py``) take turns, one step each per round, in one process, so a round's
six times see the same load. Each
ratio is the median over rounds of the per-round ratio. Prints one line per (config, mode)
and, with ``--json``, writes them. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import keras

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import (  # noqa: E402
    CONFIGS,
    MODES,
    build_step,
    call_seconds,
    parse_names,
    random_batch,
)

from tfaug.config import load_config  # noqa: E402
from tfaug.training.loop import compile_train_step  # noqa: E402

STEPS = ("S", "GV", "UM", "FM", "UMG", "UMJ")
RATIOS = {
    "UM/S": ("UM", "S"),
    "UM/GV": ("UM", "GV"),
    "FM/S": ("FM", "S"),
    "UMG/UM": ("UMG", "UM"),
    "UMG/S": ("UMG", "S"),
    "UMJ/UM": ("UMJ", "UM"),
    "UMJ/UMG": ("UMJ", "UMG"),
}
"""Printed ratio → (numerator step, denominator step)."""


def round_times(bench_config: str, mode: str, rounds: int) -> dict[str, list[float]]:
    """Seconds of each step of :data:`STEPS` in each of ``rounds`` rounds (after one untimed
    call per step for tracing / compilation), the steps taking turns within a round."""
    cfg = load_config(CONFIGS[bench_config])
    functions, batches = {}, {}
    for step in STEPS:
        keras.utils.set_random_seed(0)
        model, _ = build_step(cfg, step)
        functions[step] = compile_train_step(model, MODES[mode])
        batches[step] = [random_batch(cfg, step, seed) for seed in range(rounds + 1)]
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    for index in range(rounds + 1):
        for step in STEPS:
            seconds = call_seconds(functions[step], batches[step][index])
            if index > 0:
                times[step].append(seconds)
    return times


def median_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """For each of :data:`RATIOS`, the median over rounds of numerator / denominator time."""
    return {
        name: statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))
        for name, (top, bottom) in RATIOS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="phantom,paper")
    parser.add_argument("--modes", default="tf.function,xla")
    parser.add_argument("--rounds", type=int, default=None, help="default 10 / 5 (paper)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for bench_config in parse_names(args.configs, CONFIGS, "--configs"):
        rounds = args.rounds or (5 if bench_config == "paper" else 10)
        for mode in parse_names(args.modes, MODES, "--modes"):
            times = round_times(bench_config, mode, rounds)
            ratios = median_ratios(times)
            milliseconds = {step: 1e3 * statistics.median(t) for step, t in times.items()}
            results.append(
                {
                    "config": bench_config,
                    "mode": mode,
                    "rounds": rounds,
                    "ms": milliseconds,
                    **ratios,
                }
            )
            print(
                f"{bench_config:<8} {mode:<12} {rounds} rounds  "
                + "  ".join(f"{name} {value:.2f}" for name, value in ratios.items())
                + "  (median ms: "
                + ", ".join(f"{step} {ms:.0f}" for step, ms in milliseconds.items())
                + ")",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
