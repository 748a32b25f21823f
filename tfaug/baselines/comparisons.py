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
- ``fixmatch`` / ``unimatch`` / ``unimatch_gdgi``: one stage ``consistency`` trains a fresh S
  with weak-to-strong consistency on the unlabeled slices (:class:`ConsistencyModel`, the
  ``ssl`` and ``strong`` config sections; ``segmenter_iterations``); ``unimatch_gdgi_joint``
  trains fresh GV, GI and D in the same stage (:class:`JointConsistencyModel`).

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
from tfaug.baselines.consistency import ConsistencyModel
from tfaug.baselines.joint_consistency import JointConsistencyModel
from tfaug.baselines.self_training import (
    SelfTrainingModel,
    load_pseudo_labels,
    pseudo_label_volumes,
    pseudo_labeled_dataset,
    save_pseudo_labels,
)
from tfaug.baselines.teacher_watch import TeacherWatch, tracker_shares
from tfaug.config import Config
from tfaug.data.pipeline import class_shares
from tfaug.methods import (
    ADVERSARIAL_LEVELS,
    ADVERSARIAL_STAGE,
    CONSISTENCY_METHODS,
    CONSISTENCY_STAGE,
    FINAL_STAGE_GENERATORS,
    STAGE_SEED_OFFSETS,
    SUBSTREAM,
    generator_stage,
    self_training_stage,
)
from tfaug.training.builders import (
    build_adam,
    build_affine,
    build_comparison_discriminator,
    build_cutmix,
    build_discriminator,
    build_discriminator_optimizer,
    build_generated_augmentation,
    build_generator,
    build_labeled_augmentation,
    build_segmenter,
    build_ssl_labeled_augmentation,
    build_strong,
)
from tfaug.training.loop import load_best
from tfaug.training.segmenter import SegmenterModel
from tfaug.training.stage import StageContext


def train_comparison(
    context: StageContext, generators: dict[str, keras.Model] | None = None
) -> keras.Model:
    """Run the stages of ``context.cfg.method`` (a comparison method); returns the kept S.

    Each finished stage's :class:`StageResult` is recorded in ``context.results``.
    ``generators``: the frozen GV and GI of ``unimatch_gdgi`` (its learned strong view).

    Raises:
        ValueError: the method is not one of :data:`tfaug.methods.COMPARISON_METHODS`.
    """
    method = context.cfg.method
    if method == "self_training":
        return _self_training(context)
    if method in ADVERSARIAL_LEVELS:
        return _adversarial(context, ADVERSARIAL_LEVELS[method])
    if method in CONSISTENCY_METHODS:
        return _consistency(context, generators or {})
    raise ValueError(
        f"train_comparison: {method!r} is not a comparison method; choose self_training, "
        "adv_pixel, adv_image, fixmatch or unimatch."
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
    _run(
        context,
        ADVERSARIAL_STAGE,
        model,
        _mixed_batches(context, cfg.train.batch_size - half, half, seed),
        cfg.train.segmenter_iterations,
        segmenter,
        discriminator=discriminator,
    )
    return segmenter


def _consistency(context: StageContext, generators: dict[str, keras.Model]) -> keras.Model:
    """The ``consistency`` stage. ``unimatch_gdgi_joint`` builds fresh GV, GI and D here and
    keeps them with S (``generator_<kind>``, ``discriminator``), as the generator stages
    keep theirs; the other methods keep S only."""
    cfg = context.cfg
    seed = context.seed(STAGE_SEED_OFFSETS[CONSISTENCY_STAGE])
    keras.utils.set_random_seed(seed)
    segmenter = build_segmenter(cfg)
    trained = {}
    if cfg.method in FINAL_STAGE_GENERATORS:
        kinds = FINAL_STAGE_GENERATORS[cfg.method]
        generators = {kind: build_generator(cfg, kind) for kind in kinds}
        trained = {generator_stage(kind): model for kind, model in generators.items()}
        trained["discriminator"] = build_discriminator(cfg)
    model = build_consistency_model(cfg, segmenter, seed, generators, trained.get("discriminator"))
    n_labeled, n_unlabeled = consistency_batch_sizes(cfg)
    _run(
        context,
        CONSISTENCY_STAGE,
        model,
        _mixed_batches(context, n_labeled, n_unlabeled, seed),
        cfg.train.segmenter_iterations,
        segmenter,
        also_keep=trained,
        on_validation=_teacher_watch(context, model),
    )
    return segmenter


def _teacher_watch(context: StageContext, model: ConsistencyModel) -> Callable[[int], None]:
    """``on_validation`` of the consistency stage: :class:`TeacherWatch` on the teacher's
    class shares against the labeled slices'."""
    cfg = context.cfg
    advice = (
        "Some runs recover from this and some do not; if the validation Dice stays below "
        "rdri's, try the learned views (--method unimatch_gdgi --config bdv3R), which held "
        "on the phantom where this setting collapsed."
        if cfg.ssl.labeled_augmentation == "rdri"
        else "Give the labeled slices rdri's augmentation (--config lrdri), which kept the "
        "teacher near the labeled shares in most runs where the weak view alone did not."
    )
    watch = TeacherWatch(
        CONSISTENCY_STAGE,
        cfg.train.segmenter_iterations,
        class_shares(context.cache, context.split.labeled),
        cfg.data.class_names,
        f"{advice} See the teacher's class shares in docs/methods.md.",
    )
    read_shares = tracker_shares(model.trackers, cfg.data.n_classes)
    return lambda step: watch.update(step, read_shares())


def build_consistency_model(
    cfg: Config,
    segmenter: keras.Model,
    seed: int,
    generators: dict[str, keras.Model] | None = None,
    discriminator: keras.Model | None = None,
) -> ConsistencyModel:
    """The compiled :class:`ConsistencyModel` of ``cfg.method`` (a consistency method).

    The weak view is the labeled branch's augmentation (``build_labeled_augmentation``: the
    random affine one); the strong views are ``cfg.strong``'s intensity perturbation and
    ``cfg.ssl``'s CutMix, each drawing from its own substream of ``seed``. ``unimatch``: two
    strong views, each of weight ``ssl.strong_weight``, and the feature-perturbation stream
    (``ssl.feature_weight``); ``fixmatch``: one strong view of weight
    ``ssl.fixmatch_strong_weight`` and no stream; ``ssl.strong_views`` overrides either
    count. ``unimatch_gdgi``: ``unimatch`` with the frozen ``generators`` where
    ``ssl.learned_view`` says: the learned strong view GI(GV(x_u)) (``composition="chain"``,
    ``augment.generated_strength``) of weight ``ssl.learned_weight``, and ``gdgi``'s
    generated pairs in the second half of the labeled rows
    (:func:`build_ssl_labeled_augmentation`). ``unimatch_gdgi_joint``: a
    :class:`JointConsistencyModel` of the training ``generators`` and ``discriminator`` at
    ``train.lambda_adv``, ``train.lambda_ld``, ``train.lambda_diversity`` and
    ``train.real_label``, D with the generator stages' optimiser
    (:func:`build_discriminator_optimizer`), its generated labeled rows after RD and RI with
    ``augment.generated_after_random`` (:func:`build_ssl_labeled_augmentation`). Adam at
    ``train.learning_rate``.
    """
    ssl = cfg.ssl
    options = {}
    if cfg.method == "unimatch_gdgi" and ssl.learned_view != "labeled":
        options["learned"] = build_generated_augmentation(
            cfg, generators or {}, seed + SUBSTREAM["learned_view"], composition="chain"
        )
    model_class = ConsistencyModel
    if cfg.method in FINAL_STAGE_GENERATORS:
        model_class = JointConsistencyModel
        options.update(
            deformation=(generators or {})["deformation"],
            intensity=(generators or {})["intensity"],
            discriminator=discriminator,
            learned_view=ssl.learned_view,
            lambda_adv=cfg.train.lambda_adv,
            lambda_ld=cfg.train.lambda_ld,
            real_label=cfg.train.real_label,
            lambda_diversity=cfg.train.lambda_diversity,
            z_dim=cfg.model.z_dim,
        )
    unimatch = cfg.method != "fixmatch"
    model = model_class(
        segmenter,
        n_classes=cfg.data.n_classes,
        class_weights=ssl.class_weights or [1.0] * cfg.data.n_classes,
        weak=build_labeled_augmentation(cfg, seed),
        labeled=build_ssl_labeled_augmentation(cfg, seed + SUBSTREAM["ssl_labeled"], generators),
        strong=build_strong(cfg, seed + SUBSTREAM["strong_views"]),
        cutmix=build_cutmix(cfg, seed + SUBSTREAM["cutmix"]),
        learned_weight=ssl.learned_weight,
        threshold=ssl.threshold,
        strong_views=(2 if unimatch else 1) if ssl.strong_views is None else ssl.strong_views,
        feature_dropout=ssl.feature_dropout,
        supervised_weight=ssl.supervised_weight,
        strong_weight=ssl.strong_weight if unimatch else ssl.fixmatch_strong_weight,
        feature_weight=ssl.feature_weight if unimatch else 0.0,
        supervised_loss=ssl.supervised_loss,
        unlabeled_loss=ssl.unlabeled_loss,
        rampup_iterations=ssl.rampup_iterations,
        distribution_alignment=ssl.distribution_alignment,
        seed=seed + SUBSTREAM["feature_dropout"],
        **options,
    )
    if model_class is JointConsistencyModel:
        model.compile(s_optimizer=build_adam(cfg), d_optimizer=build_discriminator_optimizer(cfg))
    else:
        model.compile(s_optimizer=build_adam(cfg))
    return model


def consistency_batch_sizes(cfg: Config) -> tuple[int, int]:
    """``(B_l, B_u)``: labeled and unlabeled slices of a consistency batch.

    B_u = round(``train.batch_size`` · ``ssl.unlabeled_fraction``), B_l the rest.

    Raises:
        ValueError: either would be empty.
    """
    batch_size = cfg.train.batch_size
    n_unlabeled = round(batch_size * cfg.ssl.unlabeled_fraction)
    if not 1 <= n_unlabeled < batch_size:
        raise ValueError(
            f"{cfg.method}: train.batch_size={batch_size} with ssl.unlabeled_fraction="
            f"{cfg.ssl.unlabeled_fraction} leaves {n_unlabeled} unlabeled and "
            f"{batch_size - n_unlabeled} labeled slices per batch; both must be at least 1. "
            "Raise train.batch_size or set ssl.unlabeled_fraction nearer 0.5."
        )
    return batch_size - n_unlabeled, n_unlabeled


def _mixed_batches(
    context: StageContext, n_labeled: int, n_unlabeled: int, seed: int
) -> Callable[[int], tf.data.Dataset]:
    """start step → batches ``((x_l (n_labeled,H,W,1), y_l), x_u (n_unlabeled,H,W,1))``."""

    def make_dataset(start: int) -> tf.data.Dataset:
        labeled = context.labeled(n_labeled, seed + start)
        unlabeled = context.unlabeled(n_unlabeled, seed + start + SUBSTREAM["second_dataset"])
        return tf.data.Dataset.zip((labeled, unlabeled))

    return make_dataset


def _run(
    context: StageContext,
    stage: str,
    model: keras.Model,
    make_dataset: Callable[[int], tf.data.Dataset],
    iterations: int,
    segmenter: keras.Model,
    discriminator: keras.Model | None = None,
    also_keep: dict[str, keras.Model] | None = None,
    on_validation: Callable[[int], None] | None = None,
) -> None:
    """One validated stage of S (and D, and ``also_keep`` by file stem); loads S's kept
    weights. ``on_validation`` is called with the step after each validation."""
    keep = {"segmenter": segmenter, **(also_keep or {})}
    if discriminator is not None:
        keep["discriminator"] = discriminator
    context.run_stage(
        stage,
        model,
        make_dataset,
        iterations,
        keep,
        validated=segmenter,
        on_validation=on_validation,
    )
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
