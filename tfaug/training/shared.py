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
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tfaug.config import AugmentConfig, Config
from tfaug.training.rundir import RunDirectory, open_run_directory

GENERATOR_STAGE_NAMES = ("pretrain", "generator_deformation", "generator_intensity")


def generator_config(cfg: Config) -> Config:
    """The config that determines the generator stages of ``cfg``'s run.

    ``method`` becomes ``"generators"``; the final stage's iteration count and the
    non-affine augmentation parameters (random elastic, random intensity, Mixup, the
    composition of the generators) are reset to their defaults, since only the final
    segmenter stage reads them, except the random elastic and intensity parameters when
    ``augment.random_before_generators`` makes the generator stages use them. Everything
    else (data, split, networks, λs, mode, seed, affine parameters, tag) is kept.
    """
    shared = copy.deepcopy(cfg)
    shared.method = "generators"
    shared.train.segmenter_iterations = 0
    aug = cfg.augment
    shared.augment = AugmentConfig(
        affine_probability=aug.affine_probability,
        scale_range=list(aug.scale_range),
        rotation_degrees=aug.rotation_degrees,
    )
    if aug.random_before_generators:  # the generator stages apply RD and RI too
        shared.augment.random_before_generators = True
        shared.augment.elastic_sigma_mm = aug.elastic_sigma_mm
        shared.augment.elastic_grid = aug.elastic_grid
        shared.augment.contrast_range = list(aug.contrast_range)
        shared.augment.brightness_range = list(aug.brightness_range)
    return shared


def open_generator_directory(cfg: Config, run: RunDirectory, stages: list[str]) -> RunDirectory:
    """Open the shared generator directory of ``cfg`` and link ``stages`` into ``run``.

    A stage folder that already exists in ``run`` (a real folder, or a link) is left as it
    is, so runs started before sharing existed resume from their own checkpoints.

    Raises:
        RunDirectoryError: the generator directory holds a different config.
    """
    shared = open_run_directory(generator_config(cfg))
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        shared.stage(stage).mkdir(parents=True, exist_ok=True)
        link = run.stage(stage)
        if not link.exists() and not link.is_symlink():
            link.symlink_to(os.path.relpath(shared.stage(stage), run.checkpoints))
    return shared


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) while the block runs."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
