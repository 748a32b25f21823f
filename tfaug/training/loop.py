"""One resumable training stage: iterate, validate every k steps, keep the best weights.

Every stage of Algorithm 1 (pre-training, the two generator stages, the final segmenter)
runs through :func:`run_stage`. The stage folder holds

- ``ckpt/``: a ``tf.train.Checkpoint`` of the training model, its optimisers, the step,
  the best score so far and the random-generator states, written every ``validate_every``
  steps (TensorFlow writes the checkpoint's index file last, so a kill mid-write leaves the
  previous checkpoint valid);
- ``best/<name>.weights.h5``: the weights of the sub-models to keep, at the best
  validation score (the first step reaching the maximum; the last step without validation);
- ``metrics.jsonl``: one JSON object per validation, ``{"step", <every logged scalar>,
  "validation_dice", "selection_score"}`` (the scalars are means over the last
  ``validate_every`` steps); lines past the restored step are dropped on resume;
- ``done.json``: written last, atomically; a stage with it is skipped on re-runs.

Re-running after a kill restores the latest checkpoint and continues from its step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfaug.training.distribute import (
    distribute_dataset,
    distributed_train_function,
    distributes,
    worker_directory,
)


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StageResult:
    """What a finished stage reports (also the content of ``done.json``).

    Attributes:
        name: stage name, e.g. ``"generator_deformation"``.
        iterations: number of training steps run in total.
        best_step: step whose weights were kept.
        best_score: selection score at ``best_step`` (the validation score, or its moving
            average with ``score_smoothing``; ``None`` without validation).
        history: ``[[step, score], ...]`` of every validation.
        wall_time_s: seconds spent training, summed over resumed sessions.
    """

    name: str
    iterations: int
    best_step: int
    best_score: float | None
    history: list[list[float]]
    wall_time_s: float


def write_json_atomic(path: Path, content: dict) -> None:
    """Write JSON to ``path`` through a temporary sibling and an atomic rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=False), encoding="utf-8")
    os.replace(temporary, path)


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """``model.save_weights`` through a temporary file and an atomic rename."""
    temporary = path.with_name(f".tmp-{path.name}")
    model.save_weights(temporary)
    os.replace(temporary, path)


def _seed_states(model: keras.Model) -> list[tf.Variable]:
    """The state variables of every ``keras.random.SeedGenerator`` inside ``model``.

    ``tf.train.Checkpoint`` does not follow Keras 3 seed generators, so they are saved
    explicitly: a resumed run continues the same random stream.
    """
    return [v.value for v in model.variables if "seed_generator_state" in v.path]


def _optimizers(model: keras.Model) -> dict[str, keras.optimizers.Optimizer]:
    found = {}
    for name in ("optimizer", "g_optimizer", "d_optimizer", "s_optimizer"):
        optimizer = getattr(model, name, None)
        if isinstance(optimizer, keras.optimizers.Optimizer) and all(
            optimizer is not other for other in found.values()
        ):
            found[name] = optimizer
    return found


def compile_train_step(
    model: keras.Model, jit_compile: bool
) -> tf.types.experimental.PolymorphicFunction:
    """``model.train_step`` wrapped in ``tf.function`` (XLA-compiled if ``jit_compile``).

    This is the function :func:`run_stage` calls once per step; it traces once for a
    dataset of fixed batch shapes (``experimental_get_tracing_count()`` stays 1). Does not
    build the model or its optimisers.
    """
    return tf.function(model.train_step, jit_compile=jit_compile)


def run_stage(
    *,
    name: str,
    model: keras.Model,
    make_dataset: Callable[[int], tf.data.Dataset],
    iterations: int,
    stage_dir: Path,
    keep: dict[str, keras.Model],
    validate: Callable[[], float] | None = None,
    validate_every: int = 10,
    writer: tf.summary.SummaryWriter | None = None,
    on_validation: Callable[[int], None] | None = None,
    jit_compile: bool = False,
    progress: bool = True,
    strategy: tf.distribute.Strategy | None = None,
    score_smoothing: float = 0.0,
) -> StageResult:
    """Train ``model`` for ``iterations`` steps of its ``train_step``, resumably.

    Args:
        name: stage name (progress bar, TensorBoard tags, error messages).
        model: a compiled Keras model whose ``train_step(batch)`` returns a dict of scalars
            including ``"total_loss"`` (this step's loss, checked for NaN/inf), and whose
            optimisers were built in ``compile`` (so a checkpoint restores their slots).
        make_dataset: ``start_step → tf.data.Dataset`` of training batches (infinite); the
            start step lets a resumed stage draw a different, still deterministic, stream.
        iterations: total number of steps of the stage.
        stage_dir: the stage's folder (created).
        keep: sub-models whose weights are saved at the best step, by file stem.
        validate: returns the validation score (higher is better); ``None``: keep the last.
        validate_every: validation and checkpoint period k, in steps.
        writer: TensorBoard writer for every logged scalar and the validation score.
        on_validation: called with the step after each validation (image summaries).
        jit_compile: compile the step with XLA.
        progress: show a progress bar with ETA.
        strategy: the ``tf.distribute`` strategy ``model`` was created under (``None``: the
            default strategy). The dataset's global batches are split across its replicas
            and the step's results averaged over them; validation runs on one device.
            Non-chief workers of ``multiworker`` write into ``stage_dir/worker-<i>``.
        score_smoothing: α in [0, 1) of the exponential moving average the best checkpoint is
            chosen by, ``s_k = α·s_{k−1} + (1 − α)·score_k`` (``s_1 = score_1``); 0 (the paper)
            selects on the raw, noisy score.

    Returns:
        The :class:`StageResult` (read back from ``done.json`` if the stage was finished).

    Raises:
        TrainingDivergedError: a NaN/inf loss; names the stage and the step.
    """
    if not 0.0 <= score_smoothing < 1.0:
        raise ValueError(
            f"stage {name!r}: score_smoothing must be in [0, 1), found {score_smoothing}. "
            "Set train.validation_smoothing to 0 (raw score) or e.g. 0.5."
        )
    strategy = strategy or tf.distribute.get_strategy()
    stage_dir = worker_directory(Path(stage_dir), strategy)
    done_path = stage_dir / "done.json"
    if done_path.is_file():
        return StageResult(**json.loads(done_path.read_text(encoding="utf-8")))
    (stage_dir / "best").mkdir(parents=True, exist_ok=True)

    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    best_score = tf.Variable(-math.inf, dtype=tf.float64, trainable=False)
    elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    smoothed = tf.Variable(math.nan, dtype=tf.float64, trainable=False)
    history = tf.Variable(tf.zeros((0, 2), tf.float64), shape=(None, 2), trainable=False)
    checkpoint = tf.train.Checkpoint(
        model=model,
        **_optimizers(model),
        step=step,
        best_step=best_step,
        best_score=best_score,
        elapsed=elapsed,
        smoothed=smoothed,
        history=history,
        seeds=_seed_states(model),
    )
    manager = tf.train.CheckpointManager(checkpoint, stage_dir / "ckpt", max_to_keep=1)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if int(best_step.numpy()) == int(step.numpy()):
            _save_best(keep, stage_dir)  # the kill may have come between ckpt and best

    if distributes(strategy):
        train_function = distributed_train_function(strategy, model.train_step, jit_compile)
    else:
        train_function = compile_train_step(model, jit_compile)
    start = int(step.numpy())
    metrics_log = MetricsLog(stage_dir / "metrics.jsonl", start)
    iterator = iter(distribute_dataset(strategy, make_dataset(start)))
    bar = tqdm(total=iterations, initial=start, desc=name, disable=not progress, unit="it")
    session_start = time.perf_counter()
    logs: dict[str, float] = {}
    for current in range(start + 1, iterations + 1):
        logs = {key: float(value) for key, value in train_function(next(iterator)).items()}
        if not math.isfinite(logs["total_loss"]):
            bar.close()
            raise TrainingDivergedError(
                f"stage {name!r}: the loss became {logs['total_loss']} at iteration "
                f"{current}. The last good checkpoint (step {int(step.numpy())}) is kept in "
                f"{stage_dir / 'ckpt'}; lower the learning rate or the λs and re-run."
            )
        bar.update(1)
        if current % max(1, iterations // 100) == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k != "total_loss"})
        if current % validate_every and current != iterations:
            continue
        step.assign(current)
        score = validate() if validate is not None else None
        selection = None
        if score is not None:
            history.assign(tf.concat([history, [[float(current), score]]], axis=0))
            previous = float(smoothed.numpy())
            selection = (
                score
                if math.isnan(previous)
                else (score_smoothing * previous + (1.0 - score_smoothing) * score)
            )
            smoothed.assign(selection)
        improved = validate is None or selection > float(best_score.numpy())
        if improved:
            best_step.assign(current)
            best_score.assign(selection if selection is not None else -math.inf)
        # Before the checkpoint: a kill between the two leaves a row past the restored step,
        # which the resumed stage drops and writes again.
        metrics_log.append(
            {"step": current, **logs, "validation_dice": score, "selection_score": selection}
        )
        elapsed.assign_add(time.perf_counter() - session_start)
        session_start = time.perf_counter()
        manager.save()
        if improved:
            _save_best(keep, stage_dir)
        _write_summaries(writer, name, current, logs, score)
        if on_validation is not None:
            on_validation(current)
        for metric in model.metrics:
            metric.reset_state()
    bar.close()

    result = StageResult(
        name=name,
        iterations=iterations,
        best_step=int(best_step.numpy()),
        best_score=None if validate is None else float(best_score.numpy()),
        history=history.numpy().tolist(),
        wall_time_s=float(elapsed.numpy()),
    )
    write_json_atomic(done_path, asdict(result))
    return result


class MetricsLog:
    """The stage's ``metrics.jsonl``: one JSON object per validation, in step order.

    Opening it for a stage resumed at ``start`` drops the lines of steps after ``start``
    (written after the restored checkpoint by the killed session), so the file always
    matches the checkpoint.
    """

    def __init__(self, path: Path, start: int) -> None:
        self.path = Path(path)
        kept = [row for row in read_metrics(self.path) if row["step"] <= start]
        if self.path.is_file():
            text = "".join(json.dumps(row) + "\n" for row in kept)
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)

    def append(self, row: dict) -> None:
        """Append one row (JSON-serialisable scalars) and flush it to disk."""
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a stage's ``metrics.jsonl`` (``[]`` if absent); a torn last line (a kill
    mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def load_best(keep: dict[str, keras.Model], stage_dir: Path) -> None:
    """Load the best weights a finished stage kept into the given (built) sub-models."""
    for stem, sub_model in keep.items():
        sub_model.load_weights(Path(stage_dir) / "best" / f"{stem}.weights.h5")


def _save_best(keep: dict[str, keras.Model], stage_dir: Path) -> None:
    for stem, sub_model in keep.items():
        save_weights_atomic(sub_model, stage_dir / "best" / f"{stem}.weights.h5")


def _write_summaries(
    writer: tf.summary.SummaryWriter | None,
    name: str,
    step: int,
    logs: dict[str, float],
    score: float | None,
) -> None:
    if writer is None:
        return
    with writer.as_default(step=step):
        for key, value in logs.items():
            tf.summary.scalar(f"{name}/{key}", value)
        if score is not None:
            tf.summary.scalar(f"{name}/validation_dice", np.float32(score))
    writer.flush()
