"""The one tiny finished run the deploy tests export, segment with and serve.

:func:`build_finished_run` builds it (tests/deploy/conftest.py makes it a session fixture,
built once per test worker); :func:`phantom_slices` reads real test slices from it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml
from tiny import TINY as BASE_TINY

from tfaug.analysis.evaluation import evaluate_test, load_volumes, summarise
from tfaug.config import load_config
from tfaug.data.pipeline import labeled_dataset
from tfaug.data.records import prepare_cache, resolve_data_root
from tfaug.data.splits import make_split
from tfaug.io import write_json_atomic
from tfaug.losses import weighted_cross_entropy
from tfaug.runs.rundir import open_run_directory
from tfaug.training.builders import build_generator, build_segmenter

# The shared tiny config with fewer subjects, a faster-adapting BN and a larger batch.
TINY = {
    **BASE_TINY,
    "phantom": {"subjects": 8},
    "split": {**BASE_TINY["split"], "draws": 1},
    "model": {**BASE_TINY["model"], "bn_momentum": 0.5},
    "train": {"batch_size": 8},
}


def build_finished_run(base: Path):
    """A finished gdgi run directory: config.yaml, best weights, results.json.

    The segmenter is fitted for a few steps on the labeled slices so that its test Dice is not
    trivially zero; the generators keep their initial weights. results.json is computed with
    ``evaluate_test``, exactly as Algorithm 1 writes it.
    """
    config_file = base / "tiny.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    cfg = load_config("phantom", config_file)
    cfg.data.cache_dir = str(base / "cache")
    cfg.runs_dir = str(base / "runs")
    cache = prepare_cache(cfg, progress=False)
    split = make_split(cache.case_ids, cfg.split, cache.groups)
    run = open_run_directory(cfg)
    keras.utils.set_random_seed(0)
    segmenter = build_segmenter(cfg)
    segmenter.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=lambda labels, logits: weighted_cross_entropy(
            tf.one_hot(tf.cast(labels, tf.int32), cfg.data.n_classes),
            logits,
            cfg.train.class_weights,
        ),
    )
    data = labeled_dataset(cache, split.labeled + split.unlabeled, cfg.train.batch_size, seed=0)
    segmenter.fit(data, steps_per_epoch=80, epochs=1, verbose=0)
    stages = {"segmenter": ("segmenter", segmenter)}
    for kind in ("deformation", "intensity"):
        stages[f"generator_{kind}"] = ("generator", build_generator(cfg, kind))
    for stage, (stem, model) in stages.items():
        (run.stage(stage) / "best").mkdir(parents=True, exist_ok=True)
        model.save_weights(run.stage(stage) / "best" / f"{stem}.weights.h5")
    test = evaluate_test(segmenter, cache, split.test, cfg.data, resolve_data_root(cfg))
    results = {
        "run": run.path.name,
        "test": test,
        "summary": summarise(test, cfg.data.class_names[1:]),
    }
    write_json_atomic(run.results_path, results)
    return run.path, cfg, cache, split


def phantom_slices(finished_run, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Real preprocessed test slices: images (N,S,S,1) float32, one-hot labels (N,S,S,C)."""
    _, cfg, cache, split = finished_run
    volume = load_volumes(cache, split.test[:1])[0]
    middle = len(volume.images) // 2
    rows = slice(max(0, middle - count // 2), max(0, middle - count // 2) + count)
    onehot = np.eye(cfg.data.n_classes, dtype=np.float32)[volume.labels[rows]]
    return volume.images[rows].astype(np.float32), onehot
