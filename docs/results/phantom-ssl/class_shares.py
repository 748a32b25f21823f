"""Class shares of a run's kept segmenter on its labeled, validation and unlabeled volumes.

    python docs/results/phantom-ssl/class_shares.py RUN_DIR[:KEPT] [RUN_DIR[:KEPT] ...]

For each run folder (finished or not) and kept checkpoint of its final stage (``best``,
``last``, ``best_wide`` or ``best_at/<step>``; default ``best``), prints the share of the
pixels S labels RV, Myo and LV (inference mode: BatchNormalization moving statistics) beside
the true share, per set. A teacher whose shares on the unlabeled volumes are far from the
truth gives pseudo-labels that are wrong before any of them is confident. Reads the run's
config.yaml, split and cache; trains nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from stage_test_dice import open_run

from tfaug.analysis.evaluation import load_volumes
from tfaug.methods import final_stage
from tfaug.training.builders import build_segmenter
from tfaug.training.loop import load_best


def class_shares(labels: np.ndarray, n_classes: int) -> list[float]:
    """Share of the pixels of each foreground class 1..n_classes-1 in ``labels`` (any shape)."""
    return [float(np.mean(labels == c)) for c in range(1, n_classes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR[:KEPT], KEPT: best (default), last, ...")
    args = parser.parse_args()
    for spec in args.runs:
        folder, _, kept = spec.partition(":")
        run_dir = Path(folder)
        cfg, _, split, cache = open_run(run_dir)
        segmenter = build_segmenter(cfg)
        stage = final_stage(cfg.method, cfg.train.self_training_rounds)
        load_best({"segmenter": segmenter}, run_dir / "checkpoints" / stage, kept or "best")
        n_classes = cfg.data.n_classes
        names = "/".join(cfg.data.class_names[1:])
        for set_name in ("labeled", "validation", "unlabeled"):
            volumes = load_volumes(cache, getattr(split, set_name))
            predicted = [np.argmax(segmenter.predict(v.images, verbose=0), -1) for v in volumes]
            shares = class_shares(np.concatenate([p.ravel() for p in predicted]), n_classes)
            truth = class_shares(np.concatenate([v.labels.ravel() for v in volumes]), n_classes)
            print(
                f"{run_dir.name} [{kept or 'best'}] {set_name:10s} {names}: predicted "
                + " / ".join(f"{s:.3f}" for s in shares)
                + ", true "
                + " / ".join(f"{s:.3f}" for s in truth)
            )


if __name__ == "__main__":
    main()
