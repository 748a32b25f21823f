"""Slices/s and achieved GFLOP/s of the training steps: eager, tf.function and XLA.

Usage (from the repository root, tfaug installed): ``python bench/train_step.py
[--configs phantom,paper] [--steps S,GV,GI,UM,FM] [--modes eager,tf.function,xla]
[--timed-steps N] [--json out.json]``.

Steps: ``S`` is the segmenter step (:class:`SegmenterModel` with random affine
augmentation, as in pre-training), ``GV`` and ``GI`` the joint (S, GV, DV) and (S, GI, DI)
steps (:class:`JointAugmentationModel`, affine augmentation on, joint mode), ``UM`` and
``FM`` the weak-to-strong consistency steps of the ``unimatch`` and ``fixmatch`` comparisons
(:class:`ConsistencyModel` built as training builds it,
:func:`tfaug.baselines.comparisons.build_consistency_model`: UM with two strong views and
the feature-perturbation stream, FM with one strong view; batches ``((x_l, y_l), x_u)`` of
``consistency_batch_sizes`` rows, B_l + B_u = the config's batch). Configs: ``phantom`` is
``configs/phantom.yaml`` (64×64, batch 16, narrow networks); ``paper`` is
``configs/acdc.yaml`` (224×224, batch 20, the paper's widths). Modes: ``eager`` calls
``train_step`` directly; ``tf.function`` and ``xla`` use the function the training loop
builds (:func:`tfaug.training.loop.compile_train_step`, ``jit_compile`` false / true).

Each row: a fresh model, ``--warmup`` untimed steps (tracing, XLA compilation), then the
median time of ``--timed-steps`` steps on random batches already in memory (the data
pipeline is excluded; ``bench/data_pipeline.py`` measures it). Achieved GFLOP/s = the
step's convolution/dense FLOPs (``bench/flops.py``: 3× forward per network call, see
:func:`build_step` for what each step counts) / step time. Right before each row, a float32
``--matmul``² matmul is timed in the same process: achieved / matmul GFLOP/s is the
"fraction of the machine", a ratio that holds on a shared, busy machine where absolute times
drift. With a UM row, the unimatch step's ms/step is also printed relative to the S and joint
rows of the same config and mode. Nothing is asserted; runs on any device TensorFlow picks
(on a GPU machine the same table comes out for the GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import TRAINING_FACTOR, model_flops  # noqa: E402

from tfaug.baselines.comparisons import (  # noqa: E402
    build_consistency_model,
    consistency_batch_sizes,
)
from tfaug.config import Config, load_config  # noqa: E402
from tfaug.models.unet import UNet  # noqa: E402
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
GENERATOR_KINDS = {"GV": "deformation", "GI": "intensity"}  # joint step → generator kind
# consistency step → cfg.method
CONSISTENCY_METHODS = {
    "UM": "unimatch",
    "FM": "fixmatch",
    "UMG": "unimatch_gdgi",
    "UMJ": "unimatch_gdgi_joint",
}
STEP_NAMES = {
    "S": "S",
    "GV": "joint (S, GV, DV)",
    "GI": "joint (S, GI, DI)",
    "UM": "unimatch",
    "FM": "fixmatch",
    "UMG": "unimatch_gdgi",
    "UMJ": "unimatch_gdgi_joint",
}
STEPS = tuple(STEP_NAMES)
MODES = {"eager": None, "tf.function": False, "xla": True}  # mode → jit_compile
SEED = 1  # seed of every step's augmentation layers and random draws


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
    """A compiled training model for ``step`` (one of :data:`STEPS`) and its training FLOPs
    per batch, ``TRAINING_FACTOR`` (3) × the forward FLOPs of every network call of one step
    (B = ``train.batch_size``):

    - ``S``: S(B) (:func:`build_segmenter_step`);
    - ``GV``/``GI``: G(B) + S(B) + D(B) in the G/S update, then D(B_u) + D(B) in the D
      update, B_u = B here (:func:`build_joint_step`);
    - ``UM``/``FM``: S's encoder and decoder on B_l + B_u rows, the decoder again on the B_u
      feature-perturbed rows (UM only), then S on V·B_u strong rows, V = 2 (UM) or 1 (FM);
      B_l + B_u = B; ``UMG`` as UM, plus S on the B_u learned-view rows and, forward only
      (frozen, no training factor), GV and GI on the B_u rows and on the generated half of
      the labeled rows (:func:`build_consistency_step`).

    Every row is counted with the training factor, including those whose output gets no
    gradient (the teacher rows of the consistency steps): they are rows of the same
    convolution calls, whose backward pass runs over the whole batch.
    """
    if step in GENERATOR_KINDS:
        return build_joint_step(cfg, GENERATOR_KINDS[step])
    if step in CONSISTENCY_METHODS:
        return build_consistency_step(cfg, CONSISTENCY_METHODS[step])
    if step == "S":
        return build_segmenter_step(cfg)
    raise ValueError(f"build_step: unknown step {step!r}; choose from {list(STEPS)}")


def build_segmenter_step(cfg: Config) -> tuple[SegmenterModel, int]:
    """The S step (random affine augmentation, Adam) and its FLOPs: 3 · B · S."""
    segmenter = build_segmenter(cfg)
    model = SegmenterModel(
        segmenter,
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        affine=build_affine(cfg, seed=SEED),
    )
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate))
    return model, TRAINING_FACTOR * cfg.train.batch_size * model_flops(segmenter)


def build_joint_step(cfg: Config, kind: str) -> tuple[JointAugmentationModel, int]:
    """The joint (S, G, D) step of generator ``kind`` (``"deformation"``/``"intensity"``)
    and its FLOPs: 3 · B · (G + S + 3·D)."""
    segmenter = build_segmenter(cfg)
    generator = build_generator(cfg, kind)
    discriminator = build_discriminator(cfg)
    model = JointAugmentationModel(
        segmenter,
        generator,
        discriminator,
        kind=kind,
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        lambda_adv=cfg.train.lambda_adv,
        lambda_ld=cfg.train.lambda_ld,
        generated_fraction=tuple(cfg.train.generated_fraction),
        affine=build_affine(cfg, seed=SEED),
        seed=SEED,
    )
    model.compile(
        g_optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
        d_optimizer=keras.optimizers.Adam(1e-3),
    )
    per_slice = model_flops(generator) + model_flops(segmenter) + 3 * model_flops(discriminator)
    return model, TRAINING_FACTOR * cfg.train.batch_size * per_slice


def build_consistency_step(cfg: Config, method: str) -> tuple[keras.Model, int]:
    """The weak-to-strong consistency step of ``method`` (``"unimatch"``/``"fixmatch"``) as
    the ``consistency`` stage builds it, and its FLOPs.

    ``cfg`` is not changed: the model is built from a copy whose ``method`` is ``method``.
    FLOPs: 3 · ((B_l + B_u)·(E + D) + [stream]·B_u·D + V·B_u·(E + D)), with E and D the
    forward FLOPs per slice of S's encoder and decoder (:func:`segmenter_flops`), V the
    strong views and [stream] 1 with the feature-perturbation stream (``unimatch``), else 0;
    ``unimatch_gdgi`` adds, for the frozen (untrained here) generators, forward only:
    3 · B_u·(E + D) and B_u·(GV + GI) for its learned view, and (B_l − ⌊B_l/2⌋)·(GV + k·GI)
    for the generated labeled rows, k = 2 with ``augment.generated_composition: choice`` (GI
    runs on the image and on the warped image, then one is chosen) and 1 with ``chain``.
    ``unimatch_gdgi_joint`` adds the same 3 · B_u·(E + D) and, trained, 3 · N·(GV + GI + DI)
    for its N = B_u + (B_l − ⌊B_l/2⌋) generated rows (G, and D judging them in the
    objective) and 3 · (B_u + N)·DI for D's update, DI the forward FLOPs of D per slice.
    """
    cfg = dataclasses.replace(cfg, method=method)
    segmenter = build_segmenter(cfg)
    generators, discriminator = {}, None
    if method in ("unimatch_gdgi", "unimatch_gdgi_joint"):
        generators = {kind: build_generator(cfg, kind) for kind in ("deformation", "intensity")}
    if method == "unimatch_gdgi_joint":
        discriminator = build_discriminator(cfg)
    model = build_consistency_model(cfg, segmenter, SEED, generators, discriminator)
    n_labeled, n_unlabeled = consistency_batch_sizes(cfg)
    encoder, decoder = segmenter_flops(segmenter)
    weak = (n_labeled + n_unlabeled) * (encoder + decoder)
    perturbed = n_unlabeled * decoder if model.perturbs_features else 0
    views = model.strong_views + model.has_learned_view
    strong = views * n_unlabeled * (encoder + decoder)
    if discriminator is None:
        generated = frozen_generator_flops(cfg, model, generators)
    else:
        rows = n_unlabeled + n_labeled - n_labeled // 2
        per_row = sum(model_flops(g) for g in generators.values()) + model_flops(discriminator)
        d_update = (n_unlabeled + rows) * model_flops(discriminator)
        generated = TRAINING_FACTOR * (rows * per_row + d_update)
    return model, TRAINING_FACTOR * (weak + perturbed + strong) + generated


def frozen_generator_flops(
    cfg: Config, model: keras.Model, generators: dict[str, keras.Model]
) -> int:
    """Forward FLOPs of ``unimatch_gdgi``'s frozen generators per step (0 without them):
    GV and GI on the B_u learned-view rows, GV and k·GI on the B_l − ⌊B_l/2⌋ generated
    labeled rows (see :func:`build_consistency_step`)."""
    if not generators:
        return 0
    n_labeled, n_unlabeled = consistency_batch_sizes(cfg)
    deformation, intensity = (model_flops(generators[k]) for k in ("deformation", "intensity"))
    flops = n_unlabeled * (deformation + intensity) if model.learned is not None else 0
    if cfg.ssl.learned_view != "unlabeled":
        passes = 2 if cfg.augment.generated_composition == "choice" else 1
        flops += (n_labeled - n_labeled // 2) * (deformation + passes * intensity)
    return flops


def segmenter_flops(segmenter: UNet) -> tuple[int, int]:
    """Forward FLOPs per slice of a built S: ``(encoder, decoder)``, the parts
    :meth:`UNet.encode` and :meth:`UNet.decode` run (the decoder with its head); they sum to
    ``model_flops(segmenter)``."""
    encoder = sum(model_flops(block) for block in segmenter.encoder)
    return encoder, model_flops(segmenter) - encoder


def random_batch(cfg: Config, step: str, seed: int) -> Any:
    """A batch of the step's input structure: U(0, 1) images, uniform integer labels.

    ``S``: ``(x (B,H,W,1) float32, y (B,H,W) int32)``; joint steps: ``((x, y), x_u)`` with
    x_u (B,H,W,1); consistency steps: ``((x_l, y_l), x_u)`` with B_l and B_u rows
    (:func:`consistency_batch_sizes`). H = W = ``preprocess.crop_size``.
    """
    rng = np.random.default_rng(seed)
    size = cfg.preprocess.crop_size

    def images(rows: int) -> tf.Tensor:
        return tf.constant(rng.uniform(0, 1, (rows, size, size, 1)), tf.float32)

    def labels(rows: int) -> tf.Tensor:
        return tf.constant(rng.integers(0, cfg.data.n_classes, (rows, size, size)), tf.int32)

    if step in CONSISTENCY_METHODS:
        n_labeled, n_unlabeled = consistency_batch_sizes(cfg)
        return (images(n_labeled), labels(n_labeled)), images(n_unlabeled)
    batch = cfg.train.batch_size
    labeled = images(batch), labels(batch)
    return labeled if step == "S" else (labeled, images(batch))


def call_seconds(function: Callable[[Any], Any], batch: Any) -> float:
    """Seconds of one call of ``function`` on ``batch``, its results fetched to the host."""
    start = time.perf_counter()
    keras.tree.map_structure(keras.ops.convert_to_numpy, function(batch))
    return time.perf_counter() - start


def step_seconds(function: Callable[[Any], Any], batches: list[Any], warmup: int) -> float:
    """Median seconds per call of ``function`` after ``warmup`` untimed calls."""
    times = [call_seconds(function, batch) for batch in batches]
    return statistics.median(times[warmup:])


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


def unimatch_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """The unimatch step's ms/step ÷ the S and joint steps' ms/step, per config and mode.

    One line per (config, mode) with a unimatch row, naming each ratio's denominator (the
    S and joint rows present for that config and mode); no lines without a unimatch row.
    """
    milliseconds = {(r["config"], r["mode"], r["step"]): r["ms_per_step"] for r in rows}
    others = [STEP_NAMES[step] for step in ("S", *GENERATOR_KINDS)]
    lines = []
    for r in rows:
        if r["step"] != STEP_NAMES["UM"]:
            continue
        ratios = [
            f"{r['ms_per_step'] / milliseconds[key]:.2f}× {other}"
            for other in others
            if (key := (r["config"], r["mode"], other)) in milliseconds
        ]
        if ratios:
            lines.append(f"{r['config']:<8} {r['mode']:<12} unimatch = " + ", ".join(ratios))
    header = "unimatch step's ms/step ÷ the other steps' ms/step, same config and mode:"
    return [header, *lines] if lines else []


def parse_names(text: str, valid: Collection[str], option: str) -> list[str]:
    """The comma-separated names in ``text``; exits naming ``option`` if one is unknown."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(valid))
    if unknown or not names:
        raise SystemExit(f"{option}: unknown {unknown or 'empty list'}; choose from {list(valid)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="phantom,paper")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--modes", default="eager,tf.function,xla")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed-steps", type=int, default=None, help="default 10 / 3 (paper)")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the matmul")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the GV step's warp part alone"
    )
    args = parser.parse_args()
    configs = parse_names(args.configs, CONFIGS, "--configs")
    steps = parse_names(args.steps, STEPS, "--steps")
    modes = parse_names(args.modes, MODES, "--modes")

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
    # Before the table: bench/run_all.py takes everything from the table's header to the end.
    for line in unimatch_ratios(rows):
        print(line)
    print()
    print(markdown_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
