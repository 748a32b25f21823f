"""Shared pytest setup: quiet TensorFlow, UTF-8 child processes, deterministic seeds."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The commands these tests start print UTF-8 whatever the machine's locale; the tests read
# their output as UTF-8. tests/test_cli_quiet.py checks an ASCII terminal separately.
os.environ["PYTHONIOENCODING"] = "utf-8"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TESTS = Path(__file__).resolve().parent
SHARED_FIXTURE_FOLDERS = ("deploy",)
"""Folders whose test files share session fixtures (deploy: one trained, exported run)."""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each test file, and each folder of :data:`SHARED_FIXTURE_FOLDERS`, on one pytest-
    xdist worker (``--dist loadgroup``, set in pytest.ini), so module and session fixtures
    (trained runs, caches) are built once, not once per worker."""
    for item in items:
        path = Path(item.path).resolve()
        folder = path.parent.name
        group = folder if folder in SHARED_FIXTURE_FOLDERS else str(path.relative_to(TESTS))
        item.add_marker(pytest.mark.xdist_group(group))


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
