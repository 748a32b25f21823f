"""Mixed precision (train.mixed_precision): loss-scaled steps of both step models on the CPU."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import DISCRIMINATOR_FILTERS, GENERATOR_FILTERS, UNET_FILTERS

from tfaug.models.discriminator import Discriminator
from tfaug.models.generator import Generator
from tfaug.models.unet import UNet
from tfaug.training.joint import JointAugmentationModel
from tfaug.training.precision import with_loss_scaling
from tfaug.training.segmenter import SegmenterModel

SIDE = 32


@pytest.fixture
def mixed_float16():
    """The ``mixed_float16`` global policy for one test, then float32 again."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _batch(rng: np.random.Generator) -> tuple[tf.Tensor, tf.Tensor]:
    images = rng.random((4, SIDE, SIDE, 1), dtype=np.float32)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    labels = np.stack([(yy - 16) ** 2 + (xx - 16) ** 2 < r**2 for r in (5, 7, 9, 11)])
    return tf.constant(images), tf.constant(labels.astype(np.int32))


def _run(model: keras.Model, batch, steps: int = 3) -> list[dict[str, tf.Tensor]]:
    step = tf.function(model.train_step)
    return [step(batch) for _ in range(steps)]


def test_optimisers_are_wrapped_only_under_mixed_float16(mixed_float16):
    wrapped = with_loss_scaling(keras.optimizers.Adam())
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
    assert with_loss_scaling(wrapped) is wrapped
    keras.mixed_precision.set_global_policy("float32")
    plain = keras.optimizers.Adam()
    assert with_loss_scaling(plain) is plain


def test_segmenter_step_mixed_precision(mixed_float16):
    unet = UNet(2, filters=UNET_FILTERS, bn_momentum=0.9)
    unet.build((None, SIDE, SIDE, 1))
    model = SegmenterModel(unet, n_classes=2, class_weights=[0.1, 0.9])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    assert unet.compute_dtype == "float16" and unet.variable_dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = [w.numpy().copy() for w in unet.trainable_weights]
    logs = _run(model, _batch(np.random.default_rng(0)))
    for step in logs:
        assert step["total_loss"].dtype == tf.float32
        assert np.isfinite(step["total_loss"].numpy())
    assert unet(tf.zeros((1, SIDE, SIDE, 1))).dtype == "float32"  # float32 logits
    # Loss scaling un-scaled correctly: weights moved by learning-rate-sized steps, not 2^15×.
    weights = zip(unet.trainable_weights, before, strict=True)
    change = max(np.abs(w.numpy() - b).max() for w, b in weights)
    assert 0.0 < change < 0.2


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
def test_joint_step_mixed_precision(mixed_float16, kind):
    model = JointAugmentationModel(
        UNet(2, filters=UNET_FILTERS, bn_momentum=0.9),
        Generator(kind, filters=GENERATOR_FILTERS, image_filters=4, z_dim=8),
        Discriminator(filters=DISCRIMINATOR_FILTERS, units=8),
        kind=kind,
        n_classes=2,
        class_weights=[0.1, 0.9],
        seed=1,
    )
    model.compile(g_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-3))
    model.build((None, SIDE, SIDE, 1))
    assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(1)
    x_l, y_l = _batch(rng)
    d_before = [w.numpy().copy() for w in model.discriminator.trainable_weights]
    logs = _run(model, ((x_l, y_l), tf.constant(rng.random((4, SIDE, SIDE, 1), np.float32))))
    for step in logs:
        for name, value in step.items():
            assert value.dtype == tf.float32, name
            assert np.isfinite(value.numpy()), name
    # The field and the generated images (warp output) are float32.
    z = tf.zeros((4, 8))
    x_g, y_g, field = model.generate(x_l, tf.one_hot(y_l, 2), z)
    assert (x_g.dtype, y_g.dtype, field.dtype) == (tf.float32, tf.float32, tf.float32)
    assert any(
        np.abs(w.numpy() - b).max() > 0
        for w, b in zip(model.discriminator.trainable_weights, d_before, strict=True)
    )


def test_heavy_method_step_mixed_precision(mixed_float16, tmp_path):
    """The `heavy` method's augmentation computes in float32 under mixed_float16 (its blur's
    ops do not all take float16), inside the compiled step."""
    from tiny import tiny_config

    from tfaug.training.builders import build_labeled_augmentation

    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="heavy")
    cfg.heavy.p_blur = 1.0
    unet = UNet(2, filters=UNET_FILTERS, bn_momentum=0.9)
    unet.build((None, SIDE, SIDE, 1))
    model = SegmenterModel(
        unet,
        n_classes=2,
        class_weights=[0.1, 0.9],
        affine=build_labeled_augmentation(cfg, seed=3),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    for step in _run(model, _batch(np.random.default_rng(0))):
        assert np.isfinite(step["total_loss"].numpy())
