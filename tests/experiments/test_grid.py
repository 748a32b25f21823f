"""The experiment grid: run list, run directory names, sharding, status, skip and failure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
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
    for run in runs[1:]:
        run.path.mkdir(parents=True)
        (run.path / "config.yaml").write_text(yaml.safe_dump(run.config))
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


def _record(run: GridRun, config: dict, finished: bool = True) -> None:
    """Write ``config`` as the run's config.yaml (and a results.json if ``finished``)."""
    run.path.mkdir(parents=True)
    (run.path / "config.yaml").write_text(yaml.safe_dump(config))
    if finished:
        (run.path / "results.json").write_text("{}\n")


def test_a_run_recorded_with_another_config_is_reported_and_not_trained(tmp_path, capsys):
    """A finished run of 4 iterations is not counted as finished by a grid of 7, nor pooled."""
    finished, interrupted = plan_grid(_spec(tmp_path, methods=("none",), draws=1, seeds=2))
    for run in (finished, interrupted):
        other = plan_grid(_spec(tmp_path, methods=("none",), draws=1, seeds=2, iterations=4))
        _record(run, next(r for r in other if r.path == run.path).config, run is finished)
    runs = plan_grid(_spec(tmp_path, methods=("none",), draws=1, seeds=2, iterations=7))
    keys = "train.generator_iterations, train.pretrain_iterations, train.segmenter_iterations"

    assert [r.status for r in runs] == ["differs", "differs"]
    plan = format_plan(runs)
    assert f"differs      {finished.path}  (differs in {keys})" in plan
    assert plan.splitlines()[-1] == "2 runs: 2 differs"
    assert execute_grid(runs) == runs  # counted as failed: the grid exits 1
    out = capsys.readouterr().out
    assert (
        f"[1/2] {finished.path.name}: not trained: {finished.path}/config.yaml: this run is "
        f"finished with a different config (differs in {keys}); nothing was changed. Pass "
        "--set tag=NAME to train these settings as a new run beside it, or tfaug train "
        "--force to move it aside and replace it." in out
    )
    assert f"[2/2] {interrupted.path.name}: not trained: " in out
    assert "an unfinished run with a different config is here" in out
    assert not list(tmp_path.rglob("grid.log"))  # no subprocess was started


def test_a_record_of_another_machine_and_version_counts_as_finished(tmp_path):
    """Other runs and cache folders, and keys added since the record was written (absent,
    so at their defaults), are not differences."""
    (run,) = plan_grid(_spec(tmp_path, methods=("aff",), draws=1, seeds=1))
    recorded = run.config | {"runs_dir": "/elsewhere/runs"}
    recorded["data"] = recorded["data"] | {"cache_dir": "/elsewhere/cache", "root": "/x"}
    recorded["train"] = {k: v for k, v in recorded["train"].items() if k != "budget_marks"}
    _record(run, recorded)
    assert run.status == "finished"
    assert format_plan([run]).splitlines()[-1] == "1 runs: 1 finished"


RECORDS = Path(__file__).resolve().parents[2] / "docs" / "results" / "phantom-ssl" / "records"
SETTINGS = Path(__file__).resolve().parents[2] / "configs" / "settings"
BENCHMARK_GRIDS = [  # the widest grid() calls of docs/results/phantom-ssl*/run_benchmark.sh
    (1, 5, "unimatch,rdri,heavy", None, ()),
    (1, 5, "gdgi", "bdv3R", ()),
    (1, 5, "unimatch", "lrdri", ()),
    (1, 3, "fixmatch,self_training,aff,none,gdgi", None, ()),
    (1, 5, "unimatch_gdgi,unimatch_gdgi_joint", "bdv3R", ()),
    (1, 3, "unimatch_gdgi", "bdv3R", ("ssl.learned_view=labeled", "tag=bdv3R_labeled")),
    (1, 3, "unimatch_gdgi", "bdv3R", ("ssl.learned_view=unlabeled", "tag=bdv3R_unlabeled")),
    (
        1, 3, "unimatch_gdgi", "bdv3R",
        ("ssl.learned_view=unlabeled", "ssl.strong_views=0", "tag=bdv3R_replace"),
    ),
]  # fmt: skip
BUDGET = ("train.segmenter_iterations=6000", "split.n_extra_validation=6", "train.budget_marks=10")


@pytest.mark.parametrize("variant", ["wide", "hard", "default"])
def test_the_committed_benchmark_records_count_as_finished(variant):
    """The records written by earlier versions on another machine (other runs and cache
    folders) are finished runs of the benchmark's grids, which skip them."""
    found = []
    for n_labeled, draws, methods, setting, extra in BENCHMARK_GRIDS:
        spec = GridSpec(
            dataset="phantom",
            n_labeled=(n_labeled,),
            methods=tuple(methods.split(",")),
            draws=draws,
            seeds=1,
            runs_dir=RECORDS / variant,
            config_file=None if setting is None else SETTINGS / f"{setting}.yaml",
            overrides=(f"phantom.variant={variant}", *BUDGET, *extra),
        )
        found += [(r.path.name, r.status) for r in plan_grid(spec) if r.path.is_dir()]
    assert len(found) >= 15
    assert [name for name, status in found if status != "finished"] == []
