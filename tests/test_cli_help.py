"""``tfaug --help`` and the sub-commands' help are fast: they never import TensorFlow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HELP_COMMANDS = [["--help"], ["report", "--help"], ["data", "inspect", "--help"]]
PROBE = """
import sys
from tfaug.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
heavy = sorted(name for name in ("tensorflow", "keras", "tf2onnx") if name in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("arguments", HELP_COMMANDS, ids=" ".join)
def test_help_does_not_import_tensorflow(arguments):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_the_installed_command_prints_help_without_tensorflow_log_lines():
    script = shutil.which("tfaug") or str(Path(sys.executable).with_name("tfaug"))
    done = subprocess.run([script, "--help"], capture_output=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: tfaug" in done.stdout
    for marker in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert marker not in done.stderr
