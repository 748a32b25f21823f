"""Tests of ``unimatch_gdgi_joint``'s step (:class:`JointConsistencyModel`): the student's
losses reach the generators and the teacher's targets do not carry gradient, the pseudo-labels
are warped by the field applied to the image, D learns, the switches, the checkpoint and the
precision. The whole tiny run, its export and resume are in test_consistency.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import DISCRIMINATOR_FILTERS, GENERATOR_FILTERS, SIDE, build_tiny_unet, tiny_config

from tfaug.baselines.comparisons import build_consistency_model
from tfaug.baselines.joint_consistency import (
    DIVERSITY_TRACKERS,
    GENERATOR_TRACKERS,
    JointConsistencyModel,
)
from tfaug.models.discriminator import Discriminator
from tfaug.models.generator import Generator
from tfaug.ops.augment import RandomAffine
from tfaug.ops.cutmix import CutMixBoxes
from tfaug.ops.heavy import HeavyIntensity
from tfaug.training import loop
from tfaug.training.builders import build_discriminator, build_generator

N_CLASSES, Z_DIM = 2, 8


def _networks() -> dict[str, keras.Model]:
    deformation, intensity = (
        Generator(kind, filters=GENERATOR_FILTERS, image_filters=4, z_dim=Z_DIM)
        for kind in ("deformation", "intensity")
    )
    for generator in (deformation, intensity):
        generator.build(((None, SIDE, SIDE, 1), (None, Z_DIM)))
    discriminator = Discriminator(filters=DISCRIMINATOR_FILTERS, units=8)
    discriminator.build((None, SIDE, SIDE, 1))
    return {"deformation": deformation, "intensity": intensity, "discriminator": discriminator}


def _model(learned_view: str = "both", views: int = 2, **kwargs) -> JointConsistencyModel:
    keras.utils.set_random_seed(0)
    model = JointConsistencyModel(
        build_tiny_unet(N_CLASSES),
        **_networks(),
        learned_view=learned_view,
        z_dim=Z_DIM,
        n_classes=N_CLASSES,
        class_weights=[0.1, 0.9],
        weak=RandomAffine(seed=1),
        strong=HeavyIntensity(p_brightness=0.8, brightness_range=(0.5, 1.5), seed=2),
        cutmix=CutMixBoxes(seed=3),
        threshold=0.6,
        strong_views=views,
        seed=4,
        **kwargs,
    )
    model.compile(s_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-3))
    return model


def _batch() -> tuple:
    """Noisy bright discs of radii 5, 7, 9, 11: two labeled, two unlabeled."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    labels = np.stack([(yy - 16) ** 2 + (xx - 16) ** 2 < r**2 for r in (5, 7, 9, 11)])
    noise = np.random.default_rng(0).normal(0.0, 0.05, labels.shape)
    images = tf.constant((0.2 + 0.6 * labels + noise).astype(np.float32)[..., None])
    labels = tf.constant(labels.astype(np.int32))
    return (images[:2], labels[:2]), images[2:]


def _losses(model: JointConsistencyModel, tape: tf.GradientTape) -> dict[str, tf.Tensor]:
    (x_l, y_l), x_u = _batch()
    x_l, y_onehot, x_u = model.weak_views(x_l, y_l, x_u)
    strong, boxes = model.strong_batch(x_u)
    with tape:
        return model.compute_losses(x_l, y_onehot, x_u, strong, boxes)


def _reaches(tape: tf.GradientTape, loss: tf.Tensor, weights: list) -> bool:
    gradients = tape.gradient(loss, weights)
    return any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)


def test_the_students_losses_reach_the_generators_and_the_teacher_carries_no_gradient():
    model = _model()
    tape = tf.GradientTape(persistent=True)
    losses = _losses(model, tape)
    deformation = model.deformation.trainable_weights
    intensity = model.intensity.trainable_weights
    # The learned view on pseudo-labeled slices and the generated labeled rows (in L_x).
    for name in ("learned_loss", "seg_loss"):
        assert _reaches(tape, losses[name], deformation), name
        assert _reaches(tape, losses[name], intensity), name
    assert _reaches(tape, losses["adv_loss"], deformation + intensity)
    assert _reaches(tape, losses["ld_loss"], deformation + intensity)
    every = model.trained_weights + model.discriminator.trainable_weights
    for name in ("pseudo_labels", "confidence_map", "learned_kept"):
        assert all(g is None for g in tape.gradient(losses[name], every)), name
    # D is judged by the objective but updated only by its own loss (after_update).
    trained = {id(w) for w in model.trained_weights}
    assert not trained & {id(w) for w in model.discriminator.trainable_weights}


def test_the_pseudo_labels_are_warped_by_the_field_applied_to_the_image():
    model = _model()
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = tf.constant(((yy - 16) ** 2 + (xx - 14) ** 2 < 64).astype(np.float32))[None]
    x_u = disc[..., None]  # the image is the foreground mask itself
    view = model.learned_view(x_u, tf.one_hot(tf.cast(disc, tf.int32), N_CLASSES), 0.5 + 0.5 * disc)
    warped_image = np.asarray(view["images"] - view["delta"])[..., 0]  # x ∘ v, ΔI removed
    assert np.abs(warped_image - np.asarray(disc)).max() > 0.05  # the field moved the edge
    np.testing.assert_allclose(np.asarray(view["labels"])[..., 1], warped_image, atol=1e-5)
    kept = 0.5 + 0.5 * warped_image >= model.threshold  # the warped confidence, re-checked
    np.testing.assert_array_equal(np.asarray(view["kept"]), kept.astype(np.float32))


def test_a_step_updates_s_the_generators_and_d_and_tracks_them():
    model = _model()
    networks = (model.segmenter, model.deformation, model.intensity, model.discriminator)
    before = [[w.numpy() for w in n.trainable_weights] for n in networks]
    step = tf.function(model.train_step)
    logs = {name: float(value) for name, value in step(_batch()).items()}
    step(_batch())
    for network, weights in zip(networks, before, strict=True):
        after = network.trainable_weights
        assert any(not np.allclose(b, a.numpy()) for b, a in zip(weights, after, strict=True))
    assert set(GENERATOR_TRACKERS) <= set(logs) and all(np.isfinite(list(logs.values())))
    assert logs["ld_loss"] < 0 < logs["deformation_field_norm"] <= logs["deformation_field_peak"]
    assert 0 < logs["intensity_field_norm"] <= logs["intensity_field_peak"]
    assert 0.0 <= logs["deformation_foreground_lost"] <= 1.0
    assert 0.0 <= logs["d_acc_real"] <= 1.0 and logs["learned_loss"] >= 0
    assert step.experimental_get_tracing_count() == 1


def test_the_learned_view_switches():
    labeled = _model("labeled")
    assert not labeled.has_learned_view and "learned_loss" not in labeled.tracker_names
    unlabeled = _model("unlabeled", views=0)
    assert unlabeled.has_learned_view and not unlabeled.generates_labeled
    assert "strong_loss" not in unlabeled.tracker_names
    losses = _losses(unlabeled, tf.GradientTape())
    # Only the learned view is generated: as many images as unlabeled slices.
    assert losses["generated"].shape[0] == 2
    assert np.isfinite(float(losses["total_loss"])) and np.isfinite(float(losses["ld_loss"]))
    both = _losses(_model("both"), tf.GradientTape())
    assert both["generated"].shape[0] == 2 + 1  # and the second half of the 2 labeled rows
    only_labeled = _losses(labeled, tf.GradientTape())
    assert only_labeled["generated"].shape[0] == 1 and "learned_images" not in only_labeled
    with pytest.raises(ValueError, match="learned_view must be one of"):
        _model("everywhere")
    with pytest.raises(ValueError, match="real_label must be in"):
        _model(real_label=0.3)


def test_the_generators_mode_seeking_term():
    # Generated labeled rows only and no feature stream: the second z is the step's last
    # random draw, so the same step with and without the term differs by the term alone.
    options = {"learned_view": "labeled", "views": 1, "feature_weight": 0.0}
    plain = _model(**options)
    assert not set(DIVERSITY_TRACKERS) & set(plain.tracker_names)
    without = _losses(plain, tf.GradientTape())
    assert not set(DIVERSITY_TRACKERS) & set(without)
    model = _model(**options, lambda_diversity=2.0)
    assert set(DIVERSITY_TRACKERS) <= set(model.tracker_names)
    tape = tf.GradientTape(persistent=True)
    losses = _losses(model, tape)
    for name, generator in zip(DIVERSITY_TRACKERS, ("deformation", "intensity"), strict=True):
        assert 0.0 < float(losses[name]) <= 1.0, name  # z changes a fresh generator's field
        assert _reaches(tape, losses[name], getattr(model, generator).trainable_weights), name
    term = 2.0 * sum(float(losses[name]) for name in DIVERSITY_TRACKERS)
    np.testing.assert_allclose(
        float(losses["total_loss"]), float(without["total_loss"]) - term, rtol=1e-5
    )
    # Both kinds of generated rows: each diversity is the mean over the two generations.
    both = _losses(_model(lambda_diversity=2.0), tf.GradientTape())
    assert all(0.0 < float(both[name]) <= 1.0 for name in DIVERSITY_TRACKERS)
    with pytest.raises(ValueError, match="lambda_diversity >= 0"):
        _model(lambda_diversity=-1.0)


def test_config_and_checkpoint_round_trips(tmp_path):
    model = _model("unlabeled", views=0, lambda_adv=0.5, lambda_ld=0.01, lambda_diversity=3.0)
    config = model.get_config()
    clone = JointConsistencyModel.from_config(config)
    assert clone.get_config() == config and "learned" not in config
    assert clone.lambda_diversity == 3.0
    assert clone.deformation.kind == "deformation" and clone.learned_view_where == "unlabeled"
    # The stage's checkpoint (what a resumed run restores) holds G, D and their statistics.
    state = loop.StageState(model, tmp_path, keep={}, budget_marks=[])
    model.train_step(_batch())
    state.record(1, None, 0.0)
    state.save(improved=False, lap=loop.Lap(wall_s=1.0, cpu_s=1.0, steps=1))
    fresh = _model("unlabeled", views=0, lambda_adv=0.5, lambda_ld=0.01, lambda_diversity=3.0)
    assert loop.StageState(fresh, tmp_path, keep={}, budget_marks=[]).step == 1
    for network in ("deformation", "intensity", "discriminator", "segmenter"):
        pairs = zip(getattr(model, network).weights, getattr(fresh, network).weights, strict=True)
        for saved, restored in pairs:
            np.testing.assert_array_equal(saved.numpy(), restored.numpy(), err_msg=saved.path)
    for name in ("s_optimizer", "d_optimizer"):
        assert int(getattr(fresh, name).iterations.numpy()) == 1, name


def test_mixed_precision_step(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="unimatch_gdgi_joint")
    cfg.train.lambda_diversity = 3.0  # the bdv3R setting: the second generator pass too
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:  # built as a run builds it: after the policy is set
        generators = {kind: build_generator(cfg, kind) for kind in ("deformation", "intensity")}
        model = build_consistency_model(
            cfg, build_tiny_unet(cfg.data.n_classes), 1, generators, build_discriminator(cfg)
        )
        assert isinstance(model, JointConsistencyModel) and model.lambda_diversity == 3.0
        assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
        (x_l, y_l), x_u = _batch()
        logs = model.train_step(((x_l, y_l), x_u))  # the dtypes are those of a graph
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name, value in logs.items():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()), name
