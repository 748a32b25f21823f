"""The names tfaug's methods, generator kinds and modes, stages, seeds and phantom variants
are known by.

One place for every name that a config, a run directory, the command line, the grid, the
report and the export spell out. This module imports nothing (no TensorFlow), so
``tfaug --help`` and ``tfaug report`` can read it cheaply.
"""

from __future__ import annotations

# -- generators ---------------------------------------------------------------------------
GENERATOR_KINDS = ("deformation", "intensity")  # GV outputs a flow, GI an additive ΔI
GENERATOR_SHORT_NAMES = {"deformation": "GV", "intensity": "GI"}
GENERATOR_MODES = ("joint", "independent")  # does L_S reach the generators (Table I)?
GENERATED_COMPOSITIONS = ("choice", "chain")  # how the final stage combines GV and GI

# -- methods ------------------------------------------------------------------------------
RANDOM_METHODS = ("none", "aff", "rd", "ri", "rdri", "mixup", "heavy")

# Which generators each method needs; the other methods need none.
GENERATOR_METHODS: dict[str, tuple[str, ...]] = {
    "gd": ("deformation",),
    "gi": ("intensity",),
    "gdgi": ("deformation", "intensity"),
    "gdgi_mixup": ("deformation", "intensity"),
    "unimatch_gdgi": ("deformation", "intensity"),  # frozen GV, GI: a learned strong view
}
# Semi-supervised comparisons that train S their own way (tfaug.baselines), not through
# an augmentation layer in the segmenter stage.
ADVERSARIAL_LEVELS = {"adv_pixel": "pixel", "adv_image": "image"}
# Weak-to-strong consistency on the unlabeled slices: UniMatch (Yang et al. 2023), its
# ablation with one strong view and no feature-perturbation stream, FixMatch-style, and
# UniMatch with the learned augmentation GI(GV(x)), from generators trained first and frozen
# (unimatch_gdgi) or trained with the student in its own stage (unimatch_gdgi_joint).
CONSISTENCY_METHODS = ("fixmatch", "unimatch", "unimatch_gdgi", "unimatch_gdgi_joint")
# The consistency methods with the learned augmentation, and the methods whose final stage
# trains (and keeps) generators itself instead of reusing the generator stages'.
LEARNED_CONSISTENCY_METHODS = ("unimatch_gdgi", "unimatch_gdgi_joint")
FINAL_STAGE_GENERATORS: dict[str, tuple[str, ...]] = {
    "unimatch_gdgi_joint": ("deformation", "intensity"),
}
# Every method that uses learned transformations, whichever stage trains the generators.
LEARNED_AUGMENTATION_METHODS = (*GENERATOR_METHODS, *FINAL_STAGE_GENERATORS)
COMPARISON_METHODS = ("self_training", *ADVERSARIAL_LEVELS, *CONSISTENCY_METHODS)
_AUGMENTATION_METHODS = tuple(m for m in GENERATOR_METHODS if m not in COMPARISON_METHODS)
METHODS = (*RANDOM_METHODS, *_AUGMENTATION_METHODS, *COMPARISON_METHODS)
DEFAULT_METHOD = "gdgi"
# The method each generator kind is tuned with (`tfaug tune --generator`).
TUNED_METHODS = {"deformation": "gd", "intensity": "gi"}
TUNERS = ("random", "bayesian", "grid")
# The losses of the consistency methods (config ssl.supervised_loss, ssl.unlabeled_loss).
SUPERVISED_LOSSES = ("cross_entropy_dice", "cross_entropy")
UNLABELED_LOSSES = ("dice", "cross_entropy")
LABELED_AUGMENTATIONS = ("weak", "heavy", "rdri")  # ssl.labeled_augmentation
# Where unimatch_gdgi uses the generators (ssl.learned_view): the generated pairs mixed into
# the labeled batch, the learned strong view of the unlabeled slices, or both.
LEARNED_VIEWS = ("both", "unlabeled", "labeled")

# -- data ---------------------------------------------------------------------------------
# The synthetic phantom's variants (``phantom.variant``; parameters in tfaug.data.phantom).
PHANTOM_VARIANT_NAMES = ("default", "hard", "wide")

# -- stages -------------------------------------------------------------------------------
PRETRAIN_STAGE = "pretrain"
SEGMENTER_STAGE = "segmenter"
ADVERSARIAL_STAGE = "adversarial"
CONSISTENCY_STAGE = "consistency"


def generator_stage(kind: str) -> str:
    """The stage folder name of generator ``kind``: ``"generator_deformation"``, …"""
    return f"generator_{kind}"


def self_training_stage(round_index: int) -> str:
    """The stage folder name of self-training round r (0: S on labeled slices alone)."""
    return f"self_training_round{round_index}"


def final_stage(method: str, self_training_rounds: int) -> str:
    """The stage whose kept S is the final segmenter of a ``method`` run (what is evaluated
    and exported); ``self_training_rounds`` is the config's ``train.self_training_rounds``."""
    if method == "self_training":
        return self_training_stage(self_training_rounds)
    if method in ADVERSARIAL_LEVELS:
        return ADVERSARIAL_STAGE
    if method in CONSISTENCY_METHODS:
        return CONSISTENCY_STAGE
    return SEGMENTER_STAGE


GENERATOR_STAGES = {generator_stage(kind): kind for kind in GENERATOR_KINDS}
SHARED_STAGES = (PRETRAIN_STAGE, *GENERATOR_STAGES)  # trained once per generator directory

# -- seeds --------------------------------------------------------------------------------
# A stage draws from seed ``train.seed * SEED_STRIDE + offset``; within a stage, a data
# stream resumed at step t adds t, and a second random layer of one kind adds the
# ``SUBSTREAM`` offset of its role. Changing any value changes every run's random draws.
SEED_STRIDE = 1000
STAGE_SEED_OFFSETS = {
    PRETRAIN_STAGE: 1,
    generator_stage("deformation"): 2,
    generator_stage("intensity"): 3,
    SEGMENTER_STAGE: 4,
    "self_training": 10,  # round r uses 10 + r
    ADVERSARIAL_STAGE: 30,
    CONSISTENCY_STAGE: 40,
}
SUBSTREAM = {
    "random_intensity": 1,  # RI beside RD in one stage
    "second_dataset": 1,  # the unlabeled (or pseudo-labeled) half of a batch
    "random_before_generators": 2,  # RD+RI before G in the generator stages
    "mixup_after_generated": 2,  # Mixup after the generated pairs (gdgi_mixup)
    "strong_views": 3,  # the intensity perturbation of the consistency methods' strong views
    "cutmix": 4,  # their CutMix boxes
    "feature_dropout": 5,  # unimatch's channel dropout of the encoder features
    "ssl_labeled": 6,  # the consistency methods' labeled augmentation (ssl.labeled_augmentation)
    "random_after_affine": 2,  # RD+RI after the affine augmentation in that one layer (rdri)
    "learned_view": 7,  # the z of unimatch_gdgi's learned strong view
    "labeled_generated": 8,  # the z of unimatch_gdgi's generated pairs in the labeled batch
}


def stage_seed(train_seed: int, offset: int) -> int:
    """The seed of a stage: ``train_seed * SEED_STRIDE + offset``."""
    return train_seed * SEED_STRIDE + offset
