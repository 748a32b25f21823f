"""Generators shared by the runs of one (dataset, N_L, draw, seed): trained once, reused.

The methods ``gd``, ``gi``, ``gdgi`` and ``gdgi_mixup`` differ only in how the final
segmenter uses the generators, so the pre-training and generator stages live in one
*generator directory*, ``<runs_dir>/<dataset>-nl<N>-generators-split<k>-seed<s>[...]/``,
whose ``config.yaml`` is the run's config with everything the final stage alone reads
neutralised (:func:`generator_config`). Each run directory links its
``checkpoints/<stage>`` to the shared stage folder, so a run still shows every checkpoint it
used. An exclusive file lock serialises runs that reach the same generator stages at the same
time (grid shards on one machine or on a shared file system with POSIX locks).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tfaug.config import READ_BY_FINAL, READ_BY_RANDOM, Config
from tfaug.methods import GENERATOR_METHODS, generator_stage
from tfaug.runs.rundir import (
    RunDirectory,
    RunDirectoryError,
    open_run_directory,
    recorded_differences,
    run_name,
)


def generator_config(cfg: Config) -> Config:
    """The config that determines the generator stages of ``cfg``'s run.

    ``method`` becomes ``"generators"``, and every field the generator stages do not read
    (metadata ``read_by`` of :func:`tfaug.config.setting`: the final stage's iterations, the
    random elastic and intensity parameters unless ``augment.random_before_generators``
    makes the generator stages use them, Mixup, how the generators are composed) takes its
    ``generator_value`` (default: the field's default). Everything else (data, split,
    networks, λs, mode, seed, affine parameters, tag) is kept, so two runs share generators
    exactly when their generator stages would be the same.
    """
    shared = copy.deepcopy(cfg)
    shared.method = "generators"
    random_read = cfg.augment.random_before_generators
    for section in dataclasses.fields(shared):
        values = getattr(shared, section.name)
        if not dataclasses.is_dataclass(values):
            continue
        defaults = type(values)()
        for item in dataclasses.fields(values):
            read_by = item.metadata.get("read_by")
            if read_by == READ_BY_FINAL or (read_by == READ_BY_RANDOM and not random_read):
                value = item.metadata.get("generator_value", getattr(defaults, item.name))
                setattr(values, item.name, value)
    return shared


def generator_directory(cfg: Config) -> RunDirectory:
    """The shared generator directory of ``cfg``'s run (it may not exist yet)."""
    shared = generator_config(cfg)
    return RunDirectory(Path(shared.runs_dir) / run_name(shared))


def check_generator_directory(cfg: Config, *, any_method: bool = False) -> None:
    """Refuse ``cfg``'s run if its shared generator directory holds another config.

    Nothing is checked for a directory not created yet, or (unless ``any_method``) for a
    method without shared generators (:data:`tfaug.methods.GENERATOR_METHODS`). The configs
    are compared as a run's are (:func:`tfaug.runs.rundir.recorded_differences`: keys added
    since count as at their defaults, location keys are left out).

    Raises:
        RunDirectoryError: naming the folder, the differing keys and the fix (``--tag``).
    """
    if not (any_method or GENERATOR_METHODS.get(cfg.method)):
        return
    shared = generator_directory(cfg)
    changed = recorded_differences(shared.config_path, generator_config(cfg).to_dict())
    if changed:
        raise RunDirectoryError(
            f"{shared.path}: this run's shared generators folder holds the generators of a "
            f"different config (differs in {', '.join(changed)}); nothing was changed "
            "(--force replaces a run's segmenter, not the generators other runs share). Pass "
            "--tag NAME (tfaug grid: --set tag=NAME) to train these settings as a new run with "
            "its own generators folder."
        )


def open_generator_directory(cfg: Config, run: RunDirectory, stages: list[str]) -> RunDirectory:
    """Open the shared generator directory of ``cfg`` and link ``stages`` into ``run``.

    A stage folder that already exists in ``run`` (a real folder, or a link) is left as it
    is, so runs started before sharing existed resume from their own checkpoints.

    Raises:
        RunDirectoryError: the generator directory holds a different config
            (:func:`check_generator_directory`).
    """
    check_generator_directory(cfg, any_method=True)
    shared = open_run_directory(generator_config(cfg))
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shared.stage(stage).mkdir(parents=True, exist_ok=True)
        link = run.stage(stage)
        if not link.exists() and not link.is_symlink():
            link.symlink_to(os.path.relpath(shared.stage(stage), run.checkpoints))
    return shared


# -- the generators a finished run trained with ----------------------------------------------
GENERATOR_WEIGHTS = "generator_weights_sha256"
"""The key of results.json recording, per generator stage, the SHA-256 of the kept weights
file (``checkpoints/<stage>/best/generator.weights.h5``) the run's final stage used."""


def generator_weights_sha256(run: RunDirectory, kinds: Iterable[str]) -> dict[str, str]:
    """Stage name → SHA-256 of its kept generator weights, read through ``run``'s links."""
    return {
        generator_stage(kind): _sha256(_kept_generator(run, generator_stage(kind)))
        for kind in kinds
    }


def retrained_generators_message(run: RunDirectory) -> str | None:
    """Why the finished ``run``'s generators cannot go with its segmenter, or ``None``.

    Compares the kept weights of each generator stage the run linked with the SHA-256 its
    results.json recorded when it finished (:data:`GENERATOR_WEIGHTS`). A run finished before
    tfaug recorded them, or a stage whose weights file is missing (reported by the caller),
    cannot be checked and passes.
    """
    try:
        recorded = json.loads(run.results_path.read_text(encoding="utf-8")).get(GENERATOR_WEIGHTS)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(recorded, dict):
        return None
    changed = [
        stage
        for stage, digest in sorted(recorded.items())
        if _kept_generator(run, stage).is_file() and _sha256(_kept_generator(run, stage)) != digest
    ]
    if not changed:
        return None
    folders = sorted({str(run.stage(stage).resolve().parent.parent) for stage in changed})
    return (
        f"{run.path}: the generators in {', '.join(folders)} ({', '.join(changed)}) were "
        "retrained after this run finished: their weights differ from those its results.json "
        f"records ({GENERATOR_WEIGHTS}), so they are not the generators its segmenter was "
        "trained with. Retrain the run with --force (with the generators' settings, or under "
        "a --tag), or restore the generators it was trained with."
    )


def _kept_generator(run: RunDirectory, stage: str) -> Path:
    return run.stage(stage) / "best" / "generator.weights.h5"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) while the block runs."""
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
