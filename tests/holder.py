"""A run's lock held by another process, as a second `tfaug train` or grid would meet it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def run_held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """Start a process that claims the run in ``path`` (``claim_run``) and holds it.

    Yields the process once it holds the lock; kills it (SIGKILL, as a killed run dies) when
    the block ends.
    """
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from tfaug.runs.rundir import RunDirectory, claim_run\n"
            f"with claim_run(RunDirectory(Path({str(path)!r}))):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        encoding="utf-8",
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)
