"""The method comparison report on synthetic results.json files, and one real tiny grid."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from scipy import stats

from tfaug.cli import main
from tfaug.experiments import plots
from tfaug.experiments.equal_time import equal_time_runs
from tfaug.experiments.grid import GridSpec, execute_grid, plan_grid
from tfaug.experiments.report import write_report
from tfaug.experiments.results import (
    ReportError,
    best_other_method,
    load_runs,
    missing_runs,
    ordered_methods,
    paired_values,
    wilcoxon_test,
)

STRUCTURES = ("RV", "Myo", "LV")
CASES = ("patient003", "patient008", "patient013", "patient021")
REPO = Path(__file__).resolve().parents[2]


def _known_dice(method: str, draw: int, seed: int, case: int) -> dict[str, float]:
    """Deterministic Dice in [0, 1]: gd beats rd by a varying margin, aff lowest."""
    methods = {"aff": 0.40, "rd": 0.50, "gd": 0.55, "gdgi": 0.58}
    rng = np.random.default_rng([list(methods).index(method), draw, seed, case])
    base = methods[method]
    return {s: float(np.clip(base + 0.1 * rng.standard_normal(), 0, 1)) for s in STRUCTURES}


def _write_run(
    runs_dir: Path,
    method: str,
    draw: int,
    seed: int,
    n_labeled: int = 1,
    mode: str = "joint",
    dice=_known_dice,
    tag: str = "",
    wall_time_s: dict[str, float] | None = None,
    cpu_time_s: dict[str, float | None] | None = None,
) -> None:
    name = f"phantom-nl{n_labeled}-{method}-split{draw}-seed{seed}"
    name += "" if mode == "joint" else f"-{mode}"
    name += f"-{tag}" if tag else ""
    test = []
    for i, case in enumerate(CASES):
        scores = dice(method, draw, seed, i)
        test.append(
            {"case_id": case, "dice": scores, "mean_dice": float(np.mean(list(scores.values())))}
        )
    path = runs_dir / name
    path.mkdir(parents=True)
    content = {
        "dataset": "phantom",
        "method": method,
        "n_labeled": n_labeled,
        "draw": draw,
        "seed": seed,
        "generator_mode": mode,
        "test": test,
    }
    if wall_time_s is not None:
        content["wall_time_s"] = wall_time_s
    if cpu_time_s is not None:
        content["cpu_time_s"] = cpu_time_s
    (path / "results.json").write_text(json.dumps(content))
    if tag:  # the report reads the tag from the run's config.yaml, as a run records it
        (path / "config.yaml").write_text(yaml.safe_dump({"method": method, "tag": tag}))


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    """3 methods × 2 draws × 2 seeds × 4 volumes, N_L = 1, joint."""
    runs = tmp_path / "runs"
    for method in ("aff", "rd", "gd"):
        for draw in range(2):
            for seed in range(2):
                _write_run(runs, method, draw, seed)
    return runs


def _all_values(method: str, structure: str) -> np.ndarray:
    return np.array(
        [
            _known_dice(method, d, s, c)[structure]
            for d in range(2)
            for s in range(2)
            for c in range(len(CASES))
        ]
    )


def _row(report: str, first_cell: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} in the report")


def test_table_gives_mean_std_over_runs_and_volumes(runs_dir, tmp_path):
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    row = _row(report, "gd")
    for column, structure in enumerate(STRUCTURES, start=1):
        values = _all_values("gd", structure)
        assert row[column] == f"{values.mean():.3f} ({values.std():.3f})"
    assert row[-3:] == ["4", "16", "–"]  # runs, volumes, no recorded training time
    assert (
        "Grid complete: methods ['aff', 'rd', 'gd'] × draws [0, 1] × seeds [0, 1], 12 runs."
        in report
    )
    # The paper's order: aff before rd before gd.
    assert report.index("| aff |") < report.index("| rd |") < report.index("| gd |")


def test_table_gives_the_median_training_time_of_each_method(tmp_path):
    # Every recorded stage counts (pre-training and shared generator stages too); the last
    # session's own total does not.
    runs = tmp_path / "runs"
    for draw, generators in enumerate((300.0, 420.0, 1800.0)):
        stages = {"pretrain": 60.0, "generator_deformation": generators, "segmenter": 120.0}
        _write_run(runs, "gd", draw, 0, wall_time_s={**stages, "this_session_total": 9.0})
        _write_run(runs, "rd", draw, 0, wall_time_s={"segmenter": 90.0 + draw})
    report = write_report(runs, tmp_path / "out").read_text(encoding="utf-8")
    assert _row(report, "gd")[-1] == "10.0"  # median of 8, 10 and 33 min
    assert _row(report, "rd")[-1] == "1.5"  # median of 90, 91 and 92 s


def test_wilcoxon_matches_scipy_on_the_pairs(runs_dir):
    runs = load_runs(runs_dir)
    x, y = paired_values(runs, "gd", "rd", "RV")
    assert len(x) == 16
    # Pairs match by (volume, draw, seed): rebuild them independently, in the same key order.
    keys = sorted((case, d, s) for case in range(len(CASES)) for d in range(2) for s in range(2))
    np.testing.assert_allclose(x, [_known_dice("gd", d, s, c)["RV"] for c, d, s in keys])
    np.testing.assert_allclose(y, [_known_dice("rd", d, s, c)["RV"] for c, d, s in keys])
    expected = stats.wilcoxon(x, y)
    test = wilcoxon_test(runs, "gd", "rd", "RV")
    assert test.n == 16
    assert test.p == pytest.approx(expected.pvalue)
    assert test.statistic == pytest.approx(expected.statistic)
    assert test.difference == pytest.approx(np.mean(x - y))


def test_per_run_test_pairs_the_runs_mean_dice_by_draw_and_seed(runs_dir, tmp_path):
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")

    def run_mean(method, draw, seed):
        volumes = [_known_dice(method, draw, seed, case).values() for case in range(len(CASES))]
        return np.mean([np.mean(list(dice)) for dice in volumes])

    runs = [(draw, seed) for draw in range(2) for seed in range(2)]
    gd = np.array([run_mean("gd", *run) for run in runs])
    rd = np.array([run_mean("rd", *run) for run in runs])
    # The per-run table's row: its second cell is the number of runs (the per-volume rows
    # have a structure there).
    assert _row(report, "gd vs rd | 4") == [
        "gd vs rd",
        "4",
        str(int(np.sum(gd > rd))),
        f"{np.mean(gd - rd):+.3f}",
        f"{stats.wilcoxon(gd, rd).pvalue:.2g}",
    ]


def test_report_states_the_tests_and_skips_missing_methods(runs_dir, tmp_path):
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    runs = load_runs(runs_dir)
    p = wilcoxon_test(runs, "gd", "rd", "Myo").p
    assert "| gd vs rd | Myo | 16 |" in report
    p_rv = wilcoxon_test(runs, "gd", "rd", "RV").p
    assert _row(report, "gd vs rd")[-1] == f"{p_rv:.2g}" + (" *" if p_rv < 0.05 else "")
    assert f"{p:.2g}" in report
    assert "gi vs ri: skipped, no runs of gi, ri." in report
    assert "gdgi vs rd: skipped, no runs of gdgi." in report


def test_gdgi_is_tested_against_the_best_related_method(runs_dir, tmp_path):
    for draw in range(2):
        for seed in range(2):
            _write_run(runs_dir, "gdgi", draw, seed)
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    assert "Best related method (highest mean foreground Dice, no generators): rd." in report
    x, y = paired_values(load_runs(runs_dir), "gdgi", "rd", "mean")
    expected = stats.wilcoxon(x, y).pvalue
    row = _row(report, "gdgi vs rd | mean (fg)")
    assert row[2] == "16"
    assert row[-1] == f"{expected:.2g}" + (" *" if expected < 0.05 else "")


def test_best_other_method_excludes_the_proposed_ones(runs_dir):
    runs = load_runs(runs_dir)
    assert best_other_method(runs) == "rd"  # gd uses a learned generator: not related work
    assert best_other_method([r for r in runs if r.method != "rd"]) == "aff"
    assert best_other_method([r for r in runs if r.method == "gd"]) is None


def test_identical_methods_give_a_note_instead_of_a_p_value(tmp_path):
    def same(method, draw, seed, case):
        return {s: 0.5 + 0.01 * case for s in STRUCTURES}

    for method in ("rd", "gd"):
        _write_run(tmp_path, method, 0, 0, dice=same)
    test = wilcoxon_test(load_runs(tmp_path), "gd", "rd", "LV")
    assert (test.n, test.p, test.difference) == (4, None, 0.0)
    assert "zero" in test.note


def test_missing_and_unfinished_runs_are_flagged(runs_dir, tmp_path):
    (runs_dir / "phantom-nl1-rd-split1-seed0" / "results.json").unlink()
    (runs_dir / "phantom-nl1-rd-split1-seed0" / "config.yaml").write_text("{}\n")
    shared = runs_dir / "phantom-nl1-generators-split0-seed0"  # never has results: not a run
    shared.mkdir()
    (shared / "config.yaml").write_text("method: generators\n")
    assert missing_runs(load_runs(runs_dir)) == [("rd", 1, 0)]
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    assert (
        "**Missing runs** (1 of the grid methods ['aff', 'rd', 'gd'] × draws [0, 1] × seeds [0, 1])"
        in report
    )
    assert "rd draw 1 seed 0" in report
    assert "**Unfinished runs** (not counted): phantom-nl1-rd-split1-seed0" in report
    assert _row(report, "rd")[-3:-1] == ["3", "12"]


def test_figures_are_written_and_referenced(runs_dir, tmp_path):
    out = tmp_path / "out"
    report = write_report(runs_dir, out).read_text(encoding="utf-8")
    for name in ("phantom-nl1-joint-box.png", "phantom-nl1-joint-subjects.png"):
        assert f"]({name})" in report
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100


def test_joint_vs_independent_is_tested_per_volume_draw_and_seed(runs_dir, tmp_path):
    def weaker(method, draw, seed, case):
        return {s: v - 0.01 * (1 + case) for s, v in _known_dice(method, draw, seed, case).items()}

    for draw in range(2):
        for seed in range(2):
            _write_run(runs_dir, "gd", draw, seed, mode="independent", dice=weaker)
    _write_run(runs_dir, "gd", 5, 0, mode="independent")  # no joint partner: not paired
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    joint = _all_values("gd", "Myo")
    independent = joint - np.tile(0.01 * (1 + np.arange(len(CASES))), 4)
    expected = stats.wilcoxon(joint, independent)
    cells = _row(report, "gd (phantom, N_L = 1) joint vs independent | Myo")
    assert cells[2:] == [
        str(len(joint)),
        f"{np.mean(joint - independent):+.3f}",
        f"{expected.statistic:.1f}",
        f"{expected.pvalue:.2g} *",
    ]
    # Per run: joint is ahead in all four paired runs, by the mean of 0.01·(1..4); the
    # unpaired independent run (draw 5) is left out.
    per_run = _row(report, "gd (phantom, N_L = 1) joint vs independent | 4")
    assert per_run[2:] == ["4", "+0.025", f"{stats.wilcoxon([1, 2, 3, 4]).pvalue:.2g}"]


def test_dice_vs_nl_and_joint_vs_independent_sections(runs_dir, tmp_path):
    for draw in range(2):
        _write_run(runs_dir, "gd", draw, 0, n_labeled=3)
        _write_run(runs_dir, "gd", draw, 0, mode="independent")
    out = tmp_path / "out"
    report = write_report(runs_dir, out).read_text(encoding="utf-8")
    assert "## phantom: Dice against N_L (joint generators)" in report
    assert (out / "phantom-dice-vs-nl.png").is_file()
    nl3 = np.array(
        [np.mean(list(_known_dice("gd", d, 0, c).values())) for d in range(2) for c in range(4)]
    )
    assert f"{nl3.mean():.3f} ({nl3.std():.3f}), 2 runs / 8 vol." in report
    assert "## Joint vs independent generator training (Table I)" in report
    lines = [line for line in report.splitlines() if line.startswith("| phantom | 1 | gd |")]
    assert [line.split("|")[4].strip() for line in lines] == ["joint", "independent"]
    assert lines[0].rstrip(" |").endswith("4 | 16")
    assert lines[1].rstrip(" |").endswith("2 | 8")
    # Each setting has its own section; the independent one is missing rd and aff.
    assert "## phantom, N_L = 1, independent generators" in report
    assert "gd vs rd: skipped, no runs of rd." in report


def test_empty_or_malformed_runs_directory_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="no finished run"):
        write_report(tmp_path, tmp_path / "out")
    bad = tmp_path / "phantom-nl1-aff-split0-seed0"
    bad.mkdir()
    (bad / "results.json").write_text('{"method": "aff"}')
    with pytest.raises(ReportError) as error:
        write_report(tmp_path, tmp_path / "out")
    assert f"{bad / 'results.json'}: missing key 'test'" in str(error.value)
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2


def _improved_gd(method, draw, seed, case):
    """The tagged gd runs: gdgi's known Dice, so they differ from the untagged gd runs."""
    return _known_dice("gdgi", draw, seed, case)


def _p_cell(runs, a: str, b: str, structure: str) -> str:
    p = stats.wilcoxon(*paired_values(runs, a, b, structure)).pvalue
    return f"{p:.2g}" + (" *" if p < 0.05 else "")


def test_tagged_runs_are_their_own_method_label_tested_and_plotted(runs_dir, tmp_path, monkeypatch):
    for draw in range(2):
        for seed in range(2):
            _write_run(runs_dir, "gd", draw, seed, dice=_improved_gd, tag="b")
    boxes = {}
    save_box_plots = plots.save_box_plots

    def record_box_plots(values, structures, path, title):  # the real plot, values kept
        boxes.update(values)
        return save_box_plots(values, structures, path, title)

    monkeypatch.setattr(plots, "save_box_plots", record_box_plots)
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")

    runs = load_runs(runs_dir)
    assert {r.label for r in runs} == {"aff", "rd", "gd", "gd [b]"}
    assert report.index("| gd |") < report.index("| gd [b] |")  # side by side
    values = _all_values("gd", "RV")  # the untagged row is not merged with the tagged runs
    assert _row(report, "gd")[1] == f"{values.mean():.3f} ({values.std():.3f})"
    assert _row(report, "gd [b]")[-3:-1] == ["4", "16"]
    assert "Grid complete" in report
    for baseline in ("rd", "gd"):
        row = _row(report, f"gd [b] vs {baseline} | RV")
        assert row[2] == "16" and row[-1] == _p_cell(runs, "gd [b]", baseline, "RV")
    assert list(boxes) == ["aff", "rd", "gd", "gd [b]"]
    np.testing.assert_allclose(
        boxes["gd [b]"]["RV"],
        [
            _improved_gd("gd", d, s, c)["RV"]
            for d in range(2)
            for s in range(2)
            for c in range(len(CASES))
        ],
    )


def test_ordered_methods_put_tagged_labels_after_their_method():
    labels = ["gdgi [b]", "zeta", "aff", "gdgi", "gdgi [a]", "rdri"]
    assert ordered_methods(labels) == ["aff", "rdri", "gdgi", "gdgi [a]", "gdgi [b]", "zeta"]


def test_compare_option_adds_a_test_and_rejects_unknown_labels(runs_dir, tmp_path, capsys):
    _write_run(runs_dir, "gd", 0, 0, dice=_improved_gd, tag="b")
    out = tmp_path / "out"
    compare = ["--compare", "gd [b],aff", "--compare", "gd [b],rd"]  # the second is automatic
    assert main(["report", str(runs_dir), "--out", str(out), *compare]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    row = _row(report, "gd [b] vs aff | mean (fg)")
    assert row[2] == "4"  # draw 0 seed 0 only: 4 paired volumes
    assert row[-1] == _p_cell(load_runs(runs_dir), "gd [b]", "aff", "mean")
    assert report.count("| gd [b] vs rd | RV |") == 1

    assert main(["report", str(runs_dir), "--out", str(out), "--compare", "gd [x],aff"]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert main(["report", str(runs_dir), "--out", str(out), "--compare", "gd"]) == 2
    assert "two method labels separated by a comma" in capsys.readouterr().err


def test_report_has_generator_diagnostics_after_the_existing_sections(runs_dir, tmp_path):
    checkpoints = runs_dir / "phantom-nl1-generators-split0-seed0" / "checkpoints"
    (checkpoints / "generator_deformation").mkdir(parents=True)
    (checkpoints / "generator_intensity").mkdir()
    row = {
        "step": 5,
        "field_norm": 0.25,
        "field_peak": 1.0,
        "foreground_lost": 0.02,
        "d_acc_real": 1.0,
        "d_acc_fake": 0.75,
        "adv_loss": 4.0,
        "validation_dice": 0.5,
        "selection_score": 0.5,
    }
    (checkpoints / "generator_deformation" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    config = {"method": "generators", "preprocess": {"spacing_mm": 2.0, "crop_size": 40}}
    (checkpoints.parent / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"

    report = write_report(runs_dir, out).read_text(encoding="utf-8")

    assert report.index("## phantom, N_L = 1, joint generators") < report.index(
        "## Generator diagnostics"
    )
    # 0.25 px × 2 mm = 0.50 mm = 0.6 % of the 80 mm field of view; GI has no metrics.
    assert "| GV | 0.50 mm (0.6 %) | 2.00 mm (2.5 %) | 2.0 % | 100 / 75 % | 4.00 |" in report
    assert "| GI | no diagnostics (no metrics.jsonl) |" in report
    assert "](diagnostics-phantom-nl1-joint.png)" in report
    assert matplotlib.image.imread(out / "diagnostics-phantom-nl1-joint.png").ndim == 3
    assert "Unfinished runs" not in report


TINY_CONFIG = """\
phantom: {subjects: 12}
preprocess: {crop_size: 32, spacing_mm: 5.0, n4: false}
split: {n_unlabeled: 3, n_test: 2, n_validation: 1, draws: 1}
model:
  unet_filters: [4, 8, 8]
  generator_filters: [8, 4, 4]
  generator_image_filters: 4
  discriminator_filters: [4, 8, 8]
  discriminator_units: 8
  z_dim: 8
train: {batch_size: 4, pretrain_iterations: 2, generator_iterations: 2,
        segmenter_iterations: 4, validate_every: 2, graph_optimization: false}
"""


def test_tiny_real_grid_then_report(tiny_cache, tmp_path):
    # The session's tiny phantom cache: TINY_CONFIG's phantom and preprocessing are the same
    # (the split is not part of the cache), so the runs reuse it instead of generating it.
    cache_dir = tiny_cache[0].data.cache_dir
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    runs = tmp_path / "runs"
    grid = [
        sys.executable,
        str(REPO / "train" / "grid.py"),
        "--config",
        str(config),
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(runs),
        "--methods",
        "none,aff",
        "--draws",
        "1",
        "--seeds",
        "1",
    ]
    first = subprocess.run(grid, cwd=REPO, capture_output=True, encoding="utf-8", timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count(": done") == 2
    # The same grid again: both runs are finished and skipped without a subprocess.
    spec = GridSpec("phantom", (1,), ("none", "aff"), 1, 1, runs, config_file=config)
    assert [r.status for r in plan_grid(spec)] == ["finished", "finished"]
    assert execute_grid(plan_grid(spec), echo=False) == []

    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    results = json.loads(
        (runs / "phantom-nl1-aff-split0-seed0" / "results.json").read_text(encoding="utf-8")
    )
    row = _row(report, "aff")
    assert row[1].startswith(f"{results['summary']['RV']['mean']:.3f} (")
    assert row[-3:-1] == ["1", "2"]  # one run, two test volumes
    stages = {k: v for k, v in results["wall_time_s"].items() if k != "this_session_total"}
    assert row[-1] == f"{sum(stages.values()) / 60:.1f}"  # its training time, in minutes
    assert "| none |" in report
    assert "gd vs rd: skipped" in report
    assert (out / "phantom-nl1-joint-box.png").is_file()

    # The runs' records (no weights) give the same report, and a grid over a runs folder
    # restored from them skips both runs.
    records = tmp_path / "records"
    assert main(["records", str(runs), str(records)]) == 0
    assert not list(records.rglob("*.weights.h5"))
    from_records = tmp_path / "report-from-records"
    assert main(["report", str(records), "--out", str(from_records)]) == 0
    same = (from_records / "report.md").read_text(encoding="utf-8")
    assert same == report.replace(f"`{runs}`", f"`{records}`")
    restored = dataclasses.replace(spec, runs_dir=tmp_path / "restored")
    assert main(["records", str(records), str(restored.runs_dir)]) == 0
    assert [r.status for r in plan_grid(restored)] == ["finished", "finished"]


def _add_final_stage(run: Path, chosen_step: int, kept: dict, curve: list[tuple]) -> None:
    """Give a synthetic run a final stage (``segmenter``), its metrics.jsonl and its other
    tested checkpoints: ``kept`` maps a checkpoint name to (step, Dice of every volume)."""
    content = json.loads((run / "results.json").read_text())
    content["stages"] = {
        "segmenter": {"name": "segmenter", "iterations": 100, "best_step": chosen_step}
    }
    content["checkpoints"] = {
        name: {"step": step, "test": [_volume(case, dice) for case in CASES]}
        for name, (step, dice) in kept.items()
    }
    (run / "results.json").write_text(json.dumps(content))
    rows = [{"step": s, "validation_dice": v, "wide_validation_dice": w} for s, v, w in curve]
    stage = run / "checkpoints" / "segmenter"
    stage.mkdir(parents=True)
    (stage / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _volume(case: str, dice: float) -> dict:
    """One test volume of results.json whose every structure scores ``dice``."""
    return {"case_id": case, "dice": dict.fromkeys(STRUCTURES, dice), "mean_dice": dice}


def _selection_row(report: str, method: str) -> list[str]:
    section = report.split("### Budget and model selection", 1)[1]
    return _row(section, method)


def test_selection_section_checks_the_plateau_and_ranks_by_each_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    flat = [(10 * i, 0.5, 0.6) for i in range(1, 11)]
    rising = [(10 * i, 0.05 * i, 0.05 * i) for i in range(1, 11)]
    for draw in range(2):
        _write_run(runs, "aff", draw, 0, dice=lambda *_: dict.fromkeys(STRUCTURES, 0.6))
        _write_run(runs, "rd", draw, 0, dice=lambda *_: dict.fromkeys(STRUCTURES, 0.5))
        _add_final_stage(
            runs / f"phantom-nl1-aff-split{draw}-seed0", 40, {"last": (100, 0.3)}, flat
        )
        _add_final_stage(
            runs / f"phantom-nl1-rd-split{draw}-seed0",
            90,
            {"last": (100, 0.7), "best_wide": (100, 0.7)},
            rising,
        )
    out = tmp_path / "out"
    report = write_report(runs, out).read_text(encoding="utf-8")

    aff = _selection_row(report, "aff")
    rd = _selection_row(report, "rd")
    assert aff[1:5] == ["2", "100", "40", "+0.000 ✓"]  # flat: the budget was enough
    assert rd[1:5] == ["2", "100", "90", "+0.100"]  # last fifth 0.475 vs 0.375: still rising
    assert aff[5:] == ["0.600 (1)", "0.300 (2)", "–"]  # the ranking flips with the last step
    assert rd[5:] == ["0.500 (2)", "0.700 (1)", "0.700 (1)"]
    assert "](phantom-nl1-joint-validation.png)" in report
    assert matplotlib.image.imread(out / "phantom-nl1-joint-validation.png").ndim == 3


def test_runs_without_final_stage_records_have_no_selection_section(runs_dir, tmp_path):
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    assert "Budget and model selection" not in report


def _timed_pairs(runs: Path) -> None:
    """unimatch and aff runs of 3 draws. Wall clock: unimatch 1000 s, 900 of them in its
    100-step final stage, best_at_40 (reached at 460 s) scores 0.4 and best_at_60 (640 s)
    0.7; aff scores 0.6 in 500 s. CPU time: the same for unimatch, 700 s for aff."""
    for draw in range(3):
        times = {"segmenter": 900.0, "pretrain": 100.0, "this_session_total": 5.0}
        _write_run(
            runs,
            "unimatch",
            draw,
            0,
            dice=lambda *_: dict.fromkeys(STRUCTURES, 0.8),
            wall_time_s=times,
            cpu_time_s={"segmenter": 900.0, "pretrain": 100.0},
        )
        _write_run(
            runs,
            "aff",
            draw,
            0,
            dice=lambda *_: dict.fromkeys(STRUCTURES, 0.6),
            wall_time_s={"segmenter": 500.0},
            cpu_time_s={"segmenter": 700.0},
        )
        unimatch = runs / f"phantom-nl1-unimatch-split{draw}-seed0"
        _add_final_stage(unimatch, 90, {"best_at_40": (30, 0.4), "best_at_60": (50, 0.7)}, [])
        _add_final_stage(runs / f"phantom-nl1-aff-split{draw}-seed0", 90, {}, [])


def test_equal_wall_time_section_cuts_the_costlier_run_of_each_pair(tmp_path):
    runs = tmp_path / "runs"
    _timed_pairs(runs)
    report = write_report(runs, tmp_path / "out", [("unimatch", "aff")]).read_text("utf-8")

    section = report.split("### Equal wall time", 1)[1]
    row = _row(section, "unimatch vs aff")
    # At equal iterations unimatch leads by 0.2; at aff's time it had reached mark 40: −0.2.
    assert row[1:4] == ["3", "unimatch in 3, at 40%", "-0.200"]
    assert row[5:7] == ["0", "-0.200"]
    assert _row(report, "unimatch vs aff")[3] == "+0.200"
    assert "median wall-clock time" in report


def test_by_cpu_time_the_pairs_are_cut_at_the_cpu_seconds(tmp_path):
    runs = tmp_path / "runs"
    _timed_pairs(runs)
    out = tmp_path / "out"
    assert (
        main(
            ["report", str(runs), "--out", str(out), "--compare", "unimatch,aff", "--clock", "cpu"]
        )
        == 0
    )
    report = (out / "report.md").read_text("utf-8")

    assert "### Equal wall time" not in report
    section = report.split("### Equal CPU time", 1)[1]
    # aff's 700 CPU seconds reach unimatch's mark 60 (640 s): 0.7 against 0.6.
    assert _row(section, "unimatch vs aff")[1:4] == ["3", "unimatch in 3, at 60%", "+0.100"]
    assert _row(report, "aff")[-1] == "11.7"  # minutes of CPU time
    assert "median CPU time" in report


def test_time_section_gives_the_dice_by_mark_against_the_training_time(tmp_path):
    runs = tmp_path / "runs"
    _timed_pairs(runs)
    out = tmp_path / "out"
    report = write_report(runs, out, clock="cpu").read_text("utf-8")

    section = report.split("### Test Dice against CPU time", 1)[1]
    assert "| method | runs | 40% | 60% | 100% |" in section
    # unimatch's marks 40 and 60 at 100 + 900 x 0.4 and 0.6 CPU seconds, its end at 1000 s;
    # aff kept no marks, so it has no row.
    assert _row(section, "unimatch")[1:] == ["3", "0.400 (7.7)", "0.700 (10.7)", "0.800 (16.7)"]
    assert "| aff |" not in section
    assert (out / "phantom-nl1-joint-time.png").is_file()
    assert "(phantom-nl1-joint-time.png)" in section


def test_a_run_without_cpu_times_has_no_cpu_training_time(tmp_path):
    _write_run(tmp_path, "aff", 0, 0, wall_time_s={"segmenter": 60.0})
    _write_run(
        tmp_path,
        "rd",
        0,
        0,
        wall_time_s={"pretrain": 6.0, "segmenter": 60.0},
        cpu_time_s={"pretrain": None, "segmenter": 50.0},
    )  # finished before CPU time
    assert [r.training_s for r in load_runs(tmp_path, "cpu")] == [None, None]
    notes = equal_time_runs(load_runs(tmp_path, "cpu"), "aff", "rd", "cpu")[2]
    assert notes == [
        "phantom-nl1-aff-split0-seed0 / phantom-nl1-rd-split0-seed0: no CPU time recorded"
    ]
    assert [r.training_s for r in load_runs(tmp_path)] == [60.0, 66.0]
    with pytest.raises(ReportError, match="clock 'gpu': expected one of"):
        load_runs(tmp_path, "gpu")


def test_runs_without_budget_marks_have_no_equal_time_section(runs_dir, tmp_path):
    report = write_report(runs_dir, tmp_path / "out").read_text(encoding="utf-8")
    assert "### Equal wall time" not in report
    assert "### Test Dice against" not in report
