"""Tests for tfaug/training/gradients.py: a sub-network cut off from every loss is an error."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_joint import SIDE, _batch, _make_model
from tiny import GENERATOR_FILTERS, build_tiny_unet

from tfaug.models.generator import Generator
from tfaug.training.gradients import DisconnectedWeightsError, step_gradients
from tfaug.training.segmenter import SegmenterModel


class GeneratorWithOrphan(Generator):
    """A generator carrying a head that no loss reaches (a later change forgot to wire it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.orphan = keras.layers.Dense(3, name="orphan_head")

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self.orphan.build((None, 5))


class UNetWithOrphan(keras.Model):
    """A segmenter whose second convolution is built but never used."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = build_tiny_unet()
        self.orphan = keras.layers.Conv2D(2, 3, padding="same", name="orphan_conv")
        self.orphan.build((None, SIDE, SIDE, 1))

    def call(self, images, training=False):
        return self.unet(images, training=training)


def test_step_gradients_returns_every_gradient_when_all_weights_are_reached():
    weights = [tf.Variable(2.0), tf.Variable([1.0, 3.0])]
    with tf.GradientTape() as tape:
        loss = weights[0] * tf.reduce_sum(weights[1])
    gradients = step_gradients(tape, loss, weights, "test step")
    np.testing.assert_allclose(gradients[0], 4.0)
    np.testing.assert_allclose(gradients[1], [2.0, 2.0])


def test_a_segmenter_step_with_a_cut_off_layer_raises_naming_its_weights():
    model = SegmenterModel(UNetWithOrphan(), n_classes=2, class_weights=[0.1, 0.9])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    (x, y), _ = _batch()
    with pytest.raises(DisconnectedWeightsError, match="segmenter step.*orphan_conv/kernel"):
        model.train_step((x, y))


def test_a_joint_step_whose_generator_has_a_cut_off_head_raises_naming_it():
    model = _make_model(build=False)
    model.generator = GeneratorWithOrphan(
        "deformation", filters=GENERATOR_FILTERS, image_filters=4, z_dim=8, bn_momentum=0.9
    )
    # Under tf.function (as run_stage calls it) autograph re-raises the error at trace time
    # with the same message.
    with pytest.raises(Exception, match="joint step, G and S.*orphan_head/kernel"):  # noqa: B017
        tf.function(model.train_step)(_batch())
