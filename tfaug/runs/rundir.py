"""The run directory (the README's "Training" section lists its files).

``<runs_dir>/<dataset>-nl<N>-<method>-split<k>-seed<s>/`` holds ``config.yaml`` (the
fully resolved config), ``checkpoints/<stage>/`` (resumable), ``tb/`` (TensorBoard),
``results.json`` (written last: its presence means the run is finished) and ``figures/``.
A process training the run holds an exclusive lock on ``.run.lock`` in it (:func:`claim_run`),
so a second process refuses to train the same run at the same time.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tfaug.config import Config, completed_config, config_differences
from tfaug.io import write_text_atomic


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (different config, unwritable)."""


class RunFinishedError(RunDirectoryError):
    """The run is finished (its results.json exists) and ``force`` was not given."""


class RunInUseError(RunDirectoryError):
    """Another process is training the run (it holds the run's lock)."""


def run_name(cfg: Config) -> str:
    """``<dataset>-nl<N>-<method>-split<k>-seed<s>``, then ``-<mode>`` for the independent
    ablation and ``-<tag>`` when the config has a tag."""
    name = (
        f"{cfg.data.dataset}-nl{cfg.split.n_labeled}-{cfg.method}"
        f"-split{cfg.split.draw}-seed{cfg.train.seed}"
    )
    if cfg.train.generator_mode != "joint":
        name += f"-{cfg.train.generator_mode}"
    if cfg.tag:
        name += f"-{cfg.tag}"
    return name


@dataclass(frozen=True)
class RunDirectory:
    """Paths of one run."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def stage(self, name: str) -> Path:
        return self.checkpoints / name

    @property
    def lock_path(self) -> Path:
        return self.path / ".run.lock"

    @property
    def finished(self) -> bool:
        return self.results_path.is_file()


def open_run_directory(cfg: Config, *, force: bool = False) -> RunDirectory:
    """Create or reopen the run directory of ``cfg``.

    A new directory gets ``config.yaml``. An existing unfinished one is resumed if its
    recorded config equals ``cfg``. With ``force``, an existing directory is moved aside to
    ``<name>.replaced-<timestamp>`` (nothing is deleted) and a new run starts.

    Raises:
        RunFinishedError: the run is finished and ``force`` is not given.
        RunDirectoryError: the runs folder is not writable; the existing unfinished run was
            started with a different config.
        RunInUseError: ``force`` is given and another process is training the run.
    """
    runs_dir = Path(cfg.runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(
            f"{runs_dir}: cannot create the runs directory ({error.strerror}); "
            "pass a writable folder with --runs-dir"
        ) from error
    if not os.access(runs_dir, os.W_OK):
        raise RunDirectoryError(f"{runs_dir}: the runs directory is not writable; pass --runs-dir")
    run = RunDirectory(runs_dir / run_name(cfg))
    if run.path.exists() and force:
        holder = run_holder(run.path)
        if holder is not None:
            raise _in_use(run.path, holder, "--force would move it from under that process")
        run.path.rename(_aside_path(run.path))
    if run.finished:
        raise finished_error(run.path)
    if run.config_path.is_file():
        recorded = completed_config(yaml.safe_load(run.config_path.read_text(encoding="utf-8")))
        if recorded != cfg.to_dict():
            changed = config_differences(recorded, cfg.to_dict())
            raise RunDirectoryError(
                f"{run.config_path}: an unfinished run with a different config is here "
                f"(differs in {', '.join(changed)}). Re-run with the same settings to resume, "
                "pass --force to move it aside, or choose another --runs-dir."
            )
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.config_path, cfg.to_yaml())
    return run


def finished_error(path: Path) -> RunFinishedError:
    """The error (and message) for the finished run in ``path``."""
    return RunFinishedError(
        f"{path}: this run is finished (results.json exists); nothing was changed. "
        "Pass --force to move it aside and train again."
    )


def _aside_path(path: Path) -> Path:
    """``<name>.replaced-<timestamp>``, with ``-2``, ``-3``... if forced again within a second."""
    stem = f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, number = path.with_name(stem), 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{stem}-{number}")
    return aside


@contextmanager
def claim_run(run: RunDirectory) -> Iterator[None]:
    """Hold the run's lock while the block trains it; another process cannot claim it meanwhile.

    The lock is an exclusive ``flock`` on ``<run>/.run.lock``, which records the holder (pid,
    host, start time) for the message of the process refused. The operating system releases
    it when the holder exits, however it ends (a killed run leaves no stale lock).

    Raises:
        RunInUseError: another process holds the lock.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.lock_path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise _in_use(run.path, handle.read().strip() or "unknown", "") from None
        try:
            handle.truncate(0)
            started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_holder(path: Path) -> str | None:
    """Who trains the run in ``path`` now (``"pid N on HOST, since T"``), or ``None``.

    A lock this process holds counts too (``flock`` locks belong to open files, not processes).
    """
    lock = RunDirectory(path).lock_path
    if not lock.is_file():
        return None
    with open(lock, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "unknown"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _in_use(path: Path, holder: str, consequence: str) -> RunInUseError:
    because = f" ({consequence})" if consequence else ""
    return RunInUseError(
        f"{path}: another process is training this run ({holder}); nothing was changed"
        f"{because}. Wait for it to finish, or stop it and re-run this command to resume "
        "from its checkpoints."
    )
