"""Tests for tfaug/training/builders.py and tfaug/ops/generated.py: every method's layer and
the learned augmentation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import GENERATOR_FILTERS, SIDE, tiny_config

from tfaug.methods import COMPARISON_METHODS, GENERATOR_METHODS, METHODS
from tfaug.models.generator import Generator
from tfaug.ops.augment import RandomAffine
from tfaug.ops.generated import ChainAugmentation, GeneratedAugmentation, SecondHalfAugmentation
from tfaug.ops.heavy import HeavyAugmentation
from tfaug.training.builders import (
    build_affine,
    build_generator,
    build_generator_input_augmentation,
    build_labeled_augmentation,
    build_method_augmentation,
    build_ssl_labeled_augmentation,
)

Z_DIM = 8
N_CLASSES = 4


def _generator(kind: str) -> Generator:
    generator = Generator(kind, filters=GENERATOR_FILTERS, image_filters=4, z_dim=Z_DIM)
    generator((tf.zeros((1, SIDE, SIDE, 1)), tf.zeros((1, Z_DIM))))
    return generator


@pytest.fixture(scope="module")
def generators() -> dict[str, Generator]:
    """Tiny freshly initialised GV and GI (their fields are small but not zero)."""
    return {"deformation": _generator("deformation"), "intensity": _generator("intensity")}


def _pairs(n: int) -> dict[str, tf.Tensor]:
    """Blocks of classes 0..3: masks (n,32,32,4) one-hot; images = the class-1 channel."""
    rng = np.random.default_rng(3)
    labels = np.zeros((n, SIDE, SIDE), np.int32)
    for i in range(n):
        top, left = rng.integers(4, 12, size=2)
        labels[i, top : top + 14, left : left + 14] = 1
        labels[i, top + 4 : top + 10, left + 4 : left + 10] = 2
        labels[i, top + 6 : top + 8, left + 6 : left + 8] = 3
    masks = tf.one_hot(labels, N_CLASSES)
    return {"images": masks[..., 1:2], "segmentation_masks": masks}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_and_keeps_masks_normalised(method, generators, tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method=method)
    needed = {kind: generators[kind] for kind in GENERATOR_METHODS.get(method, ())}

    layer = build_method_augmentation(method, cfg, needed, seed=5)

    if method in ("none", "aff", "heavy", *COMPARISON_METHODS):
        assert layer is None
        return
    inputs = _pairs(8)
    out = layer(inputs, training=True)
    assert out["images"].shape == inputs["images"].shape
    assert out["segmentation_masks"].shape == inputs["segmentation_masks"].shape
    assert not np.allclose(out["images"], inputs["images"])
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)


def test_unknown_method_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs")
    with pytest.raises(ValueError, match="unknown method 'gan'; choose one of none, aff"):
        build_method_augmentation("gan", cfg, {}, seed=0)


def test_generated_augmentation_uses_gv_gi_and_gvi_across_rows(generators):
    layer = GeneratedAugmentation(**generators, z_dim=Z_DIM, seed=1)
    inputs = _pairs(24)
    out = layer(inputs, training=True)
    masks_in = inputs["segmentation_masks"].numpy()
    images, masks = out["images"].numpy(), out["segmentation_masks"].numpy()

    np.testing.assert_allclose(masks.sum(-1), 1.0, atol=1e-5)
    assert masks.min() >= -1e-6 and masks.max() <= 1 + 1e-6
    kinds = []
    for row in range(24):
        assert not np.array_equal(images[row], inputs["images"][row])
        if np.array_equal(masks[row], masks_in[row]):
            kinds.append("GI")  # the label is untouched by an intensity change
        elif np.allclose(images[row, ..., 0], masks[row, ..., 1], atol=1e-6):
            kinds.append("GV")  # image and label warped by the same field, nothing added
        else:
            kinds.append("GVI")
    assert set(kinds) == {"GV", "GI", "GVI"}


def test_chained_composition_gives_every_row_gv_then_gi(generators):
    layer = GeneratedAugmentation(**generators, z_dim=Z_DIM, seed=1, composition="chain")
    inputs = _pairs(8)
    out = layer(inputs, training=True)
    images, masks = out["images"].numpy(), out["segmentation_masks"].numpy()
    masks_in = inputs["segmentation_masks"].numpy()
    for row in range(8):
        assert not np.array_equal(masks[row], masks_in[row])  # warped (GV)...
        assert not np.allclose(images[row, ..., 0], masks[row, ..., 1], atol=1e-6)  # ...+ GI
    assert layer.get_config()["composition"] == "chain"


def test_unknown_composition_is_refused(generators):
    with pytest.raises(ValueError, match="composition must be one of"):
        GeneratedAugmentation(**generators, z_dim=Z_DIM, composition="sum")


def test_generated_augmentation_with_one_generator(generators):
    layer = GeneratedAugmentation(deformation=generators["deformation"], z_dim=Z_DIM, seed=1)
    inputs = _pairs(4)
    out = layer(inputs, training=True)

    np.testing.assert_allclose(out["images"][..., 0], out["segmentation_masks"][..., 1], atol=1e-6)
    assert not np.allclose(out["segmentation_masks"], inputs["segmentation_masks"])


def test_generated_augmentation_needs_a_generator():
    with pytest.raises(ValueError, match="at least one generator"):
        GeneratedAugmentation(z_dim=Z_DIM)


class _Scale(keras.layers.Layer):
    def __init__(self, factor: float, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs, training=None):
        return {**inputs, "images": inputs["images"] * self.factor + 1.0}


def test_chain_applies_its_stages_in_order():
    inputs = _pairs(2)
    out = ChainAugmentation([_Scale(2.0), _Scale(3.0)])(inputs, training=True)

    np.testing.assert_allclose(out["images"], (inputs["images"] * 2 + 1) * 3 + 1)
    np.testing.assert_array_equal(out["segmentation_masks"], inputs["segmentation_masks"])


@pytest.mark.parametrize("rows", [1, 4, 5])
def test_second_half_transforms_the_last_rows_only(rows):
    inputs = _pairs(rows)
    out = SecondHalfAugmentation(_Scale(2.0))(inputs, training=True)
    images, half = np.asarray(inputs["images"]), rows // 2
    np.testing.assert_allclose(out["images"][:half], images[:half])
    np.testing.assert_allclose(out["images"][half:], images[half:] * 2 + 1)
    np.testing.assert_array_equal(out["segmentation_masks"], inputs["segmentation_masks"])
    clone = SecondHalfAugmentation.from_config(
        SecondHalfAugmentation(RandomAffine(seed=3)).get_config()
    )
    assert isinstance(clone.layer, RandomAffine) and clone.layer.seed == 3


def test_generator_bounds_come_from_the_config_in_physical_units(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs")
    cfg.model.deformation_max_mm, cfg.model.deformation_grid = 10.0, 8
    cfg.model.intensity_max, cfg.model.intensity_grid = 0.2, 4
    deformation = build_generator(cfg, "deformation")
    intensity = build_generator(cfg, "intensity")
    spacing = cfg.preprocess.spacing_mm
    assert deformation.field_bound == pytest.approx(10.0 / spacing)  # pixels
    assert (deformation.field_grid, intensity.field_bound, intensity.field_grid) == (8, 0.2, 4)


def test_zero_strength_gives_the_identity_and_a_range_gives_intermediate_fields(generators):
    inputs = _pairs(6)
    still = GeneratedAugmentation(**generators, z_dim=Z_DIM, seed=2, strength=(0.0, 0.0))
    out = still(inputs, training=True)
    np.testing.assert_allclose(out["images"], inputs["images"], atol=1e-6)
    np.testing.assert_allclose(out["segmentation_masks"], inputs["segmentation_masks"], atol=1e-6)

    full = GeneratedAugmentation(deformation=generators["deformation"], z_dim=Z_DIM, seed=2)
    scaled = GeneratedAugmentation(
        deformation=generators["deformation"], z_dim=Z_DIM, seed=2, strength=(0.2, 0.6)
    )
    change = np.abs(full(inputs)["images"] - inputs["images"]).sum()
    smaller = np.abs(scaled(inputs)["images"] - inputs["images"]).sum()
    assert 0.0 < smaller < change
    with pytest.raises(ValueError, match="strength must be"):
        GeneratedAugmentation(**generators, z_dim=Z_DIM, strength=(0.5, 0.1))


def test_generated_after_random_chains_rd_ri_then_the_generators(generators, tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="gdgi")
    cfg.augment.generated_after_random = True
    layer = build_method_augmentation("gdgi", cfg, generators, seed=5)
    assert isinstance(layer, ChainAugmentation)
    names = [type(stage).__name__ for stage in layer.stages]
    assert names == ["RandomElastic", "RandomIntensity", "GeneratedAugmentation"]
    out = layer(_pairs(4), training=True)
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)


def test_the_joint_generators_rows_get_rd_ri_first_as_the_frozen_generators_rows_do(tmp_path):
    # unimatch_gdgi_joint generates the second half of its labeled rows itself; with
    # augment.generated_after_random those rows get RD and RI first, as unimatch_gdgi's.
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="unimatch_gdgi_joint")
    assert build_ssl_labeled_augmentation(cfg, seed=5) is None  # the weak view alone
    cfg.augment.generated_after_random = True
    layer = build_ssl_labeled_augmentation(cfg, seed=5)
    inputs = _pairs(4)
    out = layer(inputs, training=True)
    affine_only = build_affine(cfg, seed=5)(inputs, training=True)
    # The first half as the weak view alone (the same affine draws), the second half changed.
    for key in ("images", "segmentation_masks"):
        np.testing.assert_allclose(out[key][:2], affine_only[key][:2], atol=1e-6)
    assert not np.allclose(out["images"][2:], affine_only["images"][2:], atol=1e-3)
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)
    second = layer.stages[-1]
    assert isinstance(second, SecondHalfAugmentation)
    names = [type(stage).__name__ for stage in second.layer.stages]
    assert names == ["RandomElastic", "RandomIntensity"]
    cfg.ssl.learned_view = "unlabeled"  # no generated labeled rows: nothing to prepare
    assert build_ssl_labeled_augmentation(cfg, seed=5) is None


def test_generator_input_augmentation_is_affine_unless_random_before_generators(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="gdgi")
    assert type(build_generator_input_augmentation(cfg, seed=5)).__name__ == "RandomAffine"
    cfg.augment.random_before_generators = True
    layer = build_generator_input_augmentation(cfg, seed=5)
    assert isinstance(layer, ChainAugmentation)
    names = [type(stage).__name__ for stage in layer.stages]
    assert names == ["RandomAffine", "RandomElastic", "RandomIntensity"]
    inputs = _pairs(4)
    out = layer(inputs, training=True)
    # RD moves the labels and RI changes the intensities, and the labels stay a partition.
    assert not np.allclose(out["segmentation_masks"], inputs["segmentation_masks"])
    assert not np.allclose(out["images"], inputs["images"])
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("none", type(None)),
        ("aff", RandomAffine),
        ("rdri", RandomAffine),
        ("heavy", HeavyAugmentation),
    ],
)
def test_labeled_augmentation_is_affine_but_heavy_for_heavy(method, expected, tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method=method)
    assert isinstance(build_labeled_augmentation(cfg, seed=1), expected)


def test_heavy_takes_the_config_in_physical_units(tmp_path):
    cfg = tiny_config(tmp_path / "cache", tmp_path / "runs", method="heavy")
    cfg.heavy.p_rotation, cfg.heavy.elastic_sigma_mm = 0.7, 10.0
    heavy = build_labeled_augmentation(cfg, seed=1)
    assert heavy.p_rotation == 0.7
    assert heavy.elastic_sigma_px == pytest.approx(10.0 / cfg.preprocess.spacing_mm)
    out = heavy(_pairs(8), training=True)
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)
