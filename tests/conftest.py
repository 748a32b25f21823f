"""Shared pytest setup: quiet TensorFlow, UTF-8 child processes, deterministic seeds."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The commands these tests start print UTF-8 whatever the machine's locale; the tests read
# their output as UTF-8. tests/test_cli_quiet.py checks an ASCII terminal separately.
os.environ["PYTHONIOENCODING"] = "utf-8"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Grappler, TensorFlow's graph optimiser, spends ~10 s on the first call of every freshly
# traced train step, half the time of a tiny stage test; it makes long runs faster, which no
# test is. The graphs compute the same functions without it (the commands the tests start,
# and every user run, keep it).
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

TESTS = Path(__file__).resolve().parent
SHARED_FIXTURE_FOLDERS = ("deploy",)
"""Folders whose test files share session fixtures (deploy: one trained, exported run)."""
SLOW_FIRST = (
    "training/test_distribute.py",
    "deploy",
    "training/test_joint.py",
    "experiments/test_tuning.py",
    "runs/test_algorithm.py",
    "baselines/test_consistency.py",
    "training/test_loop.py",
    "experiments/test_report.py",
    "training/test_retracing.py",
    "training/test_precision.py",
    "test_profile_step.py",
    "baselines/test_adversarial.py",
    "runs/test_shared.py",
    "baselines/test_self_training.py",
)
"""Test files (or SHARED_FIXTURE_FOLDERS) that take longest, slowest first (measured with
``--durations=0``): the workers start on them, so no long file is left for the end."""
_SHARED_SCOPES = ("module", "package", "session")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Schedule for pytest-xdist (``--dist loadgroup``, set in pytest.ini).

    A test that uses a module- or session-scoped fixture of its own file runs on the worker
    of its file, and the tests of a :data:`SHARED_FIXTURE_FOLDERS` folder on one worker, so
    those fixtures (trained runs, exports, subprocess results) are built once; every other
    test is scheduled on its own. The :data:`SLOW_FIRST` files come first.
    """
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    order = {name: rank for rank, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: order.get(_unit(item), len(order)))  # stable


def _unit(item: pytest.Item) -> str:
    """The item's file relative to tests/, or its folder for a shared-fixture folder."""
    path = Path(item.path).resolve()
    if path.parent.name in SHARED_FIXTURE_FOLDERS:
        return path.parent.name
    return path.relative_to(TESTS).as_posix()


def _xdist_group(item: pytest.Item) -> str | None:
    unit = _unit(item)
    if unit in SHARED_FIXTURE_FOLDERS:
        return unit
    path = str(Path(item.path).resolve())
    fixtures = getattr(item, "_fixtureinfo", None)
    for definitions in fixtures.name2fixturedefs.values() if fixtures else ():
        definition = definitions[-1]
        if definition.scope in _SHARED_SCOPES and definition.func.__code__.co_filename == path:
            return unit
    return None


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
