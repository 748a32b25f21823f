"""Tests for tfaug/models/unet.py."""

import numpy as np
import pytest

from tfaug.models.unet import UNet


def _conv_bn(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a bias-free k x k conv + BN (gamma, beta, moving mean, moving var)."""
    return k * k * c_in * c_out + 4 * c_out


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 64, 32, 1), (2, 64, 64, 1)])
def test_logits_shape_and_dtype(shape):
    logits = UNet(4, filters=(4, 4, 8, 8, 8))(np.zeros(shape, "float32"))
    assert tuple(logits.shape) == (*shape[:3], 4)
    assert logits.dtype == "float32"


def test_default_widths_forward_pass_at_224():
    model = UNet(4)
    logits = np.asarray(model(np.random.default_rng(0).random((1, 224, 224, 1), "float32")))
    assert logits.shape == (1, 224, 224, 4)
    assert np.isfinite(logits).all()
    assert [w.shape[-1] for w in model.encoder[-1].trainable_weights[:1]] == [256]


def test_parameter_count_matches_hand_count():
    model = UNet(2, filters=(2, 2, 2, 2, 2))
    model.build((None, None, None, 1))
    encoder = _conv_bn(1, 2, 3) + _conv_bn(2, 2, 3) + 4 * 2 * _conv_bn(2, 2, 3)
    # each decoder level: 2x2 up-conv, concat with the skip (2 + 2 channels), two 3x3 convs
    decoder = 4 * (_conv_bn(2, 2, 2) + _conv_bn(4, 2, 3) + _conv_bn(2, 2, 3))
    head = 3 * 3 * 2 * 2 + 2
    assert encoder + decoder + head == 1052
    assert model.count_params() == 1052


def test_logits_are_not_softmaxed_and_depend_on_the_input():
    model = UNet(3, filters=(4, 4, 4, 4, 4))
    rng = np.random.default_rng(0)
    a = np.asarray(model(rng.random((1, 32, 32, 1), "float32")))
    b = np.asarray(model(rng.random((1, 32, 32, 1), "float32")))
    assert not np.allclose(a.sum(axis=-1), 1.0)
    assert not np.allclose(a, b)


def test_one_model_serves_several_slice_sizes():
    model = UNet(2, filters=(4, 4, 4, 4, 4))
    assert model(np.zeros((1, 32, 32, 1), "float32")).shape == (1, 32, 32, 2)
    assert model(np.zeros((1, 64, 96, 1), "float32")).shape == (1, 64, 96, 2)


@pytest.mark.parametrize("shape", [(1, 48, 48, 1), (1, 64, 40, 1)])
def test_side_not_multiple_of_32_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        UNet(2, filters=(4, 4, 4, 4, 4))(np.zeros(shape, "float32"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_classes": 1}, "n_classes"), ({"n_classes": 2, "filters": (4, 8)}, "five filter")],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)
