"""Session fixtures of the deploy tests: one tiny finished run and one export of it.

Defined here, not imported into each test file, so that pytest builds them once per worker
(a fixture imported into a module is a new fixture of that module, built again).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_run import build_finished_run

from tfaug.deploy.export import export_run


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """``(run_dir, cfg, cache, split)`` of the one tiny finished run of the session."""
    return build_finished_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="session")
def export_dir(finished_run, tmp_path_factory) -> Path:
    """The run exported in both formats."""
    out = tmp_path_factory.mktemp("export") / "phantom"
    export_run(finished_run[0], out)
    return out
