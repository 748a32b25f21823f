"""Tests of ``tfaug train`` input errors (all exit 2 before anything is trained or written) and
of a run whose loss diverges (exit 1, one message)."""

from __future__ import annotations

import pytest
from tiny import POOL_SIZE, prepare_tiny_cache, write_tiny_yaml

from tfaug.cli import main


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory) -> list[str]:
    """``--config`` and ``--cache-dir`` of the tiny phantom (cache built once per session)."""
    base = tmp_path_factory.getbasetemp()
    prepare_tiny_cache(base)
    config = write_tiny_yaml(tmp_path_factory.mktemp("cli") / "tiny.yaml")
    return ["--config", str(config), "--cache-dir", str(base / "tiny-cache"), "--quiet"]


def _train(args: list[str], capsys) -> tuple[int, str]:
    code = main(["train", *args])
    return code, capsys.readouterr().err


def test_nl_larger_than_the_labeled_pool(tiny_args, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, err = _train([*tiny_args, "--runs-dir", str(runs), "--nl", "7"], capsys)

    assert code == 2
    assert f"the labeled pool has {POOL_SIZE} volumes but --nl 7 was asked" in err
    assert not runs.exists()  # no run directory, no config.yaml, no checkpoints


def test_real_dataset_without_data_root(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, err = _train(["--dataset", "acdc", "--runs-dir", str(runs)], capsys)

    assert code == 2
    assert "--data-root" in err
    assert not runs.exists()


def test_missing_data_root_folder(tmp_path, capsys):
    runs, missing = tmp_path / "runs", tmp_path / "no-such-acdc"
    code, err = _train(
        ["--dataset", "acdc", "--data-root", str(missing), "--runs-dir", str(runs)], capsys
    )

    assert code == 2
    assert f"{missing}: data folder not found" in err
    assert not runs.exists()  # so a corrected --data-root does not meet a "different config"


def test_unwritable_runs_dir(tiny_args, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    code, err = _train([*tiny_args, "--runs-dir", str(tmp_path / "file" / "runs")], capsys)

    assert code == 2
    assert "file/runs: cannot create the runs directory" in err
    assert "--runs-dir" in err


def test_schedule_count_out_of_range_is_refused_before_the_run_directory(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, err = _train(["--iterations", "-3", "--runs-dir", str(runs)], capsys)

    assert code == 2
    assert "train.segmenter_iterations: -3 must be >= 1" in err
    assert not runs.exists()  # so the corrected command does not meet a "different config"


def test_a_diverging_run_ends_in_one_message_not_a_traceback(tiny_args, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = [*tiny_args, "--runs-dir", str(runs), "--method", "none"]
    code, err = _train([*args, "--set", "train.learning_rate=1e30"], capsys)

    assert code == 1
    assert err.startswith("tfaug: error: stage 'segmenter': the loss became ")
    assert "Lower train.learning_rate (or the λs) and re-run with --force" in err
    assert "Traceback" not in err
    # the advice works: the lower rate with --force trains a fresh run in its place
    code, _ = _train([*args, "--set", "train.learning_rate=1e-3", "--force"], capsys)
    assert code == 0


def test_unknown_config_key(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, err = _train(["--set", "train.nonsense=1", "--runs-dir", str(runs)], capsys)

    assert code == 2
    assert "unknown key(s) ['nonsense']" in err
    assert not runs.exists()


def test_unknown_config_file_or_setting(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, err = _train(["--config", "bdv3", "--runs-dir", str(runs)], capsys)

    assert code == 2
    assert "bdv3: config file not found" in err
    assert "bdv3R, lrdri" in err  # the shipped settings it could have meant
    assert not runs.exists()


def test_unknown_method_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--method", "gan", "--runs-dir", str(tmp_path / "runs")])

    assert exited.value.code == 2
    assert "invalid choice: 'gan'" in capsys.readouterr().err
