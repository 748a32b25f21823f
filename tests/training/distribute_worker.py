"""Runs a few training steps under one strategy in a fresh process (used by test_distribute).

Logical CPU devices and ``TF_CONFIG`` must be set before TensorFlow initialises, so every
configuration runs in its own interpreter:

    python distribute_worker.py steps OUT --strategy mirrored --cpu-replicas 2
    python distribute_worker.py stage OUT --strategy multiworker --stage-dir DIR

``steps`` writes ``{"segmenter": [{name: value}, ...], "joint": [...], "consistency": [...],
"replicas": n}`` to OUT: the reduced results of each step of the S step, of the joint
(S, GV, DV) step and of the consistency step (``unimatch_gdgi_joint``'s, which contains
``unimatch``'s) on a fixed sequence of global batches (identical across strategies).
``stage`` runs three iterations of the S step through ``run_stage`` and writes the
StageResult and ``replicas`` to OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

SIDE = 32
GLOBAL_BATCH = 4
STEPS = 3


def _batches(paired: bool):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    images = rng.random((STEPS, GLOBAL_BATCH, SIDE, SIDE, 1), dtype=np.float32)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    discs = [(yy - 16) ** 2 + (xx - 16) ** 2 < r**2 for r in (5, 7, 9, 11)]
    labels = np.stack([np.stack(discs).astype(np.int32)] * STEPS)
    labeled = tf.data.Dataset.from_tensor_slices((images, labels))
    if not paired:
        return labeled
    unlabeled = tf.data.Dataset.from_tensor_slices(images[:, ::-1].copy())
    return tf.data.Dataset.zip((labeled, unlabeled))


def _model(name: str):
    import keras
    from tiny import DISCRIMINATOR_FILTERS, GENERATOR_FILTERS, UNET_FILTERS

    from tfaug.models.discriminator import Discriminator
    from tfaug.models.generator import Generator
    from tfaug.models.unet import UNet
    from tfaug.training.joint import JointAugmentationModel
    from tfaug.training.segmenter import SegmenterModel

    keras.utils.set_random_seed(0)
    unet = UNet(2, filters=UNET_FILTERS, bn_momentum=0.9)
    if name == "segmenter":
        unet.build((None, SIDE, SIDE, 1))
        model = SegmenterModel(unet, n_classes=2, class_weights=[0.1, 0.9])
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model
    if name == "consistency":
        # unimatch_gdgi_joint's step, which runs every part of the unimatch step (weak pass,
        # channel dropout drawn globally, teacher, strong views, losses) and trains GV, GI and
        # D in it. No per-replica random layers (augmentations, CutMix) and per-pixel losses,
        # so the step must equal the single-device one; z is drawn globally. The learned view
        # only (the generated half of the labeled rows is a per-replica half by design).
        # Threshold 0: every pixel is kept (the warped confidence interpolates values near
        # 0.5, where rounding would flip pixels in or out of a 0.5 threshold).
        # SGD: Adam's first updates are lr·sign(g), which turns the summation-order noise of
        # this step's near-zero gradients into 1e-3 differences by the third step.
        # Distribution alignment on: its running class shares are cross-replica means, so
        # the pseudo-labels of every replica are those of the single-device step.
        from tfaug.baselines.joint_consistency import JointConsistencyModel

        unet.build((None, SIDE, SIDE, 1))
        generators = {
            kind: Generator(kind, filters=GENERATOR_FILTERS, image_filters=4, z_dim=8)
            for kind in ("deformation", "intensity")
        }
        for generator in generators.values():
            generator.build(((None, SIDE, SIDE, 1), (None, 8)))
        discriminator = Discriminator(filters=DISCRIMINATOR_FILTERS, units=8)
        discriminator.build((None, SIDE, SIDE, 1))
        model = JointConsistencyModel(
            unet, **generators, discriminator=discriminator, learned_view="unlabeled",
            z_dim=8, n_classes=2, class_weights=[0.5, 0.5], threshold=0.0,
            supervised_loss="cross_entropy", unlabeled_loss="cross_entropy", seed=5,
            distribution_alignment=True,
        )  # fmt: skip
        model.compile(
            s_optimizer=keras.optimizers.SGD(0.05), d_optimizer=keras.optimizers.SGD(0.05)
        )
        return model
    model = JointAugmentationModel(
        unet,
        Generator("deformation", filters=GENERATOR_FILTERS, image_filters=4, z_dim=8),
        Discriminator(filters=DISCRIMINATOR_FILTERS, units=8),
        kind="deformation",
        n_classes=2,
        class_weights=[0.1, 0.9],
        seed=3,
    )
    model.compile(g_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-3))
    model.build((None, SIDE, SIDE, 1))
    return model


def run_steps(args: argparse.Namespace) -> dict:
    from tfaug.training.distribute import (
        distribute_dataset,
        distributed_train_function,
        make_strategy,
    )

    strategy = make_strategy(args.strategy, args.cpu_replicas)
    output = {"replicas": strategy.num_replicas_in_sync}
    for name in ("segmenter", "joint", "consistency"):
        with strategy.scope():
            model = _model(name)
        step = distributed_train_function(strategy, model.train_step)
        losses = []
        for batch in distribute_dataset(strategy, _batches(paired=name != "segmenter")):
            results = step(batch)
            losses.append({key: float(value) for key, value in results.items()})
            for metric in model.metrics:  # per-step values, not running means
                metric.reset_state()
        output[name] = losses
    return output


def run_stage_once(args: argparse.Namespace) -> dict:
    from tfaug.training.distribute import make_strategy
    from tfaug.training.loop import run_stage

    strategy = make_strategy(args.strategy, args.cpu_replicas)
    with strategy.scope():
        model = _model("segmenter")
    result = run_stage(
        name="pretrain",
        model=model,
        make_dataset=lambda start: _batches(paired=False).repeat(),
        iterations=STEPS,
        stage_dir=Path(args.stage_dir),
        keep={"segmenter": model.segmenter},
        validate_every=STEPS,
        progress=False,
        strategy=strategy,
    )
    return {**asdict(result), "replicas": strategy.num_replicas_in_sync}


def main(argv: list[str]) -> None:
    import tensorflow as tf

    # As in the test process (tests/conftest.py): Grappler's first-call graph optimisation is
    # a fifth of this worker's time and changes no value the steps compute. Both strategies
    # run without it, so the comparison is unchanged.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("steps", "stage"))
    parser.add_argument("output", type=Path)
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--cpu-replicas", type=int, default=0)
    parser.add_argument("--stage-dir", default=None)
    args = parser.parse_args(argv)
    result = run_steps(args) if args.mode == "steps" else run_stage_once(args)
    args.output.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
