"""Slices/s and achieved GFLOP/s of the training steps: eager, tf.function and XLA.

Usage (from the repository root, tfaug installed): ``python bench/train_step.py
[--configs phantom,paper] [--steps S,GV,GI] [--modes eager,tf.function,xla]
[--timed-steps N] [--json out.json]``.

Steps: ``S`` is the segmenter step (:class:`SegmenterModel` with random affine
augmentation, as in pre-training), ``GV`` and ``GI`` the joint (S, GV, DV) and (S, GI, DI)
steps (:class:`JointAugmentationModel`, affine augmentation on, joint mode). Configs:
``phantom`` is ``configs/phantom.yaml`` (64×64, batch 16, narrow networks); ``paper`` is
``configs/acdc.yaml`` (224×224, batch 20, the paper's widths). Modes: ``eager`` calls
``train_step`` directly; ``tf.function`` and ``xla`` use the function the training loop
builds (:func:`tfaug.training.loop.compile_train_step`, ``jit_compile`` false / true).

Each row: a fresh model, ``--warmup`` untimed steps (tracing, XLA compilation), then the
median time of ``--timed-steps`` steps on random batches already in memory (the data
pipeline is excluded; ``bench/data_pipeline.py`` measures it). Achieved GFLOP/s = the
step's convolution/dense FLOPs (``bench/flops.py``: 3× forward per network call) / step
time. Right before each row, a float32 ``--matmul``² matmul is timed in the same process:
achieved / matmul GFLOP/s is the "fraction of the machine", a ratio that holds on a shared,
busy machine where absolute times drift. Nothing is asserted; runs on any device TensorFlow
picks (on a GPU machine the same table comes out for the GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import TRAINING_FACTOR, model_flops  # noqa: E402

from tfaug.config import Config, load_config  # noqa: E402
from tfaug.ops.warp import dense_image_warp  # noqa: E402
from tfaug.training.builders import (  # noqa: E402
    build_affine,
    build_discriminator,
    build_generator,
    build_segmenter,
)
from tfaug.training.joint import JointAugmentationModel  # noqa: E402
from tfaug.training.loop import compile_train_step  # noqa: E402
from tfaug.training.segmenter import SegmenterModel  # noqa: E402

CONFIGS = {"phantom": "phantom", "paper": "acdc"}  # bench name → configs/<dataset>.yaml
STEPS = {"S": None, "GV": "deformation", "GI": "intensity"}  # step → generator kind
STEP_NAMES = {"S": "S", "GV": "joint (S, GV, DV)", "GI": "joint (S, GI, DI)"}
MODES = {"eager": None, "tf.function": False, "xla": True}  # mode → jit_compile


def matmul_gflops(size: int, repeats: int = 5) -> float:
    """GFLOP/s of a float32 (size×size)·(size×size) matmul in a tf.function (median)."""
    a = tf.random.stateless_normal((size, size), seed=(0, 1))
    b = tf.random.stateless_normal((size, size), seed=(0, 2))
    product = tf.function(tf.matmul)
    product(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def build_step(cfg: Config, step: str) -> tuple[keras.Model, int]:
    """A compiled training model for ``step`` and its training FLOPs per batch.

    FLOPs per batch: ``TRAINING_FACTOR ·`` forward FLOPs per slice, summed over the network
    calls of one step: S step: S(B); joint step: G(B) + S(B) + D(B) in the G/S update,
    then D(B_u) + D(B) in the D update (B_u = B here).
    """
    batch = cfg.train.batch_size
    segmenter = build_segmenter(cfg)
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    affine = build_affine(cfg, seed=1)
    if STEPS[step] is None:
        model = SegmenterModel(
            segmenter,
            n_classes=cfg.data.n_classes,
            class_weights=cfg.train.class_weights,
            affine=affine,
        )
        model.compile(optimizer=optimizer)
        return model, TRAINING_FACTOR * batch * model_flops(segmenter)
    generator = build_generator(cfg, STEPS[step])
    discriminator = build_discriminator(cfg)
    model = JointAugmentationModel(
        segmenter,
        generator,
        discriminator,
        kind=STEPS[step],
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        lambda_adv=cfg.train.lambda_adv,
        lambda_ld=cfg.train.lambda_ld,
        generated_fraction=tuple(cfg.train.generated_fraction),
        affine=affine,
        seed=1,
    )
    model.compile(g_optimizer=optimizer, d_optimizer=keras.optimizers.Adam(1e-3))
    per_slice = model_flops(generator) + model_flops(segmenter) + 3 * model_flops(discriminator)
    return model, TRAINING_FACTOR * batch * per_slice


def random_batch(cfg: Config, step: str, seed: int) -> Any:
    """A batch of the step's input structure: U(0, 1) images, uniform integer labels."""
    rng = np.random.default_rng(seed)
    size, batch = cfg.preprocess.crop_size, cfg.train.batch_size
    images = tf.constant(rng.uniform(0, 1, (batch, size, size, 1)), tf.float32)
    labels = tf.constant(rng.integers(0, cfg.data.n_classes, (batch, size, size)), tf.int32)
    if STEPS[step] is None:
        return images, labels
    unlabeled = tf.constant(rng.uniform(0, 1, (batch, size, size, 1)), tf.float32)
    return (images, labels), unlabeled


def step_seconds(function: Callable[[Any], Any], batches: list[Any], warmup: int) -> float:
    """Median seconds per call of ``function`` after ``warmup`` untimed calls."""
    times = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        keras.tree.map_structure(keras.ops.convert_to_numpy, function(batch))
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_row(
    bench_config: str, step: str, mode: str, *, warmup: int, timed: int, matmul: int
) -> dict[str, Any]:
    """Time one (config, step, mode); returns the row as a dict (see :func:`markdown_table`)."""
    cfg = load_config(CONFIGS[bench_config])
    keras.utils.set_random_seed(0)
    model, flops = build_step(cfg, step)
    jit_compile = MODES[mode]
    function = model.train_step if jit_compile is None else compile_train_step(model, jit_compile)
    batches = [random_batch(cfg, step, seed) for seed in range(warmup + timed)]
    machine = matmul_gflops(matmul)
    seconds = step_seconds(function, batches, warmup)
    achieved = flops / seconds / 1e9
    return {
        "config": bench_config,
        "size": cfg.preprocess.crop_size,
        "batch": cfg.train.batch_size,
        "step": STEP_NAMES[step],
        "mode": mode,
        "ms_per_step": 1e3 * seconds,
        "slices_per_s": cfg.train.batch_size / seconds,
        "gflop_per_step": flops / 1e9,
        "gflops": achieved,
        "matmul_gflops": machine,
        "fraction": achieved / machine,
    }


def warp_milliseconds(cfg: Config, jit_compile: bool, repeats: int = 5) -> float:
    """Median ms of the joint GV step's warp part alone: forward and backward.

    Warps a (B,S,S,1) image and a (B,S,S,C) one-hot label map by one (B,S,S,2) flow of up to
    ±5 px and differentiates the sum of both w.r.t. the flow (the gather-bound part of the
    step; G, S and D excluded), in a ``tf.function`` with the given ``jit_compile``.
    """
    rng = np.random.default_rng(0)
    size, batch, classes = cfg.preprocess.crop_size, cfg.train.batch_size, cfg.data.n_classes
    images = tf.constant(rng.uniform(0, 1, (batch, size, size, 1)), tf.float32)
    labels = tf.one_hot(rng.integers(0, classes, (batch, size, size)), classes)
    flow = tf.constant(rng.uniform(-5, 5, (batch, size, size, 2)), tf.float32)

    @tf.function(jit_compile=jit_compile)
    def warp_and_gradient(flow: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(flow)
            total = tf.reduce_sum(dense_image_warp(images, flow))
            total += tf.reduce_sum(dense_image_warp(labels, flow) * labels)
        return tape.gradient(total, flow)

    return 1e3 * step_seconds(warp_and_gradient, [flow] * (repeats + 1), warmup=1)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, with each mode's speed-up over ``tf.function``."""
    baseline = {
        (r["config"], r["step"]): r["slices_per_s"] for r in rows if r["mode"] == "tf.function"
    }
    lines = [
        "| config | step | mode | ms/step | slices/s | vs tf.function | GFLOP/step | GFLOP/s "
        "| matmul GFLOP/s | fraction |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        reference = baseline.get((r["config"], r["step"]))
        speedup = f"{r['slices_per_s'] / reference:.2f}×" if reference else "–"
        lines.append(
            f"| {r['config']} {r['size']}² B={r['batch']} | {r['step']} | {r['mode']} "
            f"| {r['ms_per_step']:.0f} | {r['slices_per_s']:.1f} | {speedup} "
            f"| {r['gflop_per_step']:.1f} | {r['gflops']:.1f} | {r['matmul_gflops']:.1f} "
            f"| {r['fraction']:.2f} |"
        )
    return "\n".join(lines)


def _names(text: str, valid: dict[str, Any], option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(valid))
    if unknown or not names:
        raise SystemExit(f"{option}: unknown {unknown or 'empty list'}; choose from {list(valid)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="phantom,paper")
    parser.add_argument("--steps", default="S,GV,GI")
    parser.add_argument("--modes", default="eager,tf.function,xla")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed-steps", type=int, default=None, help="default 10 / 3 (paper)")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the matmul")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the GV step's warp part alone"
    )
    args = parser.parse_args()
    configs = _names(args.configs, CONFIGS, "--configs")
    steps = _names(args.steps, STEPS, "--steps")
    modes = _names(args.modes, MODES, "--modes")

    print(f"training steps on {tf.config.list_logical_devices()[-1].device_type}, float32")
    rows = []
    for bench_config in configs:
        timed = args.timed_steps or (3 if bench_config == "paper" else 10)
        for step in steps:
            for mode in modes:
                row = bench_row(
                    bench_config, step, mode, warmup=args.warmup, timed=timed, matmul=args.matmul
                )
                rows.append(row)
                print(
                    f"{bench_config:<8} {row['step']:<18} {mode:<12} {row['slices_per_s']:8.1f} "
                    f"slices/s  {row['gflops']:7.1f} GFLOP/s  fraction {row['fraction']:.2f}",
                    flush=True,
                )
        if args.breakdown and "GV" in steps:
            cfg = load_config(CONFIGS[bench_config])
            for mode, jit_compile in (("tf.function", False), ("xla", True)):
                milliseconds = warp_milliseconds(cfg, jit_compile)
                print(
                    f"{bench_config:<8} GV warp forward+backward alone, {mode}: "
                    f"{milliseconds:.0f} ms"
                )
    print()
    print(markdown_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
