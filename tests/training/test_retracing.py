"""The training steps trace once: no retracing after the first step of a stage.

Each case runs a real stage through :func:`tfaug.training.loop.run_stage` on the tiny phantom
cache, captures the ``tf.function`` that ``run_stage`` built (via its ``compile_train_step``)
and counts its traces after several steps. XLA inside ``run_stage`` is tested on the
consistency step (tests/baselines/test_consistency.py), the joint step's XLA compilation in
tests/training/test_joint.py.
"""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf

from tfaug.config import Config
from tfaug.data.pipeline import labeled_dataset, unlabeled_dataset
from tfaug.data.records import Cache
from tfaug.training import loop
from tfaug.training.builders import (
    build_affine,
    build_discriminator,
    build_generator,
    build_segmenter,
)
from tfaug.training.joint import JointAugmentationModel
from tfaug.training.segmenter import SegmenterModel

STEPS = 3


def _segmenter_step(cfg: Config, cache: Cache) -> tuple[keras.Model, object]:
    model = SegmenterModel(
        build_segmenter(cfg),
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        affine=build_affine(cfg, seed=1),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model, lambda start: labeled_dataset(cache, cache.case_ids, 4, seed=start)


def _joint_step(cfg: Config, cache: Cache, kind: str) -> tuple[keras.Model, object]:
    model = JointAugmentationModel(
        build_segmenter(cfg),
        build_generator(cfg, kind),
        build_discriminator(cfg),
        kind=kind,
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        affine=build_affine(cfg, seed=1),
        seed=1,
    )
    model.compile(g_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-3))

    def make_dataset(start: int) -> tf.data.Dataset:
        labeled = labeled_dataset(cache, cache.case_ids, 4, seed=start)
        return tf.data.Dataset.zip((labeled, unlabeled_dataset(cache, cache.case_ids, 4, start)))

    return model, make_dataset


@pytest.mark.parametrize("step", ["segmenter", "deformation", "intensity"])
def test_step_traces_once_in_run_stage(tiny_cache, tmp_path, monkeypatch, step):
    cfg, cache = tiny_cache
    if step == "segmenter":
        model, make_dataset = _segmenter_step(cfg, cache)
    else:
        model, make_dataset = _joint_step(cfg, cache, step)
    built = []

    def spy(model: keras.Model, jit_compile: bool) -> tf.types.experimental.PolymorphicFunction:
        built.append(compile_train_step(model, jit_compile))
        return built[-1]

    compile_train_step = loop.compile_train_step
    monkeypatch.setattr(loop, "compile_train_step", spy)
    result = loop.run_stage(
        name=step,
        model=model,
        make_dataset=make_dataset,
        iterations=STEPS,
        stage_dir=tmp_path / step,
        keep={},
        validate_every=STEPS,
        jit_compile=False,
        progress=False,
    )
    assert result.iterations == STEPS
    assert len(built) == 1
    assert built[0].experimental_get_tracing_count() == 1
