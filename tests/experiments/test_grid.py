"""The experiment grid: run list, run directory names, sharding, status, skip and failure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from holder import run_held_elsewhere

from tfaug.cli import main
from tfaug.config import ConfigError, load_config
from tfaug.experiments.grid import (
    GridRun,
    GridSpec,
    execute_grid,
    format_plan,
    parse_shard,
    plan_grid,
    shard_runs,
)
from tfaug.runs.rundir import run_name


def _spec(tmp_path: Path, **changes) -> GridSpec:
    spec = GridSpec(
        dataset="phantom",
        n_labeled=(1,),
        methods=("none", "aff", "gdgi"),
        draws=2,
        seeds=3,
        runs_dir=tmp_path / "runs",
    )
    return dataclasses.replace(spec, **changes)


def test_plan_lists_every_method_draw_seed_with_train_directory_names(tmp_path):
    runs = plan_grid(_spec(tmp_path, n_labeled=(1, 3)))
    assert len(runs) == 2 * 3 * 2 * 3
    assert [(r.n_labeled, r.draw, r.seed, r.method) for r in runs[:4]] == [
        (1, 0, 0, "none"),
        (1, 0, 0, "aff"),
        (1, 0, 0, "gdgi"),
        (1, 0, 1, "none"),
    ]
    assert runs[-1].path == tmp_path / "runs" / "phantom-nl3-gdgi-split1-seed2"
    # The directory name is the one `tfaug train` derives from the same config.
    cfg = load_config("phantom", overrides=["method=aff", "split.draw=1", "train.seed=2"])
    assert tmp_path / "runs" / run_name(cfg) in {r.path for r in runs}
    assert {r.status for r in runs} == {"pending"}


def test_plan_carries_generator_mode_iterations_and_overrides_into_the_runs(tmp_path):
    spec = _spec(
        tmp_path, generator_mode="independent", iterations=7, overrides=("train.batch_size=4",)
    )
    run = plan_grid(spec)[0]
    assert run.path.name == "phantom-nl1-none-split0-seed0-independent"
    argv = list(run.argv)
    assert argv[:2] == ["train", "--dataset"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert "train.batch_size=4" in sets
    assert "train.generator_mode=independent" in sets
    assert "train.segmenter_iterations=7" in sets
    assert argv[argv.index("--runs-dir") + 1] == str(tmp_path / "runs")


def test_shards_are_disjoint_balanced_and_cover_the_grid(tmp_path):
    runs = plan_grid(_spec(tmp_path))
    for count in (1, 2, 4, 7):
        shards = [shard_runs(runs, i, count) for i in range(count)]
        names = [r.path.name for shard in shards for r in shard]
        assert sorted(names) == sorted(r.path.name for r in runs)
        assert len(names) == len(set(names))
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
    # Deterministic: a second plan gives the same shard.
    again = plan_grid(_spec(tmp_path))
    assert shard_runs(again, 1, 4) == shard_runs(runs, 1, 4)


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "1/0"])
def test_bad_shard_is_rejected(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_parse_shard_accepts_zero_based_indices():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)


def test_bad_spec_names_every_problem(tmp_path):
    with pytest.raises(ConfigError) as error:
        plan_grid(_spec(tmp_path, methods=("aff", "magic"), seeds=0))
    assert "magic" in str(error.value)
    assert "--seeds" in str(error.value)


def test_more_draws_than_the_config_defines_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="split.draws"):
        plan_grid(_spec(tmp_path, draws=9))


def test_status_follows_the_run_directory(tmp_path):
    runs = plan_grid(_spec(tmp_path, methods=("aff",), draws=1, seeds=3))
    runs[1].path.mkdir(parents=True)
    (runs[1].path / "config.yaml").write_text("{}\n")
    runs[2].path.mkdir(parents=True)
    (runs[2].path / "config.yaml").write_text("{}\n")
    (runs[2].path / "results.json").write_text("{}\n")
    assert [r.status for r in runs] == ["pending", "interrupted", "finished"]
    plan = format_plan(runs)
    assert "interrupted  " in plan
    assert plan.splitlines()[-1] == "3 runs: 1 finished, 1 interrupted, 1 pending"


def test_finished_runs_are_skipped_without_a_subprocess(tmp_path, capsys):
    run = GridRun(1, "aff", 0, 0, tmp_path / "done", ("train", "--no-such-flag"))
    run.path.mkdir()
    (run.path / "results.json").write_text("{}\n")
    assert execute_grid([run]) == []
    assert "finished, skipped" in capsys.readouterr().out
    assert not (run.path / "grid.log").exists()


def test_a_run_another_process_trains_is_skipped_and_listed_as_running(tmp_path, capsys):
    run = GridRun(1, "aff", 0, 0, tmp_path / "busy", ("train", "--no-such-flag"))
    with run_held_elsewhere(run.path) as holder:
        assert run.status == "running"
        assert format_plan([run]).splitlines()[-1] == "1 runs: 1 running"
        assert execute_grid([run]) == []  # skipped, not failed
    assert f"running in another process (pid {holder.pid} on " in capsys.readouterr().out
    assert not (run.path / "grid.log").exists()  # no subprocess was started
    assert run.status == "pending"  # the holder died without writing config.yaml


def test_a_failing_run_is_reported_and_logged(tmp_path):
    run = GridRun(1, "aff", 0, 0, tmp_path / "bad", ("train", "--set", "nosuch.key=1"))
    failed = execute_grid([run], echo=False)
    assert failed == [run]
    assert "unknown key" in (run.path / "grid.log").read_text(encoding="utf-8")


def test_a_shipped_setting_names_the_grids_runs_and_set_comes_after_it(tmp_path, capsys):
    args = ["grid", "--methods", "unimatch", "--runs-dir", str(tmp_path), "--dry-run"]
    for extra, tag in [([], "lrdri"), (["--set", "tag=lrdri_t1"], "lrdri_t1")]:
        assert main([*args, "--config", "lrdri", *extra]) == 0
        listed = capsys.readouterr().out.splitlines()[0].split()[-1]
        assert listed == str(tmp_path / f"phantom-nl1-unimatch-split0-seed0-{tag}")


def test_dry_run_command_lists_the_shard(tmp_path, capsys):
    code = main(
        [
            "grid",
            "--methods",
            "none,aff",
            "--draws",
            "2",
            "--seeds",
            "2",
            "--runs-dir",
            str(tmp_path),
            "--shard",
            "1/3",
            "--dry-run",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[-1] == "3 runs: 3 pending"
    assert [line.split()[-1] for line in lines[:-1]] == [
        str(tmp_path / "phantom-nl1-aff-split0-seed0"),
        str(tmp_path / "phantom-nl1-none-split1-seed0"),
        str(tmp_path / "phantom-nl1-aff-split1-seed1"),
    ]
