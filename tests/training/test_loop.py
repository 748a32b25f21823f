"""Tests for tfaug/training/loop.py: resumable stages, best-step selection, divergence."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tensorflow as tf
from tiny import SIDE, build_tiny_unet

from tfaug.io import read_jsonl
from tfaug.ops.augment import RandomAffine
from tfaug.training.loop import (
    Lap,
    StageResult,
    StageState,
    TrainingDivergedError,
    load_best,
    run_stage,
    save_weights_atomic,
    write_json_atomic,
)

BATCH = 4


def _batch(nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of discs: images (4,32,32,1) float32 (all NaN if asked), labels (4,32,32)."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    labels = np.stack(
        [((rows - 12 - 2 * i) ** 2 + (cols - 16) ** 2 < 36).astype(np.int32) for i in range(BATCH)]
    )
    images = labels[..., None].astype(np.float32) * 0.8 + 0.1
    if nan:
        images[:] = np.nan
    return images, labels


class Recorder:
    """``make_dataset`` that records its start steps (and the model's state when called).

    Yields good batches, then NaN batches from the ``nan_from``-th batch on (1-based).
    """

    def __init__(self, model=None, nan_from: int | None = None):
        self.model = model
        self.nan_from = nan_from
        self.starts: list[int] = []
        self.optimizer_iterations: list[int] = []
        self.seed_states: list[np.ndarray] = []
        self.segmenter_weights: list[list[np.ndarray]] = []

    def __call__(self, start: int) -> tf.data.Dataset:
        self.starts.append(start)
        if self.model is not None:
            self.optimizer_iterations.append(int(self.model.optimizer.iterations.numpy()))
            self.segmenter_weights.append(self.model.segmenter.get_weights())
            if self.model.affine is not None:
                self.seed_states.append(self.model.affine.generator.state.numpy().copy())
        good = tf.data.Dataset.from_tensors(_batch())
        if self.nan_from is None:
            return good.repeat()
        bad = tf.data.Dataset.from_tensors(_batch(nan=True)).repeat()
        return good.repeat(self.nan_from - 1).concatenate(bad)


class Script:
    """A ``validate`` returning scripted scores; an exception entry is raised instead.

    Records the optimizer step and a copy of S's weights at each call; sleeps ``sleep_s``
    first (a process suspended or starved by other jobs).
    """

    def __init__(self, model, outcomes, sleep_s: float = 0.0):
        self.model = model
        self.outcomes = list(outcomes)
        self.sleep_s = sleep_s
        self.steps: list[int] = []
        self.weights: dict[int, list[np.ndarray]] = {}

    def __call__(self) -> float:
        step = int(self.model.optimizer.iterations.numpy())
        self.steps.append(step)
        self.weights[step] = [w.copy() for w in self.model.segmenter.get_weights()]
        time.sleep(self.sleep_s)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _stage(
    model,
    stage_dir,
    make_dataset,
    validate,
    iterations=9,
    score_smoothing=0.0,
    validate_wide=None,
    budget_marks=(),
    patience=0,
):
    return run_stage(
        name="tiny",
        model=model,
        make_dataset=make_dataset,
        iterations=iterations,
        stage_dir=stage_dir,
        keep={"segmenter": model.segmenter},
        validate=validate,
        validate_every=3,
        progress=False,
        score_smoothing=score_smoothing,
        validate_wide=validate_wide,
        budget_marks=budget_marks,
        patience=patience,
    )


def _assert_weights_equal(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def test_stage_runs_to_the_end_and_writes_done_and_best(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    validate = Script(model, [0.1, 0.3, 0.2], sleep_s=0.5)
    result = _stage(model, tmp_path, Recorder(), validate)

    assert int(model.optimizer.iterations.numpy()) == 9
    assert validate.steps == [3, 6, 9]
    assert result == StageResult(
        name="tiny",
        iterations=9,
        best_step=6,
        best_score=0.3,
        history=[[3.0, 0.1], [6.0, 0.3], [9.0, 0.2]],
        wall_time_s=result.wall_time_s,
        budget=9,
        cpu_time_s=result.cpu_time_s,
        cpu_timed_steps=9,
    )
    # The CPU time does not count the 3 × 0.5 s the process slept in the validations.
    assert 0 < result.cpu_time_s < result.wall_time_s - 1.2
    assert json.loads((tmp_path / "done.json").read_text(encoding="utf-8")) == vars(result)
    assert (tmp_path / "best" / "segmenter.weights.h5").is_file()
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")) is not None


def test_finished_stage_is_not_trained_again(make_segmenter_model, tmp_path):
    first = _stage(make_segmenter_model(), tmp_path, Recorder(), None, iterations=3)
    files = [tmp_path / "done.json", tmp_path / "best" / "segmenter.weights.h5"]
    mtimes = [f.stat().st_mtime_ns for f in files]

    model = make_segmenter_model()
    dataset = Recorder()
    again = _stage(model, tmp_path, dataset, None, iterations=3)

    assert again == first
    assert dataset.starts == []  # no dataset was even built
    assert int(model.optimizer.iterations.numpy()) == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_interrupted_stage_resumes_from_its_checkpoint(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    validate_first = Script(model, [0.2, KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, Recorder(), validate_first)
    assert not (tmp_path / "done.json").exists()

    resumed_model = make_segmenter_model()  # a fresh process would build fresh models
    dataset = Recorder(resumed_model)
    validate = Script(resumed_model, [0.5, 0.4])
    result = _stage(resumed_model, tmp_path, dataset, validate)

    assert dataset.starts == [3]  # the step of the last checkpoint
    assert dataset.optimizer_iterations == [3]  # restored before the dataset was built
    # Every weight, BatchNorm's moving statistics included, is the step-3 one.
    _assert_weights_equal(dataset.segmenter_weights[0], validate_first.weights[3])
    assert validate.steps == [6, 9]
    assert int(resumed_model.optimizer.iterations.numpy()) == 9
    assert result.history == [[3.0, 0.2], [6.0, 0.5], [9.0, 0.4]]
    assert (result.best_step, result.best_score) == (6, 0.5)
    kept = build_tiny_unet()
    load_best({"segmenter": kept}, tmp_path)
    _assert_weights_equal(kept.get_weights(), validate.weights[6])


def test_best_is_the_first_step_reaching_the_maximum(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    validate = Script(model, [0.2, 0.5, 0.4, 0.5])
    result = _stage(model, tmp_path, Recorder(), validate, iterations=12)

    assert (result.best_step, result.best_score) == (6, 0.5)
    assert result.history == [[3.0, 0.2], [6.0, 0.5], [9.0, 0.4], [12.0, 0.5]]
    kept = build_tiny_unet()
    load_best({"segmenter": kept}, tmp_path)
    _assert_weights_equal(kept.get_weights(), validate.weights[6])
    assert not np.array_equal(kept.get_weights()[0], validate.weights[12][0])


def test_nan_loss_before_any_checkpoint_says_none_was_kept(make_segmenter_model, tmp_path):
    with pytest.raises(TrainingDivergedError, match="No checkpoint of this stage was kept yet"):
        _stage(make_segmenter_model(), tmp_path, Recorder(nan_from=1), None)
    assert not (tmp_path / "ckpt").exists()


def test_without_validation_the_last_step_is_kept(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    result = _stage(model, tmp_path, Recorder(), None, iterations=7)

    assert (result.best_step, result.best_score, result.history) == (7, None, [])
    kept = build_tiny_unet()
    load_best({"segmenter": kept}, tmp_path)
    _assert_weights_equal(kept.get_weights(), model.segmenter.get_weights())


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    with pytest.raises(TrainingDivergedError, match=r"stage 'tiny'.* at iteration 5\b") as raised:
        _stage(model, tmp_path, Recorder(nan_from=5), None)
    assert f"The last good checkpoint (step 3) is kept in {tmp_path / 'ckpt'}" in str(raised.value)
    assert "re-run with --force" in str(raised.value)

    assert not (tmp_path / "done.json").exists()
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 3
    kept = build_tiny_unet()
    load_best({"segmenter": kept}, tmp_path)  # the step-3 weights, all finite
    assert all(np.isfinite(w).all() for w in kept.get_weights())
    assert not all(np.isfinite(w).all() for w in model.segmenter.get_weights())

    resumed_model = make_segmenter_model()
    dataset = Recorder(resumed_model)
    result = _stage(resumed_model, tmp_path, dataset, None)
    assert dataset.starts == [3]
    assert result.best_step == 9


def test_random_generator_states_are_restored(make_segmenter_model, tmp_path):
    model = make_segmenter_model(affine=RandomAffine(probability=1.0, seed=7))
    initial_state = model.affine.generator.state.numpy().copy()
    states_at_validation = []

    def validate() -> float:
        states_at_validation.append(model.affine.generator.state.numpy().copy())
        if len(states_at_validation) == 2:
            raise KeyboardInterrupt
        return 0.1

    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, Recorder(), validate)
    assert not np.array_equal(states_at_validation[0], initial_state)  # the stream advanced

    resumed_model = make_segmenter_model(affine=RandomAffine(probability=1.0, seed=7))
    np.testing.assert_array_equal(resumed_model.affine.generator.state.numpy(), initial_state)
    dataset = Recorder(resumed_model)
    _stage(resumed_model, tmp_path, dataset, Script(resumed_model, [0.3, 0.2]))
    np.testing.assert_array_equal(dataset.seed_states[0], states_at_validation[0])


def test_atomic_writers_leave_no_temporary_files(make_segmenter_model, tmp_path):
    segmenter = make_segmenter_model().segmenter
    write_json_atomic(tmp_path / "a.json", {"x": [1, 2]})
    save_weights_atomic(segmenter, tmp_path / "s.weights.h5")
    loaded = build_tiny_unet()
    loaded.load_weights(tmp_path / "s.weights.h5")
    _assert_weights_equal(loaded.get_weights(), segmenter.get_weights())

    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "s.weights.h5"]


def test_smoothed_score_picks_a_stable_checkpoint_over_a_lucky_spike(
    make_segmenter_model, tmp_path
):
    # Raw scores 0.2, 0.9 (a spike), 0.3, 0.8, 0.8: the raw maximum is the spike at step 6;
    # with α = 0.5 the moving average is 0.2, 0.55, 0.425, 0.6125, 0.70625 → step 15.
    model = make_segmenter_model()
    validate = Script(model, [0.2, 0.9, 0.3, 0.8, 0.8])
    result = _stage(model, tmp_path, Recorder(), validate, iterations=15, score_smoothing=0.5)

    assert result.best_step == 15
    assert result.best_score == pytest.approx(0.70625)
    assert [score for _, score in result.history] == [0.2, 0.9, 0.3, 0.8, 0.8]  # raw
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in rows] == [3, 6, 9, 12, 15]
    assert [row["selection_score"] for row in rows] == pytest.approx(
        [0.2, 0.55, 0.425, 0.6125, 0.70625]
    )
    assert [row["validation_dice"] for row in rows] == pytest.approx([0.2, 0.9, 0.3, 0.8, 0.8])
    assert all(np.isfinite(row["total_loss"]) for row in rows)


def test_score_smoothing_outside_its_range_is_a_clear_error(make_segmenter_model, tmp_path):
    with pytest.raises(ValueError, match="validation_smoothing"):
        _stage(make_segmenter_model(), tmp_path, Recorder(), None, score_smoothing=1.0)


def test_resumed_stage_drops_metrics_written_after_its_checkpoint(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, Recorder(), Script(model, [0.2, KeyboardInterrupt()]))
    log = tmp_path / "metrics.jsonl"
    # A row of a step past the checkpoint (a kill after it was written) and a torn line.
    with log.open("a") as stream:
        stream.write(json.dumps({"step": 6, "total_loss": 1.0}) + "\n" + '{"step": 9, "tot')

    resumed = make_segmenter_model()
    _stage(resumed, tmp_path, Recorder(resumed), Script(resumed, [0.5, 0.4]))

    assert [row["step"] for row in read_jsonl(log)] == [3, 6, 9]
    assert [row["validation_dice"] for row in read_jsonl(log)] == [0.2, 0.5, 0.4]


def _kept(stage_dir, folder: str) -> list[np.ndarray]:
    kept = build_tiny_unet()
    load_best({"segmenter": kept}, stage_dir, folder)
    return kept.get_weights()


def test_wide_validation_keeps_its_own_best_beside_the_chosen_and_the_last(
    make_segmenter_model, tmp_path
):
    model = make_segmenter_model()
    validate = Script(model, [0.1, 0.3, 0.2])
    wide = Script(model, [0.4, 0.2, 0.5])
    result = _stage(model, tmp_path, Recorder(), validate, validate_wide=wide)

    assert (result.best_step, result.best_score) == (6, 0.3)  # the wide score never decides
    assert (result.wide_best_step, result.wide_best_score) == (9, 0.5)
    _assert_weights_equal(_kept(tmp_path, "best"), validate.weights[6])
    _assert_weights_equal(_kept(tmp_path, "best_wide"), wide.weights[9])
    _assert_weights_equal(_kept(tmp_path, "last"), model.segmenter.get_weights())
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [row["wide_validation_dice"] for row in rows] == [0.4, 0.2, 0.5]


def test_wide_best_survives_an_interruption(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    wide = Script(model, [0.5])
    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, Recorder(), Script(model, [0.2, KeyboardInterrupt()]), 9, 0.0, wide)

    resumed = make_segmenter_model()
    result = _stage(
        resumed,
        tmp_path,
        Recorder(),
        Script(resumed, [0.3, 0.1]),
        validate_wide=Script(resumed, [0.1, 0.4]),
    )
    assert (result.best_step, result.wide_best_step, result.wide_best_score) == (6, 3, 0.5)
    _assert_weights_equal(_kept(tmp_path, "best_wide"), wide.weights[3])


def test_a_stage_without_validation_keeps_its_last_weights_in_both_folders(
    make_segmenter_model, tmp_path
):
    model = make_segmenter_model()
    result = _stage(model, tmp_path, Recorder(), None, iterations=4)
    assert (result.best_step, result.wide_best_step) == (4, None)
    _assert_weights_equal(_kept(tmp_path, "last"), _kept(tmp_path, "best"))
    with pytest.raises(ValueError, match="wide validation needs the validation"):
        _stage(model, tmp_path / "other", Recorder(), None, validate_wide=lambda: 0.5)


def test_a_checkpoint_of_an_older_version_resumes(make_segmenter_model, tmp_path):
    # The layout before BatchNorm statistics and the wide selection were checkpointed.
    model = make_segmenter_model()
    model.train_step(_batch())
    legacy = tf.train.Checkpoint(
        model=model,
        optimizer=model.optimizer,
        step=tf.Variable(3, dtype=tf.int64),
        best_step=tf.Variable(3, dtype=tf.int64),
        best_score=tf.Variable(0.4, dtype=tf.float64),
        elapsed=tf.Variable(1.0, dtype=tf.float64),
        smoothed=tf.Variable(0.4, dtype=tf.float64),
        history=tf.Variable([[3.0, 0.4]], dtype=tf.float64, shape=(None, 2)),
        seeds=[],
    )
    tf.train.CheckpointManager(legacy, tmp_path / "ckpt", max_to_keep=1).save()

    resumed = make_segmenter_model()
    dataset = Recorder(resumed)
    result = _stage(resumed, tmp_path, dataset, Script(resumed, [0.3, 0.5]))
    assert dataset.starts == [3]
    assert dataset.optimizer_iterations == [1]  # the legacy optimizer had taken one step
    assert (result.best_step, result.history) == (9, [[3.0, 0.4], [6.0, 0.3], [9.0, 0.5]])


def _marked_stage(model, stage_dir, validate, marks=(3, 6)):
    return _stage(model, stage_dir, Recorder(), validate, budget_marks=marks)


def test_budget_marks_keep_the_choice_made_by_each_mark(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    validate = Script(model, [0.2, 0.1, 0.3])
    result = _marked_stage(model, tmp_path, validate)

    # By step 3 the choice was step 3; by step 6 still step 3 (0.1 < 0.2); the end: step 9.
    assert result.budget_steps == [[3, 3], [6, 3]]
    assert result.best_step == 9
    for mark in (3, 6):
        _assert_weights_equal(_kept(tmp_path, f"best_at/{mark}"), validate.weights[3])
        chosen = json.loads((tmp_path / "best_at" / str(mark) / "chosen.json").read_text("utf-8"))
        assert chosen == {"mark": mark, "step": 3}


def test_a_resumed_stage_keeps_the_marks_its_best_still_holds(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    with pytest.raises(KeyboardInterrupt):  # killed after the step-6 checkpoint, without marks
        _marked_stage(model, tmp_path, Script(model, [0.3, 0.1, KeyboardInterrupt()]), marks=())

    resumed = make_segmenter_model()
    result = _marked_stage(resumed, tmp_path, Script(resumed, [0.2]))
    # best/ still holds step 3, the choice at both passed marks: both are recovered.
    assert result.budget_steps == [[3, 3], [6, 3]]
    _assert_weights_equal(_kept(tmp_path, "best_at/6"), _kept(tmp_path, "best"))


def test_a_mark_whose_choice_was_overwritten_stays_missing(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    with pytest.raises(KeyboardInterrupt):  # step 6 became the best: the step-3 choice is gone
        _marked_stage(model, tmp_path, Script(model, [0.1, 0.3, KeyboardInterrupt()]), marks=())
    resumed = make_segmenter_model()
    result = _marked_stage(resumed, tmp_path, Script(resumed, [0.2]))
    assert result.budget_steps == [[6, 6]]
    assert not (tmp_path / "best_at" / "3").exists()


def _refused(stage_dir, validate: float | None, **schedule) -> None:
    """Assert that ``run_stage`` refuses ``schedule`` before anything is built or trained (no
    model needed) and writes nothing."""
    with pytest.raises(ValueError, match=schedule.pop("match")):
        run_stage(
            name="tiny",
            model=None,
            make_dataset=Recorder(),
            iterations=9,
            stage_dir=stage_dir,
            keep={},
            validate=None if validate is None else (lambda: validate),
            validate_every=3,
            progress=False,
            **schedule,
        )
    assert not any(stage_dir.iterdir())


@pytest.mark.parametrize(
    ("marks", "validate"), [((4,), 0.5), ((9,), 0.5), ((0,), 0.5), ((3,), None)]
)
def test_budget_marks_must_be_validation_steps_inside_the_stage(tmp_path, marks, validate):
    match = "budget marks need validation and must be multiples"
    _refused(tmp_path, validate, budget_marks=marks, match=match)


def test_patience_ends_the_stage_once_the_best_step_is_that_old(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    validate = Script(model, [0.1, 0.3, 0.2, 0.3, 0.9])
    result = _stage(model, tmp_path, Recorder(), validate, iterations=30, patience=6)

    # Best at 6; step 9 is 3 steps later, step 12 is 6 later (0.3 ties, not an improvement).
    assert validate.steps == [3, 6, 9, 12]
    assert int(model.optimizer.iterations.numpy()) == 12
    assert (result.iterations, result.budget, result.stopped_early) == (12, 30, True)
    assert (result.best_step, result.best_score) == (6, 0.3)
    assert json.loads((tmp_path / "done.json").read_text(encoding="utf-8")) == vars(result)
    _assert_weights_equal(_kept(tmp_path, "best"), validate.weights[6])
    _assert_weights_equal(_kept(tmp_path, "last"), validate.weights[12])


def test_a_stage_killed_after_its_stopping_checkpoint_stops_again(make_segmenter_model, tmp_path):
    model = make_segmenter_model()
    first = _stage(
        model, tmp_path, Recorder(), Script(model, [0.5, 0.1]), iterations=30, patience=3
    )
    (tmp_path / "done.json").unlink()  # the kill came before done.json

    resumed = make_segmenter_model()
    dataset = Recorder(resumed)
    again = _stage(resumed, tmp_path, dataset, Script(resumed, []), iterations=30, patience=3)
    assert dataset.starts == [6]
    assert int(resumed.optimizer.iterations.numpy()) == 6  # restored, not trained further
    assert again == StageResult(**{**vars(first), "wall_time_s": again.wall_time_s})


@pytest.mark.parametrize(("patience", "validate"), [(4, 0.5), (-3, 0.5), (3, None)])
def test_the_patience_must_be_validation_steps_of_a_validated_stage(tmp_path, patience, validate):
    match = "patience must be 0 \\(off\\) or a multiple"
    _refused(tmp_path, validate, patience=patience, match=match)


def test_a_stage_begun_without_cpu_time_scales_it_from_the_steps_it_measured(
    make_segmenter_model, tmp_path
):
    model = make_segmenter_model()
    with pytest.raises(KeyboardInterrupt):
        _stage(model, tmp_path, Recorder(), Script(model, [0.2, KeyboardInterrupt()]))
    # As an older version's checkpoint at step 3 would be: no CPU time recorded.
    older = StageState(make_segmenter_model(), tmp_path, keep={})
    older.cpu_steps.assign(0)
    older.cpu_elapsed.assign(0.0)
    older.save(improved=False, lap=Lap(wall_s=0.0, cpu_s=0.0, steps=0))

    resumed = make_segmenter_model()
    result = _stage(resumed, tmp_path, Recorder(), Script(resumed, [0.3, 0.1]))
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt"))
    measured = float(reader.get_tensor("cpu_elapsed/.ATTRIBUTES/VARIABLE_VALUE"))
    assert result.cpu_timed_steps == 6  # steps 4–9
    assert result.cpu_time_s == pytest.approx(measured * 9 / 6)
