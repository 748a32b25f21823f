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


@pytest.mark.parametrize("filters", [(4, 8), (4, 8, 8), (2, 2, 2, 2, 2, 4)])
def test_depth_is_the_number_of_filter_counts(filters):
    model = UNet(3, filters=filters)
    images = np.zeros((2, 64, 32, 1), "float32")
    features = model.encode(images)
    assert [tuple(f.shape) for f in features] == [
        (2, 64 // 2**level, 32 // 2**level, width) for level, width in enumerate(filters)
    ]
    assert tuple(model(images).shape) == (2, 64, 32, 3)
    assert len(model.decoder) == len(filters) - 1


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
    [
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": 2, "filters": (4,)}, "two to six filter"),
        ({"n_classes": 2, "filters": (4,) * 7}, "two to six filter"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


# The weight paths of a UNet saved before encode/decode existed: a weights file stores the
# weights in this order, so the layers, their names and their order must not change.
_BLOCKS = [
    *(f"down{level}/{conv}" for level in range(5) for conv in "ab"),
    *(f"up{level}/conv_bn_relu" for level in range(4)),
    *(f"dec{level}/{conv}" for level in range(4) for conv in "ab"),
]
_SAVED_PATHS = [
    *(
        f"u_net/{block}/{weight}"
        for block in _BLOCKS
        for weight in ("conv/kernel", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance")
    ),
    "u_net/logits/kernel",
    "u_net/logits/bias",
]


def test_encode_decode_is_call_and_keeps_the_saved_weights(tmp_path):
    model = UNet(4, filters=(4, 4, 8, 8, 8), name="u_net")
    x = np.random.default_rng(0).random((2, 32, 32, 1), "float32")
    logits = np.asarray(model(x, training=False))
    assert [w.path for w in model.weights] == _SAVED_PATHS
    features = model.encode(x, training=False)
    assert [tuple(f.shape) for f in features] == [
        (2, 32, 32, 4), (2, 16, 16, 4), (2, 8, 8, 8), (2, 4, 4, 8), (2, 2, 2, 8),
    ]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(model.decode(features, training=False)), logits)
    model.save_weights(tmp_path / "s.weights.h5")
    other = UNet(4, filters=(4, 4, 8, 8, 8))
    other.build((None, 32, 32, 1))
    other.load_weights(tmp_path / "s.weights.h5")
    np.testing.assert_array_equal(np.asarray(other(x, training=False)), logits)


def test_encode_builds_an_unbuilt_model():
    model = UNet(2, filters=(2, 2, 2, 2, 2))
    features = model.encode(np.zeros((1, 32, 32, 1), "float32"))
    assert model.built and len(features) == 5
