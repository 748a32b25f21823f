"""A tiny phantom configuration that runs the whole of Algorithm 1 in well under a minute.

12 phantom subjects (2 test, 1 validation, 3 unlabeled, a labeled pool of 6), 32x32 slices
at 5 mm, no N4, narrow networks, batch 4, a handful of iterations per stage. Used by the
training, evaluation and CLI tests, in-process (:func:`tiny_config`) or through the command
line (:func:`write_tiny_yaml`).
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf
import yaml

from tfaug.config import Config, load_config
from tfaug.data.records import Cache, prepare_cache
from tfaug.models.unet import UNet

SIDE = 32  # the tiny slice size (crop 32)
POOL_SIZE = 6  # 12 subjects - 2 test - 1 validation - 3 unlabeled
# Three-level networks: on 32x32 slices a step traces about a third faster than with the
# default five levels, and every code path (skips, z-branch, strided convs) is still there.
UNET_FILTERS = (4, 8, 8)
GENERATOR_FILTERS = (8, 4, 4)
DISCRIMINATOR_FILTERS = (4, 8, 8)

TINY = {
    "phantom": {"subjects": 12},
    "preprocess": {"crop_size": 32, "spacing_mm": 5.0, "n4": False},
    "split": {"n_unlabeled": 3, "n_test": 2, "n_validation": 1, "draws": 2},
    "model": {
        "unet_filters": list(UNET_FILTERS),
        "generator_filters": list(GENERATOR_FILTERS),
        "generator_image_filters": 4,
        "discriminator_filters": list(DISCRIMINATOR_FILTERS),
        "discriminator_units": 8,
        "z_dim": 8,
    },
    "train": {
        "batch_size": 4,
        "pretrain_iterations": 2,
        "generator_iterations": 9,
        "segmenter_iterations": 4,
        "validate_every": 3,
        "graph_optimization": False,
    },
}


def write_tiny_yaml(path: Path) -> Path:
    """Write :data:`TINY` as a ``--config`` YAML file at ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return path


def tiny_overrides() -> list[str]:
    """:data:`TINY` as ``section.key=value`` strings (``--set`` syntax)."""
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section, values in TINY.items()
        for key, value in values.items()
    ]


def tiny_config(cache_dir: Path, runs_dir: Path, method: str = "gdgi") -> Config:
    """The phantom config with :data:`TINY` merged in, caching and running under the given dirs.

    Args:
        cache_dir: where the phantom and its TFRecords go (share it to build them once).
        runs_dir: the runs folder.
        method: the augmentation method.
    """
    cfg = load_config("phantom", overrides=tiny_overrides())
    cfg.data.cache_dir = str(cache_dir)
    cfg.runs_dir = str(runs_dir)
    cfg.method = method
    return cfg


def prepare_tiny_cache(base: Path) -> tuple[Config, Cache]:
    """Generate the tiny phantom and its TFRecords cache under ``base/tiny-cache`` (reused).

    Tests that pass the same ``base`` (pytest's session base temp) share one cache.

    Returns:
        The tiny config (runs under ``base/tiny-runs``) and the prepared cache.
    """
    cfg = tiny_config(base / "tiny-cache", base / "tiny-runs")
    return cfg, prepare_cache(cfg, progress=False)


def build_tiny_unet(n_classes: int = 2) -> UNet:
    """A built three-level U-Net S with narrow :data:`UNET_FILTERS` for (B,32,32,1) slices."""
    unet = UNet(n_classes, filters=UNET_FILTERS, bn_momentum=0.9)
    unet(tf.zeros((1, SIDE, SIDE, 1)))
    return unet
