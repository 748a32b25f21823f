"""Every object a run trains or applies, built from the config: networks, optimisers,
augmentation layers and the training models that compose them.

Each ``build_*`` reads only the config sections it names; seeds come from the caller (one
per stage, see :mod:`tfaug.methods`), so the same config and seed build the same object.
Networks are returned built for ``preprocess.crop_size`` square slices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from tfaug.config import Config
from tfaug.methods import (
    COMPARISON_METHODS,
    GENERATOR_METHODS,
    LEARNED_CONSISTENCY_METHODS,
    METHODS,
    SUBSTREAM,
)
from tfaug.models.discriminator import Discriminator
from tfaug.models.generator import Generator
from tfaug.models.pixel_discriminator import PixelDiscriminator
from tfaug.models.unet import UNet
from tfaug.ops.augment import Mixup, RandomAffine, RandomElastic, RandomIntensity, sigma_px_from_mm
from tfaug.ops.cutmix import CutMixBoxes
from tfaug.ops.generated import ChainAugmentation, GeneratedAugmentation, SecondHalfAugmentation
from tfaug.ops.heavy import HeavyAugmentation, HeavyIntensity
from tfaug.training.joint import JointAugmentationModel

# -- networks -----------------------------------------------------------------------------


def build_segmenter(cfg: Config) -> UNet:
    """A fresh U-Net S built for the configured slice size."""
    model = UNet(
        n_classes=cfg.data.n_classes,
        filters=tuple(cfg.model.unet_filters),
        bn_momentum=cfg.model.bn_momentum,
        bn_epsilon=cfg.model.bn_epsilon,
    )
    size = cfg.preprocess.crop_size
    model(tf.zeros((1, size, size, 1)))
    return model


def build_generator(cfg: Config, kind: str) -> Generator:
    """A fresh generator (``"deformation"`` or ``"intensity"``) built for the slice size.

    Its field bound and coarse grid come from ``cfg.model`` (``deformation_max_mm``, in mm,
    is converted to pixels with ``cfg.preprocess.spacing_mm``).
    """
    if kind == "deformation":
        max_mm = cfg.model.deformation_max_mm
        bound = None if max_mm is None else max_mm / cfg.preprocess.spacing_mm
        grid = cfg.model.deformation_grid
    else:
        bound, grid = cfg.model.intensity_max, cfg.model.intensity_grid
    model = Generator(
        kind=kind,
        filters=tuple(cfg.model.generator_filters),
        image_filters=cfg.model.generator_image_filters,
        z_dim=cfg.model.z_dim,
        flow_kernel=cfg.model.flow_kernel,
        bn_momentum=cfg.model.bn_momentum,
        bn_epsilon=cfg.model.bn_epsilon,
        field_bound=bound,
        field_grid=grid,
    )
    size = cfg.preprocess.crop_size
    model((tf.zeros((1, size, size, 1)), tf.zeros((1, cfg.model.z_dim))))
    return model


def build_discriminator(cfg: Config) -> Discriminator:
    """A fresh discriminator of the generator stages, built for the slice size."""
    model = Discriminator(
        filters=tuple(cfg.model.discriminator_filters),
        units=cfg.model.discriminator_units,
        bn_momentum=cfg.model.bn_momentum,
        bn_epsilon=cfg.model.bn_epsilon,
        patch_levels=cfg.model.discriminator_patch_levels,
        spectral_norm=cfg.model.discriminator_spectral_norm,
    )
    size = cfg.preprocess.crop_size
    model(tf.zeros((1, size, size, 1)))
    return model


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


# -- optimisers ---------------------------------------------------------------------------


def build_adam(
    cfg: Config, learning_rate: float | None = None, **options: Any
) -> keras.optimizers.Adam:
    """Adam with the paper's β = (0.9, 0.999) at ``learning_rate`` (default:
    ``train.learning_rate``), the optimiser of every network; ``options`` go to Keras."""
    rate = cfg.train.learning_rate if learning_rate is None else learning_rate
    return keras.optimizers.Adam(rate, beta_1=0.9, beta_2=0.999, **options)


def build_discriminator_optimizer(cfg: Config) -> keras.optimizers.Adam:
    """Adam for a generator stage's D: ``train.discriminator_learning_rate`` (``null``:
    ``learning_rate``), and with ``train.discriminator_update_every = k > 1`` a gradient
    accumulation over k steps, so D's weights change once every k steps."""
    every = cfg.train.discriminator_update_every
    return build_adam(
        cfg,
        cfg.train.discriminator_learning_rate,
        gradient_accumulation_steps=every if every > 1 else None,
    )


# -- augmentation layers ------------------------------------------------------------------


def build_affine(cfg: Config, seed: int) -> RandomAffine:
    """The random affine augmentation (docs/method.md §6) from ``cfg.augment``."""
    return RandomAffine(
        probability=cfg.augment.affine_probability,
        scale_range=tuple(cfg.augment.scale_range),
        rotation_degrees=cfg.augment.rotation_degrees,
        seed=seed,
    )


def build_heavy(cfg: Config, seed: int) -> HeavyAugmentation:
    """nnU-Net-style heavy augmentation from ``cfg.heavy`` (elastic σ converted from mm).

    It computes in float32 under any dtype policy (its blur's ops do not all take float16).
    """
    options = dataclasses.asdict(cfg.heavy)
    sigma_mm = options.pop("elastic_sigma_mm")
    sigma_px = sigma_px_from_mm(sigma_mm, cfg.preprocess.spacing_mm)
    return HeavyAugmentation(**options, elastic_sigma_px=sigma_px, seed=seed, dtype="float32")


def build_labeled_augmentation(cfg: Config, seed: int) -> keras.layers.Layer | None:
    """What every labeled slice of the segmenter stages gets first: the random affine
    augmentation, nothing for ``none``, nnU-Net's heavy augmentation for ``heavy``."""
    if cfg.method == "none":
        return None
    if cfg.method == "heavy":
        return build_heavy(cfg, seed)
    return build_affine(cfg, seed)


def build_ssl_labeled_augmentation(
    cfg: Config, seed: int, generators: dict[str, keras.Model] | None = None
) -> keras.layers.Layer | None:
    """What the consistency methods' labeled slices get instead of the weak view.

    ``ssl.labeled_augmentation``: ``None`` for ``weak``, the ``heavy`` augmentation, or the
    affine augmentation then RD and RI (``rdri``, on every slice). For ``unimatch_gdgi``
    with ``ssl.learned_view`` ``both`` or ``labeled``, that augmentation (the affine one for
    ``weak``) is followed by ``gdgi``'s layer of the frozen ``generators`` on the second half
    of the labeled rows (:class:`SecondHalfAugmentation`), as the ``gdgi`` segmenter stage
    mixes its batch: with ``augment.generated_after_random``, RD and RI, then the generators.
    For ``unimatch_gdgi_joint``, whose step generates that second half itself with the
    training generators, the same rows get the same RD and RI first (with
    ``augment.generated_after_random``), so both ways of getting the generators apply them to
    the same inputs.
    """
    choice = cfg.ssl.labeled_augmentation
    if choice == "weak":
        base = None
    elif choice == "heavy":
        base = build_heavy(cfg, seed)
    else:
        random = build_random(cfg, seed + SUBSTREAM["random_after_affine"])
        base = ChainAugmentation([build_affine(cfg, seed), *random])
    generated_seed = seed + SUBSTREAM["labeled_generated"]
    if cfg.method not in LEARNED_CONSISTENCY_METHODS or cfg.ssl.learned_view == "unlabeled":
        return base
    if cfg.method == "unimatch_gdgi":
        generated = build_method_augmentation("gdgi", cfg, generators or {}, generated_seed)
    elif cfg.augment.generated_after_random:
        generated = ChainAugmentation(list(build_random(cfg, generated_seed)))
    else:
        return base
    return ChainAugmentation([base or build_affine(cfg, seed), SecondHalfAugmentation(generated)])


def build_strong(cfg: Config, seed: int) -> HeavyIntensity:
    """The intensity perturbation of the consistency methods' strong views (``cfg.strong``).

    It computes in float32 under any dtype policy (its ops do not all take float16).
    """
    return HeavyIntensity(**dataclasses.asdict(cfg.strong), seed=seed, dtype="float32")


def build_cutmix(cfg: Config, seed: int) -> CutMixBoxes:
    """The CutMix boxes of the consistency methods' strong views (``cfg.ssl.cutmix_*``)."""
    ssl = cfg.ssl
    return CutMixBoxes(
        probability=ssl.cutmix_probability,
        area_range=tuple(ssl.cutmix_area_range),
        aspect_range=tuple(ssl.cutmix_aspect_range),
        seed=seed,
    )


def build_random(cfg: Config, seed: int) -> tuple[RandomElastic, RandomIntensity]:
    """RD and RI from ``cfg.augment`` (σ converted from mm with ``cfg.preprocess.spacing_mm``);
    RI draws with its own substream of ``seed``."""
    aug = cfg.augment
    elastic = RandomElastic(
        sigma_px=sigma_px_from_mm(aug.elastic_sigma_mm, cfg.preprocess.spacing_mm),
        grid_size=aug.elastic_grid,
        seed=seed,
    )
    intensity = RandomIntensity(
        contrast_range=tuple(aug.contrast_range),
        brightness_range=tuple(aug.brightness_range),
        seed=seed + SUBSTREAM["random_intensity"],
    )
    return elastic, intensity


def build_generator_input_augmentation(cfg: Config, seed: int) -> keras.layers.Layer:
    """What the generator stages apply to the labeled batch before G: the affine
    augmentation, then RD and RI when ``augment.random_before_generators`` is set."""
    affine = build_affine(cfg, seed)
    if not cfg.augment.random_before_generators:
        return affine
    random = build_random(cfg, seed + SUBSTREAM["random_before_generators"])
    return ChainAugmentation([affine, *random])


def build_method_augmentation(
    method: str, cfg: Config, generators: dict[str, keras.Model], seed: int
) -> keras.layers.Layer | None:
    """The layer applied to the method half of each batch (``None`` for none, aff, heavy,
    whose whole batch gets one augmentation, and the comparison methods, which use
    unlabeled slices instead).

    Args:
        method: one of :data:`tfaug.methods.METHODS`.
        cfg: the run's config (``augment`` section; spacing to convert σ from mm).
        generators: frozen generators by kind (``"deformation"``, ``"intensity"``), as
            needed by :data:`tfaug.methods.GENERATOR_METHODS`.
        seed: seed of the layer's random draws.
    """
    aug = cfg.augment
    elastic, intensity = build_random(cfg, seed)
    if method in ("none", "aff", "heavy", *COMPARISON_METHODS):
        return None
    if method == "rd":
        return elastic
    if method == "ri":
        return intensity
    if method == "rdri":
        return ChainAugmentation([elastic, intensity])
    if method == "mixup":
        return Mixup(alpha=aug.mixup_alpha, seed=seed)
    if method in GENERATOR_METHODS:
        generated = build_generated_augmentation(cfg, generators, seed, aug.generated_composition)
        stages = [elastic, intensity, generated] if aug.generated_after_random else [generated]
        if method == "gdgi_mixup":
            stages.append(
                Mixup(alpha=aug.mixup_alpha, seed=seed + SUBSTREAM["mixup_after_generated"])
            )
        return stages[0] if len(stages) == 1 else ChainAugmentation(stages)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def build_generated_augmentation(
    cfg: Config, generators: dict[str, keras.Model], seed: int, composition: str
) -> GeneratedAugmentation:
    """The layer that draws transformations from the frozen ``generators`` (by kind), with
    ``cfg``'s z size and ``augment.generated_strength``, combined by ``composition``."""
    return GeneratedAugmentation(
        deformation=generators.get("deformation"),
        intensity=generators.get("intensity"),
        z_dim=cfg.model.z_dim,
        seed=seed,
        composition=composition,
        strength=tuple(cfg.augment.generated_strength),
    )


# -- training models ----------------------------------------------------------------------


def build_joint_model(
    cfg: Config,
    kind: str,
    segmenter: keras.Model,
    generator: keras.Model,
    discriminator: keras.Model,
    seed: int,
) -> JointAugmentationModel:
    """The compiled joint (S, G, D) model of generator stage ``kind`` with the config's λs,
    mode, generated fraction and input augmentation; G and S share one Adam."""
    train = cfg.train
    model = JointAugmentationModel(
        segmenter,
        generator,
        discriminator,
        kind=kind,
        n_classes=cfg.data.n_classes,
        class_weights=train.class_weights,
        lambda_seg=train.lambda_seg,
        lambda_adv=train.lambda_adv,
        lambda_ld=train.lambda_ld,
        lambda_diversity=train.lambda_diversity,
        mode=train.generator_mode,
        generated_fraction=tuple(train.generated_fraction),
        affine=build_generator_input_augmentation(cfg, seed),
        z_dim=cfg.model.z_dim,
        seed=seed,
        real_label=train.real_label,
    )
    model.compile(g_optimizer=build_adam(cfg), d_optimizer=build_discriminator_optimizer(cfg))
    return model
