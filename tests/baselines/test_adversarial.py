"""Tests of the ``adv_pixel`` / ``adv_image`` comparisons: the pixel discriminator, the
adversarial training step (S and D updated, D learns, the self-taught term), and runs
through :class:`Algorithm` on the tiny phantom."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import DISCRIMINATOR_FILTERS, SIDE, build_tiny_unet, tiny_config

from tfaug.baselines.adversarial import AdversarialSegmentationModel
from tfaug.io import read_jsonl
from tfaug.models.discriminator import Discriminator
from tfaug.models.pixel_discriminator import PixelDiscriminator
from tfaug.runs.algorithm import Algorithm
from tfaug.runs.rundir import open_run_directory

N_CLASSES = 2


def test_pixel_discriminator_maps_class_maps_to_a_logit_map_and_round_trips():
    model = PixelDiscriminator(filters=(4, 8))
    out = model(tf.random.uniform((3, SIDE, SIDE, 4)))
    assert out.shape == (3, SIDE, SIDE, 1) and out.dtype == tf.float32
    clone = PixelDiscriminator.from_config(model.get_config())
    assert clone.filters == (4, 8)
    with pytest.raises(ValueError, match="model.pixel_discriminator_filters"):
        PixelDiscriminator(filters=())


def _discriminator(level: str) -> keras.Model:
    if level == "pixel":
        model = PixelDiscriminator(filters=(4, 8))
        model(tf.zeros((1, SIDE, SIDE, N_CLASSES)))
    else:
        model = Discriminator(filters=DISCRIMINATOR_FILTERS, units=8, bn_momentum=0.9)
        model(tf.zeros((1, SIDE, SIDE, N_CLASSES + 1)))
    return model


def _model(
    level: str, s_learning_rate: float = 1e-2, d_learning_rate: float = 1e-2, **kwargs
) -> AdversarialSegmentationModel:
    keras.utils.set_random_seed(0)
    model = AdversarialSegmentationModel(
        build_tiny_unet(N_CLASSES),
        _discriminator(level),
        level=level,
        n_classes=N_CLASSES,
        class_weights=[0.1, 0.9],
        **kwargs,
    )
    model.compile(
        s_optimizer=keras.optimizers.Adam(s_learning_rate),
        d_optimizer=keras.optimizers.Adam(d_learning_rate),
    )
    return model


def _batch() -> tuple:
    x = tf.random.stateless_uniform((2, SIDE, SIDE, 1), seed=(1, 2))
    y = tf.cast(x[..., 0] > 0.5, tf.int32)
    x_u = tf.random.stateless_uniform((2, SIDE, SIDE, 1), seed=(3, 4))
    return (x, y), x_u


def _snapshot(model: keras.Model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.trainable_weights]


@pytest.mark.parametrize("level", ["pixel", "image"])
def test_steps_update_s_and_d_and_d_learns_to_tell_predictions_from_ground_truth(level):
    # S nearly frozen (a tiny learning rate): the fake inputs barely move, D's loss must fall.
    model = _model(level, s_learning_rate=1e-4, d_learning_rate=0.02, lambda_semi=0.0)
    s_before, d_before = _snapshot(model.segmenter), _snapshot(model.discriminator)
    batch, d_losses = _batch(), []
    for _ in range(8):
        for tracker in model.metrics:
            tracker.reset_state()  # the logged losses are then this step's
        logs = model.train_step(batch)
        d_losses.append(float(logs["d_loss"]))

    assert {"seg_loss", "adv_loss", "semi_loss", "total_loss", "d_loss"} <= set(logs)
    assert all(np.isfinite(float(v)) for v in logs.values())
    for before, sub_model in ((s_before, model.segmenter), (d_before, model.discriminator)):
        after = [w.numpy() for w in sub_model.trainable_weights]
        assert all(not np.allclose(b, a) for b, a in zip(before, after, strict=True))
    assert d_losses[-1] < 0.8 * d_losses[0], d_losses


def test_adversarial_term_reaches_s_and_self_taught_term_starts_at_semi_start():
    model = _model("pixel", semi_threshold=0.01, semi_start=1)
    (x, y), x_u = _batch()
    y_onehot = tf.one_hot(y, N_CLASSES)
    with tf.GradientTape() as tape:
        losses = model.segmenter_losses(x, y_onehot, x_u)
    gradients = tape.gradient(losses["adv_loss"], model.segmenter.trainable_weights)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients if g is not None)
    assert float(losses["semi_loss"]) == 0.0  # iteration 0 < semi_start

    model.train_step(((x, y), x_u))  # iteration 1 = semi_start
    assert float(model.segmenter_losses(x, y_onehot, x_u)["semi_loss"]) > 0.0


def test_image_level_discriminator_sees_image_and_class_map():
    model = _model("image")
    x = tf.ones((2, SIDE, SIDE, 1))
    maps = tf.one_hot(tf.zeros((2, SIDE, SIDE), tf.int32), N_CLASSES)
    both = model.discriminator_input(x, maps)
    assert both.shape == (2, SIDE, SIDE, N_CLASSES + 1)
    np.testing.assert_array_equal(both[..., 0], 1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="level must be one of .* found 'voxel'"):
        AdversarialSegmentationModel(
            build_tiny_unet(), _discriminator("pixel"), level="voxel", n_classes=2,
            class_weights=[0.1, 0.9],
        )  # fmt: skip


@pytest.fixture(scope="module", params=["adv_pixel", "adv_image"])
def adversarial_run(request, tiny_cache, tmp_path_factory):
    """A finished tiny run of each adversarial method through Algorithm."""
    cfg, _ = tiny_cache
    cfg = tiny_config(cfg.data.cache_dir, tmp_path_factory.mktemp("adv-runs"), request.param)
    cfg.model.pixel_discriminator_filters = [4, 8]
    cfg.train.semi_start = 2
    cfg.train.validate_every = 1
    cfg.train.validation_smoothing = 0.5  # the comparison stages must honour it too
    run = open_run_directory(cfg)
    return run, Algorithm(cfg, run, progress=False).execute(command=["test"])


def test_adversarial_stage_chooses_its_checkpoint_on_the_smoothed_score(adversarial_run):
    """train.validation_smoothing reaches the comparison methods' stages (it once did not)."""
    run, _ = adversarial_run
    rows = read_jsonl(run.stage("adversarial") / "metrics.jsonl")
    scores = [row["validation_dice"] for row in rows]
    assert len(set(scores)) > 1, "the tiny run's validation Dice must move for this test"
    expected = [scores[0]]
    for score in scores[1:]:
        expected.append(0.5 * expected[-1] + 0.5 * score)
    np.testing.assert_allclose([row["selection_score"] for row in rows], expected)


def test_adversarial_methods_run_through_the_algorithm(adversarial_run):
    run, results = adversarial_run
    assert list(results["stages"]) == ["adversarial"]
    assert json.loads(run.results_path.read_text(encoding="utf-8"))["method"] == results["method"]
    assert results["stages"]["adversarial"]["iterations"] == 4
    assert results["summary"]["mean_dice"]["n"] == 2
    best = run.stage("adversarial") / "best"
    assert sorted(p.name for p in best.iterdir()) == [
        "discriminator.weights.h5",
        "segmenter.weights.h5",
    ]
