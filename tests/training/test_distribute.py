"""tf.distribute training: mirrored equals default on the same global batch; multiworker runs.

Logical CPU devices and ``TF_CONFIG`` must be set before TensorFlow initialises, so each
strategy runs in its own interpreter (``distribute_worker.py``), started concurrently.

The comparison makes the steps' randomness identical across strategies: no affine layer
(its per-row draws differ per replica by design, :class:`ReplicaSeedGenerator`), and the
joint step's z and generated rows are drawn for the global batch and sliced per replica,
so they equal the single-device draws without fixing the generated fraction.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfaug.ops.seeds import ReplicaSeedGenerator
from tfaug.training.distribute import (
    STRATEGIES,
    StrategyError,
    is_chief,
    make_strategy,
    replica_rows,
    scale_for_replicas,
    worker_directory,
)

WORKER = Path(__file__).with_name("distribute_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 480  # three step models per worker, on two cores shared by both workers


def _start(args: list[str], output: Path, tf_config: dict | None = None) -> subprocess.Popen:
    python_path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # tfaug and tiny.py
    env = {**os.environ, "PYTHONPATH": python_path, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args[:1], str(output), *args[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding="utf-8",
    )


def _finish(process: subprocess.Popen, output: Path) -> dict:
    try:
        log, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
        pytest.fail(f"worker did not finish within {TIMEOUT_S} s:\n{log[-3000:]}")
    assert process.returncode == 0, log[-3000:]
    return json.loads(output.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Three steps of the S, the joint and the consistency step, default vs mirrored over
    2 CPUs (synchronised BatchNormalization included)."""
    base = tmp_path_factory.mktemp("distribute")
    commands = {
        "default": ["steps", "--strategy", "default"],
        "mirrored": ["steps", "--strategy", "mirrored", "--cpu-replicas", "2"],
    }
    processes = {name: _start(args, base / f"{name}.json") for name, args in commands.items()}
    return {name: _finish(process, base / f"{name}.json") for name, process in processes.items()}


@pytest.mark.parametrize("model", ["segmenter", "joint", "consistency"])
def test_mirrored_matches_default_for_the_same_global_batch(strategy_runs, model):
    default, mirrored = strategy_runs["default"], strategy_runs["mirrored"]
    assert (default["replicas"], mirrored["replicas"]) == (1, 2)
    assert len(default[model]) == len(mirrored[model]) == 3
    for step, (one, two) in enumerate(zip(default[model], mirrored[model], strict=True)):
        assert one.keys() == two.keys()
        for name in one:
            # float32 sums in a different order (per-replica partial sums): ~1e-5 relative,
            # growing to ~8e-5 by the third step where G and D train in the step too. The
            # share of the foreground a warp removed divides by a pixel count of the soft
            # warped labels: ~4e-4 by the third step.
            rel = 1e-3 if name.endswith("foreground_lost") else 2e-4
            assert two[name] == pytest.approx(one[name], rel=rel, abs=1e-5), (step, name)
    # The steps train: the losses change from step to step (a frozen model would also match).
    assert default[model][0]["seg_loss"] != default[model][-1]["seg_loss"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_multiworker_two_processes_complete_a_stage(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    stage_dir = tmp_path / "pretrain"
    processes = [
        _start(
            ["stage", "--strategy", "multiworker", "--stage-dir", str(stage_dir)],
            tmp_path / f"worker{index}.json",
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}},
        )
        for index in range(2)
    ]
    results = [_finish(p, tmp_path / f"worker{i}.json") for i, p in enumerate(processes)]
    for result in results:
        assert result["replicas"] == 2
        assert result["iterations"] == result["best_step"] == 3
    # The chief (worker 0) writes the stage; worker 1 writes its own copy beside it.
    assert (stage_dir / "done.json").is_file()
    assert (stage_dir / "best" / "segmenter.weights.h5").is_file()
    assert (stage_dir / "worker-1" / "done.json").is_file()


# ----------------------------------------------------------------------- in-process units


def test_default_strategy_helpers_are_the_identity():
    strategy = make_strategy("default")
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy)
    assert worker_directory(Path("stage"), strategy) == Path("stage")
    loss = tf.constant(0.75)
    assert float(scale_for_replicas(loss)) == 0.75
    values = tf.reshape(tf.range(8), (4, 2))
    np.testing.assert_array_equal(replica_rows(values, 4), values)


def test_replica_seed_generator_equals_keras_seed_generator_on_one_device():
    ours = keras.random.uniform((5,), seed=ReplicaSeedGenerator(11))
    keras_own = keras.random.uniform((5,), seed=keras.random.SeedGenerator(11))
    np.testing.assert_array_equal(ours, keras_own)


def test_unknown_strategy_names_the_choices():
    with pytest.raises(StrategyError, match="choose one of default, mirrored, multiworker"):
        make_strategy("horovod")
    assert STRATEGIES == ("default", "mirrored", "multiworker")


def test_multiworker_without_tf_config_explains_the_fix(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="TF_CONFIG is not set"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {}}))
    with pytest.raises(StrategyError, match="lacks cluster.worker or task.index"):
        make_strategy("multiworker")
