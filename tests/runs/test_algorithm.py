"""End-to-end tests of Algorithm 1 through ``python train/run.py`` on the tiny phantom.

One ``gdgi`` run is killed (SIGKILL) in the middle of its first generator stage and re-run:
it must resume and produce every artifact. A third run is a no-op; ``aff`` runs have only
the segmenter stage, and ``--force`` moves a finished run aside. The ``aff`` and ``heavy`` runs
call the same command in-process (``tfaug.cli.main``, which ``train/run.py`` calls): the
process boundary is what the killed ``gdgi`` run tests, and each run saves a TensorFlow start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from tiny import TINY, prepare_tiny_cache, write_tiny_yaml

from tfaug.cli import main

REPO = Path(__file__).resolve().parents[2]
GDGI_STAGES = ["pretrain", "generator_deformation", "generator_intensity", "segmenter"]
JOINT_TAGS = ["seg_loss", "adv_loss", "ld_loss", "d_loss", "field_magnitude", "validation_dice"]
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def command(tmp_path_factory) -> list[str]:
    """The train command on the tiny phantom (shared cache), into a fresh runs folder."""
    base = tmp_path_factory.getbasetemp()
    prepare_tiny_cache(base)
    folder = tmp_path_factory.mktemp("e2e")
    return [
        sys.executable,
        str(REPO / "train" / "run.py"),
        "--config",
        str(write_tiny_yaml(folder / "tiny.yaml")),
        "--cache-dir",
        str(base / "tiny-cache"),
        "--runs-dir",
        str(folder / "runs"),
        "--quiet",
    ]


def _runs_dir(command: list[str]) -> Path:
    return Path(command[command.index("--runs-dir") + 1])


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, capture_output=True, encoding="utf-8", timeout=TIMEOUT_S, env=_env(), cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _run_in_process(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``command`` (a :func:`command` list) through ``tfaug.cli.main`` in this process.

    Returns its stdout; it must exit 0, as :func:`_run` requires of the subprocess.
    """
    assert command[1] == str(REPO / "train" / "run.py")
    code = main(["train", *command[2:]])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _events(tb: Path) -> list[list[tuple[str, int]]]:
    """(tag, step) of every summary, one list per event file (per session), oldest first."""
    files = sorted(tb.glob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime_ns)
    return [
        [
            (value.tag, event.step)
            for event in tf.compat.v1.train.summary_iterator(str(f))
            for value in event.summary.value
        ]
        for f in files
    ]


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def gdgi(command):
    """A gdgi run killed once its first generator stage has a checkpoint, then re-run."""
    run = _runs_dir(command) / "phantom-nl1-gdgi-split0-seed0"
    marker = run / "checkpoints" / "generator_deformation" / "ckpt" / "checkpoint"
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=REPO
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    killed = {
        "stage_done": (run / "checkpoints" / "generator_deformation" / "done.json").exists(),
        "pretrain_mtime": (run / "checkpoints" / "pretrain" / "done.json").stat().st_mtime_ns,
    }
    resumed = _run(command)
    return run, killed, resumed


def test_killed_run_resumes_where_it_stopped(gdgi):
    run, killed, _ = gdgi
    assert not killed["stage_done"], "the kill came after the stage finished; nothing resumed"
    assert (run / "checkpoints" / "pretrain" / "done.json").stat().st_mtime_ns == (
        killed["pretrain_mtime"]
    )
    _, second = _events(run / "tb")  # one event file per session
    # Summaries are written at validations (every 3 steps): a restart from 0 would log step 3.
    after = {step for tag, step in second if tag.startswith("generator_deformation/")}
    assert after == {6, 9}
    assert not any(tag.startswith("pretrain/") for tag, _ in second)  # not trained again
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    history = results["stages"]["generator_deformation"]["history"]
    assert [step for step, _ in history] == [3.0, 6.0, 9.0]


def test_run_writes_every_artifact(gdgi, command):
    run, _, resumed = gdgi
    assert f"run finished: {run}" in resumed.stdout

    recorded = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["method"] == "gdgi"
    assert recorded["train"] == {**recorded["train"], **TINY["train"]}
    for stage in GDGI_STAGES:
        done = json.loads((run / "checkpoints" / stage / "done.json").read_text(encoding="utf-8"))
        assert done["name"] == stage
        assert (run / "checkpoints" / stage / "best").is_dir()
    assert sorted(p.name for p in (run / "figures").glob("*.png")) == [
        "generated_deformation.png",
        "generated_intensity.png",
        "generator_diagnostics.png",
        "test_predictions.png",
    ]
    diagnostics = json.loads((run / "generator_diagnostics.json").read_text(encoding="utf-8"))
    assert list(diagnostics["stages"]) == ["generator_deformation", "generator_intensity"]
    for stage, summary in diagnostics["stages"].items():
        done = json.loads((run / "checkpoints" / stage / "done.json").read_text(encoding="utf-8"))
        assert summary["chosen_step"] == done["best_step"]
        assert summary["last"]["step"] == TINY["train"]["generator_iterations"]
    gi = diagnostics["stages"]["generator_intensity"]  # GV's step 3 row may die with the kill
    assert gi["chosen"]["step"] == gi["chosen_step"]
    metrics = run / "checkpoints" / "generator_deformation" / "metrics.jsonl"
    last = json.loads(metrics.read_text(encoding="utf-8").splitlines()[-1])
    gv = diagnostics["stages"]["generator_deformation"]["last"]
    assert gv["field_peak"] == pytest.approx(last["field_peak"] * 5.0)  # px × 5 mm
    tags = {tag for session in _events(run / "tb") for tag, _ in session}
    for stage in ("generator_deformation", "generator_intensity"):
        for name in JOINT_TAGS:
            assert f"{stage}/{name}" in tags
    assert {"pretrain/seg_loss", "segmenter/seg_loss", "segmenter/validation_dice"} <= tags

    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert list(results["stages"]) == GDGI_STAGES
    assert [r["case_id"] for r in results["test"]] == results["split"]["test"]
    assert len(results["test"]) == TINY["split"]["n_test"]
    for volume in results["test"]:
        assert set(volume["dice"]) == {"RV", "Myo", "LV"}
        assert all(0.0 <= d <= 1.0 for d in volume["dice"].values())
    assert set(results["summary"]) == {"RV", "Myo", "LV", "mean_dice"}
    assert results["summary"]["mean_dice"]["n"] == 2
    assert results["command"] == command[1:]
    assert {"tensorflow", "keras", "numpy", "python", "tfaug"} <= set(results["versions"])
    assert set(GDGI_STAGES) <= set(results["wall_time_s"])
    assert all(t > 0 for t in results["wall_time_s"].values())
    assert list(results["cpu_time_s"]) == GDGI_STAGES
    assert all(t > 0 for t in results["cpu_time_s"].values())


def test_finished_run_is_skipped(gdgi, command):
    run, _, _ = gdgi
    before = _snapshot(run)

    again = _run(command)

    assert "finished" in again.stderr
    assert _snapshot(run) == before


def test_aff_run_has_only_the_segmenter_stage_and_force_moves_it_aside(command, capsys):
    aff = [*command, "--method", "aff"]
    _run_in_process(aff, capsys)
    run = _runs_dir(command) / "phantom-nl1-aff-split0-seed0"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["segmenter"]
    assert json.loads((run / "results.json").read_text(encoding="utf-8"))["stages"].keys() == {
        "segmenter"
    }
    assert [p.name for p in (run / "figures").iterdir()] == ["test_predictions.png"]
    first_results = (run / "results.json").read_text(encoding="utf-8")

    _run_in_process([*aff, "--force"], capsys)

    aside = list(run.parent.glob(f"{run.name}.replaced-*"))
    assert len(aside) == 1
    assert (aside[0] / "results.json").read_text(encoding="utf-8") == first_results
    assert (run / "results.json").is_file()


def test_heavy_run_trains_the_segmenter_with_heavy_augmentation(command, capsys):
    heavy = [
        *command,
        *("--method", "heavy", "--set", "heavy.p_rotation=1.0"),
        *("--set", "split.n_extra_validation=2", "--set", "train.segmenter_iterations=9"),
        *("--set", "train.budget_marks=3"),
    ]
    _run_in_process(heavy, capsys)
    run = _runs_dir(command) / "phantom-nl1-heavy-split0-seed0"
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["stages"].keys() == {"segmenter"}
    # The last and the wide-validation checkpoints are tested beside the chosen one.
    stage = results["stages"]["segmenter"]
    checkpoints = results["checkpoints"]
    assert (checkpoints["last"]["step"], checkpoints["best_wide"]["step"]) == (
        9,
        stage["wide_best_step"],
    )
    # budget_marks=3 of 9 steps validated every 3: the choice made by steps 3 and 6.
    assert [checkpoints[f"best_at_{m}"]["mark"] for m in (3, 6)] == [3, 6]
    assert [m for m, step in stage["budget_steps"] if step > m] == []
    assert len(results["split"]["extra_validation"]) == 2
    assert not set(results["split"]["extra_validation"]) & set(results["split"]["validation"])
    for kept in checkpoints.values():
        assert [v["case_id"] for v in kept["test"]] == results["split"]["test"]
        assert kept["summary"].keys() == results["summary"].keys()
        if kept["step"] == stage["best_step"]:
            assert kept["test"] == results["test"]
    metrics = (run / "checkpoints" / "segmenter" / "metrics.jsonl").read_text(encoding="utf-8")
    assert all("wide_validation_dice" in json.loads(line) for line in metrics.splitlines())
    assert (
        yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["heavy"]["p_rotation"]
        == 1.0
    )
