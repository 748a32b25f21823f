"""Tests of the keras-tuner λ search (tfaug/experiments/tuning.py, ``tfaug tune``) on the tiny
phantom.

Two searches of two trials each (2 generator iterations per trial) are shared by the tests:
a local one killed (SIGKILL) in its second trial and resumed, and a distributed one (a chief
and two workers on 127.0.0.1) in which a worker is killed in its trial and restarted under the
same ``KERASTUNER_TUNER_ID``. The search-space tests only ask the oracles for trials.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner
import pytest
import tensorflow as tf
import yaml
from tiny import prepare_tiny_cache, write_tiny_yaml

from tfaug.cli import main
from tfaug.config import ConfigError, load_config
from tfaug.experiments.tuning import (
    LAMBDA_ADV_RANGE,
    LAMBDA_LD_RANGE,
    LEARNING_RATE_RANGE,
    PAPER_LAMBDA_LD,
    LambdaHyperModel,
    LambdaTuner,
    TrialRow,
    TunerDirectory,
    build_oracle,
    format_leaderboard,
    read_attempts,
    run_search,
    tuner_role,
    write_best_config,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
ITERATIONS = 2  # one validation per trial (validate_every is 3 in the tiny config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The tiny config file, the shared cache folder and the in-process base config."""
    base = tmp_path_factory.getbasetemp()
    prepare_tiny_cache(base)
    folder = tmp_path_factory.mktemp("tuning")
    tiny = write_tiny_yaml(folder / "tiny.yaml")
    cfg = load_config("phantom", config_file=tiny)
    cfg.data.cache_dir = str(base / "tiny-cache")
    return {"folder": folder, "tiny": tiny, "cache": base / "tiny-cache", "cfg": cfg}


def _command(setup: dict, tuner_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train" / "tune.py"),
        "--config",
        str(setup["tiny"]),
        "--cache-dir",
        str(setup["cache"]),
        "--tuner-dir",
        str(tuner_dir),
        "--max-trials",
        "2",
        "--iterations",
        str(ITERATIONS),
        "--quiet",
    ]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **extra}


def _wait_for(condition, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        dead = [p for p in processes if p.poll() is not None]
        assert not dead, dead[0].communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _attempts_now(trial) -> list[dict]:
    """:func:`read_attempts` while another process may be appending (a partial line: [])."""
    try:
        return read_attempts(trial)
    except json.JSONDecodeError:
        return []


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def local_search(setup) -> dict:
    """One trial in-process; ``train/tune.py --max-trials 2`` killed (SIGKILL) as soon as it
    has started trial 1; the search resumed in-process; then run once more."""
    dirs = TunerDirectory(setup["folder"] / "local")
    kwargs = {"kind": "deformation", "tuner_dir": dirs.path, "iterations": ITERATIONS}
    first = run_search(setup["cfg"], max_trials=1, progress=False, **kwargs)
    process = subprocess.Popen(
        _command(setup, dirs.path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        env=_env(),
        cwd=REPO,
    )
    _wait_for(lambda: bool(_attempts_now(dirs.trial("1"))), [process])
    _kill(process)
    resumed = run_search(setup["cfg"], max_trials=2, progress=False, **kwargs)
    again = run_search(setup["cfg"], max_trials=2, progress=False, **kwargs)
    return {"dirs": dirs, "first": first, "resumed": resumed, "again": again}


def test_killed_search_resumes_its_running_trial_only(local_search):
    dirs, resumed = local_search["dirs"], local_search["resumed"]
    assert local_search["first"].trials_run == ["0"]
    assert resumed.role == "local"
    assert resumed.trials_run == ["1"]  # trial 0 finished before the kill: not repeated
    assert [a["tuner_id"] for a in read_attempts(dirs.trial("0"))] == ["tuner0"]
    assert [a["tuner_id"] for a in read_attempts(dirs.trial("1"))] == ["tuner0", "tuner0"]
    assert len({a["pid"] for a in read_attempts(dirs.trial("1"))}) == 2  # killed, then resumed
    for trial_id in ("0", "1"):
        assert (dirs.trial(trial_id).stage("generator_deformation") / "done.json").is_file()


def test_finished_search_runs_nothing_and_ranks_trials(local_search):
    resumed, again = local_search["resumed"], local_search["again"]
    assert again.trials_run == []
    assert again.rows == resumed.rows
    assert [row.status for row in again.rows] == ["COMPLETED", "COMPLETED"]
    scores = [row.val_dice for row in again.rows]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for row in again.rows:
        assert set(row.values) == {"lambda_adv", "lambda_ld"}
        assert LAMBDA_ADV_RANGE[0] <= row.values["lambda_adv"] <= LAMBDA_ADV_RANGE[1]
        assert LAMBDA_LD_RANGE[0] <= row.values["lambda_ld"] <= LAMBDA_LD_RANGE[1]
        assert row.best_step == ITERATIONS
    recorded = json.loads(local_search["dirs"].leaderboard.read_text(encoding="utf-8"))
    assert [t["trial_id"] for t in recorded["trials"]] == [r.trial_id for r in again.rows]


def test_trials_share_one_pretrained_segmenter(local_search):
    dirs = local_search["dirs"]
    shared = dirs.pretrain.stage("pretrain").resolve()
    assert (shared / "done.json").is_file()
    for trial_id in ("0", "1"):
        link = dirs.trial(trial_id).stage("pretrain")
        assert link.is_symlink() and link.resolve() == shared
        recorded = yaml.safe_load(dirs.trial(trial_id).config_path.read_text(encoding="utf-8"))
        values = next(r.values for r in local_search["again"].rows if r.trial_id == trial_id)
        assert recorded["train"]["lambda_adv"] == values["lambda_adv"]
        assert recorded["train"]["generator_iterations"] == ITERATIONS
    assert not (dirs.path / "trials" / "trial_0" / "checkpoints" / "segmenter").exists()


def test_best_config_is_loadable_by_load_config(local_search):
    best = local_search["again"].rows[0]
    path = local_search["again"].best_config
    assert path == local_search["dirs"].best_config
    cfg = load_config("phantom", config_file=path)
    assert cfg.train.lambda_adv == best.values["lambda_adv"]
    assert cfg.train.lambda_ld == best.values["lambda_ld"]
    assert cfg.train.learning_rate == load_config("phantom").train.learning_rate
    assert f"trial {best.trial_id}" in path.read_text(encoding="utf-8")


def test_other_settings_in_the_same_tuner_dir_are_refused(local_search, setup):
    with pytest.raises(ConfigError, match=r"search\.yaml.*differs in tuner"):
        run_search(
            setup["cfg"],
            kind="deformation",
            tuner_dir=local_search["dirs"].path,
            tuner="grid",
            max_trials=2,
            iterations=ITERATIONS,
        )


def test_a_search_recorded_before_a_config_key_existed_resumes(local_search, setup):
    spec_path = local_search["dirs"].spec
    spec_text = spec_path.read_text(encoding="utf-8")
    recorded = yaml.safe_load(spec_text)
    del recorded["config"]["train"]["budget_marks"]  # as written by a version without the key
    spec_path.write_text(yaml.safe_dump(recorded, sort_keys=False), encoding="utf-8")
    kwargs = {"kind": "deformation", "tuner_dir": spec_path.parent, "iterations": ITERATIONS}
    try:
        assert run_search(setup["cfg"], max_trials=2, progress=False, **kwargs).trials_run == []
        changed = copy.deepcopy(setup["cfg"])
        changed.train.budget_marks = 4
        with pytest.raises(ConfigError, match=r"differs in config\.train\.budget_marks\)"):
            run_search(changed, max_trials=2, progress=False, **kwargs)
    finally:
        spec_path.write_text(spec_text, encoding="utf-8")


def test_a_search_without_validation_is_refused(setup, tmp_path):
    cfg = copy.deepcopy(setup["cfg"])
    cfg.train.model_selection = "last"
    with pytest.raises(ConfigError, match="model_selection"):
        run_search(cfg, kind="deformation", tuner_dir=tmp_path / "search", max_trials=1)
    assert not (tmp_path / "search").exists()


@pytest.mark.parametrize("flags", [["--max-trials", "0"], ["--iterations", "0"]])
def test_tune_command_bad_budget_exits_2_and_writes_nothing(setup, tmp_path, capsys, flags):
    tuner_dir = tmp_path / "search"
    argv = ["tune", "--config", str(setup["tiny"]), "--cache-dir", str(setup["cache"])]
    assert main([*argv, "--tuner-dir", str(tuner_dir), *flags]) == 2
    assert f"{flags[0]} 0: expected an integer ≥ 1" in capsys.readouterr().err
    assert not tuner_dir.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(setup) -> dict:
    """A chief and two workers; worker1 is killed mid-trial and restarted with its id."""
    dirs = TunerDirectory(setup["folder"] / "distributed")
    address = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}

    def start(tuner_id: str) -> subprocess.Popen:
        return subprocess.Popen(
            _command(setup, dirs.path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            env=_env(KERASTUNER_TUNER_ID=tuner_id, **address),
            cwd=REPO,
        )

    chief, worker0, worker1 = start("chief"), start("worker0"), start("worker1")

    def worker1_trial() -> Path | None:
        for trial in (dirs.trial("0"), dirs.trial("1")):
            if "worker1" in [a["tuner_id"] for a in _attempts_now(trial)]:
                return trial.path
        return None

    _wait_for(lambda: worker1_trial() is not None, [chief, worker0, worker1])
    _kill(worker1)
    restarted = start("worker1")
    outputs = {}
    for name, process in (("worker0", worker0), ("worker1", restarted), ("chief", chief)):
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
        outputs[name] = stdout
    return {"dirs": dirs, "killed_trial": worker1_trial().name, "outputs": outputs}


def test_distributed_trials_are_split_between_workers_and_none_repeated(distributed):
    dirs = distributed["dirs"]
    board = json.loads(dirs.leaderboard.read_text(encoding="utf-8"))["trials"]
    assert sorted(t["trial_id"] for t in board) == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in board)
    runners = {f"trial_{t['trial_id']}": t["tuner_ids"] for t in board}
    killed = distributed["killed_trial"]
    assert runners[killed] == ["worker1", "worker1"]  # retried by the restarted worker
    (other,) = set(runners) - {killed}
    assert runners[other] == ["worker0"]
    outputs = distributed["outputs"]
    assert outputs["worker0"].strip().endswith(f"trials run here: {other[len('trial_') :]}")
    assert outputs["worker1"].strip().endswith(f"trials run here: {killed[len('trial_') :]}")
    assert "best config:" in outputs["chief"] and "rank  trial" in outputs["chief"]
    assert load_config("phantom", config_file=dirs.best_config).train.lambda_ld > 0
    # One pre-training for the whole search although both workers needed it: no step of it
    # was logged twice (a second pre-training from scratch would log its steps again).
    logged = [
        (value.tag, event.step)
        for path in dirs.pretrain.tensorboard.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    ]
    assert logged and len(logged) == len(set(logged))


def test_tuner_role_follows_keras_tuner_environment(monkeypatch):
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    assert tuner_role() == "local"
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert tuner_role() == "chief"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "worker3")
    assert tuner_role() == "worker"


def _sampled_values(setup, tmp_path, tuner: str, tune_lr: bool, trials: int) -> list[dict]:
    """Ask the oracle of ``tuner`` for up to ``trials`` trials, each ended with a made-up
    score (the grid and Bayesian oracles need finished trials to go on); nothing is trained."""
    hypermodel = LambdaHyperModel(setup["cfg"], grid=tuner == "grid", tune_learning_rate=tune_lr)
    oracle = build_oracle(tuner, max_trials=trials, seed=1)
    search = LambdaTuner(
        hypermodel, oracle, TunerDirectory(tmp_path), kind="deformation", progress=False
    )
    values = []
    for index in range(trials + 1):
        trial = search.oracle.create_trial(f"t{index}")
        if trial.status == "STOPPED":
            break
        values.append(dict(trial.hyperparameters.values))
        search.oracle.update_trial(trial.trial_id, {"val_dice": 0.1 * index})
        trial.status = "COMPLETED"
        search.oracle.end_trial(trial)
    return values


def test_grid_searches_the_papers_three_lambda_ld(setup, tmp_path):
    values = _sampled_values(setup, tmp_path, "grid", tune_lr=False, trials=5)
    assert sorted(v["lambda_ld"] for v in values) == sorted(PAPER_LAMBDA_LD)
    assert {v["lambda_adv"] for v in values} == {setup["cfg"].train.lambda_adv}


@pytest.mark.parametrize("tuner", ["random", "bayesian"])
def test_random_and_bayesian_sample_log_ranges(setup, tmp_path, tuner):
    if tuner == "bayesian":
        pytest.importorskip("sklearn", reason="BayesianOptimization needs keras-tuner[bayesian]")
    values = _sampled_values(setup, tmp_path, tuner, tune_lr=True, trials=3)
    assert len(values) == 3 and len({v["lambda_ld"] for v in values}) == 3
    for v in values:
        assert LAMBDA_LD_RANGE[0] <= v["lambda_ld"] <= LAMBDA_LD_RANGE[1]
        assert LEARNING_RATE_RANGE[0] <= v["learning_rate"] <= LEARNING_RATE_RANGE[1]


def test_hypermodel_puts_the_trial_values_into_a_copy_of_the_config(setup):
    hp = keras_tuner.HyperParameters()
    hp.values = {"lambda_adv": 0.5, "lambda_ld": 1e-4, "learning_rate": 3e-4}
    model = LambdaHyperModel(setup["cfg"], grid=False, tune_learning_rate=True)
    cfg = model.build(hp)
    assert (cfg.train.lambda_adv, cfg.train.lambda_ld, cfg.train.learning_rate) == (
        0.5,
        1e-4,
        3e-4,
    )
    assert setup["cfg"].train.lambda_adv == 1.0  # the base config is untouched


def test_leaderboard_text_and_best_config_of_hand_made_rows(tmp_path):
    rows = [
        TrialRow("1", "COMPLETED", 0.75, {"lambda_adv": 2.0, "lambda_ld": 1e-3}, 6, ["w0"]),
        TrialRow("0", "FAILED", None, {"lambda_adv": 9.0, "lambda_ld": 0.05}, None, ["w1"]),
    ]
    text = format_leaderboard(rows).splitlines()
    assert text[0].split() == [
        "rank",
        "trial",
        "status",
        "lambda_adv",
        "lambda_ld",
        "val",
        "Dice",
        "best",
        "it",
        "run",
        "by",
    ]
    assert text[1].split() == ["1", "1", "completed", "2", "0.001", "0.7500", "6", "w0"]
    assert text[2].split() == ["-", "0", "failed", "9", "0.05", "-", "-", "w1"]
    path = write_best_config(rows, tmp_path / "best.yaml", kind="intensity", tuner_dir=tmp_path)
    cfg = load_config("phantom", config_file=path)
    assert (cfg.train.lambda_adv, cfg.train.lambda_ld) == (2.0, 1e-3)
    assert write_best_config(rows[1:], tmp_path / "none.yaml", kind="x", tuner_dir=tmp_path) is None
    assert not (tmp_path / "none.yaml").exists()
