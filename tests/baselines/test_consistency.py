"""Tests of the ``fixmatch`` / ``unimatch`` comparisons: the weak-to-strong consistency step
(its teacher, CutMix, feature stream and losses), its engineering (one trace, XLA, mixed
precision) and runs through :class:`Algorithm` on the tiny phantom, exported afterwards."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import GENERATOR_FILTERS, SIDE, build_tiny_unet, tiny_config

from tfaug.analysis.diagnostics import SUMMARY_NAME
from tfaug.baselines.comparisons import build_consistency_model, consistency_batch_sizes
from tfaug.baselines.consistency import ConsistencyModel, confident_pseudo_labels
from tfaug.baselines.teacher_watch import TeacherDriftWarning, TeacherWatch
from tfaug.config import ConfigError, config_from_dict
from tfaug.data.pipeline import class_shares, labeled_dataset, unlabeled_dataset
from tfaug.deploy.export import export_run, load_run_models
from tfaug.experiments.diagnostics_report import find_generator_runs
from tfaug.io import read_jsonl
from tfaug.methods import METHODS, final_stage
from tfaug.models.generator import Generator
from tfaug.ops.augment import RandomAffine
from tfaug.ops.cutmix import CutMixBoxes
from tfaug.ops.generated import ChainAugmentation, GeneratedAugmentation, SecondHalfAugmentation
from tfaug.ops.heavy import HeavyAugmentation, HeavyIntensity
from tfaug.runs.algorithm import Algorithm, plan_split
from tfaug.runs.rundir import open_run_directory
from tfaug.training import loop

N_CLASSES = 2


def _model(views: int = 2, feature_weight: float = 0.25, **kwargs) -> ConsistencyModel:
    keras.utils.set_random_seed(0)
    options = {
        "weak": RandomAffine(seed=1),
        "strong": HeavyIntensity(p_brightness=0.8, brightness_range=(0.5, 1.5), seed=2),
        "cutmix": CutMixBoxes(seed=3),
        "threshold": 0.6,
        **kwargs,
    }
    model = ConsistencyModel(
        build_tiny_unet(N_CLASSES),
        n_classes=N_CLASSES,
        class_weights=[0.1, 0.9],
        strong_views=views,
        feature_weight=feature_weight,
        seed=4,
        **options,
    )
    model.compile(s_optimizer=keras.optimizers.Adam(1e-2))
    return model


def _discs(rows: int = 4) -> tuple[tf.Tensor, tf.Tensor]:
    """Noisy bright discs of radii 5..11 on a dark slice, and their labels."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    labels = np.stack([(yy - 16) ** 2 + (xx - 16) ** 2 < r**2 for r in range(5, 5 + 2 * rows, 2)])
    noise = np.random.default_rng(0).normal(0.0, 0.05, labels.shape)
    images = (0.2 + 0.6 * labels + noise).astype(np.float32)[..., None]
    return tf.constant(images), tf.constant(labels.astype(np.int32))


def _batch() -> tuple:
    x, y = _discs()
    return (x[:2], y[:2]), x[2:]


def _step(model: ConsistencyModel, batch) -> dict[str, float]:
    """One training step's values (trackers reset first, so the means are this step's)."""
    for tracker in model.metrics:
        tracker.reset_state()
    return {name: float(value) for name, value in model.train_step(batch).items()}


# ----------------------------------------------------------------------- the teacher


def test_pseudo_labels_carry_no_gradient():
    model = _model()
    (x_l, y_l), x_u = _batch()
    x_l, y_onehot, x_u = model.weak_views(x_l, y_l, x_u)
    strong, boxes = model.strong_batch(x_u)
    weights = model.segmenter.trainable_weights
    with tf.GradientTape(persistent=True) as tape:
        losses = model.compute_losses(x_l, y_onehot, x_u, strong, boxes)
    for name in ("pseudo_labels", "confidence_map"):
        assert all(g is None for g in tape.gradient(losses[name], weights)), name
    # The consistency terms do reach S (through the student's predictions).
    for name in ("strong_loss", "fp_loss"):
        gradients = tape.gradient(losses[name], weights)
        assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)
    logits = tf.Variable(tf.random.normal((1, 4, 4, N_CLASSES)))
    with tf.GradientTape() as tape:
        labels, confidence, kept = confident_pseudo_labels(logits, 0.5)
        total = tf.reduce_sum(labels) + tf.reduce_sum(confidence) + tf.reduce_sum(kept)
    assert tape.gradient(total, logits) is None


def _with_head(model: ConsistencyModel, bias: list[float]) -> ConsistencyModel:
    """The segmenter answers ``bias`` at every pixel: zero head kernel, given head bias."""
    head = model.segmenter.head
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign(bias)
    return model


def test_confident_teacher_keeps_every_pixel_and_uniform_teacher_keeps_none():
    confident = _step(_with_head(_model(threshold=0.95), [8.0, -8.0]), _batch())
    assert confident["kept_fraction"] == 1.0 and confident["confidence"] > 0.99
    assert confident["teacher_class_1"] == 0.0  # every pseudo-label is background
    foreground = _step(_with_head(_model(threshold=0.95), [-8.0, 8.0]), _batch())
    assert foreground["teacher_class_1"] == 1.0
    uniform = _step(_with_head(_model(threshold=0.95), [0.0, 0.0]), _batch())
    assert uniform["kept_fraction"] == 0.0
    assert uniform["confidence"] == pytest.approx(1 / N_CLASSES)
    assert uniform["strong_loss"] == uniform["fp_loss"] == 0.0  # no kept pixel, no target
    assert uniform["seg_loss"] > 0.0


# ----------------------------------------------------------------------- strong views


def test_cutmix_mixes_images_and_pseudo_labels_with_the_same_boxes():
    rows = 4
    model = ConsistencyModel(
        build_tiny_unet(rows),
        n_classes=rows,
        class_weights=[0.25] * rows,
        cutmix=CutMixBoxes(probability=1.0, seed=7),
        threshold=0.5,
    )
    ids = tf.range(rows, dtype=tf.float32)
    x_u = tf.broadcast_to(ids[:, None, None, None], (rows, SIDE, SIDE, 1))  # slice i: value i
    images, boxes = model.strong_batch(x_u)
    assert len(images) == len(boxes) == 2
    pseudo_labels = tf.one_hot(tf.cast(x_u[..., 0], tf.int32), rows)
    confidence = x_u[..., 0] / 4.0  # slices 2 and 3 are confident (>= 0.5)
    for image, box in zip(images, boxes, strict=True):
        shown = np.asarray(image)[..., 0].astype(int)  # which slice each pixel comes from
        labels, kept = model.view_targets(pseudo_labels, confidence, box)
        np.testing.assert_array_equal(np.argmax(labels, axis=-1), shown)
        np.testing.assert_array_equal(np.asarray(kept), shown >= 2)
        assert np.asarray(box).any(axis=(1, 2)).all()
        np.testing.assert_array_equal(shown[~np.asarray(box)], np.where(~np.asarray(box))[0])
    assert not np.array_equal(boxes[0], boxes[1])  # each view draws its own boxes


def _learned(strength: float = 5.0) -> GeneratedAugmentation:
    """GI(GV(x)) from untrained tiny generators, their fields scaled up to be visible."""
    generators = [
        Generator(kind, filters=GENERATOR_FILTERS, image_filters=4, z_dim=8)
        for kind in ("deformation", "intensity")
    ]
    for generator in generators:
        generator.build(((None, SIDE, SIDE, 1), (None, 8)))
        generator.trainable = False  # frozen, as the method uses them
    return GeneratedAugmentation(
        *generators, z_dim=8, seed=9, composition="chain", strength=(strength, strength)
    )


def test_learned_view_warps_the_pseudo_labels_by_exactly_the_field_applied_to_the_image():
    learned = _learned()
    learned.intensity = None  # GV alone: the image is only warped, so it can be compared
    model = _model(learned=learned, threshold=0.95)
    x, y = _discs(2)
    disc = tf.cast(y, tf.float32)
    x_u = disc[..., None]  # the image is the foreground mask itself
    pseudo_labels = tf.one_hot(y, N_CLASSES)
    confidence = 0.5 + 0.5 * disc  # certain inside the disc, 0.5 outside
    view = model.learned_view(x_u, pseudo_labels, confidence)
    images, labels, kept = (np.asarray(view[key]) for key in ("images", "labels", "kept"))
    assert np.abs(images - np.asarray(x_u)).max() > 0.5  # the field moved the disc's edge
    np.testing.assert_allclose(labels[..., 1], images[..., 0], atol=1e-5)  # the same warp
    np.testing.assert_allclose(labels.sum(axis=-1), 1.0, atol=1e-5)  # still a soft label map
    # The confidence is warped alike and checked again: edge pixels fall below 0.95.
    np.testing.assert_array_equal(kept, (0.5 + 0.5 * images[..., 0] >= 0.95).astype(np.float32))
    assert 0 < kept.sum() < (confidence.numpy() >= 0.95).sum()


def test_learned_view_loss_reaches_s_only_and_is_tracked():
    learned = _learned()
    model = _model(learned=learned)
    assert "learned_loss" in model.tracker_names and model.learned_weight == model.strong_weight
    (x_l, y_l), x_u = _batch()
    x_l, y_onehot, x_u = model.weak_views(x_l, y_l, x_u)
    strong, boxes = model.strong_batch(x_u)
    with tf.GradientTape(persistent=True) as tape:
        losses = model.compute_losses(x_l, y_onehot, x_u, strong, boxes)
    gradients = tape.gradient(losses["learned_loss"], model.segmenter.trainable_weights)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)
    frozen = learned.deformation.weights + learned.intensity.weights
    assert all(g is None for g in tape.gradient(losses["total_loss"], frozen))
    values = _step(model, _batch())
    assert 0.0 <= values["learned_kept_fraction"] <= 1.0 and np.isfinite(values["learned_loss"])


def test_a_learned_view_can_replace_the_generic_strong_views():
    model = _model(views=0, learned=_learned(), learned_weight=0.3)
    assert "strong_loss" not in model.tracker_names and "learned_loss" in model.tracker_names
    (x_l, y_l), x_u = _batch()
    x_l, y_onehot, x_u = model.weak_views(x_l, y_l, x_u)
    strong, boxes = model.strong_batch(x_u)
    assert strong == boxes == []
    losses = model.compute_losses(x_l, y_onehot, x_u, strong, boxes)
    expected = 0.5 * losses["seg_loss"] + 0.3 * losses["learned_loss"] + 0.25 * losses["fp_loss"]
    np.testing.assert_allclose(float(losses["total_loss"]), float(expected), rtol=1e-5)
    assert np.isfinite(_step(model, _batch())["learned_loss"])
    with pytest.raises(ValueError, match="strong_views must be an integer >= 1"):
        _model(views=0)  # no strong view at all


def test_feature_dropout_acts_only_on_the_perturbed_stream():
    model = _model(feature_dropout=0.5)
    x, _ = _discs()
    segmenter = model.segmenter
    clean, perturbed = model.weak_pass(x, 1, training=False)
    again, perturbed_again = model.weak_pass(x, 1, training=False)
    # Inference-mode BatchNormalization: rows are independent, so the clean stream (labeled
    # and unlabeled rows) must be S itself, every time; only the perturbed stream varies.
    np.testing.assert_allclose(clean, segmenter(x, training=False), atol=1e-5)
    np.testing.assert_array_equal(clean, again)
    assert perturbed.shape == (3, SIDE, SIDE, N_CLASSES)
    assert np.abs(np.asarray(perturbed) - np.asarray(clean[1:])).max() > 1e-3
    assert np.abs(np.asarray(perturbed) - np.asarray(perturbed_again)).max() > 1e-3
    # S itself holds no dropout: two training-mode calls agree.
    np.testing.assert_array_equal(segmenter(x, training=True), segmenter(x, training=True))

    dropped = np.asarray(model.channel_dropout(tf.ones((8, 3, 3, 64))))
    assert set(np.unique(dropped)) == {0.0, 2.0}  # whole channels, survivors scaled by 2
    assert (dropped == dropped[:, :1, :1, :]).all()
    assert 0.4 < (dropped == 0).mean() < 0.6
    assert not _model(views=1, feature_weight=0.0).perturbs_features


# ----------------------------------------------------------------------- the step


def test_methods_trackers_and_updates():
    model, fixmatch = _model(), _model(views=1, feature_weight=0.0, strong_weight=0.5)
    logs = _step(model, _batch())
    assert set(logs) == {
        "seg_loss", "strong_loss", "strong_loss_1", "strong_loss_2", "fp_loss", "total_loss",
        "confidence", "kept_fraction", "teacher_class_1",
    }  # fmt: skip
    expected = 0.5 * logs["seg_loss"] + 0.125 * (logs["strong_loss_1"] + logs["strong_loss_2"])
    assert logs["total_loss"] == pytest.approx(expected + 0.25 * logs["fp_loss"], rel=1e-5)
    before = [w.numpy().copy() for w in fixmatch.segmenter.trainable_weights]
    logs = _step(fixmatch, _batch())
    assert set(logs) == {
        "seg_loss", "strong_loss", "total_loss", "confidence", "kept_fraction", "teacher_class_1",
    }  # fmt: skip
    assert logs["total_loss"] == pytest.approx(
        0.5 * logs["seg_loss"] + 0.5 * logs["strong_loss"], rel=1e-5
    )
    after = fixmatch.segmenter.trainable_weights
    assert all(not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize(
    ("views", "feature_weight", "losses"),
    [(2, 0.25, ("cross_entropy_dice", "dice")), (1, 0.0, ("cross_entropy", "cross_entropy"))],
)
def test_loss_on_a_fixed_batch_falls(views, feature_weight, losses):
    model = _model(views, feature_weight, supervised_loss=losses[0], unlabeled_loss=losses[1])
    step, batch = tf.function(model.train_step), _batch()
    totals = []
    for _ in range(20):
        for tracker in model.metrics:
            tracker.reset_state()
        totals.append(float(step(batch)["total_loss"]))
    assert np.mean(totals[-3:]) < 0.6 * np.mean(totals[:3]), totals
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("labeled", ["weak", "heavy"])
def test_mixed_precision_step(tmp_path, labeled):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="unimatch")
    cfg.ssl.labeled_augmentation = labeled  # heavy computes in float32, the weak view not
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:  # built as a run builds it: after the policy is set
        model = build_consistency_model(cfg, build_tiny_unet(cfg.data.n_classes), seed=1)
        assert model.segmenter.compute_dtype == "float16"
        assert isinstance(model.s_optimizer, keras.optimizers.LossScaleOptimizer)
        x, y = _discs()
        logs = model.train_step(((x[:2], y[:2]), x[2:]))  # the dtypes are those of a graph
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name, value in logs.items():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()), name


def test_config_round_trip_and_bad_arguments():
    model = _model()
    config = model.get_config()
    assert (config["supervised_weight"], config["strong_weight"]) == (0.5, 0.125)
    assert (config["feature_weight"], config["threshold"], config["feature_dropout"]) == (
        0.25, 0.6, 0.5,
    )  # fmt: skip
    clone = ConsistencyModel.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.strong, HeavyIntensity) and isinstance(clone.cutmix, CutMixBoxes)
    with_learned = _model(learned=_learned(), learned_weight=0.3).get_config()
    clone = ConsistencyModel.from_config(with_learned)
    assert clone.learned_weight == 0.3 and clone.learned.composition == "chain"
    assert isinstance(clone.learned.deformation, Generator) and clone.learned.intensity.kind == (
        "intensity"
    )
    defaults = ConsistencyModel(build_tiny_unet(), n_classes=2, class_weights=[0.5, 0.5])
    assert defaults.get_config()["threshold"] == 0.95 and defaults.strong_views == 2
    with pytest.raises(ValueError, match="threshold must be in .*feature_dropout must be in"):
        ConsistencyModel(
            build_tiny_unet(), n_classes=2, class_weights=[0.5, 0.5], threshold=1.5,
            feature_dropout=1.0,
        )  # fmt: skip


class _Doubling(keras.layers.Layer):
    """A paired layer that doubles the images and keeps the masks (a visible 'augmentation')."""

    def call(self, inputs, training=None):
        return {**inputs, "images": 2.0 * inputs["images"]}


def test_a_labeled_augmentation_replaces_the_weak_view_of_the_labeled_pair_only():
    model = _model(weak=None, labeled=_Doubling())
    (x_l, y_l), x_u = _batch()
    weak_l, onehot, weak_u = model.weak_views(x_l, y_l, x_u)
    np.testing.assert_allclose(weak_l, 2.0 * x_l.numpy())
    np.testing.assert_array_equal(onehot, tf.one_hot(y_l, N_CLASSES))
    np.testing.assert_array_equal(weak_u, x_u)  # the unlabeled slices keep the weak view


def test_rampup_scales_the_unlabeled_terms_from_exp_minus_5_to_1():
    model = _model(rampup_iterations=10)
    (x_l, y_l), x_u = _batch()
    x_l, y_onehot, x_u = model.weak_views(x_l, y_l, x_u)
    strong, boxes = model.strong_batch(x_u)
    for step, ramp in ((0, np.exp(-5.0)), (5, np.exp(-1.25)), (10, 1.0), (25, 1.0)):
        model.s_optimizer.iterations.assign(step)
        losses = model.compute_losses(x_l, y_onehot, x_u, strong, boxes)
        unlabeled = 0.125 * (losses["strong_loss_1"] + losses["strong_loss_2"])
        unlabeled += 0.25 * losses["fp_loss"]
        expected = 0.5 * losses["seg_loss"] + ramp * unlabeled
        np.testing.assert_allclose(float(losses["unlabeled_ramp"]), ramp, rtol=1e-6)
        np.testing.assert_allclose(float(losses["total_loss"]), float(expected), rtol=1e-5)
    assert "unlabeled_ramp" in _step(model, _batch())
    assert "unlabeled_ramp" not in _model().tracker_names  # off by default (UniMatch)
    assert ConsistencyModel.from_config(model.get_config()).rampup_iterations == 10
    with pytest.raises(ValueError, match="rampup_iterations must be an integer >= 0"):
        _model(rampup_iterations=-1)


def test_distribution_alignment_moves_the_teachers_class_shares_to_the_labeled_slices():
    # The teacher answers foreground at every pixel (softmax 0.27 / 0.73, after the labeled
    # branch's update); the labeled slices are ~11 % foreground (the discs of radius 5, 7).
    (x_l, y_l), _ = _batch()
    labeled_share = float(tf.reduce_mean(tf.cast(y_l, tf.float32)))
    plain = _step(_with_head(_model(threshold=0.0), [-0.5, 0.5]), _batch())
    assert plain["teacher_class_1"] == 1.0
    model = _with_head(_model(threshold=0.0, distribution_alignment=True), [-0.5, 0.5])
    aligned = _step(model, _batch())
    assert aligned["teacher_class_1"] == 0.0  # 0.73 · 0.11 / 0.73 < 0.27 · 0.89 / 0.27
    # The running shares: one step from zero, so (1 − momentum) × this step's shares.
    momentum = ConsistencyModel.ALIGNMENT_MOMENTUM
    np.testing.assert_allclose(
        model.labeled_shares.numpy(), (1 - momentum) * np.array([1 - labeled_share, labeled_share]),
        rtol=0.05,  # the weak (affine) view moves a few label pixels
    )  # fmt: skip
    assert model.teacher_shares.numpy()[1] > model.teacher_shares.numpy()[0] > 0
    # One finite factor per class (that the bias correction keeps them step-independent is the
    # next test's).
    factors = model.alignment_factors(tf.one_hot(y_l, N_CLASSES), tf.zeros((2, SIDE, SIDE, 2)))
    assert np.all(np.isfinite(factors.numpy())) and factors.shape == (N_CLASSES,)
    # State for a resumed run (non-trainable, saved with the statistics), and no gradient.
    assert {v.name for v in model.non_trainable_variables} >= {"labeled_shares", "teacher_shares"}
    assert not {"labeled_shares", "teacher_shares"} & {v.name for v in model.trainable_weights}
    logits = tf.Variable(tf.random.normal((1, 4, 4, N_CLASSES)))
    with tf.GradientTape() as tape:
        labels, confidence, kept = confident_pseudo_labels(logits, 0.5, factors)
        total = tf.reduce_sum(labels) + tf.reduce_sum(confidence) + tf.reduce_sum(kept)
    assert tape.gradient(total, logits) is None
    assert ConsistencyModel.from_config(model.get_config()).distribution_alignment
    assert "labeled_shares" not in {v.name for v in _model().variables}  # off: no new state


def test_alignment_factors_of_a_teacher_that_already_matches_are_one():
    model = _model(distribution_alignment=True)
    shares = np.array([0.8, 0.2], np.float32)
    y_onehot = tf.one_hot(tf.cast(tf.random.uniform((4, SIDE, SIDE)) < shares[1], tf.int32), 2)
    batch_shares = tf.reduce_mean(y_onehot, axis=(0, 1, 2))
    logits = tf.math.log(tf.broadcast_to(batch_shares, (4, SIDE, SIDE, 2)))
    for step in (0, 40):
        model.s_optimizer.iterations.assign(step)
        factors = model.alignment_factors(y_onehot, logits)
        np.testing.assert_allclose(factors.numpy(), [1.0, 1.0], rtol=1e-4)


# ----------------------------------------------------------------------- from the config


def test_the_config_builds_each_method(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="unimatch")
    cfg.strong.p_blur, cfg.ssl.cutmix_probability = 0.3, 0.7
    cfg.train.batch_size = 5
    unimatch = build_consistency_model(cfg, build_tiny_unet(4), seed=1)
    assert (unimatch.strong_views, unimatch.strong_weight, unimatch.feature_weight) == (
        2, 0.125, 0.25,
    )  # fmt: skip
    assert isinstance(unimatch.weak, RandomAffine)
    assert unimatch.strong.p_blur == 0.3 and unimatch.cutmix.probability == 0.7
    assert unimatch.strong.clip_to_input_range  # UniMatch's 8-bit jitter stays in range
    assert unimatch.class_weights == (1.0,) * 4  # UniMatch's unweighted cross-entropy
    assert unimatch.rampup_iterations == 0  # no ramp-up, as UniMatch
    assert not unimatch.distribution_alignment  # no alignment, as UniMatch
    cfg.ssl.class_weights, cfg.ssl.rampup_iterations = cfg.train.class_weights, 40
    cfg.ssl.distribution_alignment = True
    weighted = build_consistency_model(cfg, build_tiny_unet(4), seed=1)
    assert weighted.class_weights == tuple(cfg.train.class_weights)
    assert weighted.rampup_iterations == 40 and weighted.distribution_alignment
    cfg.ssl.distribution_alignment = False
    assert unimatch.labeled is None  # the weak view, as UniMatch
    for choice, kind in (("heavy", HeavyAugmentation), ("rdri", ChainAugmentation)):
        cfg.ssl.labeled_augmentation = choice
        model = build_consistency_model(cfg, build_tiny_unet(4), seed=1)
        assert isinstance(model.labeled, kind) and isinstance(model.weak, RandomAffine)
    clone = ConsistencyModel.from_config(model.get_config())
    assert isinstance(clone.labeled, ChainAugmentation) and len(clone.labeled.stages) == 3
    assert consistency_batch_sizes(cfg) == (3, 2)  # round(5 · 0.5) = 2 unlabeled
    cfg.method = "fixmatch"
    fixmatch = build_consistency_model(cfg, build_tiny_unet(4), seed=1)
    assert (fixmatch.strong_views, fixmatch.strong_weight, fixmatch.feature_weight) == (
        1, 0.5, 0.0,
    )  # fmt: skip
    cfg.method, cfg.ssl.learned_weight = "unimatch_gdgi", 0.2
    learned = _learned(strength=1.0)
    generators = {"deformation": learned.deformation, "intensity": learned.intensity}
    with_view = build_consistency_model(cfg, build_tiny_unet(4), seed=1, generators=generators)
    assert (with_view.strong_views, with_view.feature_weight, with_view.learned_weight) == (
        2, 0.25, 0.2,
    )  # fmt: skip
    assert with_view.learned.composition == "chain"
    assert with_view.learned.deformation is learned.deformation
    # learned_view "both" (the default): the generated pairs join the labeled rows as well.
    assert isinstance(with_view.labeled, ChainAugmentation)
    assert isinstance(with_view.labeled.stages[-1], SecondHalfAugmentation)
    assert with_view.labeled.stages[-1].layer.deformation is learned.deformation
    cfg.ssl.learned_view = "labeled"
    labeled_only = build_consistency_model(cfg, build_tiny_unet(4), seed=1, generators=generators)
    assert labeled_only.learned is None and "learned_loss" not in labeled_only.tracker_names
    assert isinstance(labeled_only.labeled.stages[-1], SecondHalfAugmentation)
    cfg.ssl.learned_view, cfg.ssl.strong_views = "unlabeled", 0
    replacing = build_consistency_model(cfg, build_tiny_unet(4), seed=1, generators=generators)
    assert replacing.strong_views == 0 and replacing.learned is not None
    assert isinstance(replacing.labeled, ChainAugmentation)  # ssl.labeled_augmentation: rdri
    assert not any(isinstance(s, SecondHalfAugmentation) for s in replacing.labeled.stages)
    cfg.ssl.strong_views = None
    cfg.ssl.unlabeled_fraction = 0.05
    with pytest.raises(ValueError, match="ssl.unlabeled_fraction"):
        consistency_batch_sizes(cfg)


def test_generated_pairs_join_the_second_half_of_the_labeled_rows(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="unimatch_gdgi")
    cfg.augment.affine_probability = 0.0  # the affine augmentation leaves every slice as is
    cfg.augment.generated_composition = "chain"  # GI(GV(x)) on every generated row
    cfg.augment.generated_strength = [5.0, 5.0]  # the untrained fields made visible
    learned = _learned(strength=5.0)
    generators = {"deformation": learned.deformation, "intensity": learned.intensity}
    n_classes = cfg.data.n_classes
    model = build_consistency_model(cfg, build_tiny_unet(n_classes), seed=1, generators=generators)
    x, y = _discs(4)
    x_l, y_onehot, _ = model.weak_views(x, y, x[:1])
    x_l, y_onehot = np.asarray(x_l), np.asarray(y_onehot)
    np.testing.assert_allclose(x_l[:2], np.asarray(x)[:2], atol=1e-6)  # as they were
    np.testing.assert_array_equal(y_onehot[:2], tf.one_hot(y[:2], n_classes))
    assert np.abs(x_l[2:] - np.asarray(x)[2:]).max() > 0.1  # generated
    assert not np.array_equal(y_onehot[2:], tf.one_hot(y[2:], n_classes))  # warped alike
    np.testing.assert_allclose(y_onehot.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "view", "views", "message"),
    [
        ("unimatch", "both", 0, "allowed only for methods unimatch_gdgi, unimatch_gdgi_joint"),
        ("unimatch_gdgi", "labeled", 0, "ssl.learned_view labeled"),
        ("fixmatch", "both", -1, "must be >= 0"),
        ("unimatch_gdgi", "everywhere", None, "ssl.learned_view: 'everywhere'"),
    ],
)
def test_the_config_refuses_a_run_without_a_strong_view(method, view, views, message):
    values = {"method": method, "ssl": {"learned_view": view, "strong_views": views}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_step_compiles_with_xla_and_traces_once_in_run_stage(tiny_cache, tmp_path, monkeypatch):
    """One trace over 3 steps of a real stage, and XLA compiles the whole step (the affine
    weak view, HeavyIntensity, CutMix and the dropout included). Without XLA, the fixed-batch
    test below counts the traces."""
    cfg, cache = tiny_cache
    cfg = tiny_config(cfg.data.cache_dir, tmp_path, method="unimatch")
    model = build_consistency_model(cfg, build_tiny_unet(cfg.data.n_classes), seed=1)
    built = []

    def spy(model: keras.Model, jit_compile: bool):
        built.append(compile_train_step(model, jit_compile))
        return built[-1]

    def make_dataset(start: int) -> tf.data.Dataset:
        labeled = labeled_dataset(cache, cache.case_ids, 2, seed=start)
        return tf.data.Dataset.zip((labeled, unlabeled_dataset(cache, cache.case_ids, 2, start)))

    compile_train_step = loop.compile_train_step
    monkeypatch.setattr(loop, "compile_train_step", spy)
    result = loop.run_stage(
        name="consistency",
        model=model,
        make_dataset=make_dataset,
        iterations=3,
        stage_dir=tmp_path / "consistency",
        keep={},
        validate_every=3,
        jit_compile=True,
        progress=False,
    )
    assert result.iterations == 3
    assert len(built) == 1 and built[0].experimental_get_tracing_count() == 1


# ----------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module", params=["unimatch", "unimatch_gdgi", "unimatch_gdgi_joint"])
def consistency_run(request, tiny_cache, tmp_path_factory):
    """A finished tiny run of each consistency method through Algorithm (``fixmatch``'s
    stage is ``unimatch``'s with other arguments: test_the_config_builds_each_method)."""
    cfg, _ = tiny_cache
    cfg = tiny_config(cfg.data.cache_dir, tmp_path_factory.mktemp("ssl-runs"), request.param)
    cfg.ssl.threshold = 0.5  # the tiny run's S is far from confident
    cfg.train.generator_iterations = cfg.train.validate_every  # unimatch_gdgi: short G stages
    run = open_run_directory(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TeacherDriftWarning)
        results = Algorithm(cfg, run, progress=False).execute(command=["test"])
    drift = [str(w.message) for w in caught if issubclass(w.category, TeacherDriftWarning)]
    return cfg, run, results, drift


def test_the_teacher_watch_warns_from_the_shares_the_stage_logged(consistency_run, tiny_cache):
    """The warnings a run printed are those a watch fed the logged ``teacher_class_<c>``
    rows gives: the stage reads the trackers' means at each validation, before their reset."""
    cfg, run, _, drift = consistency_run
    _, split = plan_split(cfg)
    watch = TeacherWatch(
        "consistency",
        cfg.train.segmenter_iterations,
        class_shares(tiny_cache[1], split.labeled),
        cfg.data.class_names,
    )
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TeacherDriftWarning)
        for row in read_jsonl(run.stage("consistency") / "metrics.jsonl"):
            shares = {c: row[f"teacher_class_{c}"] for c in range(1, cfg.data.n_classes)}
            expected += watch.update(row["step"], shares)
    # The tiny teacher is untrained: its shares are far off. The run's messages end with
    # advice the bare watch does not give.
    assert expected and len(drift) == len(expected)
    assert all(m.startswith(e) for m, e in zip(drift, expected, strict=True))
    assert all("--config lrdri" in m for m in drift if "drifted" in m)


def test_consistency_methods_run_export_and_resume(consistency_run, tmp_path):
    cfg, run, results, _ = consistency_run
    assert cfg.method in METHODS and final_stage(cfg.method, 3) == "consistency"
    learned = cfg.method in ("unimatch_gdgi", "unimatch_gdgi_joint")
    joint = cfg.method == "unimatch_gdgi_joint"  # generators trained in the consistency stage
    generator_stages = ["pretrain", "generator_deformation", "generator_intensity"]
    shared = learned and not joint
    assert list(results["stages"]) == [*(generator_stages if shared else []), "consistency"]
    assert json.loads(run.results_path.read_text(encoding="utf-8"))["method"] == cfg.method
    assert results["stages"]["consistency"]["iterations"] == cfg.train.segmenter_iterations
    assert results["summary"]["mean_dice"]["n"] == 2
    stage = run.stage("consistency")
    assert (stage / "done.json").is_file()
    kept = ["discriminator", "generator_deformation", "generator_intensity"] if joint else []
    assert sorted(p.name for p in (stage / "best").iterdir()) == [
        f"{name}.weights.h5" for name in sorted([*kept, "segmenter"])
    ]
    rows = [
        json.loads(line)
        for line in (stage / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert {"kept_fraction", "confidence", "strong_loss", "seg_loss"} <= set(rows[-1])
    assert "fp_loss" in rows[-1]
    assert ("learned_kept_fraction" in rows[-1]) == learned
    assert ("d_loss" in rows[-1]) == ("deformation_field_norm" in rows[-1]) == joint
    # The generators' figures, from the generator stages or (joint) the consistency stage.
    for kind in ("deformation", "intensity"):
        assert (run.figures / f"generated_{kind}.png").is_file() == learned
    # Their diagnostics: the generator stages', or those of the generators trained in the
    # consistency stage, which the report lists as a generator run of its own.
    diagnostics = run.path / SUMMARY_NAME
    assert diagnostics.is_file() == learned
    if joint:
        summary = json.loads(diagnostics.read_text(encoding="utf-8"))
        assert list(summary["stages"]) == ["consistency/deformation", "consistency/intensity"]
        assert summary["stages"]["consistency/deformation"]["last"]["field_mean"] > 0
        (found,) = find_generator_runs(run.path.parent)
        assert found.trained_jointly and found.stages == tuple(summary["stages"])

    # The export finds every model the run kept: the generators of unimatch_gdgi where gdgi's
    # are (tests/deploy), those of unimatch_gdgi_joint beside S in the consistency stage.
    _, models = load_run_models(run.path)
    expected = ["segmenter", *(["deformation", "intensity"] if learned else [])]
    assert sorted(models) == sorted(expected)
    if cfg.method != "unimatch":
        return  # the export and the finished-stage skip are the same for every method
    exported = export_run(run.path, tmp_path / "export", formats=("savedmodel",))
    assert list(exported["models"]) == ["segmenter"] and exported["run"]["method"] == "unimatch"

    # A finished stage is skipped: re-running trains nothing and keeps the same S.
    done = (stage / "done.json").read_text(encoding="utf-8")
    again = Algorithm(cfg, run, progress=False).execute(command=["again"])
    assert (stage / "done.json").read_text(encoding="utf-8") == done
    assert again["test"] == results["test"]


def test_every_methods_final_stage():
    assert final_stage("gdgi", 3) == final_stage("aff", 3) == "segmenter"
    assert final_stage("self_training", 2) == "self_training_round2"
    assert final_stage("adv_pixel", 3) == final_stage("adv_image", 3) == "adversarial"
    assert final_stage("fixmatch", 3) == final_stage("unimatch", 3) == "consistency"
    assert final_stage("unimatch_gdgi", 3) == "consistency"
