"""configure_tensorflow applies a config's process-wide TensorFlow settings."""

import keras
import pytest
import tensorflow as tf

from tfaug.config import load_config
from tfaug.runs.algorithm import configure_tensorflow


@pytest.fixture
def restored_settings():
    """Grappler on and the float32 policy during the test; this process's settings after."""
    options = tf.config.optimizer.get_experimental_options()
    policy = keras.mixed_precision.global_policy()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
    keras.mixed_precision.set_global_policy("float32")
    yield
    tf.config.optimizer.set_experimental_options(options)
    keras.mixed_precision.set_global_policy(policy)


def _disabled() -> bool:
    return bool(tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer"))


def test_defaults_leave_tensorflow_untouched(restored_settings):
    configure_tensorflow(load_config("phantom"))
    assert not _disabled()
    assert keras.mixed_precision.global_policy().name == "float32"


def test_switches_turn_grappler_off_and_mixed_precision_on(restored_settings):
    overrides = ["train.graph_optimization=false", "train.mixed_precision=true"]
    configure_tensorflow(load_config("phantom", overrides=overrides))
    assert _disabled()
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
