"""The semi-supervised comparison methods as resumable stages of an :class:`Algorithm` run.

- ``self_training``: stage ``self_training_round0`` trains S on labeled slices (affine, as
  ``aff``, ``segmenter_iterations``); each round r = 1..R (``train.self_training_rounds``)
  pseudo-labels the unlabeled volumes with the previous round's kept S, refines them, writes
  them to ``checkpoints/self_training_round<r>/pseudo_labels.npz`` (before training, so a
  resumed round reuses them) and continues training that S on half labeled, half
  pseudo-labeled batches (``self_training_iterations``). The final S is round R's.
- ``adv_pixel`` / ``adv_image``: one stage ``adversarial`` trains a fresh S against a
  pixel-level or image-level discriminator on half labeled, half unlabeled batches
  (``segmenter_iterations``).

Every stage runs through :meth:`tfaug.training.stage.StageContext.run_stage` (kill/resume,
validation every k iterations, best checkpoint kept, the same schedule switches as every
other stage).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tfaug.analysis.evaluation import load_volumes
from tfaug.baselines.adversarial import AdversarialSegmentationModel
from tfaug.baselines.self_training import (
    SelfTrainingModel,
    load_pseudo_labels,
    pseudo_label_volumes,
    pseudo_labeled_dataset,
    save_pseudo_labels,
)
from tfaug.config import Config
from tfaug.methods import (
    ADVERSARIAL_LEVELS,
    ADVERSARIAL_STAGE,
    STAGE_SEED_OFFSETS,
    SUBSTREAM,
    self_training_stage,
)
from tfaug.training.builders import (
    build_adam,
    build_affine,
    build_comparison_discriminator,
    build_segmenter,
)
from tfaug.training.loop import load_best
from tfaug.training.segmenter import SegmenterModel
from tfaug.training.stage import StageContext


def train_comparison(context: StageContext) -> keras.Model:
    """Run the stages of ``context.cfg.method`` (a comparison method); returns the kept S.

    Each finished stage's :class:`StageResult` is recorded in ``context.results``.

    Raises:
        ValueError: the method is not ``self_training``, ``adv_pixel`` or ``adv_image``.
    """
    method = context.cfg.method
    if method == "self_training":
        return _self_training(context)
    if method in ADVERSARIAL_LEVELS:
        return _adversarial(context, ADVERSARIAL_LEVELS[method])
    raise ValueError(
        f"train_comparison: {method!r} is not a comparison method; choose self_training, "
        "adv_pixel or adv_image."
    )


def _self_training(context: StageContext) -> keras.Model:
    cfg = context.cfg
    n_labeled_rows = cfg.train.batch_size - cfg.train.batch_size // 2
    unlabeled: list = []  # the unlabeled volumes, read once when first needed

    def unlabeled_volumes() -> list:
        if not unlabeled:
            unlabeled.extend(load_volumes(context.cache, context.split.unlabeled))
        return unlabeled

    seed = context.seed(STAGE_SEED_OFFSETS["self_training"])
    keras.utils.set_random_seed(seed)
    segmenter = build_segmenter(cfg)
    _run(
        context,
        self_training_stage(0),
        _compiled(SegmenterModel, segmenter, cfg, seed),
        lambda start: context.labeled(cfg.train.batch_size, seed + start),
        cfg.train.segmenter_iterations,
        segmenter,
    )
    for round_index in range(1, cfg.train.self_training_rounds + 1):
        stage = self_training_stage(round_index)
        seed = context.seed(STAGE_SEED_OFFSETS["self_training"] + round_index)
        keras.utils.set_random_seed(seed)
        segmenter = build_segmenter(cfg)
        load_best({"segmenter": segmenter}, context.stage_dir(self_training_stage(round_index - 1)))
        stage_dir = context.stage_dir(stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        path = stage_dir / "pseudo_labels.npz"
        if not path.is_file():  # S here has the previous round's kept weights
            pseudo = pseudo_label_volumes(
                segmenter, unlabeled_volumes(), cfg.train.pseudo_label_confidence
            )
            save_pseudo_labels(path, pseudo)

        def make_dataset(start: int, seed: int = seed, path=path) -> tf.data.Dataset:
            pseudo = pseudo_labeled_dataset(
                unlabeled_volumes(),
                load_pseudo_labels(path),
                cfg.data.n_classes,
                cfg.train.batch_size // 2,
                seed + start + SUBSTREAM["second_dataset"],
            )
            labeled = context.labeled(n_labeled_rows, seed + start)
            return tf.data.Dataset.zip((labeled, pseudo))

        _run(
            context,
            stage,
            _compiled(SelfTrainingModel, segmenter, cfg, seed),
            make_dataset,
            cfg.train.self_training_iterations,
            segmenter,
        )
    return segmenter


def _adversarial(context: StageContext, level: str) -> keras.Model:
    cfg = context.cfg
    seed = context.seed(STAGE_SEED_OFFSETS[ADVERSARIAL_STAGE])
    keras.utils.set_random_seed(seed)
    segmenter = build_segmenter(cfg)
    discriminator = build_comparison_discriminator(cfg, level)
    model = AdversarialSegmentationModel(
        segmenter,
        discriminator,
        level=level,
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        lambda_adv=cfg.train.lambda_adv_segmenter,
        lambda_semi=cfg.train.lambda_semi if level == "pixel" else 0.0,
        semi_threshold=cfg.train.semi_threshold,
        semi_start=cfg.train.semi_start,
        affine=build_affine(cfg, seed),
    )
    model.compile(s_optimizer=build_adam(cfg), d_optimizer=build_adam(cfg))
    half = cfg.train.batch_size // 2

    def make_dataset(start: int) -> tf.data.Dataset:
        labeled = context.labeled(cfg.train.batch_size - half, seed + start)
        unlabeled = context.unlabeled(half, seed + start + SUBSTREAM["second_dataset"])
        return tf.data.Dataset.zip((labeled, unlabeled))

    _run(
        context,
        ADVERSARIAL_STAGE,
        model,
        make_dataset,
        cfg.train.segmenter_iterations,
        segmenter,
        discriminator=discriminator,
    )
    return segmenter


def _run(
    context: StageContext,
    stage: str,
    model: keras.Model,
    make_dataset: Callable[[int], tf.data.Dataset],
    iterations: int,
    segmenter: keras.Model,
    discriminator: keras.Model | None = None,
) -> None:
    """One validated stage of S (and D); loads S's kept weights."""
    keep = {"segmenter": segmenter}
    if discriminator is not None:
        keep["discriminator"] = discriminator
    context.run_stage(stage, model, make_dataset, iterations, keep, validated=segmenter)
    load_best({"segmenter": segmenter}, context.stage_dir(stage))


def _compiled(
    model_class: type[SegmenterModel], segmenter: keras.Model, cfg: Config, seed: int
) -> SegmenterModel:
    """A compiled S-training model (affine augmentation, the config's class weights)."""
    model = model_class(
        segmenter,
        n_classes=cfg.data.n_classes,
        class_weights=cfg.train.class_weights,
        affine=build_affine(cfg, seed),
    )
    model.compile(optimizer=build_adam(cfg))
    return model
