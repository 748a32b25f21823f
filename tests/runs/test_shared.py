"""Generator stages shared between the generator methods of one (dataset, N_L, draw, seed)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import prepare_tiny_cache, tiny_config, write_tiny_yaml

from tfaug.cli import main
from tfaug.deploy.export import ExportError, load_run_models
from tfaug.runs.algorithm import Algorithm
from tfaug.runs.rundir import RunDirectory, RunDirectoryError, open_run_directory, run_name
from tfaug.runs.shared import exclusive_lock, generator_config, open_generator_directory
from tfaug.training.builders import build_generator
from tfaug.training.loop import StageResult


def test_generator_config_is_the_same_for_every_generator_method(tmp_path):
    configs = []
    for method in ("gd", "gi", "gdgi", "gdgi_mixup"):
        cfg = tiny_config(tmp_path, tmp_path, method)
        cfg.train.segmenter_iterations = 77
        cfg.augment.mixup_alpha = 0.4
        cfg.augment.elastic_sigma_mm = 3.0
        configs.append(generator_config(cfg))
    assert all(c == configs[0] for c in configs)
    assert run_name(configs[0]) == "phantom-nl1-generators-split0-seed0"


@pytest.mark.parametrize(
    "change",
    [
        lambda c: setattr(c.train, "lambda_ld", 0.01),
        lambda c: setattr(c.train, "generator_mode", "independent"),
        lambda c: setattr(c.augment, "rotation_degrees", 5.0),
        lambda c: setattr(c.split, "draw", 1),
        lambda c: setattr(c.augment, "random_before_generators", True),
    ],
)
def test_settings_the_generators_depend_on_change_the_generator_config(tmp_path, change):
    cfg = tiny_config(tmp_path, tmp_path)
    other = tiny_config(tmp_path, tmp_path)
    change(other)
    assert generator_config(cfg) != generator_config(other)


def test_random_augmentation_parameters_matter_only_when_the_generators_see_them(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path)
    other = tiny_config(tmp_path, tmp_path)
    other.augment.elastic_sigma_mm = 3.0
    assert generator_config(cfg) == generator_config(other)
    cfg.augment.random_before_generators = other.augment.random_before_generators = True
    assert generator_config(cfg) != generator_config(other)
    assert generator_config(other).augment.elastic_sigma_mm == 3.0


def test_stages_are_linked_and_existing_stage_folders_are_kept(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "runs", "gd")
    run = open_run_directory(cfg)
    (run.stage("pretrain") / "ckpt").mkdir(parents=True)  # a run from before sharing
    shared = open_generator_directory(cfg, run, ["pretrain", "generator_deformation"])
    assert not run.stage("pretrain").is_symlink()
    link = run.stage("generator_deformation")
    assert link.is_symlink() and link.resolve() == shared.stage("generator_deformation").resolve()
    recorded = yaml.safe_load(shared.config_path.read_text(encoding="utf-8"))
    assert recorded["method"] == "generators"


def test_a_different_generator_config_in_the_shared_folder_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path / "runs", "gd")
    open_generator_directory(cfg, open_run_directory(cfg), ["pretrain"])
    other = tiny_config(tmp_path, tmp_path / "runs", "gi")
    shared_path = tmp_path / "runs" / "phantom-nl1-generators-split0-seed0" / "config.yaml"
    recorded = yaml.safe_load(shared_path.read_text(encoding="utf-8"))
    recorded["train"]["lambda_ld"] = 0.5  # tamper: the folder now holds another config
    shared_path.write_text(yaml.safe_dump(recorded))
    with pytest.raises(RunDirectoryError, match="train.lambda_ld"):
        open_generator_directory(other, open_run_directory(other), ["pretrain"])


def test_the_lock_is_exclusive_across_processes(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from tfaug.runs.shared import exclusive_lock\n"
            f"with exclusive_lock(Path({str(lock)!r})):\n"
            "    print('held', flush=True); time.sleep(3)",
        ],
        stdout=subprocess.PIPE,
        encoding="utf-8",
    )
    assert holder.stdout.readline().strip() == "held"
    with open(lock, "a+") as handle, pytest.raises(BlockingIOError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    started = time.perf_counter()
    with exclusive_lock(lock):
        waited = time.perf_counter() - started
    holder.wait(timeout=30)
    assert waited > 0.5


def test_a_second_generator_method_reuses_the_trained_stages(tiny_cache, tmp_path):
    base_cfg, _ = tiny_cache
    stamps = {}
    for method, kinds in (("gd", ("deformation",)), ("gi", ("intensity",))):
        cfg = tiny_config(base_cfg.data.cache_dir, tmp_path / "runs", method)
        cfg.train.generator_iterations = 30
        cfg.train.generator_patience = 3  # the first validation without a new best ends it
        algorithm = Algorithm(cfg, open_run_directory(cfg), progress=False)
        algorithm.prepare()
        algorithm.train_generators(kinds)
        for kind in kinds:
            _assert_the_patience_ended(algorithm.stages[f"generator_{kind}"], budget=30)
        assert algorithm.stages["pretrain"].budget == 2  # not a generator stage: no patience
        shared = tmp_path / "runs" / "phantom-nl1-generators-split0-seed0" / "checkpoints"
        stamps[method] = {
            stage.name: (stage / "done.json").stat().st_mtime_ns
            for stage in shared.iterdir()
            if (stage / "done.json").exists()
        }
    assert set(stamps["gd"]) == {"pretrain", "generator_deformation"}
    assert set(stamps["gi"]) == {"pretrain", "generator_deformation", "generator_intensity"}
    assert stamps["gi"]["pretrain"] == stamps["gd"]["pretrain"]  # not trained again
    assert stamps["gi"]["generator_deformation"] == stamps["gd"]["generator_deformation"]


def _assert_the_patience_ended(stage: StageResult, budget: int) -> None:
    """The stage stopped where a patience of one validation stops on its own history: at the
    first validation without a new best (or ran its budget)."""
    best, stop = -1.0, budget
    for step, score in stage.history:
        if score > best:
            best = score
        else:
            stop = int(step)
            break
    assert (stage.iterations, stage.budget) == (stop, budget)
    assert stage.stopped_early == (stop < budget)
    assert stage.history[-1][0] == stop


def test_the_shared_folder_of_a_moved_runs_folder_is_the_same_config(tmp_path):
    """Location keys (runs folder, cache folder) are not part of the compared config."""
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", "gd")
    open_generator_directory(cfg, open_run_directory(cfg), ["pretrain"])
    (tmp_path / "runs").rename(tmp_path / "moved")
    moved = tiny_config(f"{tmp_path}/../{tmp_path.name}/cache", tmp_path / "moved", "gi")
    shared = open_generator_directory(moved, open_run_directory(moved), ["pretrain"])
    assert shared.path == tmp_path / "moved" / "phantom-nl1-generators-split0-seed0"


@pytest.fixture(scope="module")
def finished_gd(tmp_path_factory) -> tuple[Path, list[str]]:
    """A real finished tiny ``gd`` run: its runs folder and the train arguments (no method)."""
    base = tmp_path_factory.getbasetemp()
    prepare_tiny_cache(base)
    here = tmp_path_factory.mktemp("finished-gd")
    args = [
        "--config", str(write_tiny_yaml(here / "tiny.yaml")), "--cache-dir",
        str(base / "tiny-cache"), "--quiet",
    ]  # fmt: skip
    assert main(["train", *args, "--method", "gd", "--runs-dir", str(here / "runs")]) == 0
    return here / "runs", args


def _copy_runs(finished_gd, tmp_path: Path) -> Path:
    """A copy of the finished run's runs folder (its relative links to the shared generators
    folder kept), so that each test changes its own."""
    runs = tmp_path / "runs"
    shutil.copytree(finished_gd[0], runs, symlinks=True)
    return runs


def test_force_with_other_generator_settings_refuses_before_moving_anything(
    finished_gd, tmp_path, capsys
):
    runs = _copy_runs(finished_gd, tmp_path)
    before = sorted(p.name for p in runs.iterdir())
    argv = ["train", *finished_gd[1], "--method", "gd", "--runs-dir", str(runs)]

    assert main([*argv, "--set", "train.lambda_ld=0.01", "--force"]) == 2

    error = capsys.readouterr().err
    shared = runs / "phantom-nl1-generators-split0-seed0"
    assert f"{shared}: this run's shared generators folder holds the generators of a" in error
    assert "(differs in train.lambda_ld)" in error
    assert "Pass --tag NAME" in error
    assert sorted(p.name for p in runs.iterdir()) == before  # nothing moved aside
    assert (runs / "phantom-nl1-gd-split0-seed0" / "results.json").is_file()
    assert main(argv) == 0  # the original command still finds its finished run
    assert "this run is finished (results.json exists)" in capsys.readouterr().err


def test_export_refuses_generators_retrained_after_the_run_finished(finished_gd, tmp_path, capsys):
    runs = _copy_runs(finished_gd, tmp_path)
    run = RunDirectory(runs / "phantom-nl1-gd-split0-seed0")
    kept = run.stage("generator_deformation") / "best" / "generator.weights.h5"
    results = json.loads(run.results_path.read_text(encoding="utf-8"))
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    assert results["generator_weights_sha256"] == {"generator_deformation": digest}
    cfg, _ = load_run_models(run.path)  # the generators it trained with: exported

    # The shared generators are retrained (another setting, or deleted and trained again).
    retrained = build_generator(cfg, "deformation")
    shared = runs / "phantom-nl1-generators-split0-seed0"
    retrained.save_weights(shared / "checkpoints/generator_deformation/best/generator.weights.h5")

    with pytest.raises(ExportError) as raised:
        load_run_models(run.path)
    message = str(raised.value)
    assert f"{run.path}: the generators in {shared.resolve()} (generator_deformation)" in message
    assert "were retrained after this run finished" in message
    assert "Retrain the run with --force" in message
    out = tmp_path / "export"
    assert main(["export", str(run.path), "--out", str(out)]) == 2
    assert "were retrained after this run finished" in capsys.readouterr().err
    assert not out.exists()

    # A run finished before the weights were recorded cannot be checked: exported as before.
    del results["generator_weights_sha256"]
    run.results_path.write_text(json.dumps(results), encoding="utf-8")
    assert set(load_run_models(run.path)[1]) == {"segmenter", "deformation"}
