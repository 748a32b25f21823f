"""The experiment grid: every (N_L, method, draw, seed) run, sharded, skipped when finished.

A grid is a list of :class:`GridRun`, each one ``tfaug train`` invocation. The runs
directory is the only shared state: a run whose ``results.json`` exists is finished and
skipped; a run whose ``config.yaml`` exists was interrupted and resumes from its last
checkpoint; a run another process is training (it holds the run's lock) is skipped (all
three handled by :mod:`tfaug.runs.rundir`); a run whose ``config.yaml`` differs from the
grid's (location keys aside, :data:`tfaug.runs.rundir.LOCATION_KEYS`), finished or not, is
reported and not trained, so a grid never pools two configs. Each run executes in its own
Python subprocess, so one failing run neither stops the grid nor leaks TensorFlow state
into the next; its output is appended to ``<run dir>/grid.log``.

Sharding (``--shard i/n``) takes every n-th run of the ordered list starting at i: shards
are disjoint, their union is the grid, and no coordination is needed beyond giving every
shard the same grid arguments and the same runs directory. Grids whose runs overlap (two
unsharded copies of one grid, or two grids sharing runs) skip each other's running runs.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfaug.config import ConfigError, load_config
from tfaug.methods import GENERATOR_MODES, METHODS
from tfaug.runs.rundir import (
    RunDirectoryError,
    different_config_error,
    recorded_differences,
    run_holder,
    run_name,
)


@dataclass(frozen=True)
class GridSpec:
    """What the grid covers and how every run is configured.

    Attributes:
        dataset: one of :data:`tfaug.config.DATASETS`.
        n_labeled: the N_L values, e.g. ``(1,)`` or ``(1, 3)``.
        methods: method names of :data:`tfaug.methods.METHODS`.
        draws: number of labeled draws; draws ``0 .. draws-1`` run.
        seeds: number of training seeds; seeds ``0 .. seeds-1`` run.
        runs_dir: the shared runs directory.
        generator_mode: ``joint`` (the paper) or ``independent`` (Table I ablation).
        iterations: iterations of every stage, or ``None`` for the config's values.
        config_file: YAML merged over the dataset config, or ``None``.
        overrides: ``section.key=value`` strings applied to every run.
        data_root: the dataset folder (``--data-root``), or ``None``.
        cache_dir: the cache folder (``--cache-dir``), or ``None``.
    """

    dataset: str
    n_labeled: tuple[int, ...]
    methods: tuple[str, ...]
    draws: int
    seeds: int
    runs_dir: Path
    generator_mode: str = "joint"
    iterations: int | None = None
    config_file: Path | None = None
    overrides: tuple[str, ...] = ()
    data_root: Path | None = None
    cache_dir: Path | None = None


@dataclass(frozen=True)
class GridRun:
    """One run of the grid.

    Attributes:
        n_labeled, method, draw, seed: the run's coordinates.
        path: its run directory ``<runs_dir>/<dataset>-nl<N>-<method>-split<k>-seed<s>[-mode]``.
        argv: the ``tfaug train`` arguments (without the program name) that execute it.
        config: the run's config (:meth:`tfaug.config.Config.to_dict`) that a ``config.yaml``
            found in ``path`` is compared with; ``None``: not compared.
    """

    n_labeled: int
    method: str
    draw: int
    seed: int
    path: Path
    argv: tuple[str, ...]
    config: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def status(self) -> str:
        """``finished`` (results.json), ``running`` (another process holds the run's lock),
        ``interrupted`` (config.yaml only), ``pending``, or ``differs``: finished or
        interrupted with a config other than :attr:`config` (:meth:`differences`)."""
        if (self.path / "results.json").is_file():
            return "differs" if self.differences() else "finished"
        if run_holder(self.path) is not None:
            return "running"
        if (self.path / "config.yaml").is_file():
            return "differs" if self.differences() else "interrupted"
        return "pending"

    def differences(self) -> list[str]:
        """The keys in which the run directory's ``config.yaml`` differs from :attr:`config`
        (:func:`tfaug.runs.rundir.recorded_differences`: keys added to tfaug since it was
        written count as at their defaults, location keys are left out)."""
        if self.config is None:
            return []
        return recorded_differences(self.path / "config.yaml", self.config)

    def config_error(self) -> RunDirectoryError:
        """The message of a ``differs`` run: its differing keys and the fixes."""
        finished = (self.path / "results.json").is_file()
        return different_config_error(self.path, self.differences(), finished=finished, grid=True)


def _run_overrides(spec: GridSpec, n_labeled: int, method: str, draw: int, seed: int) -> list[str]:
    """The ``--set`` strings that make one run out of the shared config."""
    overrides = [
        *spec.overrides,
        f"method={method}",
        f"split.n_labeled={n_labeled}",
        f"split.draw={draw}",
        f"train.seed={seed}",
        f"train.generator_mode={spec.generator_mode}",
    ]
    if spec.iterations is not None:
        for key in ("pretrain_iterations", "generator_iterations", "segmenter_iterations"):
            overrides.append(f"train.{key}={spec.iterations}")
    return overrides


def _train_argv(spec: GridSpec, overrides: list[str]) -> tuple[str, ...]:
    """The ``tfaug train`` arguments of one run (paths as flags, the rest as ``--set``)."""
    argv = ["train", "--dataset", spec.dataset, "--runs-dir", str(spec.runs_dir), "--quiet"]
    for flag, value in (
        ("--config", spec.config_file),
        ("--data-root", spec.data_root),
        ("--cache-dir", spec.cache_dir),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for text in overrides:
        argv += ["--set", text]
    return tuple(argv)


def _check_spec(spec: GridSpec) -> None:
    """Raise :class:`ConfigError` naming every problem of ``spec`` at once."""

    problems = []
    unknown = [m for m in spec.methods if m not in METHODS]
    if unknown:
        problems.append(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not spec.methods:
        problems.append("no method given; pass e.g. --methods none,aff,gdgi")
    if len(set(spec.methods)) != len(spec.methods):
        problems.append(f"--methods lists a method twice: {list(spec.methods)}")
    if not spec.n_labeled or min(spec.n_labeled) < 1:
        problems.append(f"--nl must be integers >= 1, found {list(spec.n_labeled)}")
    if spec.draws < 1 or spec.seeds < 1:
        problems.append(f"--draws and --seeds must be >= 1, found {spec.draws} and {spec.seeds}")
    if spec.generator_mode not in GENERATOR_MODES:
        problems.append(f"--generator-mode must be one of {GENERATOR_MODES}")
    if spec.iterations is not None and spec.iterations < 1:
        problems.append(f"--iterations must be >= 1, found {spec.iterations}")
    if problems:
        raise ConfigError("tfaug grid: " + "; ".join(problems))


def plan_grid(spec: GridSpec) -> list[GridRun]:
    """Every run of ``spec``, ordered by (N_L, draw, seed, method).

    The run directory names come from the same config resolution ``tfaug train`` uses
    (:func:`tfaug.config.load_config` with the run's ``--set`` strings), so they match the
    directories the runs create. Nothing is written and no data is read.

    Raises:
        ConfigError: an unknown method, a count < 1, a bad override or config file, or more
            draws than the config's ``split.draws``.
    """
    _check_spec(spec)
    runs = []
    coordinates = itertools.product(
        spec.n_labeled, range(spec.draws), range(spec.seeds), spec.methods
    )
    for n_labeled, draw, seed, method in coordinates:
        overrides = _run_overrides(spec, n_labeled, method, draw, seed)
        cfg = load_config(spec.dataset, spec.config_file, overrides)
        if cfg.split.scheme == "random" and draw >= cfg.split.draws:
            raise ConfigError(
                f"tfaug grid: --draws {spec.draws} exceeds the config's split.draws="
                f"{cfg.split.draws}; pass --draws {cfg.split.draws} "
                f"or --set split.draws={spec.draws}"
            )
        path = spec.runs_dir / run_name(cfg)
        argv = _train_argv(spec, overrides)
        runs.append(GridRun(n_labeled, method, draw, seed, path, argv, cfg.to_dict()))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n`` (0-based, as Slurm's array task ids).

    Raises:
        ConfigError: not of the form ``i/n`` or ``i`` out of range.
    """
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--shard {text!r}: expected i/n with integers, e.g. --shard 0/4")
    index, count = int(parts[0]), int(parts[1])
    if not 0 <= index < count:
        raise ConfigError(
            f"--shard {text!r}: expected 0 <= i < n (shards are numbered from 0), "
            f"e.g. --shard 0/{max(count, 1)} .. {max(count, 1) - 1}/{max(count, 1)}"
        )
    return index, count


def shard_runs(runs: Sequence[GridRun], index: int, count: int) -> list[GridRun]:
    """Runs ``index, index + count, index + 2·count, ...`` of ``runs``.

    For ``index`` in ``0 .. count-1`` the shards are disjoint and cover ``runs``; their
    sizes differ by at most one. The split depends only on the order of ``runs``.
    """
    return list(runs[index::count])


def format_plan(runs: Sequence[GridRun]) -> str:
    """One line per run: status and run directory (and the differing keys of a ``differs``
    run), then a count per status."""
    lines, counts = [], {}
    for run in runs:
        status = run.status
        counts[status] = counts.get(status, 0) + 1
        keys = f"  (differs in {', '.join(run.differences())})" if status == "differs" else ""
        lines.append(f"{status:<12} {run.path}{keys}")
    totals = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines.append(f"{len(runs)} runs: {totals or 'none'}")
    return "\n".join(lines)


def execute_grid(runs: Sequence[GridRun], *, echo: bool = True) -> list[GridRun]:
    """Execute every unfinished run of ``runs`` in order, each in a ``tfaug train`` subprocess.

    Finished runs, and runs another process is training, are skipped; interrupted ones
    resume. A run whose directory holds another config (status ``differs``, finished or not)
    is not trained: its message (the differing keys and the fixes) is printed and it counts
    as failed. A run's stdout and stderr are appended to ``<run dir>/grid.log``. A failing
    run does not stop the grid.

    Args:
        runs: the (sharded) plan of :func:`plan_grid`.
        echo: print one line per run (started, skipped, finished or failed).

    Returns:
        The runs whose subprocess exited with a non-zero code, and the ``differs`` runs
        (empty if all succeeded).
    """
    failed = []
    for number, run in enumerate(runs, start=1):
        prefix = f"[{number}/{len(runs)}] {run.path.name}"
        status = run.status
        if status == "finished":
            _say(echo, f"{prefix}: finished, skipped")
            continue
        if status == "differs":
            failed.append(run)
            _say(echo, f"{prefix}: not trained: {run.config_error()}")
            continue
        holder = run_holder(run.path)
        if holder is not None:
            _say(echo, f"{prefix}: running in another process ({holder}), skipped")
            continue
        _say(echo, f"{prefix}: {'resuming' if status == 'interrupted' else 'starting'}")
        run.path.mkdir(parents=True, exist_ok=True)
        with open(run.path / "grid.log", "a", encoding="utf-8") as log:
            code = subprocess.call(
                [sys.executable, "-m", "tfaug.cli", *run.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            failed.append(run)
            _say(echo, f"{prefix}: FAILED (exit {code}); see {run.path / 'grid.log'}")
        else:
            _say(echo, f"{prefix}: done")
    return failed


def _say(echo: bool, text: str) -> None:
    if echo:
        print(text, flush=True)
