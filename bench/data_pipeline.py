"""Slices per second delivered by ``labeled_dataset``, compared with a training step's rate.

Usage (from the repository root, or with tfaug installed):
``python bench/data_pipeline.py [--subjects 20] [--batch-size 16] [--batches 100]
[--crops 64,224] [--cache-dir cache]``.

For each crop size, a phantom cache is prepared (or reused) with the phantom config
(64 px at 2.5 mm; 224 px at the paper's 1.367 mm), then ``--warmup`` batches are drawn
(decode and ``cache()`` fill happen there) and the next ``--batches`` are timed. N4 is
off unless ``--n4``: it changes the records' values, not the pipeline's speed, and it
dominates preparation time. Then a plain U-Net S step (Keras ``train_on_batch`` on
batches already in memory, so the pipeline is excluded) is timed at the same size and
the ratio printed: above 1 the pipeline is not the bottleneck. Numbers depend on the
machine and its load; nothing is asserted.

:func:`training_step_slices_per_second` and :func:`compare_with_training_step` take any
step callable, so the project's own train steps can be compared the same way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from typing import Any

import keras
import tensorflow as tf

from tfaug.config import Config, load_config
from tfaug.data.pipeline import labeled_dataset
from tfaug.data.records import prepare_cache
from tfaug.models.unet import UNet


def pipeline_slices_per_second(
    dataset: tf.data.Dataset, batch_size: int, batches: int, warmup: int
) -> float:
    """Slices/s of an infinite batched dataset: ``warmup`` batches untimed, then ``batches``."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def training_step_slices_per_second(
    step: Callable[[Any], Any], batches: Iterable[Any], batch_size: int, warmup: int = 2
) -> float:
    """Slices/s of ``step`` called on batches already in memory (the pipeline excluded).

    Args:
        step: one training step, e.g. ``model.train_on_batch`` or a compiled
            ``train_step``; called as ``step(batch)`` and its result converted to numpy
            (``keras.ops.convert_to_numpy``), so asynchronous work is finished.
        batches: the batches to feed, in order; the first ``warmup`` ones are untimed
            (tracing and compilation happen there).
        batch_size: B, slices per batch.
        warmup: untimed calls before timing.
    """
    batches = list(batches)
    if len(batches) <= warmup:
        raise ValueError(f"batches: need more than warmup={warmup} batches, got {len(batches)}")
    for batch in batches[:warmup]:
        keras.tree.map_structure(keras.ops.convert_to_numpy, step(batch))
    start = time.perf_counter()
    for batch in batches[warmup:]:
        keras.tree.map_structure(keras.ops.convert_to_numpy, step(batch))
    return (len(batches) - warmup) * batch_size / (time.perf_counter() - start)


def compare_with_training_step(pipeline_rate: float, training_rate: float | None) -> str:
    """One line comparing the pipeline's slices/s with a training step's (None: not timed)."""
    if training_rate is None:
        return f"pipeline {pipeline_rate:10.1f} slices/s (no training step timed)"
    ratio = pipeline_rate / training_rate
    verdict = "pipeline is not the bottleneck" if ratio > 1 else "pipeline is the bottleneck"
    return (
        f"pipeline {pipeline_rate:10.1f} slices/s, training step {training_rate:8.1f} "
        f"slices/s, ratio {ratio:6.1f}x: {verdict}"
    )


def unet_step(cfg: Config) -> Callable[[tuple[tf.Tensor, tf.Tensor]], Any]:
    """A reference step: the config's U-Net S with Adam and sparse cross-entropy."""
    model = UNet(
        n_classes=cfg.data.n_classes,
        filters=cfg.model.unet_filters,
        bn_momentum=cfg.model.bn_momentum,
        bn_epsilon=cfg.model.bn_epsilon,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return lambda batch: model.train_on_batch(batch[0], batch[1])


def bench_config(args: argparse.Namespace, crop: int) -> Config:
    overrides = [f"phantom.subjects={args.subjects}", f"preprocess.crop_size={crop}"]
    overrides.append(f"preprocess.n4={'true' if args.n4 else 'false'}")
    if crop >= 224:
        overrides.append("preprocess.spacing_mm=1.367")  # the paper's grid
    cfg = load_config("phantom", overrides=overrides)
    cfg.data.cache_dir = args.cache_dir
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--crops", default="64,224", help="comma-separated crop sizes")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--n4", action="store_true", help="prepare with N4 (slow)")
    args = parser.parse_args()

    print(f"labeled_dataset, batch {args.batch_size}, phantom with {args.subjects} subjects, CPU")
    for crop in (int(text) for text in args.crops.split(",")):
        cfg = bench_config(args, crop)
        cache = prepare_cache(cfg, progress=True)
        dataset = labeled_dataset(cache, cache.case_ids, args.batch_size, seed=0)
        rate = pipeline_slices_per_second(dataset, args.batch_size, args.batches, args.warmup)
        batches = list(dataset.take(args.train_steps + 2))
        step_rate = training_step_slices_per_second(unet_step(cfg), batches, args.batch_size)
        slices = sum(cache.n_slices(case_id) for case_id in cache.case_ids)
        print(
            f"{crop:>4}x{crop:<4} {slices:>5} slices  {compare_with_training_step(rate, step_rate)}"
        )


if __name__ == "__main__":
    main()
