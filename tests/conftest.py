"""Shared pytest setup: quiet TensorFlow, UTF-8 child processes, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The commands these tests start print UTF-8 whatever the machine's locale; the tests read
# their output as UTF-8. tests/test_cli_quiet.py checks an ASCII terminal separately.
os.environ["PYTHONIOENCODING"] = "utf-8"

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global seeds."""
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory):
    """The tiny phantom config and its cache ``(Config, Cache)``, built once per session."""
    from tiny import prepare_tiny_cache

    return prepare_tiny_cache(tmp_path_factory.getbasetemp())
