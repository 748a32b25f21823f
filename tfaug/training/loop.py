"""One resumable training stage: iterate, validate every k steps, keep the best weights.

Every stage of Algorithm 1 (pre-training, the two generator stages, the final segmenter)
runs through :func:`run_stage`. The stage folder holds

- ``ckpt/``: a ``tf.train.Checkpoint`` of the training model, its optimisers, the step,
  the best score so far and the random-generator states, written every ``validate_every``
  steps (TensorFlow writes the checkpoint's index file last, so a kill mid-write leaves the
  previous checkpoint valid);
- ``best/<name>.weights.h5``: the weights of the sub-models to keep, at the best
  validation score (the first step reaching the maximum; the last step without validation);
- ``last/<name>.weights.h5``: the same sub-models at the stage's last step, written when the
  stage ends (what the run would keep without model selection);
- ``best_wide/<name>.weights.h5`` (only with a wide validation): the sub-models at the best
  score on the wider validation set, chosen by the same rule; it never changes ``best/``;
- ``best_at/<mark>/`` (only with budget marks): ``best/`` as it stood at step ``mark``, the
  checkpoint a stage stopped there would have kept, with ``chosen.json`` ``{"mark",
  "step"}`` (written last);
- ``metrics.jsonl``: one JSON object per validation, ``{"step", <every logged scalar>,
  "validation_dice", "selection_score"}`` and, with a wide validation,
  ``"wide_validation_dice"`` (the scalars are means over the last ``validate_every``
  steps); lines past the restored step are dropped on resume;
- ``done.json``: written last, atomically; a stage with it is skipped on re-runs.

Re-running after a kill restores the latest checkpoint and continues from its step. With a
``patience``, a stage ends early once its best step is that many steps old (Keras'
``EarlyStopping`` on the selection score, with the kept weights chosen as without it).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfaug.io import append_jsonl, atomic_path, read_jsonl, write_json_atomic, write_jsonl_atomic
from tfaug.training.distribute import (
    distribute_dataset,
    distributed_train_function,
    distributes,
    worker_directory,
)
from tfaug.training.errors import TrainingDivergedError


@dataclass
class StageResult:
    """What a finished stage reports (also the content of ``done.json``).

    Attributes:
        name: stage name, e.g. ``"generator_deformation"``.
        iterations: number of training steps run in total (fewer than the stage's budget
            when its patience ended it).
        best_step: step whose weights were kept.
        best_score: selection score at ``best_step`` (the validation score, or its moving
            average with ``score_smoothing``; ``None`` without validation).
        history: ``[[step, score], ...]`` of every validation.
        wall_time_s: seconds spent training, summed over resumed sessions.
        cpu_time_s: CPU seconds the process (all its threads) spent on the stage, per step
            times ``iterations``: unlike ``wall_time_s`` it does not count a suspended process
            or other jobs on a shared machine. Measured over ``cpu_timed_steps`` steps (all of
            them unless the stage was begun before it was recorded); ``None`` without any.
        cpu_timed_steps: the steps ``cpu_time_s`` was measured over.
        wide_best_step: step of the ``best_wide/`` weights (``None`` without a wide
            validation, and in stages finished before it existed).
        wide_best_score: its selection score on the wide validation set.
        budget_steps: ``[[mark, step], ...]``: at each budget mark, the step ``best/`` held
            (its weights in ``best_at/<mark>/``); empty without marks.
        budget: the stage's budget, in steps (``iterations`` unless the patience ended the
            stage; ``None`` in stages finished before it was recorded).
    """

    name: str
    iterations: int
    best_step: int
    best_score: float | None
    history: list[list[float]]
    wall_time_s: float
    wide_best_step: int | None = None
    wide_best_score: float | None = None
    budget_steps: list[list[int]] = field(default_factory=list)
    budget: int | None = None
    cpu_time_s: float | None = None
    cpu_timed_steps: int = 0

    @property
    def stopped_early(self) -> bool:
        """Whether the patience ended the stage before its budget."""
        return self.budget is not None and self.iterations < self.budget


def _seed_states(model: keras.Model) -> list[tf.Variable]:
    """The state variables of every ``keras.random.SeedGenerator`` inside ``model``.

    ``tf.train.Checkpoint`` does not follow Keras 3 seed generators, so they are saved
    explicitly: a resumed run continues the same random stream.
    """
    return [v.value for v in model.variables if "seed_generator_state" in v.path]


def _statistics(model: keras.Model) -> list[tf.Variable]:
    """The model's non-trainable state other than seed generators (BatchNorm's moving mean
    and variance).

    ``tf.train.Checkpoint`` reaches a Keras 3 model's trainable weights only through its
    optimiser, so these are saved explicitly: a resumed run keeps its running statistics.
    """
    return [v.value for v in model.non_trainable_variables if "seed_generator_state" not in v.path]


# Checkpoint entries added after the first release: a checkpoint written before them (an
# interrupted run of an older version) is restored without them.
_LATER_ENTRIES = (
    "statistics",
    "wide_best_step",
    "wide_best_score",
    "wide_smoothed",
    "cpu_elapsed",
    "cpu_steps",
)


def _restore(objects: dict, path: str) -> None:
    """Restore ``objects`` (the stage checkpoint's entries) from checkpoint ``path``.

    Every entry the checkpoint holds must match; an entry of :data:`_LATER_ENTRIES` that an
    older checkpoint lacks keeps its initial value.
    """
    saved = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    present = {key.split("/", 1)[0] for key in saved}
    restored = {
        name: value
        for name, value in objects.items()
        if name not in _LATER_ENTRIES or name in present
    }
    tf.train.Checkpoint(**restored).restore(path).assert_existing_objects_matched()


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
    validate_wide: Callable[[], float] | None = None,
    budget_marks: Sequence[int] = (),
    patience: int = 0,
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
        validate_wide: returns the score on a wider validation set (higher is better),
            computed at every validation, logged as ``wide_validation_dice`` and used only to
            keep a second checkpoint, ``best_wide/``, by the same rule (needs ``validate``).
            It measures how much model selection depends on the validation volumes.
        budget_marks: validation steps at which ``best/`` is copied to ``best_at/<mark>/``
            (needs ``validate``): the stage's choice had it stopped there.
        patience: P > 0 ends the stage at the first validation whose step is P steps past
            the best step (``iterations`` stays the cap); a multiple of ``validate_every``,
            needs ``validate``. The kept weights are those the full stage would have kept
            unless its score would have improved later. 0: always run ``iterations`` steps.

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
    if validate_wide is not None and validate is None:
        raise ValueError(f"stage {name!r}: a wide validation needs the validation it widens")
    unaligned = [m for m in budget_marks if m % validate_every or not 0 < m < iterations]
    if budget_marks and (validate is None or unaligned):
        raise ValueError(
            f"stage {name!r}: budget marks need validation and must be multiples of "
            f"validate_every ({validate_every}) inside the stage's {iterations} steps; "
            f"found {list(budget_marks)}"
        )
    if patience < 0 or patience % validate_every or (patience and validate is None):
        raise ValueError(
            f"stage {name!r}: the patience must be 0 (off) or a multiple of validate_every "
            f"({validate_every}) in a validated stage; found {patience}"
        )
    strategy = strategy or tf.distribute.get_strategy()
    stage_dir = worker_directory(Path(stage_dir), strategy)
    done_path = stage_dir / "done.json"
    if done_path.is_file():
        return StageResult(**json.loads(done_path.read_text(encoding="utf-8")))
    state = StageState(model, stage_dir, keep, budget_marks)

    if distributes(strategy):
        train_function = distributed_train_function(strategy, model.train_step, jit_compile)
    else:
        train_function = compile_train_step(model, jit_compile)
    start = state.step
    metrics_log = MetricsLog(stage_dir / "metrics.jsonl", start)
    iterator = iter(distribute_dataset(strategy, make_dataset(start)))
    bar = tqdm(total=iterations, initial=start, desc=name, disable=not progress, unit="it")
    clock = _Clock(start)
    # A stage killed between its stopping checkpoint and done.json stops again at once.
    end = start if state.patience_ended(patience) else iterations
    for current in range(start + 1, end + 1):
        logs = {key: float(value) for key, value in train_function(next(iterator)).items()}
        if not math.isfinite(logs["total_loss"]):
            bar.close()
            kept = (
                f"The last good checkpoint (step {state.step}) is kept in {stage_dir / 'ckpt'}"
                if state.step
                else "No checkpoint of this stage was kept yet"
            )
            raise TrainingDivergedError(
                f"stage {name!r}: the loss became {logs['total_loss']} at iteration "
                f"{current}. {kept}. Lower train.learning_rate (or the λs) and re-run with "
                "--force, which moves this run aside (resuming it unchanged would repeat the "
                "same steps)."
            )
        bar.update(1)
        if current % max(1, iterations // 100) == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k != "total_loss"})
        if current % validate_every and current != iterations:
            continue
        score = validate() if validate is not None else None
        selection, improved = state.record(current, score, score_smoothing)
        row = {"step": current, **logs, "validation_dice": score, "selection_score": selection}
        wide_improved = False
        if validate_wide is not None:
            row["wide_validation_dice"] = validate_wide()
            _, wide_improved = state.wide.update(
                current, row["wide_validation_dice"], score_smoothing
            )
        # Before the checkpoint: a kill between the two leaves a row past the restored step,
        # which the resumed stage drops and writes again.
        metrics_log.append(row)
        state.save(improved, clock.lap(current), wide_improved)
        if current in state.budget_marks:
            state.keep_budget_mark(current)
        clock.restart()
        _write_summaries(writer, name, current, logs, score)
        if on_validation is not None:
            on_validation(current)
        for metric in model.metrics:
            metric.reset_state()
        if state.patience_ended(patience):
            break
    bar.close()

    _save_weights(keep, stage_dir / "last")
    result = state.result(name, iterations, validated=validate is not None)
    write_json_atomic(done_path, asdict(result))
    return result


class Selection:
    """The best step by a validation score and its exponential moving average.

    Three checkpointed variables: the best step (−1 before any), its selection score and the
    current smoothed score. ``s_k = α·s_{k−1} + (1 − α)·score_k`` (``s_1 = score_1``); a step
    becomes the best when ``s_k`` exceeds every earlier one (the first step reaching the
    maximum wins ties).
    """

    def __init__(self) -> None:
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.best_score = tf.Variable(-math.inf, dtype=tf.float64, trainable=False)
        self.smoothed = tf.Variable(math.nan, dtype=tf.float64, trainable=False)

    def update(self, current: int, score: float, smoothing: float) -> tuple[float, bool]:
        """Record ``score`` at step ``current``; returns ``(s_k, whether it is the best)``."""
        previous = float(self.smoothed.numpy())
        selection = (
            score if math.isnan(previous) else smoothing * previous + (1 - smoothing) * score
        )
        self.smoothed.assign(selection)
        improved = selection > float(self.best_score.numpy())
        if improved:
            self.mark_best(current, selection)
        return selection, improved

    def mark_best(self, current: int, selection: float) -> None:
        """Make ``current`` the best step with score ``selection``."""
        self.best_step.assign(current)
        self.best_score.assign(selection)


class StageState:
    """The resumable state of a stage and its checkpoint, restored from ``stage_dir/ckpt``.

    Holds the step, the best step and its selection score (and those of the wide validation),
    the training time and the validation history as variables of one ``tf.train.Checkpoint``
    together with the model, its optimisers and its random-generator states. A new stage
    starts at step 0 with no best score.

    Args:
        model: the compiled training model (its optimisers are found by attribute name).
        stage_dir: the stage's folder (``ckpt/`` and ``best/`` are created in it).
        keep: sub-models whose weights are saved at the best step, by file stem.
        budget_marks: steps at which ``best/`` is copied to ``best_at/<mark>/``.
    """

    def __init__(
        self,
        model: keras.Model,
        stage_dir: Path,
        keep: dict[str, keras.Model],
        budget_marks: Sequence[int] = (),
    ) -> None:
        self.stage_dir = stage_dir
        self.keep = keep
        self.budget_marks = sorted(budget_marks)
        (stage_dir / "best").mkdir(parents=True, exist_ok=True)
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.selection = Selection()
        self.wide = Selection()
        self.elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.cpu_elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.cpu_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.history = tf.Variable(tf.zeros((0, 2), tf.float64), shape=(None, 2), trainable=False)
        objects = {
            "model": model,
            **_optimizers(model),
            "step": self.step_var,
            "best_step": self.selection.best_step,
            "best_score": self.selection.best_score,
            "elapsed": self.elapsed,
            "cpu_elapsed": self.cpu_elapsed,
            "cpu_steps": self.cpu_steps,
            "smoothed": self.selection.smoothed,
            "history": self.history,
            "seeds": _seed_states(model),
            "statistics": _statistics(model),
            "wide_best_step": self.wide.best_step,
            "wide_best_score": self.wide.best_score,
            "wide_smoothed": self.wide.smoothed,
        }
        checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(checkpoint, stage_dir / "ckpt", max_to_keep=1)
        latest = self.manager.latest_checkpoint
        if latest:
            _restore(objects, latest)
            # The kill may have come between the checkpoint and the kept weights.
            if int(self.selection.best_step.numpy()) == self.step:
                _save_weights(keep, stage_dir / "best")
            if int(self.wide.best_step.numpy()) == self.step:
                _save_weights(keep, stage_dir / "best_wide")
            self._recover_budget_marks()

    @property
    def step(self) -> int:
        """The last checkpointed step (0 for a new stage)."""
        return int(self.step_var.numpy())

    def patience_ended(self, patience: int) -> bool:
        """Whether the best step is at least ``patience`` > 0 steps behind the last step."""
        best_step = int(self.selection.best_step.numpy())
        return patience > 0 and best_step >= 0 and self.step - best_step >= patience

    def record(
        self, current: int, score: float | None, smoothing: float
    ) -> tuple[float | None, bool]:
        """Record the validation at step ``current``.

        Args:
            current: the step just trained.
            score: the validation score, or ``None`` for a stage without validation.
            smoothing: α of the score's exponential moving average.

        Returns:
            ``(selection, improved)``: the score the best step is chosen by (``None``
            without validation) and whether this step becomes the best one (always without
            validation, so the last step is kept).
        """
        self.step_var.assign(current)
        if score is None:
            self.selection.mark_best(current, -math.inf)
            return None, True
        self.history.assign(tf.concat([self.history, [[float(current), score]]], axis=0))
        return self.selection.update(current, score, smoothing)

    def save(self, improved: bool, lap: Lap, wide_improved: bool = False) -> None:
        """Add the ``lap``'s times, write the checkpoint, then the kept weights."""
        self.elapsed.assign_add(lap.wall_s)
        self.cpu_elapsed.assign_add(lap.cpu_s)
        self.cpu_steps.assign_add(lap.steps)
        self.manager.save()
        if improved:
            _save_weights(self.keep, self.stage_dir / "best")
        if wide_improved:
            _save_weights(self.keep, self.stage_dir / "best_wide")

    def keep_budget_mark(self, mark: int) -> None:
        """Copy ``best/`` to ``best_at/<mark>/``; ``chosen.json`` is written last."""
        folder = self.stage_dir / "best_at" / str(mark)
        folder.mkdir(parents=True, exist_ok=True)
        for stem in self.keep:
            with atomic_path(folder / f"{stem}.weights.h5", suffix=".weights.h5") as temporary:
                shutil.copyfile(self.stage_dir / "best" / f"{stem}.weights.h5", temporary)
        chosen = {"mark": mark, "step": int(self.selection.best_step.numpy())}
        write_json_atomic(folder / "chosen.json", chosen)

    def _recover_budget_marks(self) -> None:
        """Keep the passed marks a resumed stage lacks (a kill after the checkpoint, or marks
        switched on mid-stage) where ``best/`` still holds the choice of that mark: its step
        is at or before the mark. Other passed marks stay missing."""
        best_step = int(self.selection.best_step.numpy())
        for mark in self.budget_marks:
            kept = (self.stage_dir / "best_at" / str(mark) / "chosen.json").is_file()
            if mark <= self.step and not kept and 0 <= best_step <= mark:
                self.keep_budget_mark(mark)

    def budget_steps(self) -> list[list[int]]:
        """``[[mark, step], ...]`` of every kept ``best_at/<mark>/``, by mark."""
        found = [
            json.loads(path.read_text(encoding="utf-8"))
            for path in (self.stage_dir / "best_at").glob("*/chosen.json")
        ]
        return sorted([int(c["mark"]), int(c["step"])] for c in found)

    def _cpu_time(self) -> float | None:
        """CPU seconds per measured step × the steps run; ``None`` without a measured step."""
        steps = int(self.cpu_steps.numpy())
        return float(self.cpu_elapsed.numpy()) * self.step / steps if steps else None

    def result(self, name: str, budget: int, validated: bool) -> StageResult:
        """The finished stage's :class:`StageResult`; ``budget``: the stage's step budget."""
        wide_step = int(self.wide.best_step.numpy())
        return StageResult(
            name=name,
            iterations=self.step,
            best_step=int(self.selection.best_step.numpy()),
            best_score=float(self.selection.best_score.numpy()) if validated else None,
            history=self.history.numpy().tolist(),
            wall_time_s=float(self.elapsed.numpy()),
            cpu_time_s=self._cpu_time(),
            cpu_timed_steps=int(self.cpu_steps.numpy()),
            wide_best_step=wide_step if wide_step >= 0 else None,
            wide_best_score=float(self.wide.best_score.numpy()) if wide_step >= 0 else None,
            budget_steps=self.budget_steps(),
            budget=budget,
        )


@dataclass(frozen=True)
class Lap:
    """The time between two checkpoints: wall-clock and process CPU seconds, and the steps
    trained in it."""

    wall_s: float
    cpu_s: float
    steps: int


class _Clock:
    """Wall-clock and process CPU time since the last checkpoint (or the session's start)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.restart()

    def restart(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, step: int) -> Lap:
        """The lap ending at ``step``; the next lap's steps count from it."""
        lap = Lap(time.perf_counter() - self.wall, time.process_time() - self.cpu, step - self.step)
        self.step = step
        return lap


class MetricsLog:
    """The stage's ``metrics.jsonl``: one JSON object per validation, in step order.

    Opening it for a stage resumed at ``start`` drops the lines of steps after ``start``
    (written after the restored checkpoint by the killed session), so the file always
    matches the checkpoint.
    """

    def __init__(self, path: Path, start: int) -> None:
        self.path = Path(path)
        if self.path.is_file():
            kept = [row for row in read_jsonl(self.path) if row["step"] <= start]
            write_jsonl_atomic(self.path, kept)

    def append(self, row: dict) -> None:
        """Append one row (JSON-serialisable scalars) and flush it to disk."""
        append_jsonl(self.path, row)


def load_best(keep: dict[str, keras.Model], stage_dir: Path, kept: str = "best") -> None:
    """Load weights a finished stage kept into the given (built) sub-models.

    ``kept`` names the folder: ``"best"`` (the chosen step), ``"last"``, ``"best_wide"`` or
    ``"best_at/<mark>"``.
    """
    for stem, sub_model in keep.items():
        sub_model.load_weights(Path(stage_dir) / kept / f"{stem}.weights.h5")


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` through a temporary file and an atomic rename."""
    with atomic_path(path, suffix=".weights.h5") as temporary:
        model.save_weights(temporary)


def _save_weights(keep: dict[str, keras.Model], folder: Path) -> None:
    """Save every kept sub-model as ``folder/<stem>.weights.h5`` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, sub_model in keep.items():
        save_weights_atomic(sub_model, folder / f"{stem}.weights.h5")


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
