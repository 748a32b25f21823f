"""The run directory (the README's "Training" section lists its files).

``<runs_dir>/<dataset>-nl<N>-<method>-split<k>-seed<s>/`` holds ``config.yaml`` (the
fully resolved config), ``checkpoints/<stage>/`` (resumable), ``tb/`` (TensorBoard),
``results.json`` (written last: its presence means the run is finished) and ``figures/``.
A process training the run holds an exclusive lock on ``.run.lock`` in it (:func:`claim_run`),
so a second process refuses to train the same run at the same time.
"""

from __future__ import annotations

import copy
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


LOCATION_KEYS = ("runs_dir", "data.cache_dir", "data.root")
"""Keys that say where a run's files and data are, not what it computes: left out when a run
directory's recorded config is compared, so a run resumes (or counts as finished) after its
runs folder, cache or dataset folder moved or is spelled differently. The data themselves are
checked by the cache (:mod:`tfaug.data.records` fingerprints every source file)."""


def recorded_differences(config_path: Path, config: dict[str, Any]) -> list[str]:
    """The dotted keys in which the config recorded in ``config_path`` differs from ``config``.

    The recorded config is completed with today's defaults (:func:`completed_config`), so
    keys added to tfaug since it was written count as at their defaults, and
    :data:`LOCATION_KEYS` are left out. ``[]`` when ``config_path`` does not exist.
    """
    if not config_path.is_file():
        return []
    recorded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    if not isinstance(recorded, dict):
        return [f"{config_path.name} (not a mapping)"]
    return config_differences(
        _without_locations(completed_config(recorded)), _without_locations(config)
    )


def _without_locations(config: dict[str, Any]) -> dict[str, Any]:
    found = copy.deepcopy(config)
    for key in LOCATION_KEYS:
        *sections, name = key.split(".")
        owner = found
        for section in sections:
            owner = owner.get(section) if isinstance(owner, dict) else None
        if isinstance(owner, dict):
            owner.pop(name, None)
    return found


def open_run_directory(
    cfg: Config, *, force: bool = False, check: Callable[[], None] | None = None
) -> RunDirectory:
    """Create or reopen the run directory of ``cfg``.

    A new directory gets ``config.yaml``. An existing one, finished or not, is compared with
    ``cfg`` (:func:`recorded_differences`: keys added since it was written count as at their
    defaults; :data:`LOCATION_KEYS` are left out); an unfinished one with the same config is
    resumed. With ``force``, an existing directory is moved aside to
    ``<name>.replaced-<timestamp>`` (nothing is deleted) and a new run starts.

    Args:
        cfg: the run's config.
        force: move an existing directory aside and start again.
        check: called once the run itself has passed its checks and is going to be trained,
            before anything is created, moved or written; it raises
            :class:`RunDirectoryError` to refuse (e.g. the shared generators folder,
            :func:`tfaug.runs.shared.check_generator_directory`).

    Raises:
        RunFinishedError: the run is finished with the same config and ``force`` is not given.
        RunDirectoryError: the runs folder is not writable; the existing run (finished or
            not) was started with a different config and ``force`` is not given; ``check``
            refused.
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
    if force:
        holder = run_holder(run.path) if run.path.exists() else None
        if holder is not None:
            raise _in_use(run.path, holder, "--force would move it from under that process")
    else:
        changed = recorded_differences(run.config_path, cfg.to_dict())
        if changed:
            raise different_config_error(run.path, changed, finished=run.finished)
        if run.finished:
            raise finished_error(run.path)
    if check is not None:
        check()  # before anything is moved aside or written
    if force and run.path.exists():
        run.path.rename(_aside_path(run.path))
    if not run.config_path.is_file():
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.config_path, cfg.to_yaml())
    return run


def finished_error(path: Path) -> RunFinishedError:
    """The error (and message) for the finished run in ``path``."""
    return RunFinishedError(
        f"{path}: this run is finished (results.json exists); nothing was changed. "
        "Pass --force to move it aside and train again."
    )


def different_config_error(
    path: Path, changed: list[str], *, finished: bool, grid: bool = False
) -> RunDirectoryError:
    """The error for the run in ``path`` recorded with a config that differs in ``changed``.

    ``grid``: the fixes as a grid spells them (``--set tag=NAME``; ``--force`` is
    ``tfaug train``'s).
    """
    config_path = RunDirectory(path).config_path
    tag = "--set tag=NAME" if grid else "--tag NAME"
    force = "tfaug train --force" if grid else "--force"
    if finished:
        return RunDirectoryError(
            f"{config_path}: this run is finished with a different config (differs in "
            f"{', '.join(changed)}); nothing was changed. Pass {tag} to train these settings "
            f"as a new run beside it, or {force} to move it aside and replace it."
        )
    return RunDirectoryError(
        f"{config_path}: an unfinished run with a different config is here "
        f"(differs in {', '.join(changed)}). Re-run with the same settings to resume, pass "
        f"{tag} to train these settings as a new run beside it, {force} to move it aside, "
        "or choose another --runs-dir."
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
