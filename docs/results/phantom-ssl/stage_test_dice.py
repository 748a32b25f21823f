"""Test Dice of the kept segmenter of any stage of a run, and a paired test between two.

    python docs/results/phantom-ssl/stage_test_dice.py RUN_DIR:STAGE[:KEPT] [RUN_DIR:STAGE[:KEPT]]

A run's results.json holds the test Dice of its final stage only; this evaluates another
stage's kept checkpoint (``best`` by default; ``last``, ``best_wide``, ``best_at/<step>``) on
the run's test volumes at native resolution, as the run's own evaluation does: for example
``self_training_round0``, the supervised round before any pseudo-label. With two specs (of
runs with the same test volumes) it also prints their paired difference per test volume
(two-sided Wilcoxon signed-rank). Reads the run's config.yaml, split, cache and checkpoints
(not in the committed records); trains nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import wilcoxon

from tfaug.analysis.evaluation import evaluate_test
from tfaug.config import Config, config_from_dict
from tfaug.data.records import Cache, prepare_cache
from tfaug.data.splits import Split
from tfaug.runs.algorithm import plan_split
from tfaug.training.builders import build_segmenter
from tfaug.training.loop import load_best


def open_run(run_dir: Path) -> tuple[Config, Path, Split, Cache]:
    """A run folder's config, dataset root, split and (prepared) cache."""
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text("utf-8")))
    root, split = plan_split(cfg)
    return cfg, root, split, prepare_cache(cfg, progress=False)


def stage_test_dice(run_dir: Path, stage: str, kept: str = "best") -> dict[str, float]:
    """Mean foreground test Dice per test volume (case id → Dice) of one kept checkpoint."""
    cfg, root, split, cache = open_run(run_dir)
    segmenter = build_segmenter(cfg)
    load_best({"segmenter": segmenter}, run_dir / "checkpoints" / stage, kept)
    restore = cfg.preprocess.restore_interpolation
    results = evaluate_test(segmenter, cache, split.test, cfg.data, root, restore=restore)
    return {result["case_id"]: result["mean_dice"] for result in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="RUN_DIR:STAGE[:KEPT], KEPT: best (default)")
    args = parser.parse_args()
    scores = []
    for spec in args.specs:
        folder, stage, kept = (spec.split(":") + ["best"])[:3]
        scores.append(stage_test_dice(Path(folder), stage, kept))
        print(f"{Path(folder).name} [{stage}/{kept}]: {np.mean(list(scores[-1].values())):.3f}")
    if len(scores) == 2:
        first, second = scores
        if first.keys() != second.keys():
            parser.error("the two runs have different test volumes; no paired test")
        diff = np.array([first[case] - second[case] for case in sorted(first)])
        print(
            f"first - second: {diff.mean():+.3f} per test volume, first ahead on "
            f"{int((diff > 0).sum())} of {diff.size}, p = {wilcoxon(diff).pvalue:.2g}"
        )


if __name__ == "__main__":
    main()
