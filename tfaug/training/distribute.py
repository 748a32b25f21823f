"""tf.distribute for the training stages: strategies, the distributed step, per-replica helpers.

Every stage of Algorithm 1 runs one of three strategies (config ``strategy``, CLI
``--strategy``):

- ``default``: no distribution, one device (TensorFlow's default strategy);
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the visible GPUs, or over the logical
  CPU devices when there is no GPU (split the CPU with ``train.cpu_replicas`` to test on a
  laptop);
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy``; every worker runs the same
  command with its own ``TF_CONFIG`` (see ``docs/distributed.md``).

The contract with the train steps (``SegmenterModel``, ``JointAugmentationModel``):

- the dataset yields *global* batches; :func:`distribute_dataset` splits each one across the
  replicas (``B_global = B_replica · num_replicas_in_sync``);
- a step computes per-replica *mean* losses and differentiates
  :func:`scale_for_replicas` of them (the loss divided by ``num_replicas_in_sync``); the
  optimiser sums the gradients over replicas, so the update equals the single-device update
  on the global batch;
- random draws that must equal the single-device ones are drawn for the global batch and
  sliced with :func:`replica_rows`; the augmentation layers' own draws use
  :class:`tfaug.ops.seeds.ReplicaSeedGenerator`, so replicas draw different parameters for
  their different rows;
- BatchNormalization layers built under a strategy synchronise their batch statistics
  (``tfaug.models.layers.ConvBNAct``), so the forward pass sees the global batch too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf

from tfaug.config import STRATEGIES
from tfaug.ops.seeds import replica_id


class StrategyError(RuntimeError):
    """A strategy cannot be created as asked (unknown name, TF already initialised, ...)."""


def split_cpu(replicas: int) -> None:
    """Split the first physical CPU into ``replicas`` logical devices (``/cpu:0`` ... ).

    Lets ``mirrored`` run over several replicas on a machine without GPUs (tests, laptops).
    The logical devices share the same cores: this is for checking the distributed code
    path, not for speed. ``replicas`` ≤ 1 does nothing.

    Must run before TensorFlow initialises its devices (before the first op or model is
    created in the process).

    Raises:
        StrategyError: TensorFlow is already initialised with another device layout.
    """
    if replicas <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) == replicas:
            return
        raise StrategyError(
            f"train.cpu_replicas={replicas}: TensorFlow was already initialised with "
            f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s) ({error}). Split the "
            "CPU before any TensorFlow op runs: call split_cpu() (or make_strategy) first in "
            "the process, or pass --set train.cpu_replicas=N to tfaug train."
        ) from error


def make_strategy(name: str, cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Create the ``tf.distribute`` strategy of a run.

    Args:
        name: ``"default"``, ``"mirrored"`` or ``"multiworker"``.
        cpu_replicas: split the CPU into this many logical devices first (see
            :func:`split_cpu`); 0 or 1: leave the devices as they are.

    Returns:
        ``default``: ``tf.distribute.get_strategy()`` (one device); ``mirrored``: a
        ``MirroredStrategy`` over every GPU, or every logical CPU device if there is no GPU;
        ``multiworker``: a ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``.

    Does not: create models, or read any other environment variable than TensorFlow's own
    ``TF_CONFIG`` (multiworker only).

    Raises:
        StrategyError: unknown name, a malformed or missing ``TF_CONFIG`` for multiworker,
            or devices that can no longer be split.
    """
    if name not in STRATEGIES:
        raise StrategyError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)} "
            "(config key 'strategy', CLI --strategy)"
        )
    split_cpu(cpu_replicas)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    _check_tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _check_tf_config() -> None:
    raw = os.environ.get("TF_CONFIG")
    fix = (
        "Set TF_CONFIG on every worker, e.g. "
        '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\' (docs/distributed.md).'
    )
    if not raw:
        raise StrategyError(f"strategy 'multiworker': TF_CONFIG is not set. {fix}")
    try:
        content = json.loads(raw)
        workers = content["cluster"]["worker"]
        index = int(content["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise StrategyError(
            f"strategy 'multiworker': TF_CONFIG={raw!r} lacks cluster.worker or task.index "
            f"({error!r}). {fix}"
        ) from error
    if not 0 <= index < len(workers):
        raise StrategyError(
            f"strategy 'multiworker': TF_CONFIG task.index={index} but cluster.worker lists "
            f"{len(workers)} worker(s). {fix}"
        )


def distributes(strategy: tf.distribute.Strategy) -> bool:
    """True for ``mirrored`` and ``multiworker`` strategies (even with one replica), False for
    the default strategy, whose steps run as plain ``tf.function`` s."""
    return isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes a run's files (always, except non-chief workers).

    Multiworker: the chief is ``task.type == "chief"``, or worker 0 when no chief is listed.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_directory(path: Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes a stage's files: ``path`` on the chief,
    ``path/worker-<i>`` on the other workers (they must save checkpoints too, because saving
    distributed variables is a collective operation, but not over the chief's files)."""
    if is_chief(strategy):
        return Path(path)
    return Path(path) / f"worker-{strategy.cluster_resolver.task_id}"


def scale_for_replicas(loss: tf.Tensor) -> tf.Tensor:
    """A per-replica mean loss divided by ``num_replicas_in_sync`` (float32 scalar).

    Differentiate this, not the loss itself: the optimiser sums gradients over the replicas,
    so the sum equals the gradient of the global-batch mean. The identity on one device.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss / tf.cast(replicas, loss.dtype)


def cross_replica_mean(value: tf.Tensor) -> tf.Tensor:
    """The mean of ``value`` over the replicas in sync (any shape, float), the same on every
    replica; ``value`` itself on one device or outside a replica context."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)


def replica_rows(global_values: tf.Tensor, rows: tf.Tensor | int) -> tf.Tensor:
    """This replica's ``rows`` rows of values drawn for the whole global batch.

    Args:
        global_values: (B_global, ...) values drawn identically on every replica (same seed),
            with ``B_global = rows · num_replicas_in_sync``.
        rows: B_replica, this replica's batch size.

    Returns:
        (rows, ...) rows ``[r·rows, (r+1)·rows)`` for replica r (all rows on one device), so
        replicas get different values and their union equals the single-device draw.
    """
    replica = replica_id()
    if isinstance(replica, int) and replica == 0:
        return global_values[:rows]
    start = tf.cast(replica, tf.int32) * tf.cast(rows, tf.int32)
    return global_values[start : start + rows]


def global_batch_size(rows: tf.Tensor | int) -> tf.Tensor | int:
    """``rows · num_replicas_in_sync``: the global batch of a per-replica batch of ``rows``."""
    return rows * tf.distribute.get_strategy().num_replicas_in_sync


def distribute_dataset(
    strategy: tf.distribute.Strategy, dataset: tf.data.Dataset
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """Split every global batch of ``dataset`` across the replicas of ``strategy``.

    Multiworker: each worker keeps its share of every batch (``AutoShardPolicy.DATA``: the
    tfaug datasets are a few shuffled TFRecord files, too few to shard by file).
    One device: ``dataset`` unchanged.
    """
    if not distributes(strategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def distributed_train_function(
    strategy: tf.distribute.Strategy,
    train_step: Callable[[Any], dict[str, tf.Tensor]],
    jit_compile: bool = False,
) -> Callable[[Any], dict[str, tf.Tensor]]:
    """A ``tf.function`` running ``train_step`` on every replica and reducing its results.

    Args:
        strategy: the run's strategy.
        train_step: ``batch → {name: scalar}`` (a model's ``train_step``), written with
            :func:`scale_for_replicas` for its gradients.
        jit_compile: compile the per-replica step with XLA.

    Returns:
        ``distributed_batch → {name: scalar}``, each value the mean over replicas (for
        per-replica means of equal-sized batches: the global-batch mean). On the default
        strategy simply ``tf.function(train_step, jit_compile=jit_compile)``.
    """
    if not distributes(strategy):
        return tf.function(train_step, jit_compile=jit_compile)
    replica_step = tf.function(train_step, jit_compile=True) if jit_compile else train_step

    @tf.function
    def step(batch: Any) -> dict[str, tf.Tensor]:
        results = strategy.run(replica_step, args=(batch,))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
            for name, value in results.items()
        }

    return step
