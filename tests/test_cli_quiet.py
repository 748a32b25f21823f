"""A quiet first contact: no TensorFlow C++ start-up lines from tfaug commands and scripts.

Each test runs a real script in a fresh Python process (TensorFlow reads its log level when
it is first imported) that imports TensorFlow and then fails fast on a folder that does not
exist: ``export/export.py`` (``tfaug.cli.main``, as every ``tfaug`` command, ``train/*.py`` and
each grid run) and ``export/serving_client.py`` (its own entry point).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tfaug.console import (
    QUIET_TF_LOG_LEVEL,
    TF_LOG_LEVEL_VARIABLE,
    quiet_tensorflow,
    setup_console,
    tolerate_ascii_streams,
)
from tfaug.data.volume import DatasetWarning

REPOSITORY = Path(__file__).resolve().parents[1]
START_UP_LINES = ("absl::InitializeLog", "cpu_feature_guard", "oneDNN custom operations")


SCRIPTS = {
    "export/export.py": (["{missing}", "--out", "x"], "run directory not found"),
    "export/serving_client.py": (
        ["-i", "a.nii.gz", "-o", "b.nii.gz", "--export", "{missing}"],
        "export.json not found",
    ),
}
"""Script → (arguments, the error it must print)."""


def run_script(script: str, tmp_path: Path, level: str | None) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` with TF_CPP_MIN_LOG_LEVEL unset (``None``) or set to ``level``."""
    env = {k: v for k, v in os.environ.items() if k != TF_LOG_LEVEL_VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    if level is not None:
        env[TF_LOG_LEVEL_VARIABLE] = level
    arguments = [a.format(missing=tmp_path / "missing") for a in SCRIPTS[script][0]]
    command = [sys.executable, script, *arguments]
    return subprocess.run(
        command, cwd=REPOSITORY, env=env, capture_output=True, encoding="utf-8", timeout=300
    )


def start_up_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(m in line for m in START_UP_LINES)]


@pytest.fixture(scope="module")
def verbose(tmp_path_factory) -> subprocess.CompletedProcess:
    """The same command with the user's TF_CPP_MIN_LOG_LEVEL=0 (everything)."""
    result = run_script("export/export.py", tmp_path_factory.mktemp("verbose"), "0")
    if not start_up_lines(result.stderr):
        pytest.skip("this TensorFlow build prints no start-up lines, even at level 0")
    return result


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_print_no_tensorflow_start_up_lines_by_default(verbose, tmp_path, script):
    result = run_script(script, tmp_path, None)
    assert result.returncode == 2
    assert SCRIPTS[script][1] in result.stderr
    assert start_up_lines(result.stderr) == [], result.stderr


def test_a_level_the_user_set_is_respected(verbose):
    assert verbose.returncode == 2
    assert "run directory not found" in verbose.stderr
    assert start_up_lines(verbose.stderr)


def test_quiet_tensorflow_sets_the_level_only_when_unset():
    environ: dict[str, str] = {}
    assert quiet_tensorflow(environ) == QUIET_TF_LOG_LEVEL
    assert environ == {TF_LOG_LEVEL_VARIABLE: QUIET_TF_LOG_LEVEL}
    assert quiet_tensorflow({TF_LOG_LEVEL_VARIABLE: "0"}) == "0"
    assert quiet_tensorflow({TF_LOG_LEVEL_VARIABLE: " "}) == QUIET_TF_LOG_LEVEL


def test_tfaug_warnings_print_on_one_line_and_others_as_python_prints_them(monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    setup_console()
    ours = warnings.formatwarning(
        DatasetWarning("a.nii.gz: 3 voxels clipped"), DatasetWarning, "f.py", 1
    )
    assert ours == "tfaug: warning: a.nii.gz: 3 voxels clipped\n"
    theirs = warnings.formatwarning(UserWarning("other"), UserWarning, "f.py", 7, "x = 1")
    assert "f.py:7: UserWarning: other" in theirs


def test_an_ascii_terminal_gets_escapes_not_a_crash():
    """``LC_ALL=C`` with Python's UTF-8 mode off: the help's λ prints as ``\\u03bb``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIO"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "tfaug.cli", "--help"]
    done = subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode("ascii", "replace")
    assert b"\\u03bb" in done.stdout
    done.stdout.decode("ascii")  # nothing but ASCII reached the terminal


def test_tolerate_ascii_streams_escapes_only_on_streams_that_need_it():
    ascii_stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    utf8_stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    tolerate_ascii_streams((ascii_stream, utf8_stream))
    for stream in (ascii_stream, utf8_stream):
        stream.write("0.71 ± 0.02")
        stream.flush()
    assert ascii_stream.buffer.getvalue() == b"0.71 \\xb1 0.02"
    assert utf8_stream.buffer.getvalue() == "0.71 ± 0.02".encode()
    assert utf8_stream.errors == "strict"
