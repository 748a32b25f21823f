"""Tests for tfaug/runs/rundir.py: run names, config recording, resume, force and the lock."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from holder import run_held_elsewhere
from tiny import tiny_config, write_tiny_yaml

from tfaug.cli import main
from tfaug.config import load_config
from tfaug.runs.rundir import (
    RunDirectory,
    RunDirectoryError,
    RunFinishedError,
    RunInUseError,
    claim_run,
    open_run_directory,
    run_holder,
    run_name,
)


@pytest.fixture
def cfg(tmp_path):
    cfg = load_config("phantom", overrides=["split.n_labeled=3", "split.draw=2", "train.seed=5"])
    cfg.method = "rdri"
    cfg.runs_dir = str(tmp_path / "runs")
    return cfg


def test_run_name_has_dataset_nl_method_split_seed(cfg):
    assert run_name(cfg) == "phantom-nl3-rdri-split2-seed5"
    cfg.train.generator_mode = "independent"
    assert run_name(cfg) == "phantom-nl3-rdri-split2-seed5-independent"


def test_new_directory_records_the_resolved_config(cfg, tmp_path):
    run = open_run_directory(cfg)

    assert run == RunDirectory(tmp_path / "runs" / "phantom-nl3-rdri-split2-seed5")
    assert run.path.is_dir()
    assert yaml.safe_load(run.config_path.read_text(encoding="utf-8")) == cfg.to_dict()
    assert not run.finished
    assert run.stage("pretrain") == run.path / "checkpoints" / "pretrain"
    assert [p.name for p in run.path.iterdir()] == ["config.yaml"]


def test_reopening_with_the_same_config_resumes(cfg):
    run = open_run_directory(cfg)
    marker = run.stage("pretrain") / "ckpt"
    marker.mkdir(parents=True)
    mtime = run.config_path.stat().st_mtime_ns

    again = open_run_directory(cfg)

    assert again == run
    assert marker.is_dir()
    assert run.config_path.stat().st_mtime_ns == mtime


def test_a_different_config_is_refused_naming_the_keys(cfg):
    run = open_run_directory(cfg)
    cfg.train.learning_rate = 0.01
    cfg.augment.mixup_alpha = 0.4

    with pytest.raises(RunDirectoryError) as raised:
        open_run_directory(cfg)

    message = str(raised.value)
    assert str(run.config_path) in message
    assert "augment.mixup_alpha, train.learning_rate" in message
    assert "--force" in message
    assert not isinstance(raised.value, RunFinishedError)


def test_a_finished_run_is_not_touched(cfg):
    run = open_run_directory(cfg)
    (run.results_path).write_text(json.dumps({"summary": {}}))
    before = sorted(p.name for p in run.path.parent.iterdir())

    with pytest.raises(RunFinishedError, match="finished"):
        open_run_directory(cfg)

    assert run.finished
    assert sorted(p.name for p in run.path.parent.iterdir()) == before


def test_force_moves_the_old_run_aside(cfg):
    run = open_run_directory(cfg)
    run.results_path.write_text(json.dumps({"old": True}))

    new = open_run_directory(cfg, force=True)

    assert new == run
    assert not new.finished
    assert yaml.safe_load(new.config_path.read_text(encoding="utf-8")) == cfg.to_dict()
    aside = [p for p in run.path.parent.iterdir() if p.name != run.path.name]
    assert len(aside) == 1
    assert aside[0].name.startswith(f"{run.path.name}.replaced-")
    assert json.loads((aside[0] / "results.json").read_text(encoding="utf-8")) == {"old": True}


def test_force_also_replaces_an_unfinished_run_with_another_config(cfg):
    open_run_directory(cfg)
    cfg.train.learning_rate = 0.01

    run = open_run_directory(cfg, force=True)

    assert (
        yaml.safe_load(run.config_path.read_text(encoding="utf-8"))["train"]["learning_rate"]
        == 0.01
    )


def test_an_unwritable_runs_dir_is_refused(cfg, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cfg.runs_dir = str(tmp_path / "file" / "runs")

    with pytest.raises(RunDirectoryError, match=r"file/runs: cannot create the runs directory"):
        open_run_directory(cfg)


def test_forcing_twice_in_a_row_keeps_both_old_runs(cfg):
    for attempt in range(3):
        run = open_run_directory(cfg, force=True)
        run.results_path.write_text(json.dumps({"attempt": attempt}))

    aside = sorted(p for p in run.path.parent.iterdir() if p.name != run.path.name)
    assert [json.loads((p / "results.json").read_text(encoding="utf-8")) for p in aside] == [
        {"attempt": 0},
        {"attempt": 1},
    ]


def test_a_recorded_config_without_keys_added_since_still_resumes(tmp_path):
    from tiny import tiny_config

    cfg = tiny_config(tmp_path, tmp_path / "runs")
    run = open_run_directory(cfg)
    recorded = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    del recorded["train"]["model_selection"]  # as written by a version without the key
    run.config_path.write_text(yaml.safe_dump(recorded))
    assert open_run_directory(cfg).path == run.path


def test_a_run_another_process_trains_cannot_be_claimed_or_forced_until_it_dies(cfg):
    run = open_run_directory(cfg)
    with claim_run(run):
        assert run_holder(run.path).startswith(f"pid {os.getpid()} on ")
    assert run_holder(run.path) is None  # released at the end of the block
    with run_held_elsewhere(run.path) as holder:
        assert run_holder(run.path).startswith(f"pid {holder.pid} on ")
        in_use = rf"{run.path}: another process .*pid {holder.pid}"
        with pytest.raises(RunInUseError, match=in_use), claim_run(run):
            pytest.fail("claimed a run another process holds")
        before = sorted(p.name for p in run.path.parent.iterdir())
        with pytest.raises(RunInUseError, match="--force would move it from under"):
            open_run_directory(cfg, force=True)
        assert sorted(p.name for p in run.path.parent.iterdir()) == before  # not moved aside
    # The holder was killed: the operating system released its lock.
    assert run_holder(run.path) is None
    with claim_run(run):
        assert run.lock_path.read_text(encoding="utf-8").startswith(f"pid {os.getpid()} on ")


def test_train_refuses_a_run_another_process_trains(tiny_cache, tmp_path, capsys):
    base_cfg, _ = tiny_cache
    cfg = tiny_config(base_cfg.data.cache_dir, tmp_path / "runs", "aff")
    run = open_run_directory(cfg)
    argv = [
        "train", "--config", str(write_tiny_yaml(tmp_path / "tiny.yaml")), "--method", "aff",
        "--cache-dir", str(base_cfg.data.cache_dir), "--runs-dir", str(tmp_path / "runs"),
        "--quiet",
    ]  # fmt: skip
    with run_held_elsewhere(run.path) as holder:
        assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{run.path}: another process is training this run (pid {holder.pid} on " in error
    assert "stop it and re-run this command to resume" in error
    assert not run.checkpoints.exists()  # nothing trained


def test_a_finished_run_with_a_different_config_is_refused_naming_the_keys(cfg):
    run = open_run_directory(cfg)
    run.results_path.write_text(json.dumps({"summary": {}}))
    before = sorted(p.name for p in run.path.parent.iterdir())
    cfg.train.learning_rate = 0.01

    with pytest.raises(RunDirectoryError) as raised:
        open_run_directory(cfg)

    assert not isinstance(raised.value, RunFinishedError)  # train exits 2, not 0
    message = str(raised.value)
    assert f"{run.config_path}: this run is finished with a different config" in message
    assert "(differs in train.learning_rate)" in message
    assert "--tag NAME" in message and "--force" in message
    assert sorted(p.name for p in run.path.parent.iterdir()) == before


def test_location_keys_are_not_compared(cfg, tmp_path, monkeypatch):
    """A run resumes after its runs folder moved, with the cache folder and the dataset folder
    spelled differently; a finished one stays finished."""
    cfg.data.cache_dir = str(tmp_path / "cache")
    run = open_run_directory(cfg)
    marker = run.stage("segmenter") / "ckpt"
    marker.mkdir(parents=True)
    (tmp_path / "runs").rename(tmp_path / "moved")
    cfg.runs_dir = str(tmp_path / "moved")
    cfg.data.cache_dir = f"{tmp_path}/../{tmp_path.name}/cache"
    cfg.data.root = str(tmp_path / "phantom")

    moved = open_run_directory(cfg)

    assert moved.path == tmp_path / "moved" / run.path.name
    assert (moved.stage("segmenter") / "ckpt").is_dir()
    moved.results_path.write_text(json.dumps({"summary": {}}))
    cfg.runs_dir = "moved"  # relative: another spelling again
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunFinishedError):
        open_run_directory(cfg)


def test_train_refuses_to_skip_a_finished_run_of_other_settings(tiny_cache, tmp_path, capsys):
    """A real finished run re-run with other settings: exit 2 naming the keys, not "skipped"."""
    base_cfg, _ = tiny_cache
    argv = [
        "train", "--config", str(write_tiny_yaml(tmp_path / "tiny.yaml")), "--method", "none",
        "--cache-dir", str(base_cfg.data.cache_dir), "--runs-dir", str(tmp_path / "runs"),
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    run = RunDirectory(tmp_path / "runs" / "phantom-nl1-none-split0-seed0")
    results = run.results_path.read_bytes()
    capsys.readouterr()

    assert main([*argv, "--iterations", "7", "--set", "train.learning_rate=0.01"]) == 2

    error = capsys.readouterr().err
    keys = "train.generator_iterations, train.learning_rate, train.pretrain_iterations, "
    assert f"{run.config_path}: this run is finished with a different config" in error
    assert f"(differs in {keys}train.segmenter_iterations)" in error
    assert "Pass --tag NAME to train these settings as a new run beside it" in error
    assert "--force to move it aside and replace it" in error
    assert run.results_path.read_bytes() == results
    assert [p.name for p in run.path.parent.iterdir()] == [run.path.name]
    # The same settings with the runs folder moved: still the finished run, skipped (exit 0).
    (tmp_path / "runs").rename(tmp_path / "moved")
    assert main([*argv[:-3], "--runs-dir", str(tmp_path / "moved"), "--quiet"]) == 0
    assert "this run is finished (results.json exists)" in capsys.readouterr().err
