"""Tests for tfaug/models/discriminator.py."""

import numpy as np
import pytest

from tfaug.models.discriminator import Discriminator

SMALL = {"filters": (4, 4, 8, 8, 8), "units": 8}


@pytest.mark.parametrize("shape", [(3, 32, 32, 1), (2, 64, 64, 1), (1, 64, 32, 1)])
def test_one_float32_logit_per_image(shape):
    logits = Discriminator(**SMALL)(np.random.default_rng(0).random(shape, "float32"))
    assert tuple(logits.shape) == (shape[0], 1)
    assert logits.dtype == "float32"


def test_logit_depends_on_the_image_and_has_no_sigmoid():
    model = Discriminator(**SMALL)
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.random((2, 32, 32, 1)), 5.0 * rng.random((2, 32, 32, 1))])
    logits = np.asarray(model(images.astype("float32"))).ravel()
    assert len(np.unique(np.round(logits, 6))) == 4
    model.logit.kernel.assign(100.0 * np.asarray(model.logit.kernel))
    scaled = np.asarray(model(images.astype("float32"))).ravel()
    assert np.abs(scaled).max() > 1.0


def test_parameter_count_matches_hand_count():
    model = Discriminator(filters=(2, 2, 2, 2, 2), units=3)
    model.build((None, 32, 32, 1))
    convs = (5 * 5 * 1 * 2 + 4 * 2) + 4 * (5 * 5 * 2 * 2 + 4 * 2)  # bias-free conv + BN
    dense = (1 * 1 * 2 * 3 + 3) + (3 * 3 + 3) + (3 * 1 + 1)  # 32/2^5 = 1 → flatten to 2
    assert model.count_params() == convs + dense == 515


def test_side_not_multiple_of_32_is_a_clear_error():
    with pytest.raises(ValueError, match="multiples of 32"):
        Discriminator(**SMALL)(np.zeros((1, 48, 48, 1), "float32"))


def test_unknown_sides_cannot_be_built():
    with pytest.raises(ValueError, match="unknown sides"):
        Discriminator(**SMALL).build((None, None, None, 1))


@pytest.mark.parametrize("levels, side", [(1, 16), (2, 8), (3, 4)])
def test_patch_discriminator_gives_one_float32_logit_per_patch(levels, side):
    model = Discriminator(**SMALL, patch_levels=levels)
    logits = model(np.random.default_rng(0).random((2, 32, 32, 1), "float32"))
    assert tuple(logits.shape) == (2, side, side, 1) == model.compute_output_shape((2, 32, 32, 1))
    assert logits.dtype == "float32"
    assert len(model.convs) == levels


def test_patch_logits_only_see_their_receptive_field():
    # Two 5x5 stride-2 convs: each logit sees 13x13 pixels, so a change in one corner leaves
    # the opposite corner's logits as they were and moves the nearby ones.
    model = Discriminator(**SMALL, patch_levels=2)
    images = np.random.default_rng(0).random((1, 32, 32, 1)).astype("float32")
    changed = images.copy()
    changed[0, :4, :4] += 3.0
    before = np.asarray(model(images, training=False))[0, ..., 0]
    after = np.asarray(model(changed, training=False))[0, ..., 0]
    assert np.abs(after[:2, :2] - before[:2, :2]).max() > 1e-4
    np.testing.assert_array_equal(after[4:, 4:], before[4:, 4:])


@pytest.mark.parametrize("switch", [{"patch_levels": 2}, {"spectral_norm": True}])
def test_switched_discriminator_round_trips_through_its_config(switch):
    model = Discriminator(**SMALL, **switch)
    images = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    model(images, training=True)  # moves the spectral norm's estimate
    expected = np.asarray(model(images, training=False))
    clone = Discriminator.from_config(model.get_config())
    clone(images)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(images, training=False)), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("filters", "levels"), [((4, 4, 8, 8, 8), 0), ((4, 4, 8, 8, 8), 6), ((4, 8, 8), 4)]
)
def test_patch_levels_outside_one_to_the_number_of_convs_is_a_clear_error(filters, levels):
    with pytest.raises(ValueError, match="model.discriminator_patch_levels"):
        Discriminator(filters=filters, units=8, patch_levels=levels)


@pytest.mark.parametrize("filters", [(), (4,) * 6])
def test_more_than_five_or_no_convs_is_a_clear_error(filters):
    with pytest.raises(ValueError, match="one to five conv filter counts"):
        Discriminator(filters=filters)


@pytest.mark.parametrize("filters", [(4,), (4, 8, 8)])
def test_depth_is_the_number_of_filter_counts(filters):
    model = Discriminator(filters=filters, units=8)
    assert tuple(model(np.zeros((2, 64, 32, 1), "float32")).shape) == (2, 1)
    flat = 64 * 32 // 4 ** len(filters) * filters[-1]  # each conv halves both sides
    assert model.hidden[0].kernel.shape == (flat, 8)


@pytest.mark.parametrize("patch_levels", [None, 2])
def test_spectral_norm_bounds_every_kernel_and_drops_batch_normalization(patch_levels):
    model = Discriminator(**SMALL, patch_levels=patch_levels, spectral_norm=True)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
    for _ in range(20):  # one power iteration per training call
        model(images, training=True)
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    assert len(kernels) == (3 + 5 if patch_levels is None else 1 + patch_levels)
    for kernel in kernels:
        matrix = np.asarray(kernel).reshape(-1, kernel.shape[-1])
        assert np.linalg.svd(matrix, compute_uv=False)[0] == pytest.approx(1.0, abs=0.02)
    assert not any("gamma" in w.path or "moving_mean" in w.path for w in model.weights)
    assert model(images, training=False).dtype == "float32"
