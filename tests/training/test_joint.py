"""Tests for tfaug/training/joint.py: the joint (S, G, D) step proves the method."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import DISCRIMINATOR_FILTERS, GENERATOR_FILTERS, UNET_FILTERS

from tfaug.config import load_config
from tfaug.models.discriminator import Discriminator
from tfaug.models.generator import Generator
from tfaug.models.unet import UNet
from tfaug.ops.augment import RandomAffine, RandomElastic, RandomIntensity
from tfaug.ops.generated import ChainAugmentation
from tfaug.training.builders import build_discriminator_optimizer
from tfaug.training.joint import (
    JointAugmentationModel,
    field_diversity,
    segmentation_gradient_wrt_generator,
)

SIDE = 32
BATCH = 8
Z_DIM = 8


def _make_model(
    *,
    kind="deformation",
    mode="joint",
    lambda_seg=1.0,
    lambda_adv=1.0,
    lambda_ld=1e-3,
    affine=None,
    seed=0,
    separate_s_optimizer=False,
    learning_rate=1e-3,
    build=True,
    discriminator=None,
    **kwargs,
):
    """A tiny compiled joint model (narrow filters, 32x32 slices, 2 classes)."""
    model = JointAugmentationModel(
        UNet(2, filters=UNET_FILTERS, bn_momentum=0.9),
        Generator(kind, filters=GENERATOR_FILTERS, image_filters=4, z_dim=Z_DIM, bn_momentum=0.9),
        discriminator or Discriminator(filters=DISCRIMINATOR_FILTERS, units=8, bn_momentum=0.9),
        kind=kind,
        n_classes=2,
        class_weights=[0.1, 0.9],
        lambda_seg=lambda_seg,
        lambda_adv=lambda_adv,
        lambda_ld=lambda_ld,
        mode=mode,
        affine=affine,
        seed=seed,
        **kwargs,
    )
    model.compile(
        g_optimizer=keras.optimizers.Adam(learning_rate),
        d_optimizer=keras.optimizers.Adam(learning_rate),
        s_optimizer=keras.optimizers.Adam(learning_rate) if separate_s_optimizer else None,
    )
    if build:
        model.build((None, SIDE, SIDE, 1))
    return model


def _discs(rng, n):
    """Bright discs on noise: images (n,32,32,1) float32 and labels (n,32,32) int32 (disc=1)."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    centres = rng.uniform(10, 22, size=(n, 2))
    radii = rng.uniform(4, 8, size=n)
    distance2 = (rows - centres[:, :1, None]) ** 2 + (cols - centres[:, 1:, None]) ** 2
    labels = (distance2 < radii[:, None, None] ** 2).astype("int32")
    images = 0.8 * labels + 0.1 * rng.normal(size=labels.shape)
    return images[..., None].astype("float32"), labels


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x, y = _discs(rng, BATCH)
    x_u, _ = _discs(rng, BATCH)
    return (x, y), x_u


def _per_step(step, model, data):
    """Run one step and return this step's tracker values (trackers reset before it)."""
    model.reset_metrics()
    return {name: float(value) for name, value in step(data).items()}


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
def test_segmentation_gradient_reaches_generator_only_in_joint_mode(kind):
    (x, y), _ = _batch()
    y_onehot = tf.one_hot(y, 2)
    z = tf.random.stateless_normal((BATCH, Z_DIM), seed=(1, 2))
    rows = tf.constant([True, False] * (BATCH // 2))
    norms = {}
    for mode in ("joint", "independent"):
        model = _make_model(kind=kind, mode=mode, lambda_adv=0.0, lambda_ld=0.0)
        gradients = segmentation_gradient_wrt_generator(model, x, y_onehot, z, rows)
        assert len(gradients) == len(model.generator.trainable_weights)
        norms[mode] = [float(tf.norm(g)) for g in gradients]
    assert sum(norms["joint"]) > 1e-6
    assert sum(g > 0.0 for g in norms["joint"]) > len(norms["joint"]) // 2
    assert all(g == 0.0 for g in norms["independent"])


def test_no_generated_rows_means_no_segmentation_gradient_into_generator():
    (x, y), _ = _batch()
    model = _make_model(mode="joint")
    z = tf.random.stateless_normal((BATCH, Z_DIM), seed=(1, 2))
    rows = tf.zeros((BATCH,), tf.bool)
    gradients = segmentation_gradient_wrt_generator(model, x, tf.one_hot(y, 2), z, rows)
    assert all(float(tf.norm(g)) == 0.0 for g in gradients)


@pytest.mark.parametrize(("mode", "moves"), [("joint", True), ("independent", False)])
def test_train_step_moves_generator_weights_by_segmentation_loss_only_in_joint_mode(mode, moves):
    model = _make_model(mode=mode, lambda_adv=0.0, lambda_ld=0.0, generated_fraction=(1.0, 1.0))
    before = [w.numpy() for w in model.generator.trainable_weights]
    segmenter_before = model.segmenter.trainable_weights[0].numpy()
    model.train_step(_batch())
    changed = [
        not np.array_equal(b, w.numpy())
        for b, w in zip(before, model.generator.trainable_weights, strict=True)
    ]
    assert any(changed) is moves
    assert not np.array_equal(segmenter_before, model.segmenter.trainable_weights[0].numpy())


def test_xla_training_reduces_seg_loss_and_discriminator_leaves_chance_without_retracing():
    rng = np.random.default_rng(0)
    images, labels = _discs(rng, 64)
    unlabeled, _ = _discs(rng, 64)
    model = _make_model()
    traces = []

    @tf.function(jit_compile=True)
    def step(data):
        traces.append(1)  # Python side effect: runs once per trace
        return model.train_step(data)

    history = []
    for _ in range(250):
        labeled_rows, unlabeled_rows = rng.integers(0, 64, BATCH), rng.integers(0, 64, BATCH)
        data = ((images[labeled_rows], labels[labeled_rows]), unlabeled[unlabeled_rows])
        history.append(_per_step(step, model, data))
    assert len(traces) == 1 and step.experimental_get_tracing_count() == 1
    assert int(model.g_optimizer.iterations) == int(model.d_optimizer.iterations) == 250
    seg = np.array([h["seg_loss"] for h in history])
    d_accuracy = np.array([(h["d_acc_real"] + h["d_acc_fake"]) / 2 for h in history])
    assert seg[-20:].mean() < 0.3 * seg[:20].mean()
    assert d_accuracy[:20].mean() < 0.6
    assert d_accuracy[-50:].mean() > 0.65
    assert np.isfinite([list(h.values()) for h in history]).all()


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
def test_large_deviation_term_alone_enlarges_the_field(kind):
    model = _make_model(
        kind=kind, lambda_seg=0.0, lambda_adv=0.0, lambda_ld=1.0, learning_rate=1e-2
    )
    data = _batch()
    magnitudes = [_per_step(model.train_step, model, data)["field_magnitude"] for _ in range(8)]
    assert all(np.diff(magnitudes) > 0)
    assert magnitudes[-1] > 1.3 * magnitudes[0]  # GI's tanh slows its growth (about 1.5x)


def _losses_of_fresh_model(seed, steps=2):
    keras.utils.set_random_seed(seed)
    model = _make_model(affine=RandomAffine(seed=seed), seed=seed)
    losses = [_per_step(model.train_step, model, _batch(i)) for i in range(steps)]
    return np.array([list(step.values()) for step in losses])


def test_steps_are_deterministic_under_fixed_seeds():
    first = _losses_of_fresh_model(5)
    second = _losses_of_fresh_model(5)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first[:1], _losses_of_fresh_model(6, steps=1))


def test_fit_and_evaluate_report_every_tracker():
    # Unbuilt: the first traced step must build every weight and still update all three.
    model = _make_model(affine=RandomAffine(seed=0), separate_s_optimizer=True, build=False)
    data = tf.data.Dataset.from_tensors(_batch()).repeat(4)
    history = model.fit(data, epochs=1, verbose=0).history
    optimizers = (model.g_optimizer, model.s_optimizer, model.d_optimizer)
    assert [int(optimizer.iterations) for optimizer in optimizers] == [4, 4, 4]
    assert set(history) == {
        "seg_loss",
        "adv_loss",
        "ld_loss",
        "total_loss",
        "d_loss",
        "d_acc_real",
        "d_acc_fake",
        "field_magnitude",
        "field_norm",
        "field_peak",
        "foreground_lost",
    }
    assert history["field_magnitude"][0] == pytest.approx(-history["ld_loss"][0])
    # |v| >= mean |component|, and the per-slice peak >= the mean length.
    assert history["field_peak"][0] >= history["field_norm"][0] >= history["field_magnitude"][0]
    assert 0.0 <= history["foreground_lost"][0] <= 1.0
    (x, y), _ = _batch()
    scores = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert set(scores) == {"seg_loss", "dice"}
    assert 0.0 <= scores["dice"] <= 1.0 and scores["seg_loss"] > 0.0


def test_draws_the_configured_number_of_generated_rows():
    model = _make_model(generated_fraction=(0.25, 0.7), seed=3)
    counts = set()
    for _ in range(60):
        z, rows = model.draw_step_randomness(tf.constant(20))
        assert tuple(z.shape) == (20, Z_DIM)
        counts.add(int(tf.reduce_sum(tf.cast(rows, tf.int32))))
    assert counts <= set(range(5, 15)) and len(counts) >= 6


def test_generate_deformation_keeps_soft_labels_valid_and_zero_flow_is_identity():
    model = _make_model(kind="deformation")
    (x, y), _ = _batch()
    y_onehot = tf.one_hot(y, 2)
    z = tf.random.stateless_normal((BATCH, Z_DIM), seed=(3, 4))
    x_g, y_g, field = model.generate(x, y_onehot, z)
    assert tuple(field.shape) == (BATCH, SIDE, SIDE, 2)
    np.testing.assert_allclose(tf.reduce_sum(y_g, axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(x_g, x)
    for weight in model.generator.head.weights:
        weight.assign(tf.zeros_like(weight))
    x_0, y_0, _ = model.generate(x, y_onehot, z)
    np.testing.assert_array_equal(x_0, x)
    np.testing.assert_array_equal(y_0, y_onehot)


def test_generate_intensity_adds_the_field_and_keeps_labels():
    model = _make_model(kind="intensity")
    (x, y), _ = _batch()
    y_onehot = tf.one_hot(y, 2)
    x_g, y_g, field = model.generate(x, y_onehot, tf.ones((BATCH, Z_DIM)))
    np.testing.assert_allclose(x_g, x + field.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(y_g, y_onehot)


def test_config_round_trip_keeps_lambdas_and_mode():
    model = _make_model(mode="independent", lambda_adv=0.5, lambda_ld=2e-3, seed=4)
    config = model.get_config()
    assert (config["mode"], config["lambda_adv"], config["lambda_ld"]) == ("independent", 0.5, 2e-3)
    clone = JointAugmentationModel.from_config(config)
    assert isinstance(clone.generator, Generator) and clone.generator.kind == "deformation"
    assert clone.get_config() == config


def test_bad_arguments_are_reported_together():
    with pytest.raises(ValueError) as error:
        JointAugmentationModel(
            UNet(2),
            Generator("intensity"),
            Discriminator(),
            kind="deformation",
            n_classes=3,
            class_weights=[0.1, 0.9],
            mode="both",
            generated_fraction=(0.8, 0.2),
        )
    message = str(error.value)
    for expected in ("generator's kind", "class_weights", "mode must be", "generated_fraction"):
        assert expected in message


def test_integer_labels_are_required():
    model = _make_model()
    (x, y), x_u = _batch()
    with pytest.raises(ValueError, match=r"labels \(B,H,W\) int"):
        model.train_step(((x, tf.one_hot(y, 2)), x_u))


def test_field_diversity_is_zero_for_equal_fields_and_one_for_opposite_ones():
    field = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype("float32")
    assert float(field_diversity(field, field)) == 0.0
    assert float(field_diversity(field, -field)) == pytest.approx(1.0)
    assert float(field_diversity(np.zeros_like(field), np.zeros_like(field))) == 0.0


def test_diversity_term_makes_the_field_depend_more_on_z():
    # Same seed and data; only λ_div differs. The term rewards |f(x,z) − f(x,z')|, so after
    # a few steps the trained generator's fields differ more between two z.
    data = tf.data.Dataset.from_tensors(_batch()).repeat(12)
    ratios = {}
    for weight in (0.0, 5.0):
        model = _make_model(lambda_diversity=weight, learning_rate=3e-3)
        history = model.fit(data, epochs=1, verbose=0).history
        assert ("diversity" in history) == (weight > 0)
        (x, _), _ = _batch()
        z, z_other = (tf.random.stateless_normal((BATCH, Z_DIM), seed=(s, 0)) for s in (1, 2))
        fields = [model.generator((x, noise), training=False) for noise in (z, z_other)]
        ratios[weight] = float(field_diversity(*fields))
    assert ratios[5.0] > ratios[0.0]


def test_fit_runs_with_random_augmentation_before_the_generator():
    # augment.random_before_generators: affine, RD and RI on the labeled batch, inside the
    # traced step, before G transforms it.
    chain = ChainAugmentation(
        [RandomAffine(seed=0), RandomElastic(sigma_px=2.0, seed=1), RandomIntensity(seed=2)]
    )
    model = _make_model(affine=chain)
    data = tf.data.Dataset.from_tensors(_batch()).repeat(3)
    history = model.fit(data, epochs=1, verbose=0).history
    assert int(model.g_optimizer.iterations) == 3
    assert np.isfinite(history["total_loss"][0]) and history["field_magnitude"][0] > 0.0


@pytest.mark.parametrize("switch", [{"patch_levels": 2}, {"spectral_norm": True}])
def test_fit_runs_with_a_switched_discriminator(switch):
    # model.discriminator_patch_levels: D's logits are a (B,h,w,1) map; the losses and the
    # accuracies average over its patches. model.discriminator_spectral_norm: D's kernels
    # are rescaled inside the traced step.
    model = _make_model(
        kind="intensity",
        discriminator=Discriminator(filters=DISCRIMINATOR_FILTERS, bn_momentum=0.9, **switch),
    )
    data = tf.data.Dataset.from_tensors(_batch()).repeat(3)
    history = model.fit(data, epochs=1, verbose=0).history
    assert int(model.d_optimizer.iterations) == 3
    assert 0.0 <= history["d_acc_fake"][0] <= 1.0
    assert np.isfinite(history["d_loss"][0]) and history["adv_loss"][0] > 0.0


def test_discriminator_updated_every_second_step_with_gradient_accumulation():
    # train.discriminator_update_every = 2: D's Adam accumulates two steps' gradients and
    # changes D's weights once per two steps; G changes every step.
    model = _make_model(kind="intensity")
    model.compile(
        g_optimizer=keras.optimizers.Adam(1e-3),
        d_optimizer=keras.optimizers.Adam(1e-3, gradient_accumulation_steps=2),
    )
    step = tf.function(model.train_step)
    snapshots = []
    for seed in range(3):
        d_before = [w.numpy().copy() for w in model.discriminator.trainable_weights]
        g_before = [w.numpy().copy() for w in model.generator.trainable_weights]
        step(_batch(seed))
        d_moved = any(
            not np.array_equal(a, w.numpy())
            for a, w in zip(d_before, model.discriminator.trainable_weights, strict=True)
        )
        g_moved = any(
            not np.array_equal(a, w.numpy())
            for a, w in zip(g_before, model.generator.trainable_weights, strict=True)
        )
        snapshots.append((d_moved, g_moved))
    assert snapshots == [(False, True), (True, True), (False, True)]


def test_discriminator_optimizer_follows_the_config():
    paper = build_discriminator_optimizer(load_config("phantom"))
    overrides = ["train.discriminator_update_every=3", "train.discriminator_learning_rate=2e-4"]
    switched = build_discriminator_optimizer(load_config("phantom", overrides=overrides))
    assert paper.gradient_accumulation_steps is None
    assert float(paper.learning_rate) == pytest.approx(1e-3)
    assert switched.gradient_accumulation_steps == 3
    assert float(switched.learning_rate) == pytest.approx(2e-4)
