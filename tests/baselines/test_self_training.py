"""Tests of the ``self_training`` comparison: refinement, pseudo-label storage and batches,
the training step, and a resumable run through :class:`Algorithm` on the tiny phantom."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import SIDE, build_tiny_unet, tiny_config

from tfaug.analysis.evaluation import VolumeSlices
from tfaug.baselines.self_training import (
    PseudoLabels,
    SelfTrainingModel,
    load_pseudo_labels,
    pseudo_labeled_dataset,
    refine_pseudo_labels,
    save_pseudo_labels,
)
from tfaug.runs.algorithm import Algorithm
from tfaug.runs.rundir import open_run_directory

ROUNDS = 2


def _confident(labels: np.ndarray, n_classes: int, p: float = 0.97) -> np.ndarray:
    """Probabilities (Z,H,W,C) with ``p`` on ``labels`` and the rest spread evenly."""
    rest = (1.0 - p) / (n_classes - 1)
    probabilities = np.full((*labels.shape, n_classes), rest, np.float32)
    np.put_along_axis(probabilities, labels[..., None], p, axis=-1)
    return probabilities


def _hand_made_volume() -> np.ndarray:
    """(3,16,16) labels: a class-1 blob across all slices, a spurious one-slice class-1
    blob, a class-2 ring with a one-pixel background hole, nothing else."""
    labels = np.zeros((3, 16, 16), np.int64)
    labels[:, 2:6, 2:6] = 1  # the structure: 48 voxels
    labels[1, 12:14, 12:14] = 1  # the spurious blob: 4 voxels, not touching the structure
    labels[:, 8:11, 2:5] = 2  # a 3x3 ring ...
    labels[1, 9, 3] = 0  # ... with a hole in the middle slice
    return labels


def test_refinement_removes_spurious_blob_fills_hole_and_masks_low_confidence():
    labels = _hand_made_volume()
    probabilities = _confident(labels, 3)
    probabilities[2, 0, 10:16] = [0.5, 0.3, 0.2]  # low confidence, argmax background

    refined, weights = refine_pseudo_labels(probabilities, confidence=0.9)

    expected = labels.copy()
    expected[1, 12:14, 12:14] = 0  # only the largest class-1 component is kept
    expected[1, 9, 3] = 2  # the hole of the ring is filled
    np.testing.assert_array_equal(refined, expected)
    assert refined.dtype == np.uint8 and weights.dtype == np.float32
    expected_weights = np.ones(labels.shape, np.float32)
    expected_weights[2, 0, 10:16] = 0.0  # masked: below the confidence threshold
    np.testing.assert_array_equal(weights, expected_weights)


def test_refinement_keeps_an_enclosed_structure_and_weights_changed_pixels():
    labels = np.zeros((1, 9, 9), np.int64)
    labels[0, 1:8, 1:8] = 1  # a ring of class 1 ...
    labels[0, 3:6, 3:6] = 2  # ... around a class-2 core (as the LV inside the Myo)
    labels[0, 4, 4] = 0  # a background hole in the core
    probabilities = _confident(labels, 3)
    probabilities[0, 4, 4] = [0.4, 0.35, 0.25]  # the hole is uncertain

    refined, weights = refine_pseudo_labels(probabilities, confidence=0.9)

    assert refined[0, 4, 4] == 2  # filled by the core's class, not by the ring's
    assert (refined[0, 3:6, 3:6] == 2).all() and (refined[0, 2, 2:7] == 1).all()
    assert weights[0, 4, 4] == 1.0  # a pixel the refinement decided is trusted


def test_refinement_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(Z,H,W,C\)"):
        refine_pseudo_labels(np.zeros((4, 4, 2)), 0.9)
    with pytest.raises(ValueError, match="confidence must be in"):
        refine_pseudo_labels(np.zeros((1, 4, 4, 2)), 1.5)


def _volumes() -> list[VolumeSlices]:
    rng = np.random.default_rng(0)
    return [
        VolumeSlices(f"v{i}", rng.random((z, SIDE, SIDE, 1), np.float32), np.zeros(1))
        for i, z in enumerate((3, 2))
    ]


def _pseudo(volumes: list[VolumeSlices]) -> PseudoLabels:
    n = sum(len(v.images) for v in volumes)
    labels = np.ones((n, SIDE, SIDE), np.uint8)
    weights = np.ones((n, SIDE, SIDE), np.float32)
    weights[:, :, : SIDE // 2] = 0.0
    return PseudoLabels([v.case_id for v in volumes], [3, 2], labels, weights)


def test_pseudo_labels_round_trip_and_batches_carry_zero_targets(tmp_path):
    volumes = _volumes()
    path = tmp_path / "pseudo_labels.npz"
    save_pseudo_labels(path, _pseudo(volumes))
    loaded = load_pseudo_labels(path)
    assert (loaded.case_ids, loaded.n_slices) == (["v0", "v1"], [3, 2])
    assert loaded.weights.dtype == np.float32

    images, targets = next(iter(pseudo_labeled_dataset(volumes, loaded, 3, 4, seed=0)))

    assert images.shape == (4, SIDE, SIDE, 1) and targets.shape == (4, SIDE, SIDE, 3)
    np.testing.assert_array_equal(targets[:, :, : SIDE // 2], 0.0)  # zero weight: no loss
    np.testing.assert_array_equal(targets[:, :, SIDE // 2 :, 1], 1.0)
    with pytest.raises(ValueError, match=r"pseudo_labels.npz"):
        pseudo_labeled_dataset(volumes[:1], loaded, 3, 4, seed=0)


def test_training_step_updates_s_and_ignores_zero_weight_pixels():
    keras.utils.set_random_seed(0)
    model = SelfTrainingModel(build_tiny_unet(), n_classes=2, class_weights=[0.1, 0.9])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = tf.random.uniform((2, SIDE, SIDE, 1), seed=1)
    y = tf.zeros((2, SIDE, SIDE), tf.int32)
    before = [w.numpy().copy() for w in model.segmenter.trainable_weights]

    logs = model.train_step(((x, y), (x, tf.zeros((2, SIDE, SIDE, 2)))))

    assert float(logs["pseudo_loss"]) == 0.0  # every pseudo pixel has zero weight
    assert float(logs["total_loss"]) == pytest.approx(0.5 * float(logs["seg_loss"]), rel=1e-5)
    changed = [
        not np.allclose(b, w.numpy())
        for b, w in zip(before, model.segmenter.trainable_weights, strict=True)
    ]
    assert all(changed)


@pytest.fixture(scope="module")
def self_training_run(tiny_cache, tmp_path_factory):
    """A finished tiny self-training run (2 rounds), and the config to re-run it."""
    cfg, _ = tiny_cache
    cfg = tiny_config(cfg.data.cache_dir, tmp_path_factory.mktemp("st-runs"), "self_training")
    cfg.train.self_training_rounds = ROUNDS
    cfg.train.self_training_iterations = 3
    run = open_run_directory(cfg)
    results = Algorithm(cfg, run, progress=False).execute(command=["test"])
    return cfg, run, results


def test_self_training_runs_every_round_and_writes_results(self_training_run):
    _, run, results = self_training_run
    stages = [f"self_training_round{r}" for r in range(ROUNDS + 1)]
    assert list(results["stages"]) == stages
    assert json.loads(run.results_path.read_text(encoding="utf-8"))["method"] == "self_training"
    assert results["summary"]["mean_dice"]["n"] == 2
    for r in range(1, ROUNDS + 1):
        pseudo = load_pseudo_labels(run.stage(f"self_training_round{r}") / "pseudo_labels.npz")
        assert pseudo.case_ids == results["split"]["unlabeled"]
        assert pseudo.labels.shape == (sum(pseudo.n_slices), SIDE, SIDE)
    assert not (run.stage("self_training_round0") / "pseudo_labels.npz").exists()


def test_resumed_self_training_does_not_recompute_finished_rounds(self_training_run):
    cfg, run, _ = self_training_run
    stages = [run.stage(f"self_training_round{r}") for r in range(ROUNDS + 1)]
    kept = [stage / "done.json" for stage in stages[:-1]]
    kept += [stage / "pseudo_labels.npz" for stage in stages[1:]]
    mtimes = {path: path.stat().st_mtime_ns for path in kept}
    # As if killed after the last round's final checkpoint, before its done.json.
    run.results_path.unlink()
    (stages[-1] / "done.json").unlink()

    results = Algorithm(cfg, run, progress=False).execute(command=["test"])

    assert {path: path.stat().st_mtime_ns for path in kept} == mtimes
    assert (stages[-1] / "done.json").is_file() and run.results_path.is_file()
    assert results["stages"][f"self_training_round{ROUNDS}"]["iterations"] == 3
