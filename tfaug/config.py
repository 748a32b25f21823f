"""Typed configuration: dataclasses ← YAML ← command-line overrides.

A run is described by one :class:`Config`. It is built from the dataset's YAML file
(``tfaug/configs/<dataset>.yaml``, also reachable as ``configs/`` at the repository root),
then an optional user YAML (``--config``), then ``--set section.key=value`` overrides.
The fully resolved config is what a run records in its ``config.yaml``.

Example:
    >>> cfg = load_config("phantom", overrides=["train.batch_size=8"])
    >>> cfg.train.batch_size
    8
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfaug.methods import (
    DEFAULT_METHOD,
    GENERATED_COMPOSITIONS,
    GENERATOR_MODES,
    LABELED_AUGMENTATIONS,
    LEARNED_CONSISTENCY_METHODS,
    LEARNED_VIEWS,
    PHANTOM_VARIANT_NAMES,
    SUPERVISED_LOSSES,
    UNLABELED_LOSSES,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SETTINGS_DIR = CONFIG_DIR / "settings"  # named settings to merge over any dataset config
DATASETS = ("phantom", "acdc", "acdc_ssl", "prostate", "pancreas")
STRATEGIES = ("default", "mirrored", "multiworker")


class ConfigError(ValueError):
    """A configuration file or override is malformed."""


# -- what reads a field -------------------------------------------------------------------
# A field's metadata says which stages read it, so the generators shared by several runs
# (tfaug.runs.shared) are keyed by exactly the fields their stages read, and which fields are
# switches beyond the paper (docs/switches.md lists them; a test holds the two together).
# A field without metadata is read by every stage and is the paper's setting.
READ_BY_FINAL = "final"  # only the final segmenter stage reads it
READ_BY_RANDOM = "random"  # the final stage, and the generator stages with random_before_generators


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    read_by: str | None = None,
    switch: bool = False,
    generator_value: Any = dataclasses.MISSING,
) -> Any:
    """A config field with metadata.

    Args:
        default: the default value (or ``factory`` for a mutable one).
        read_by: :data:`READ_BY_FINAL`, :data:`READ_BY_RANDOM`, or ``None`` (every stage).
        switch: a switch beyond the paper (its default is the paper's setting).
        generator_value: the value a shared generator directory records for a field its
            stages do not read (default: the field's default).
    """
    metadata = {"read_by": read_by, "switch": switch}
    if generator_value is not dataclasses.MISSING:
        metadata["generator_value"] = generator_value
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class DataConfig:
    """Where the data is and what its labels mean.

    Attributes:
        dataset: ``phantom``, ``acdc``, ``acdc_ssl`` (ACDC under the semi-supervised
            literature's protocol, read by the ACDC reader), ``prostate`` or ``pancreas``.
        root: the dataset folder (ACDC: the folder holding ``training/``; MSD: the
            ``TaskXX_*`` folder). ``None`` for the phantom means "generate it into the cache".
        cache_dir: folder for generated phantoms and preprocessed TFRecords.
        class_names: one name per class, background first.
        modality: the MSD modality to read from 4D images (e.g. ``"T2"``); ``None`` for 3D.
        merge_labels: label remapping applied on load, ``{source: target}``
            (pancreas: ``{2: 1}`` merges cancer into pancreas).
        frames: ACDC layout only: ``es`` reads each patient's end-systole frame (one case
            per patient, the paper); ``both`` reads its end-diastole and end-systole frames
            as two cases ``patientXXX_ED`` and ``patientXXX_ES`` (the semi-supervised
            literature's protocol), which every split keeps in one set.
    """

    dataset: str = "phantom"
    root: str | None = None
    cache_dir: str = "cache"
    class_names: list[str] = field(default_factory=lambda: ["background", "RV", "Myo", "LV"])
    modality: str | None = None
    merge_labels: dict[int, int] = field(default_factory=dict)
    frames: str = "es"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass
class PhantomConfig:
    """Parameters of the synthetic cardiac dataset (see docs/phantom.md).

    Attributes:
        subjects: number of subjects generated.
        seed: the generator's seed.
        variant: one of :data:`~tfaug.methods.PHANTOM_VARIANT_NAMES` (``default``, ``hard``,
            ``wide``).
    """

    subjects: int = 100
    seed: int = 0
    variant: str = "default"


@dataclass
class PreprocessConfig:
    """Preprocessing applied to every volume before slicing (docs/method.md §7).

    Attributes:
        spacing_mm: target in-plane spacing in mm (slices are resampled to it). With
            ``resize: fixed`` only the nominal pixel size that converts mm-valued settings
            (elastic σ, deformation bound) to pixels.
        crop_size: side of the square centre crop/pad, in pixels after resampling
            (``resize: fixed``: the side every slice is resized to).
        n4: apply SimpleITK N4 bias-field correction (MR only).
        n4_shrink: per-axis shrink factors (x, y, z) for N4.
        n4_iterations: N4 fitting iterations per level.
        n4_negatives: what N4 does with an MR volume holding a few negative voxels (the tail
            left by reconstruction, registration or spline resampling): ``clip`` them to 0
            first, with a warning naming the count (the default; a no-op on non-negative
            volumes, so configs without the key behave as before), or ``refuse`` the volume.
            Volumes that cannot be MR magnitude images (mostly negative, or a large part far
            below zero as in CT) are refused either way.
        percentiles: (low, high) percentiles for ``(x - p_low) / (p_high - p_low)``.
        normalisation: ``percentile`` (the paper: ``(x - p_low) / (p_high - p_low)``) or
            ``minmax`` (``(x - min) / (max - min)`` per volume, as SSL4MIS, BCP and UniMatch).
        resize: ``spacing`` (the paper: resample slices to ``spacing_mm``, then centre
            crop/pad to ``crop_size``) or ``fixed`` (resize every slice to ``crop_size`` x
            ``crop_size`` whatever its size, as those codes; the aspect ratio is not kept).
        image_interpolation: ``linear`` (the paper) or ``nearest`` (those codes'
            ``scipy.ndimage.zoom(order=0)``): how images are resampled or resized; labels are
            always nearest neighbour.
        restore_interpolation: how a test prediction is mapped back to the native grid:
            ``linear`` (the probabilities, then argmax; tfaug's default) or ``nearest`` (argmax
            on the network's grid, then the labels, as SSL4MIS's and BCP's test code). Read
            by the test evaluation only; not part of the records.
    """

    spacing_mm: float = 1.367
    crop_size: int = 224
    n4: bool = True
    n4_shrink: list[int] = field(default_factory=lambda: [4, 4, 1])
    n4_iterations: list[int] = field(default_factory=lambda: [50, 50, 30, 20])
    n4_negatives: str = "clip"
    percentiles: list[float] = field(default_factory=lambda: [2.0, 98.0])
    normalisation: str = "percentile"
    resize: str = "spacing"
    image_interpolation: str = "linear"
    restore_interpolation: str = setting("linear", read_by=READ_BY_FINAL)


@dataclass
class SplitConfig:
    """How volumes are divided (docs/method.md §7).

    With several cases per patient (ACDC, ``data.frames: both``) the sizes count patients
    and every set holds all the frames of its patients.

    Attributes:
        scheme: ``random`` (seeded draws), ``paper`` (the original ACDC ids) or ``ssl4mis``
            (the ACDC lists of SSL4MIS, BCP and UniMatch: 70 training, 10 validation, 20
            test patients; the first N_L training patients labeled; docs/datasets.md).
        n_labeled: N_L, labeled volumes per draw.
        n_unlabeled: N_UL (``ssl4mis``: at most this many of the 70 − N_L training patients
            after the labeled ones, in list order; the papers use all of them).
        n_test: N_ts.
        n_validation: N_vl.
        draws: number of labeled draws from the pool.
        draw: which draw this run uses (``--split``).
        split_seed: seed of the random partition (``--split-seed``).
        balance_groups: keep ACDC pathology groups balanced across the sets.
        n_extra_validation: volumes (scheme ``random``; from the pool, outside every labeled
            draw) added to the validation volumes for a second, measuring checkpoint: each
            validated stage also keeps its best step on all ``n_validation +
            n_extra_validation`` volumes, and the run reports that checkpoint's test Dice
            beside the chosen one's. It never changes the chosen checkpoint; 0: off.
    """

    scheme: str = "random"
    n_labeled: int = 1
    n_unlabeled: int = 25
    n_test: int = 20
    n_validation: int = setting(2, switch=True)
    draws: int = 5
    draw: int = 0
    split_seed: int = 0
    balance_groups: bool = True
    n_extra_validation: int = setting(0, switch=True)


@dataclass
class ModelConfig:
    """Network widths (docs/method.md §3).

    Attributes:
        unet_filters: filters per U-Net level; their number (2 to 6, five by default) is the
            depth (the input side must be a multiple of 32, as for the generator).
        generator_filters: filters of the generator's z-branch upsampling blocks (1 to 5,
            five by default).
        generator_image_filters: filters of the generator's image branch and fusion convs.
        z_dim: size of the noise vector z.
        flow_kernel: kernel size of the deformation head (3 in the code, 1 in the paper).
        discriminator_filters: filters of the 5x5 stride-2 convs (1 to 5, five by default).
        discriminator_units: units of the two hidden dense layers.
        discriminator_patch_levels: ``null``: the paper's image-level D; k in
            1..len(discriminator_filters): a patch discriminator of the first k strided convs
            and one logit per position, each seeing ``1 + 4·(2^k − 1)`` pixels
            (docs/switches.md).
        discriminator_spectral_norm: spectrally normalised D layers, without
            BatchNormalization (``false``: the paper).
        pixel_discriminator_filters: filters of the 4x4 stride-2 convs of the fully
            convolutional discriminator of ``adv_pixel`` (Hung et al. 2018: 64..512).
        bn_momentum: BatchNormalization momentum (0.99 in the paper; lower for short runs).
        bn_epsilon: BatchNormalization epsilon.
        deformation_max_mm: soft bound of GV's displacement per axis, in mm
            (``m·tanh(v/m)``, converted to pixels with the preprocessed spacing); ``null``:
            unbounded, the paper.
        deformation_grid: GV's field is smoothed to a coarse grid of this cell side in
            pixels (average then bilinear upsampling); 1: full resolution, the paper.
        intensity_max: bound of GI's field ΔI, in normalised intensity units (the
            normalised image spans about [0, 1]); 1.0 is the paper's tanh.
        intensity_grid: as ``deformation_grid``, for GI's field.
    """

    unet_filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    generator_filters: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 16])
    generator_image_filters: int = 16
    z_dim: int = 100
    flow_kernel: int = 3
    discriminator_filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128])
    discriminator_units: int = 128
    discriminator_patch_levels: int | None = setting(None, switch=True)
    discriminator_spectral_norm: bool = setting(False, switch=True)
    pixel_discriminator_filters: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    deformation_max_mm: float | None = setting(None, switch=True)
    deformation_grid: int = setting(1, switch=True)
    intensity_max: float = setting(1.0, switch=True)
    intensity_grid: int = setting(1, switch=True)


@dataclass
class AugmentConfig:
    """Random augmentation parameters (docs/method.md §6).

    Attributes:
        affine_probability: probability that a slice gets one affine transform.
        scale_range: (min, max) isotropic scale.
        rotation_degrees: small rotations are drawn from U(-r, r) degrees.
        elastic_sigma_mm: σ of the random elastic control-point displacements, in mm
            (10 px at 1.367 mm in the paper); converted with the preprocessed spacing.
        elastic_grid: control points per axis of the random elastic field.
        contrast_range: (min, max) contrast factor c.
        brightness_range: (min, max) additive brightness b.
        mixup_alpha: α of the Beta(α, α) Mixup coefficient.
        generated_composition: how the final segmenter stage uses GV and GI: ``choice``
            (each generated slice is GV, GI or GV then GI with equal probability, the
            original code) or ``chain`` (GV then GI on every slice, as ``rdri`` chains RD
            and RI).
        generated_strength: (min, max) of a per-slice factor u ~ U(min, max) that scales
            each generated field (flow and ΔI) in the final segmenter stage; [1, 1] (the
            paper) applies the generators' fields as they are.
        generated_after_random: apply random elastic and random intensity (RD, RI) before
            the generators in the final segmenter stage, so the learned transformations
            come on top of random ones (false: the paper).
        random_before_generators: the generator stages also apply RD and RI (after the
            affine augmentation) to the labeled batch before G, so G learns transformations
            on top of random ones and D's generated slices are not all one subject's fixed
            appearance (false: the paper). Pair it with ``generated_after_random`` so the
            generators see the same kind of input in training and in the final stage.
    """

    affine_probability: float = 0.8
    scale_range: list[float] = field(default_factory=lambda: [0.9, 1.1])
    rotation_degrees: float = 15.0
    elastic_sigma_mm: float = setting(13.67, read_by=READ_BY_RANDOM)
    elastic_grid: int = setting(3, read_by=READ_BY_RANDOM)
    contrast_range: list[float] = setting(factory=lambda: [0.8, 1.2], read_by=READ_BY_RANDOM)
    brightness_range: list[float] = setting(factory=lambda: [-0.1, 0.1], read_by=READ_BY_RANDOM)
    mixup_alpha: float = setting(0.2, read_by=READ_BY_FINAL)
    generated_composition: str = setting("choice", read_by=READ_BY_FINAL, switch=True)
    generated_strength: list[float] = setting(
        factory=lambda: [1.0, 1.0], read_by=READ_BY_FINAL, switch=True
    )
    generated_after_random: bool = setting(False, read_by=READ_BY_FINAL, switch=True)
    random_before_generators: bool = setting(False, switch=True)


@dataclass
class HeavyConfig:
    """nnU-Net-style heavy random augmentation of the ``heavy`` method (docs/methods.md).

    Each transform applies to a slice with its own probability ``p_*``; the defaults are
    nnU-Net v2's for 2D data. Ranges are ``[min, max]``. Only the final segmenter stage
    reads them. Attributes are the arguments of :class:`tfaug.ops.heavy.HeavyAugmentation`,
    except ``elastic_sigma_mm`` (converted to pixels with ``preprocess.spacing_mm``).
    """

    p_rotation: float = setting(0.2, read_by=READ_BY_FINAL)
    rotation_degrees: float = setting(180.0, read_by=READ_BY_FINAL)
    p_scaling: float = setting(0.2, read_by=READ_BY_FINAL)
    scaling_range: list[float] = setting(factory=lambda: [0.7, 1.4], read_by=READ_BY_FINAL)
    p_elastic: float = setting(0.0, read_by=READ_BY_FINAL)
    elastic_sigma_mm: float = setting(13.67, read_by=READ_BY_FINAL)
    elastic_grid_size: int = setting(3, read_by=READ_BY_FINAL)
    p_mirror: float = setting(0.5, read_by=READ_BY_FINAL)
    p_noise: float = setting(0.1, read_by=READ_BY_FINAL)
    noise_std_range: list[float] = setting(factory=lambda: [0.0, 0.1], read_by=READ_BY_FINAL)
    p_blur: float = setting(0.2, read_by=READ_BY_FINAL)
    blur_sigma_range: list[float] = setting(factory=lambda: [0.5, 1.0], read_by=READ_BY_FINAL)
    p_brightness: float = setting(0.15, read_by=READ_BY_FINAL)
    brightness_range: list[float] = setting(factory=lambda: [0.75, 1.25], read_by=READ_BY_FINAL)
    p_contrast: float = setting(0.15, read_by=READ_BY_FINAL)
    contrast_range: list[float] = setting(factory=lambda: [0.75, 1.25], read_by=READ_BY_FINAL)
    p_low_resolution: float = setting(0.25, read_by=READ_BY_FINAL)
    low_resolution_range: list[float] = setting(factory=lambda: [0.5, 1.0], read_by=READ_BY_FINAL)
    p_inverted_gamma: float = setting(0.1, read_by=READ_BY_FINAL)
    p_gamma: float = setting(0.3, read_by=READ_BY_FINAL)
    gamma_range: list[float] = setting(factory=lambda: [0.7, 1.5], read_by=READ_BY_FINAL)
    gamma_retain_stats: bool = setting(True, read_by=READ_BY_FINAL)
    mask_interpolation: str = setting("linear", read_by=READ_BY_FINAL)


@dataclass
class SslConfig:
    """Weak-to-strong consistency of ``fixmatch`` and ``unimatch`` (docs/methods.md).

    The defaults are UniMatch's (its medical code, ``more-scenarios/medical``); its loss
    ``(L_x + 0.25·L_s1 + 0.25·L_s2 + 0.5·L_fp) / 2`` is written here as one weight per term.
    Iterations: ``train.segmenter_iterations``; optimiser: ``train.learning_rate`` (Adam, as
    every method). Only the final stage (``consistency``) reads them.

    Attributes:
        threshold: an unlabeled pixel is a target where the teacher's maximum softmax
            probability is at least this.
        feature_dropout: channel dropout rate of the feature-perturbation stream
            (``unimatch``), in [0, 1).
        supervised_weight: weight of the loss on the labeled slices.
        strong_weight: weight of each of ``unimatch``'s two strong views.
        feature_weight: weight of ``unimatch``'s feature-perturbation stream.
        fixmatch_strong_weight: weight of ``fixmatch``'s single strong view (UniMatch's
            FixMatch: ``(L_x + L_s) / 2``).
        supervised_loss: ``cross_entropy_dice`` (UniMatch's ``(CE + Dice) / 2``), or
            ``cross_entropy`` (the loss of every other method; pair it with
            ``unlabeled_loss: cross_entropy``: a Dice's gradients are far larger than a
            pixel-mean CE's and drown it).
        class_weights: the cross-entropy's per-class weights, background first; ``null``:
            unweighted, as UniMatch's ``nn.CrossEntropyLoss()`` (``train.class_weights``,
            the paper's [0.1, 0.3, 0.3, 0.3], make a pixel confidently foreground long
            before it is confidently background, and the pseudo-labels then drift to
            foreground: docs/methods.md).
        unlabeled_loss: ``dice`` (UniMatch's medical code: soft Dice on the confident
            pixels) or ``cross_entropy`` (confident pixels, mean over all; ``class_weights``).
        cutmix_probability: chance that a strong view's slice gets a CutMix box.
        cutmix_area_range: [min, max] share of the slice's area a box covers.
        cutmix_aspect_range: [min, max] height/width of a box (min <= 1 <= max).
        unlabeled_fraction: share of ``train.batch_size`` that is unlabeled slices (the rest
            is labeled slices); UniMatch: as many of each.
        labeled_augmentation: what the labeled slices get: ``weak`` (the weak view, the
            random affine augmentation, as UniMatch), ``heavy`` (the ``heavy:`` section's
            nnU-Net augmentation) or ``rdri`` (the affine augmentation, then RD and RI of the
            ``augment:`` section, on every labeled slice). The unlabeled slices' weak view is
            the affine augmentation in every case.
        rampup_iterations: T > 0 ramps the unlabeled terms' weight up over the first T
            steps, exp(−5(1 − t/T)²) (SSL4MIS's sigmoid ramp-up); 0: off (UniMatch).
        distribution_alignment: multiply the teacher's per-pixel softmax by the ratio of the
            labeled slices' running class shares to its own on the unlabeled pixels, and
            renormalise, before its argmax and threshold (ReMixMatch's distribution
            alignment), so that it cannot label far more pixels as one class than the labeled
            slices have; false: off (UniMatch).
        learned_weight: weight of the learned strong view GI(GV(x_u)) of ``unimatch_gdgi``
            and ``unimatch_gdgi_joint``; ``null``: ``strong_weight``, as each generic view.
        learned_view: where those two methods use the generators: ``both`` (the generated
            pairs mixed into the second half of the labeled batch, as ``gdgi`` mixes them,
            and the learned strong view of the unlabeled slices), ``unlabeled`` (the
            learned view only) or ``labeled`` (the generated pairs only).
        strong_views: the number of generic strong views (intensity perturbation and
            CutMix); ``null``: the method's (``fixmatch``: 1, the others 2). 0 is allowed
            for ``unimatch_gdgi[_joint]`` with a learned view on the unlabeled slices: the
            learned view then replaces the generic ones.
    """

    threshold: float = setting(0.95, read_by=READ_BY_FINAL)
    feature_dropout: float = setting(0.5, read_by=READ_BY_FINAL)
    supervised_weight: float = setting(0.5, read_by=READ_BY_FINAL)
    strong_weight: float = setting(0.125, read_by=READ_BY_FINAL)
    feature_weight: float = setting(0.25, read_by=READ_BY_FINAL)
    fixmatch_strong_weight: float = setting(0.5, read_by=READ_BY_FINAL)
    supervised_loss: str = setting("cross_entropy_dice", read_by=READ_BY_FINAL)
    unlabeled_loss: str = setting("dice", read_by=READ_BY_FINAL)
    class_weights: list[float] | None = setting(None, read_by=READ_BY_FINAL)
    cutmix_probability: float = setting(0.5, read_by=READ_BY_FINAL)
    cutmix_area_range: list[float] = setting(factory=lambda: [0.02, 0.4], read_by=READ_BY_FINAL)
    cutmix_aspect_range: list[float] = setting(
        factory=lambda: [0.3, 1.0 / 0.3], read_by=READ_BY_FINAL
    )
    unlabeled_fraction: float = setting(0.5, read_by=READ_BY_FINAL)
    labeled_augmentation: str = setting("weak", read_by=READ_BY_FINAL)
    rampup_iterations: int = setting(0, read_by=READ_BY_FINAL)
    distribution_alignment: bool = setting(False, read_by=READ_BY_FINAL)
    learned_weight: float | None = setting(None, read_by=READ_BY_FINAL)
    learned_view: str = setting("both", read_by=READ_BY_FINAL)
    strong_views: int | None = setting(None, read_by=READ_BY_FINAL)


@dataclass
class StrongConfig:
    """The intensity perturbation of the consistency methods' strong views.

    The arguments of :class:`tfaug.ops.heavy.HeavyIntensity` (the ``heavy:`` section's
    intensity keys, same names). The defaults approximate UniMatch's strong view (colour
    jitter of brightness and contrast by ±50 % with probability 0.8, Gaussian blur with
    σ ~ U(0.1, 2) px with probability 0.5); noise, low resolution and the gammas, which
    UniMatch does not use, are off (nnU-Net's ranges are kept for them). The result is
    clipped to each slice's range before the perturbation (``clip_to_input_range``), as
    UniMatch's 8-bit jitter keeps its [0, 1] images in [0, 1]. Only the final stage reads
    them.
    """

    p_noise: float = setting(0.0, read_by=READ_BY_FINAL)
    noise_std_range: list[float] = setting(factory=lambda: [0.0, 0.1], read_by=READ_BY_FINAL)
    p_blur: float = setting(0.5, read_by=READ_BY_FINAL)
    blur_sigma_range: list[float] = setting(factory=lambda: [0.1, 2.0], read_by=READ_BY_FINAL)
    p_brightness: float = setting(0.8, read_by=READ_BY_FINAL)
    brightness_range: list[float] = setting(factory=lambda: [0.5, 1.5], read_by=READ_BY_FINAL)
    p_contrast: float = setting(0.8, read_by=READ_BY_FINAL)
    contrast_range: list[float] = setting(factory=lambda: [0.5, 1.5], read_by=READ_BY_FINAL)
    p_low_resolution: float = setting(0.0, read_by=READ_BY_FINAL)
    low_resolution_range: list[float] = setting(factory=lambda: [0.5, 1.0], read_by=READ_BY_FINAL)
    p_inverted_gamma: float = setting(0.0, read_by=READ_BY_FINAL)
    p_gamma: float = setting(0.0, read_by=READ_BY_FINAL)
    gamma_range: list[float] = setting(factory=lambda: [0.7, 1.5], read_by=READ_BY_FINAL)
    gamma_retain_stats: bool = setting(True, read_by=READ_BY_FINAL)
    clip_to_input_range: bool = setting(True, read_by=READ_BY_FINAL)


@dataclass
class TrainConfig:
    """Optimisation and schedule (docs/method.md §2, §4).

    Attributes:
        batch_size: global batch size.
        learning_rate: Adam learning rate for every network.
        pretrain_iterations: S pre-training on labeled (affine) slices.
        generator_iterations: iterations of each joint (S, G, D) stage.
        segmenter_iterations: iterations of the final segmenter stage.
        validate_every: validation period k, in iterations.
        class_weights: cross-entropy weight per class, background first.
        lambda_seg: weight of L_S in the generator objective.
        lambda_adv: weight of the adversarial term.
        lambda_ld: weight of the large-deviation term.
        lambda_diversity: weight of the generators' diversity (mode-seeking) term, which
            rewards fields that change with z (0: off, the paper; see
            ``JointAugmentationModel``).
        generator_mode: ``joint`` (L_S reaches G, the paper) or ``independent``.
        model_selection: ``best`` keeps the weights of the best validation score of each
            generator and final segmenter stage (the paper); ``last`` takes them after the
            fixed number of iterations, without validation (the "no validation" ablation).
        generated_fraction: (min, max) fraction of a joint batch that is generated.
        discriminator_learning_rate: Adam learning rate of the generator stages'
            discriminators; ``null``: ``learning_rate`` (the paper).
        discriminator_update_every: k: the generator stages' discriminators are updated
            once every k steps, with the mean gradient of those k batches, while G and S are
            updated every step (1: every step, the paper).
        real_label: the discriminators' target for real images: 1.0 (the paper), or e.g.
            0.9 for one-sided label smoothing.
        validation_smoothing: α of the moving average of the validation score that picks
            each stage's best checkpoint (0: the raw score, the paper).
        generator_patience: P > 0 ends each generator stage once its best validation step is
            P steps old (a multiple of ``validate_every``; ``generator_iterations`` stays the
            cap): the stage runs only as long as its validation curve rises. 0: every
            generator stage runs ``generator_iterations`` steps (the paper).
        budget_marks: n > 1 splits the final stage into n equal parts; at the end of each
            part but the last the stage keeps its chosen checkpoint as it stands then (the
            checkpoint a run stopped there would have chosen), and the run reports its test
            Dice: the method at a fraction of its budget, for comparisons at equal wall time
            (``tfaug report``). 0: off.
        self_training_rounds: R, pseudo-label/retrain rounds of ``self_training``.
        self_training_iterations: iterations of each ``self_training`` round (round 0, S on
            labeled slices alone, uses ``segmenter_iterations``).
        pseudo_label_confidence: pseudo-labeled pixels whose maximum softmax probability is
            below this value get zero loss weight (the refinement changes none of them).
        lambda_adv_segmenter: weight of S's adversarial term in ``adv_pixel`` / ``adv_image``
            (Hung et al. 2018 use 0.01 and 0.001; ``lambda_adv`` is the generators').
        lambda_semi: weight of ``adv_pixel``'s self-taught term on unlabeled slices (0: off).
        semi_threshold: discriminator confidence σ(D) above which an unlabeled pixel's
            argmax prediction is a target of the self-taught term (Hung et al.: 0.2).
        semi_start: iteration from which the self-taught term is used (D must learn first).
        mixed_precision: use the ``mixed_float16`` policy (GPU).
        cpu_replicas: with ``strategy: mirrored`` and no GPU, split the CPU into this many
            logical devices (to exercise the distributed path without GPUs; 0: do not split).
        jit_compile: compile train steps with XLA.
        graph_optimization: TensorFlow's graph optimiser (Grappler); ``false`` saves about
            10 s per traced step, worth it only for runs of a few minutes.
        seed: global seed of the run.
    """

    batch_size: int = 20
    learning_rate: float = 1e-3
    pretrain_iterations: int = 400
    generator_iterations: int = 10000
    segmenter_iterations: int = setting(10000, read_by=READ_BY_FINAL, generator_value=0)
    validate_every: int = 10
    class_weights: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.3, 0.3])
    lambda_seg: float = 1.0
    lambda_adv: float = 1.0
    lambda_ld: float = 1e-3
    lambda_diversity: float = setting(0.0, switch=True)
    generator_mode: str = "joint"
    model_selection: str = "best"
    generated_fraction: list[float] = field(default_factory=lambda: [0.25, 0.7])
    discriminator_learning_rate: float | None = setting(None, switch=True)
    discriminator_update_every: int = setting(1, switch=True)
    real_label: float = setting(1.0, switch=True)
    validation_smoothing: float = setting(0.0, switch=True)
    budget_marks: int = setting(0, switch=True, read_by=READ_BY_FINAL)
    generator_patience: int = setting(0, switch=True)
    self_training_rounds: int = 3
    self_training_iterations: int = 10000
    pseudo_label_confidence: float = 0.9
    lambda_adv_segmenter: float = 0.01
    lambda_semi: float = 0.1
    semi_threshold: float = 0.2
    semi_start: int = 2500
    mixed_precision: bool = False
    cpu_replicas: int = 0
    jit_compile: bool = False
    graph_optimization: bool = True
    seed: int = 0


@dataclass
class Config:
    """Everything a run needs. ``method``, ``runs_dir``, ``strategy`` and ``tag`` describe the run.

    ``tag`` is appended to the run directory's name, so runs that differ only in settings
    outside the name (an ablation such as N_UL or a σ sweep) get their own directories.
    """

    data: DataConfig = field(default_factory=DataConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    heavy: HeavyConfig = field(default_factory=HeavyConfig)
    ssl: SslConfig = field(default_factory=SslConfig)
    strong: StrongConfig = field(default_factory=StrongConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: str = DEFAULT_METHOD
    runs_dir: str = "runs"
    strategy: str = "default"
    tag: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _exponent_number(text: str, where: str) -> float | str:
    """A number YAML 1.1 reads as a string (``1e-4``: no dot before the exponent) as a
    float; any other string is returned unchanged for the caller's error."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, found {text!r}")
    return number


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return _build(annotation, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return {
            _coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}")
            for k, v in value.items()
        }
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, found {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            value = _exponent_number(value, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _check_keys(cls: type, values: dict[str, Any], where: str) -> None:
    """Raise for a key of ``values`` (nested sections too) that ``cls`` does not have, with
    ``where`` (e.g. the YAML file) in the message; values are not checked."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(hints)}")
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            _check_keys(hints[key], value, f"{where}: {key}" if cls is Config else where)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def shipped_settings() -> tuple[str, ...]:
    """Names of the settings in ``configs/settings`` (``bdv3R``, ``lrdri``, ...)."""
    return tuple(sorted(path.stem for path in SETTINGS_DIR.glob("*.yaml")))


def config_file_path(config_file: str | Path) -> Path:
    """The YAML file a ``--config`` argument names: an existing file, or else the name of a
    shipped setting (``--config bdv3R`` reads ``configs/settings/bdv3R.yaml``).

    Raises:
        ConfigError: neither a file nor a shipped setting's name.
    """
    path = Path(config_file)
    if path.is_file():
        return path
    setting = SETTINGS_DIR / f"{path}.yaml"
    if path.name == str(path) and setting.is_file():
        return setting
    raise ConfigError(
        f"{path}: config file not found; give the path of a YAML file or the name of a "
        f"shipped setting ({', '.join(shipped_settings())}: see configs/settings)"
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (safe loader); a clear error for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return content


def parse_override(text: str) -> dict[str, Any]:
    """``"train.batch_size=8"`` → ``{"train": {"batch_size": 8}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": DATASETS,
    "data.frames": ("es", "both"),
    "split.scheme": ("random", "paper", "ssl4mis"),
    "train.generator_mode": GENERATOR_MODES,
    "train.model_selection": ("best", "last"),
    "augment.generated_composition": GENERATED_COMPOSITIONS,
    "preprocess.n4_negatives": ("clip", "refuse"),
    "heavy.mask_interpolation": ("linear", "nearest"),
    "preprocess.normalisation": ("percentile", "minmax"),
    "preprocess.resize": ("spacing", "fixed"),
    "preprocess.image_interpolation": ("linear", "nearest"),
    "preprocess.restore_interpolation": ("linear", "nearest"),
    "phantom.variant": PHANTOM_VARIANT_NAMES,
    "ssl.supervised_loss": SUPERVISED_LOSSES,
    "ssl.unlabeled_loss": UNLABELED_LOSSES,
    "ssl.labeled_augmentation": LABELED_AUGMENTATIONS,
    "ssl.learned_view": LEARNED_VIEWS,
}


def _check_choices(config: Config) -> None:
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"strategy: {config.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    if not re.fullmatch(r"[A-Za-z0-9._]*", config.tag):
        raise ConfigError(
            f"tag: {config.tag!r} may hold only letters, digits, '.' and '_' "
            "(it becomes part of the run directory's name)"
        )
    _check_switches(config)
    problems = _strong_view_problems(config)
    if problems:
        raise ConfigError("; ".join(problems) + " (see docs/methods.md)")


def _schedule_problems(config: Config) -> list[str]:
    """The counts of the training schedule are whole numbers >= 1 (``self_training_rounds``
    and ``ssl.rampup_iterations`` may be 0): a stage of 0 or fewer iterations keeps no
    checkpoint, and validating every 0 iterations divides by zero. A shared generator
    folder's config (method ``generators``) records ``segmenter_iterations`` 0: its stages
    do not read it."""
    train = config.train
    at_least_one = [
        "batch_size",
        "validate_every",
        "pretrain_iterations",
        "generator_iterations",
        "self_training_iterations",
    ]
    if config.method != "generators":
        at_least_one.append("segmenter_iterations")
    problems = [
        f"train.{key}: {getattr(train, key)} must be >= 1"
        for key in at_least_one
        if getattr(train, key) < 1
    ]
    if train.self_training_rounds < 0:
        problems.append(f"train.self_training_rounds: {train.self_training_rounds} must be >= 0")
    if config.ssl.rampup_iterations < 0:
        problems.append(f"ssl.rampup_iterations: {config.ssl.rampup_iterations} must be >= 0")
    return problems


def _check_switches(config: Config) -> None:
    """Range checks of the schedule (:func:`_schedule_problems`) and of the switches beyond
    the paper (docs/switches.md), at load time, so a bad ``--set`` fails before anything is
    trained."""
    model, train, augment = config.model, config.train, config.augment
    problems = _schedule_problems(config)
    if problems:  # the checks below divide by train.validate_every
        raise ConfigError("; ".join(problems))
    if model.deformation_max_mm is not None and not model.deformation_max_mm > 0:
        problems.append(f"model.deformation_max_mm: {model.deformation_max_mm} must be > 0 or null")
    if not model.intensity_max > 0:
        problems.append(f"model.intensity_max: {model.intensity_max} must be > 0 (1.0: the paper)")
    for key in ("deformation_grid", "intensity_grid"):
        grid = getattr(model, key)
        if grid < 1 or config.preprocess.crop_size % grid:
            problems.append(
                f"model.{key}: {grid} must be >= 1 and divide preprocess.crop_size "
                f"({config.preprocess.crop_size})"
            )
    levels = model.discriminator_patch_levels
    if levels is not None and not 1 <= levels <= 5:
        problems.append(f"model.discriminator_patch_levels: {levels} must be in 1..5 or null")
    rate = train.discriminator_learning_rate
    if rate is not None and not rate > 0:
        problems.append(f"train.discriminator_learning_rate: {rate} must be > 0 or null")
    if not train.discriminator_update_every >= 1:
        every = train.discriminator_update_every
        problems.append(f"train.discriminator_update_every: {every} must be >= 1")
    if not 0.5 < train.real_label <= 1.0:
        problems.append(f"train.real_label: {train.real_label} must be in (0.5, 1]")
    if not 0.0 <= train.validation_smoothing < 1.0:
        smoothing = train.validation_smoothing
        problems.append(f"train.validation_smoothing: {smoothing} must be in [0, 1)")
    if train.budget_marks < 0 or train.budget_marks == 1:
        problems.append(f"train.budget_marks: {train.budget_marks} must be 0 (off) or >= 2")
    if train.generator_patience < 0 or train.generator_patience % train.validate_every:
        problems.append(
            f"train.generator_patience: {train.generator_patience} must be 0 (off) or a "
            f"multiple of train.validate_every ({train.validate_every})"
        )
    if train.generator_patience and train.model_selection != "best":
        problems.append(
            "train.generator_patience needs validation: set train.model_selection to best, "
            "or the patience to 0"
        )
    if not train.lambda_diversity >= 0:
        problems.append(f"train.lambda_diversity: {train.lambda_diversity} must be >= 0")
    strength = augment.generated_strength
    if len(strength) != 2 or not 0.0 <= strength[0] <= strength[1]:
        problems.append(f"augment.generated_strength: {strength} must be [min, max], 0<=min<=max")
    if problems:
        raise ConfigError("; ".join(problems) + " (see docs/switches.md)")


def _strong_view_problems(config: Config) -> list[str]:
    """``ssl.strong_views`` is a count >= 0, and 0 only where a learned view replaces the
    generic ones (``unimatch_gdgi[_joint]`` with ``ssl.learned_view`` on the unlabeled
    slices)."""
    views = config.ssl.strong_views
    if views is None:
        return []
    if views < 0:
        return [f"ssl.strong_views: {views} must be >= 0 or null (the method's)"]
    learned = config.method in LEARNED_CONSISTENCY_METHODS
    if views == 0 and not (learned and config.ssl.learned_view != "labeled"):
        return [
            "ssl.strong_views: 0 leaves the unlabeled slices without a strong view; it is "
            f"allowed only for methods {', '.join(LEARNED_CONSISTENCY_METHODS)} with "
            "ssl.learned_view both or unlabeled "
            f"(found method {config.method}, ssl.learned_view {config.ssl.learned_view})"
        ]
    return []


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and type-check a :class:`Config` from a nested dict.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a value outside its
            allowed choices (:data:`CHOICES`).
    """
    config = _build(Config, values, "")
    _check_choices(config)
    return config


def completed_config(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded config (a run's or a search's), completed with today's defaults.

    Keys added to tfaug since it was recorded take their defaults, so a run or search started
    with an earlier version compares equal to today's same settings. A recorded dict that no
    longer parses (a key since removed) is returned as it is, so a comparison reports it.
    """
    try:
        return config_from_dict(recorded).to_dict()
    except ConfigError:
        return recorded


def config_differences(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys (``train.batch_size``) whose values differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [prefix.rstrip(".")]


def load_config(
    dataset: str = "phantom",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Resolve the configuration of a run.

    Args:
        dataset: one of :data:`DATASETS`; selects ``configs/<dataset>.yaml``.
        config_file: optional YAML merged on top (any subset of keys): a file, or the name
            of a shipped setting (:func:`config_file_path`).
        overrides: ``section.key=value`` strings merged last.

    Returns:
        The resolved :class:`Config`.

    Raises:
        ConfigError: unknown dataset, unknown key, or a value of the wrong type.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    values = read_yaml(CONFIG_DIR / f"{dataset}.yaml")
    if config_file is not None:
        path = config_file_path(config_file)
        file_values = read_yaml(path)
        _check_keys(Config, file_values, str(path))
        values = _merge(values, file_values)
    for text in overrides or []:
        values = _merge(values, parse_override(text))
    config = config_from_dict(values)
    if config.data.dataset != dataset and config_file is None:
        raise ConfigError(f"configs/{dataset}.yaml declares data.dataset={config.data.dataset!r}")
    return config
