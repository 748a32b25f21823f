"""The phantom benchmark's shell helper (docs/results/phantom-ssl/common.sh), for real:
its grid() trains a tiny run and saves its record, and a fresh machine's
runs folder restored from those records skips the run instead of training it again."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tiny import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
COMMON = REPO / "docs" / "results" / "phantom-ssl" / "common.sh"
RUN = "phantom-nl1-none-split0-seed0"


def _grid(tmp_path: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """``grid wide 1 1 none`` of common.sh with the tiny config's sizes and budget."""
    overrides = [
        *tiny_overrides(),
        "split.n_extra_validation=0",  # the benchmark's 6 do not fit 12 tiny subjects
        "train.budget_marks=0",
        "phantom.variant=wide",  # the grid sets it too, before these
    ]
    extra = " ".join(f"--set {shlex.quote(text)}" for text in overrides)
    script = f"source {shlex.quote(str(COMMON))} && grid wide 1 1 none {extra}"
    env = {
        **os.environ,
        "SHARD": "0",
        "N_SHARDS": "1",
        "REPO": str(REPO),
        "RUNS": str(tmp_path / "runs"),
        "CACHE": str(cache_dir),
        "RECORDS": str(tmp_path / "records"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, encoding="utf-8", timeout=600
    )


def test_grid_saves_records_and_a_restored_runs_folder_skips_the_run(tmp_path):
    cache_dir = tmp_path / "cache"
    first = _grid(tmp_path, cache_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{RUN}: done" in first.stdout
    record = tmp_path / "records" / "wide" / RUN
    assert (record / "results.json").read_bytes() == (
        tmp_path / "runs" / "wide" / RUN / "results.json"
    ).read_bytes()
    assert not list(record.rglob("*.weights.h5"))

    shutil.rmtree(tmp_path / "runs")  # a fresh machine: only the committed records remain
    second = _grid(tmp_path, cache_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{RUN}: finished, skipped" in second.stdout
    assert "0 record(s) copied" in second.stdout and "1 already there" in second.stdout
