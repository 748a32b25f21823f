"""Generator diagnostics: a real tiny GV stage, and hand-written metrics for the edge cases.

The module fixture trains the pre-training and the GV stage of the tiny phantom (4
iterations, validation every 2) through :class:`Algorithm`, so the stage folder, its
``metrics.jsonl`` and ``done.json`` are exactly what a run writes; the other tests write
``metrics.jsonl`` files by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from tiny import prepare_tiny_cache, tiny_config

from tfaug.analysis.diagnostics import (
    BALANCED_ADV_LOSS,
    FIGURE_NAME,
    SUMMARY_NAME,
    DiagnosticsError,
    draw_generator_diagnostics,
    read_run_traces,
    read_stage_trace,
    summarise_stage,
    write_run_diagnostics,
)
from tfaug.experiments.diagnostics_report import diagnostics_section, find_generator_runs
from tfaug.experiments.records import copy_records
from tfaug.runs.algorithm import Algorithm
from tfaug.runs.rundir import open_run_directory

SPACING, CROP = 5.0, 32  # the tiny phantom's geometry: a 160 mm field of view


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A gd run directory whose GV stage (4 iterations) was trained for real; its stages are
    links into the shared generator directory."""
    base = tmp_path_factory.getbasetemp()
    prepare_tiny_cache(base)
    cfg = tiny_config(base / "tiny-cache", tmp_path_factory.mktemp("diagnostics") / "runs", "gd")
    cfg.train.pretrain_iterations = 1
    cfg.train.generator_iterations = 4
    cfg.train.validate_every = 2
    run = open_run_directory(cfg)
    algorithm = Algorithm(cfg, run, progress=False)
    algorithm.prepare()
    algorithm.train_generators(("deformation",))
    return run.path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _row(step: int, dice: float | None = 0.5, selection: float | None = None, **values) -> dict:
    """A metrics.jsonl row of a generator stage (field in px)."""
    logged = {
        "seg_loss": 0.2,
        "adv_loss": 3.0,
        "ld_loss": -1.0,
        "total_loss": 3.0,
        "d_loss": 0.1,
        "d_acc_real": 0.9,
        "d_acc_fake": 1.0,
        "field_magnitude": 1.0,
        "field_norm": 2.0,
        "field_peak": 8.0,
        "foreground_lost": 0.05,
    }
    selection = dice if selection is None else selection
    return {"step": step, **logged, **values, "validation_dice": dice, "selection_score": selection}


def _write_stage(folder: Path, rows: list[dict], done: dict | None = None, torn: str = "") -> Path:
    folder.mkdir(parents=True)
    text = "".join(json.dumps(row) + "\n" for row in rows) + torn
    (folder / "metrics.jsonl").write_text(text)
    if done is not None:
        (folder / "done.json").write_text(json.dumps(done))
    return folder


# --------------------------------------------------------------------- the real stage
def test_real_stage_is_converted_to_mm_and_fraction_of_the_field_of_view(real_run):
    stage = real_run / "checkpoints" / "generator_deformation"
    assert stage.is_symlink()  # shared with the generator directory
    rows = _rows(stage / "metrics.jsonl")
    done = json.loads((stage / "done.json").read_text(encoding="utf-8"))

    trace = read_stage_trace(stage, spacing_mm=SPACING, crop_size=CROP)

    assert trace.kind == "deformation" and trace.unit == "mm"
    assert trace.steps.tolist() == [2, 4]
    np.testing.assert_allclose(trace.field_mean, [r["field_norm"] * 5.0 for r in rows])
    np.testing.assert_allclose(trace.field_peak, [r["field_peak"] * 5.0 for r in rows])
    np.testing.assert_allclose(
        trace.field_mean * trace.unit_fraction, [r["field_norm"] / 32 for r in rows]
    )
    np.testing.assert_allclose(trace.d_acc_fake, [r["d_acc_fake"] for r in rows])
    assert (trace.chosen_step, trace.iterations) == (done["best_step"], 4)
    assert np.all(trace.field_peak >= trace.field_mean)


def test_run_diagnostics_json_and_figure_are_written_at_the_chosen_step(real_run):
    summary = write_run_diagnostics(real_run, spacing_mm=SPACING, crop_size=CROP)

    assert summary == json.loads((real_run / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["field_of_view_mm"] == 160.0
    assert list(summary["stages"]) == ["generator_deformation"]  # GI was not trained
    stage = summary["stages"]["generator_deformation"]
    stage_dir = real_run / "checkpoints" / "generator_deformation"
    best = json.loads((stage_dir / "done.json").read_text(encoding="utf-8"))["best_step"]
    row = next(r for r in _rows(stage_dir / "metrics.jsonl") if r["step"] == best)
    assert stage["chosen_step"] == stage["chosen"]["step"] == best
    assert stage["chosen"]["field_mean"] == pytest.approx(row["field_norm"] * 5.0)
    assert stage["chosen"]["field_peak_fraction"] == pytest.approx(row["field_peak"] / 32)
    assert stage["chosen"]["validation_dice"] == pytest.approx(row["validation_dice"])
    assert stage["last"]["step"] == 4
    image = matplotlib.image.imread(real_run / "figures" / FIGURE_NAME)
    assert image.ndim == 3 and image.shape[0] > 300


def test_report_section_lists_the_generator_directory_not_the_linked_run(real_run, tmp_path):
    runs = find_generator_runs(real_run.parent)
    assert [r.name for r in runs] == ["phantom-nl1-generators-split0-seed0"]
    assert runs[0].stages == ("generator_deformation",)

    lines = diagnostics_section(real_run.parent, tmp_path)

    trace = runs[0].traces["generator_deformation"]
    index = trace.chosen_index
    mm, percent = trace.field_mean[index], 100 * trace.field_mean[index] / 160
    row = next(line for line in lines if line.startswith("| phantom | 1 | 0 | 0 | joint | – |"))
    assert f"| GV | {mm:.2f} mm ({percent:.1f} %) |" in row
    assert f"| {trace.chosen_step} / 4 |" in row
    assert (tmp_path / "diagnostics-phantom-nl1-joint.png").is_file()


# ------------------------------------------------------------------- hand-written rows
def test_the_figure_marks_the_chosen_step_in_every_panel_and_plots_mm(tmp_path):
    rows = [_row(10, 0.40), _row(20, 0.60, field_norm=3.0), _row(30, 0.55)]
    stage = _write_stage(
        tmp_path / "generator_deformation", rows, {"best_step": 20, "iterations": 30}
    )
    trace = read_stage_trace(stage, spacing_mm=2.5, crop_size=64)

    figure = draw_generator_diagnostics({"generator_deformation": trace}, "title")

    panels = {ax.get_gid(): ax for ax in figure.axes if ax.get_gid()}
    assert len(panels) == 5
    for ax in panels.values():
        chosen = [line for line in ax.get_lines() if line.get_label() == "chosen checkpoint"]
        assert [list(line.get_xdata()) for line in chosen] == [[20, 20]]
    field = panels["generator_deformation/field"].get_lines()
    np.testing.assert_allclose(field[0].get_ydata(), [5.0, 7.5, 5.0])  # 2, 3, 2 px × 2.5 mm
    np.testing.assert_allclose(field[1].get_ydata(), [20.0, 20.0, 20.0])
    adv = panels["generator_deformation/adv_loss"].get_lines()
    assert [line.get_ydata()[0] for line in adv if "log 2" in line.get_label()] == [
        BALANCED_ADV_LOSS
    ]
    lost = panels["generator_deformation/foreground_lost"].get_lines()[0]
    np.testing.assert_allclose(lost.get_ydata(), [5.0, 5.0, 5.0])  # percent
    # 2 px at 2.5 mm on a 64 px crop = 5 mm of 160 mm = 3.125 % of the field of view.
    chosen = summarise_stage(trace)["chosen"]
    assert chosen["field_mean_fraction"] == pytest.approx(7.5 / 160)


def test_a_stage_its_patience_ended_says_so_with_its_budget(tmp_path):
    rows = [_row(10, 0.5), _row(20, 0.4)]
    done = {"best_step": 10, "iterations": 20, "budget": 300}
    trace = read_stage_trace(
        _write_stage(tmp_path / "generator_intensity", rows, done),
        spacing_mm=SPACING,
        crop_size=CROP,
    )
    assert (summarise_stage(trace)["iterations"], summarise_stage(trace)["budget"]) == (20, 300)
    figure = draw_generator_diagnostics({"generator_intensity": trace}, "stopped")
    panel = next(ax for ax in figure.axes if ax.get_gid() == "generator_intensity/field")
    assert panel.get_title().endswith("chosen step 10 of 20 (stopped early; budget 300)")
    full = {"best_step": 10, "iterations": 20, "budget": 20}
    trace = read_stage_trace(
        _write_stage(tmp_path / "full" / "generator_intensity", rows, full),
        spacing_mm=SPACING,
        crop_size=CROP,
    )
    assert trace.budget is None


def test_missing_metrics_give_no_trace_and_nothing_is_written(tmp_path):
    (tmp_path / "run" / "checkpoints" / "generator_deformation").mkdir(parents=True)
    stage = tmp_path / "run" / "checkpoints" / "generator_deformation"
    assert read_stage_trace(stage, spacing_mm=SPACING, crop_size=CROP) is None
    assert read_run_traces(tmp_path / "run", spacing_mm=SPACING, crop_size=CROP) == {}
    assert write_run_diagnostics(tmp_path / "run", spacing_mm=SPACING, crop_size=CROP) is None
    assert not (tmp_path / "run" / "figures").exists()
    assert not (tmp_path / "run" / SUMMARY_NAME).exists()


def test_a_torn_last_line_is_skipped(tmp_path):
    stage = _write_stage(
        tmp_path / "generator_intensity", [_row(5), _row(10)], torn='{"step": 15, "seg_'
    )
    trace = read_stage_trace(stage, spacing_mm=SPACING, crop_size=CROP)
    assert trace.steps.tolist() == [5, 10]
    # GI: ΔI is not scaled; its fraction of the [0, 1] normalised range is the same number.
    assert trace.unit == "ΔI"
    np.testing.assert_allclose(trace.field_mean, [2.0, 2.0])
    assert summarise_stage(trace)["last"]["field_mean_fraction"] == pytest.approx(2.0)


def test_without_validation_the_last_step_is_chosen(tmp_path):
    rows = [_row(step, dice=None) for step in (4, 8, 12)]
    stage = _write_stage(tmp_path / "generator_deformation", rows)
    trace = read_stage_trace(stage, spacing_mm=SPACING, crop_size=CROP)
    assert (trace.chosen_step, trace.iterations) == (12, None)
    summary = summarise_stage(trace)
    assert summary["chosen"]["validation_dice"] is None
    assert summary["chosen"]["selection_score"] is None
    figure = draw_generator_diagnostics({"generator_deformation": trace}, "no validation")
    panel = next(ax for ax in figure.axes if ax.get_gid() == "generator_deformation/validation")
    assert [text.get_text() for text in panel.texts] == ["no validation (last step kept)"]


def test_an_unfinished_stage_chooses_the_first_best_selection_score(tmp_path):
    # Smoothed selection: the raw Dice peaks at step 2, the selection score at step 3 and 4.
    rows = [_row(1, 0.2, 0.2), _row(2, 0.9, 0.5), _row(3, 0.6, 0.7), _row(4, 0.7, 0.7)]
    trace = read_stage_trace(
        _write_stage(tmp_path / "generator_deformation", rows), spacing_mm=1.0, crop_size=10
    )
    assert trace.chosen_step == 3
    summary = summarise_stage(trace)
    assert summary["chosen"]["validation_dice"] == 0.6
    assert summary["iterations"] is None


def test_a_chosen_step_without_a_row_has_no_chosen_values(tmp_path):
    stage = _write_stage(
        tmp_path / "generator_deformation", [_row(30)], {"best_step": 10, "iterations": 30}
    )
    summary = summarise_stage(read_stage_trace(stage, spacing_mm=SPACING, crop_size=CROP))
    assert (summary["chosen_step"], summary["chosen"]) == (10, None)
    assert summary["last"]["step"] == 30


def test_bad_input_is_named(tmp_path):
    with pytest.raises(DiagnosticsError, match="expected a generator stage folder"):
        read_stage_trace(tmp_path / "segmenter", spacing_mm=SPACING, crop_size=CROP)
    stage = _write_stage(tmp_path / "generator_deformation", [_row(1)])
    with pytest.raises(DiagnosticsError, match=r"positive preprocess.spacing_mm.*found 0.0 mm"):
        read_stage_trace(stage, spacing_mm=0.0, crop_size=CROP)
    (stage / "metrics.jsonl").write_text('{"field_norm": 1.0}\n')
    with pytest.raises(DiagnosticsError, match="expected a 'step' in every row"):
        read_stage_trace(stage, spacing_mm=SPACING, crop_size=CROP)
    with pytest.raises(DiagnosticsError, match="no generator stage with metrics"):
        draw_generator_diagnostics({}, "empty")


def _generator_dir(runs: Path, draw: int, tag: str, field_norms: list[float] | None) -> None:
    """A generator directory with a config and a GV stage (no metrics when ``None``)."""
    name = f"phantom-nl1-generators-split{draw}-seed0" + (f"-{tag}" if tag else "")
    folder = runs / name / "checkpoints" / "generator_deformation"
    config = {
        "method": "generators",
        "tag": tag,
        "preprocess": {"spacing_mm": 2.0, "crop_size": 50},
        "split": {"draw": draw},
    }
    if field_norms is None:
        folder.mkdir(parents=True)
    else:
        rows = [_row(10 * (i + 1), field_norm=v) for i, v in enumerate(field_norms)]
        _write_stage(folder, rows, {"best_step": 10, "iterations": 10 * len(rows)})
    (runs / name / "config.yaml").write_text(yaml.safe_dump(config))


def test_report_groups_average_per_tag_and_list_old_runs_as_no_diagnostics(tmp_path):
    runs = tmp_path / "runs"
    _generator_dir(runs, 0, "", [1.0, 9.0])  # chosen step 10: 1 px = 2 mm
    _generator_dir(runs, 1, "", [3.0])  # 3 px = 6 mm
    _generator_dir(runs, 0, "b", [0.5])
    _generator_dir(runs, 2, "", None)  # trained before metrics.jsonl existed
    out = tmp_path / "out"
    out.mkdir()

    text = "\n".join(diagnostics_section(runs, out))

    assert "| phantom | 1 | 2 | 0 | joint | – | GV | no diagnostics (no metrics.jsonl) |" in text
    # 2 and 6 mm: mean 4 ± 2 mm, i.e. 4 % ± 2 % of the 100 mm field of view.
    assert "| phantom | 1 | joint | – | 2 | GV | 4.00 ± 2.00 mm (4.0 ± 2.0 %) |" in text
    assert "| phantom | 1 | joint | b | 1 | GV | 1.00 mm (1.0 %) |" in text
    assert "| 10 ± 0 / 10–20 |" in text  # chosen steps 10 and 10 of 20 and 10 iterations
    assert "| 90 ± 0 / 100 ± 0 % | 3.00 ± 0.00 |" in text  # D acc real / fake, L_adv,G
    assert "| 5.0 % | 90 / 100 % | 3.00 | 10 / 10 | 0.500 |" in text  # the tagged run
    assert sorted(p.name for p in out.iterdir()) == [
        "diagnostics-phantom-nl1-joint-b.png",
        "diagnostics-phantom-nl1-joint.png",
    ]
    assert "(diagnostics-phantom-nl1-joint.png)" in text
    assert "phantom-nl1-generators-split0-seed0]" in text  # the group's first draw


def test_the_records_of_runs_sharing_generators_report_them_once_as_the_runs_folder_does(
    tmp_path,
):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _generator_dir(runs, 0, "b", [1.0, 9.0])
    shared = runs / "phantom-nl1-generators-split0-seed0-b" / "checkpoints"
    for method in ("gdgi", "unimatch_gdgi"):  # two finished runs linking the shared stage
        run = runs / f"phantom-nl1-{method}-split0-seed0-b"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "generator_deformation").symlink_to(
            shared / "generator_deformation", target_is_directory=True
        )
        config = {"method": method, "tag": "b",
                  "preprocess": {"spacing_mm": 2.0, "crop_size": 50}}  # fmt: skip
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "results.json").write_text("{}")
    assert copy_records(runs, records).copied == [
        "phantom-nl1-gdgi-split0-seed0-b",
        "phantom-nl1-unimatch_gdgi-split0-seed0-b",
    ]
    (tmp_path / "from-runs").mkdir()
    (tmp_path / "from-records").mkdir()

    from_runs = diagnostics_section(runs, tmp_path / "from-runs")
    from_records = diagnostics_section(records, tmp_path / "from-records")

    assert from_records == from_runs
    found = find_generator_runs(records)
    assert [run.name for run in found] == ["phantom-nl1-generators-split0-seed0-b"]
    text = "\n".join(from_records)
    assert "| phantom | 1 | joint | b | 1 | GV | 2.00 mm (2.0 %) |" in text  # one run, not two
    assert "| 10 / 20 |" in text and "unfinished" not in text  # done.json is in the record


def test_report_section_is_empty_without_generator_directories(tmp_path):
    (tmp_path / "phantom-nl1-aff-split0-seed0").mkdir()
    (tmp_path / "phantom-nl1-aff-split0-seed0" / "config.yaml").write_text("method: aff\n")
    assert diagnostics_section(tmp_path, tmp_path / "out") == []
    assert math.isclose(BALANCED_ADV_LOSS, 0.6931, abs_tol=1e-4)


def test_generators_trained_in_the_consistency_stage_are_a_generator_run_of_their_own(tmp_path):
    runs = tmp_path / "runs"
    _generator_dir(runs, 0, "b", [1.0])  # the frozen generators of the same tag: 2 mm
    joint = runs / "phantom-nl1-unimatch_gdgi_joint-split0-seed0-b"
    prefixed = {"deformation_field_norm": 3.0, "deformation_field_peak": 6.0,
                "deformation_foreground_lost": 0.1, "intensity_field_norm": 0.02,
                "intensity_field_peak": 0.2}  # fmt: skip
    rows = [{**_row(25), **prefixed}, {**_row(50, 0.7), **prefixed, "deformation_field_norm": 4.0}]
    for row in rows:  # the consistency stage logs the fields only with the kind in front
        for name in ("field_norm", "field_peak", "foreground_lost", "field_magnitude"):
            row.pop(name, None)
    _write_stage(joint / "checkpoints" / "consistency", rows, {"best_step": 50, "iterations": 50})
    config = {"method": "unimatch_gdgi_joint", "tag": "b",
              "preprocess": {"spacing_mm": 2.0, "crop_size": 50}}  # fmt: skip
    (joint / "config.yaml").write_text(yaml.safe_dump(config))
    unimatch = runs / "phantom-nl1-unimatch-split0-seed0"  # a consistency stage without G
    _write_stage(unimatch / "checkpoints" / "consistency", [_row(25)])
    (unimatch / "config.yaml").write_text(yaml.safe_dump({"method": "unimatch"}))
    out = tmp_path / "out"
    out.mkdir()

    traces = read_run_traces(joint, spacing_mm=2.0, crop_size=50)
    assert list(traces) == ["consistency/deformation", "consistency/intensity"]
    assert traces["consistency/intensity"].field_mean.tolist() == [0.02, 0.02]
    assert read_run_traces(unimatch, spacing_mm=2.0, crop_size=50) == {}
    text = "\n".join(diagnostics_section(runs, out))
    # At its chosen step 50: |v| 4 px = 8 mm, 8 % of the 100 mm field of view.
    assert "| phantom | 1 | 0 | 0 | joint | b | GV (joint) | 8.00 mm (8.0 %) | 12.00 mm" in text
    assert "| phantom | 1 | 0 | 0 | joint | b | GI (joint) | 0.020 (2.0 %) |" in text
    assert "| phantom | 1 | joint | b | 1 | GV | 2.00 mm (2.0 %) |" in text  # not averaged in
    assert sorted(p.name for p in out.iterdir()) == [
        "diagnostics-phantom-nl1-joint-b-in-consistency.png",
        "diagnostics-phantom-nl1-joint-b.png",
    ]
    assert "unimatch-split0" not in text
