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

Every stage runs through :func:`tfaug.training.loop.run_stage` (kill/resume, validation
every k iterations, best checkpoint kept, as for the other methods).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from tfaug.config import Config
from tfaug.data.pipeline import labeled_dataset, unlabeled_dataset
from tfaug.evaluation import load_volumes
from tfaug.models.discriminator import Discriminator
from tfaug.models.pixel_discriminator import PixelDiscriminator
from tfaug.training.adversarial import AdversarialSegmentationModel
from tfaug.training.loop import load_best, run_stage
from tfaug.training.segmenter import SegmenterModel
from tfaug.training.self_training import (
    SelfTrainingModel,
    load_pseudo_labels,
    pseudo_label_volumes,
    pseudo_labeled_dataset,
    save_pseudo_labels,
)
from tfaug.training.sources import build_affine

if TYPE_CHECKING:
    from tfaug.training.algorithm import Algorithm

ADVERSARIAL_LEVELS = {"adv_pixel": "pixel", "adv_image": "image"}
# Stage seeds: train.seed * 1000 + offset (Algorithm's own stages use offsets 1-4).
_SELF_TRAINING_OFFSET = 10
_ADVERSARIAL_OFFSET = 30


def train_comparison(algorithm: Algorithm) -> keras.Model:
    """Run the stages of ``algorithm.cfg.method`` (a comparison method); returns the kept S.

    ``algorithm`` must be prepared (:meth:`Algorithm.prepare`); each finished stage's
    :class:`StageResult` is recorded in ``algorithm.stages``.

    Raises:
        ValueError: the method is not ``self_training``, ``adv_pixel`` or ``adv_image``.
    """
    method = algorithm.cfg.method
    if method == "self_training":
        return _self_training(algorithm)
    if method in ADVERSARIAL_LEVELS:
        return _adversarial(algorithm, ADVERSARIAL_LEVELS[method])
    raise ValueError(
        f"train_comparison: {method!r} is not a comparison method; choose self_training, "
        "adv_pixel or adv_image."
    )


def _self_training(algorithm: Algorithm) -> keras.Model:
    from tfaug.training.algorithm import build_segmenter  # algorithm.py imports this module

    cfg, run = algorithm.cfg, algorithm.run
    n_labeled_rows = cfg.train.batch_size - cfg.train.batch_size // 2
    unlabeled: list = []  # the unlabeled volumes, read once when first needed

    def unlabeled_volumes() -> list:
        if not unlabeled:
            unlabeled.extend(load_volumes(algorithm.cache, algorithm.split.unlabeled))
        return unlabeled

    seed = _seed(cfg, _SELF_TRAINING_OFFSET)
    keras.utils.set_random_seed(seed)
    segmenter = build_segmenter(cfg)
    model = _compiled(SegmenterModel, segmenter, cfg, seed)
    _run(
        algorithm,
        "self_training_round0",
        model,
        lambda start: _labeled(algorithm, cfg.train.batch_size, seed + start),
        cfg.train.segmenter_iterations,
        {"segmenter": segmenter},
        segmenter,
    )
    for round_index in range(1, cfg.train.self_training_rounds + 1):
        stage = f"self_training_round{round_index}"
        seed = _seed(cfg, _SELF_TRAINING_OFFSET + round_index)
        keras.utils.set_random_seed(seed)
        segmenter = build_segmenter(cfg)
        load_best({"segmenter": segmenter}, run.stage(f"self_training_round{round_index - 1}"))
        stage_dir = run.stage(stage)
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
                seed + start + 1,
            )
            labeled = _labeled(algorithm, n_labeled_rows, seed + start)
            return tf.data.Dataset.zip((labeled, pseudo))

        model = _compiled(SelfTrainingModel, segmenter, cfg, seed)
        _run(
            algorithm,
            stage,
            model,
            make_dataset,
            cfg.train.self_training_iterations,
            {"segmenter": segmenter},
            segmenter,
        )
    return segmenter


def _adversarial(algorithm: Algorithm, level: str) -> keras.Model:
    from tfaug.training.algorithm import build_segmenter  # algorithm.py imports this module

    cfg = algorithm.cfg
    seed = _seed(cfg, _ADVERSARIAL_OFFSET)
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
    model.compile(s_optimizer=_adam(cfg), d_optimizer=_adam(cfg))
    half = cfg.train.batch_size // 2

    def make_dataset(start: int) -> tf.data.Dataset:
        labeled = _labeled(algorithm, cfg.train.batch_size - half, seed + start)
        unlabeled = unlabeled_dataset(
            algorithm.cache, algorithm.split.unlabeled, half, seed + start + 1
        )
        return tf.data.Dataset.zip((labeled, unlabeled))

    _run(
        algorithm,
        "adversarial",
        model,
        make_dataset,
        cfg.train.segmenter_iterations,
        {"segmenter": segmenter, "discriminator": discriminator},
        segmenter,
    )
    return segmenter


def build_comparison_discriminator(cfg: Config, level: str) -> keras.Model:
    """A fresh, built discriminator of ``adv_pixel`` (``level="pixel"``) or ``adv_image``.

    Pixel level: :class:`PixelDiscriminator` (``model.pixel_discriminator_filters``) on
    (B,S,S,C) class maps. Image level: :class:`Discriminator` (``model.discriminator_*``) on
    (B,S,S,C + 1) (image, class map) pairs. S = ``preprocess.crop_size``, C = the classes.
    """
    size, n_classes = cfg.preprocess.crop_size, cfg.data.n_classes
    if level == "pixel":
        discriminator = PixelDiscriminator(filters=tuple(cfg.model.pixel_discriminator_filters))
        discriminator(tf.zeros((1, size, size, n_classes)))
        return discriminator
    discriminator = Discriminator(
        filters=tuple(cfg.model.discriminator_filters),
        units=cfg.model.discriminator_units,
        bn_momentum=cfg.model.bn_momentum,
        bn_epsilon=cfg.model.bn_epsilon,
    )
    discriminator(tf.zeros((1, size, size, n_classes + 1)))
    return discriminator


def _run(
    algorithm: Algorithm,
    stage: str,
    model: keras.Model,
    make_dataset: Callable[[int], tf.data.Dataset],
    iterations: int,
    keep: dict[str, keras.Model],
    segmenter: keras.Model,
) -> None:
    """One validated (or last-kept) stage through ``run_stage``; loads S's kept weights."""
    cfg = algorithm.cfg
    validated = cfg.train.model_selection == "best"
    stage_dir = algorithm.run.stage(stage)
    algorithm.stages[stage] = run_stage(
        name=stage,
        model=model,
        make_dataset=make_dataset,
        iterations=iterations,
        stage_dir=stage_dir,
        keep=keep,
        validate=algorithm._validate(segmenter) if validated else None,
        validate_every=cfg.train.validate_every,
        writer=algorithm.writer,
        jit_compile=cfg.train.jit_compile,
        progress=algorithm.progress,
        strategy=algorithm.strategy,
    )
    load_best({"segmenter": segmenter}, stage_dir)


def _labeled(algorithm: Algorithm, batch_size: int, seed: int) -> tf.data.Dataset:
    return labeled_dataset(algorithm.cache, algorithm.split.labeled, batch_size, seed)


def _seed(cfg: Config, offset: int) -> int:
    return cfg.train.seed * 1000 + offset


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
    model.compile(optimizer=_adam(cfg))
    return model


def _adam(cfg: Config) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(cfg.train.learning_rate, beta_1=0.9, beta_2=0.999)
