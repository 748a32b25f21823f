"""Tests for tfaug/models/layers.py: the shared blocks and the size check."""

import numpy as np
import pytest

from tfaug.models.layers import ConvBNAct, DoubleConv, UpConvBlock, check_spatial_size


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 224, 320, 1), (None, None, None, 1)])
def test_size_check_accepts_multiples_of_32_and_unknown_sides(shape):
    check_spatial_size(shape, "Model", require_static=False)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 48, 64, 1), "multiples of 32"),
        ((1, 64, 40, 1), "multiples of 32"),
        ((64, 64, 1), r"shape \(B,H,W,C\)"),
    ],
)
def test_size_check_rejects_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        check_spatial_size(shape, "Model", require_static=False)


def test_size_check_requires_static_sides_when_asked():
    with pytest.raises(ValueError, match="unknown sides"):
        check_spatial_size((None, None, 64, 1), "Discriminator", require_static=True)


def test_conv_bn_act_relu_and_leaky_relu_outputs():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    relu = ConvBNAct(4, 3)
    leaky = ConvBNAct(4, 5, strides=2, negative_slope=0.2)
    y_relu = np.asarray(relu(x, training=True))
    y_leaky = np.asarray(leaky(x, training=True))
    assert y_relu.shape == (2, 8, 8, 4) and y_relu.min() >= 0.0
    assert y_leaky.shape == (2, 4, 4, 4) and y_leaky.min() < 0.0
    assert relu.conv.use_bias is False


def test_linear_conv_block_keeps_negative_values_and_has_bias():
    block = ConvBNAct(3, 2, normalize=False)
    y = np.asarray(block(np.random.default_rng(1).normal(size=(1, 4, 4, 2)).astype("float32")))
    assert block.bn is None and block.conv.use_bias is True
    assert y.min() < 0.0


def test_up_conv_block_doubles_the_sides():
    block = UpConvBlock(5)
    assert block(np.ones((2, 3, 4, 2), "float32")).shape == (2, 6, 8, 5)
    assert block.compute_output_shape((2, 3, 4, 2)) == (2, 6, 8, 5)


def test_double_conv_builds_from_shape_with_two_convolutions():
    block = DoubleConv(6)
    block.build((None, 16, 16, 2))
    kernels = [w.shape for w in block.trainable_weights if len(w.shape) == 4]
    assert kernels == [(3, 3, 2, 6), (3, 3, 6, 6)]


@pytest.mark.parametrize(
    "layer",
    [ConvBNAct(4, 5, strides=2, negative_slope=0.2, bn_momentum=0.9), UpConvBlock(3, False)],
)
def test_blocks_config_round_trip(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
