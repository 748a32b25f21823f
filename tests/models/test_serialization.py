"""get_config/from_config, .weights.h5 and .keras round trips of the three networks."""

import keras
import numpy as np
import pytest

from tfaug.models.discriminator import Discriminator
from tfaug.models.generator import Generator
from tfaug.models.unet import UNet

IMAGE = (None, 32, 32, 1)
CASES = {
    "unet": (lambda: UNet(3, filters=(4, 4, 8, 8, 8), bn_momentum=0.9), IMAGE),
    "deformation": (
        lambda: Generator("deformation", (8, 8, 4, 4, 4), 4, z_dim=6, flow_kernel=1),
        (IMAGE, (None, 6)),
    ),
    "intensity": (lambda: Generator("intensity", (8, 8, 4, 4, 4), 4, z_dim=6), (IMAGE, (None, 6))),
    "discriminator": (lambda: Discriminator((4, 4, 8, 8, 8), units=8, bn_epsilon=1e-2), IMAGE),
}


def _inputs(shape):
    rng = np.random.default_rng(3)
    if isinstance(shape[0], tuple):
        return tuple(rng.normal(size=(2, *s[1:])).astype("float32") for s in shape)
    return rng.random((2, *shape[1:]), "float32")


def _built_with_random_weights(name):
    factory, shape = CASES[name]
    model = factory()
    model.build(shape)
    rng = np.random.default_rng(7)
    model.set_weights([np.abs(rng.normal(size=w.shape)).astype("float32") for w in model.weights])
    return model, shape


def _predict(model, inputs):
    return np.asarray(model(inputs, training=False))


@pytest.mark.parametrize("name", sorted(CASES))
def test_from_config_with_copied_weights_gives_identical_outputs(name):
    model, shape = _built_with_random_weights(name)
    clone = type(model).from_config(model.get_config())
    clone.build(shape)
    clone.set_weights(model.get_weights())
    inputs = _inputs(shape)
    assert clone.get_config() == model.get_config()
    np.testing.assert_array_equal(_predict(clone, inputs), _predict(model, inputs))


@pytest.mark.parametrize("name", sorted(CASES))
def test_weights_file_round_trip(name, tmp_path):
    model, shape = _built_with_random_weights(name)
    path = tmp_path / f"{name}.weights.h5"
    model.save_weights(path)
    restored = type(model).from_config(model.get_config())
    restored.build(shape)
    inputs = _inputs(shape)
    assert not np.allclose(_predict(restored, inputs), _predict(model, inputs))
    restored.load_weights(path)
    np.testing.assert_array_equal(_predict(restored, inputs), _predict(model, inputs))


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_archive_round_trip(name, tmp_path):
    model, shape = _built_with_random_weights(name)
    inputs = _inputs(shape)
    expected = _predict(model, inputs)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is type(model)
    np.testing.assert_array_equal(_predict(restored, inputs), expected)
