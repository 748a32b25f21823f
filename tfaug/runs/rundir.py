"""The run directory (the README's "Training" section lists its files).

``<runs_dir>/<dataset>-nl<N>-<method>-split<k>-seed<s>/`` holds ``config.yaml`` (the
fully resolved config), ``checkpoints/<stage>/`` (resumable), ``tb/`` (TensorBoard),
``results.json`` (written last: its presence means the run is finished) and ``figures/``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tfaug.config import Config, completed_config, config_differences
from tfaug.io import write_text_atomic


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used as asked (different config, unwritable)."""


class RunFinishedError(RunDirectoryError):
    """The run is finished (its results.json exists) and ``force`` was not given."""


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
        run.path.rename(_aside_path(run.path))
    if run.finished:
        raise RunFinishedError(
            f"{run.path}: this run is finished (results.json exists); nothing was changed. "
            "Pass --force to move it aside and train again."
        )
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


def _aside_path(path: Path) -> Path:
    """``<name>.replaced-<timestamp>``, with ``-2``, ``-3``... if forced again within a second."""
    stem = f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, number = path.with_name(stem), 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{stem}-{number}")
    return aside
