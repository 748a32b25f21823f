"""Tests of tfaug/data/preprocess.py: forward preprocessing and its inverse."""

import json
import warnings

import numpy as np
import pytest
from scipy import ndimage

from tfaug.config import PreprocessConfig
from tfaug.data.preprocess import (
    SliceGeometry,
    crop_or_pad,
    n4_correct,
    normalise,
    normalise_minmax,
    preprocess_volume,
    resample_slices,
    resize_slices,
    restore_labels,
    restore_prediction,
    restore_probabilities,
)
from tfaug.data.volume import DatasetError, DatasetWarning, Volume


def _volume(image, label=None, spacing=(1.5, 1.5, 8.0), case_id="patient001"):
    return Volume(case_id, image.astype(np.float32), label, spacing, np.eye(4))


def _config(spacing_mm, crop_size, n4=False):
    return PreprocessConfig(spacing_mm=spacing_mm, crop_size=crop_size, n4=n4)


def _disc_phantom(shape, spacing_mm, n_slices=3):
    """Cardiac-like labels (1 RV disc, 2 Myo ring, 3 LV disc), radii in mm, (X, Y, Z) uint8.

    Structures are >= 20 mm across: a nearest-neighbour round trip through a 2.5 mm grid
    moves each boundary by ~0.7 mm on average, so thinner structures cannot reach Dice 0.95.
    """
    x, y = np.meshgrid(
        (np.arange(shape[0]) - shape[0] / 2) * spacing_mm,
        (np.arange(shape[1]) - shape[1] / 2) * spacing_mm,
        indexing="ij",
    )
    plane = np.zeros(shape, np.uint8)
    radius = np.hypot(x - 20, y)
    plane[radius < 40] = 2
    plane[radius < 20] = 3
    plane[np.hypot(x + 48, y - 5) < 20] = 1
    return np.repeat(plane[..., None], n_slices, axis=2)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _random_labels(shape, seed=0):
    """Blocky multi-class labels with structure touching odd rows/columns."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, size=shape).astype(np.uint8)


# --- forward ---------------------------------------------------------------------------------


def test_preprocess_volume_shapes_dtypes_and_geometry():
    image = np.random.default_rng(0).random((40, 30, 4)) * 100
    label = _random_labels((40, 30, 4))
    result = preprocess_volume(_volume(image, label, (1.5, 1.2, 8.0)), _config(2.5, 32))
    assert result.case_id == "patient001"
    assert result.image.shape == (4, 32, 32) and result.image.dtype == np.float32
    assert result.label.shape == (4, 32, 32) and result.label.dtype == np.uint8
    assert result.geometry == SliceGeometry((40, 30, 4), (1.5, 1.2, 8.0), 2.5, (24, 14), 32)
    assert set(np.unique(result.label)) <= {0, 1, 2, 3}


def test_unlabeled_volume_has_no_label():
    image = np.random.default_rng(0).random((20, 20, 2))
    assert preprocess_volume(_volume(image), _config(1.5, 16)).label is None


def test_geometry_json_round_trip():
    geometry = SliceGeometry((216, 256, 10), (1.5625, 1.5625, 10.0), 1.367, (247, 293), 224)
    assert SliceGeometry.from_dict(json.loads(json.dumps(geometry.to_dict()))) == geometry
    with pytest.raises(ValueError, match="crop_size"):
        SliceGeometry.from_dict({k: v for k, v in geometry.to_dict().items() if k != "crop_size"})


def test_slice_k_is_image_slice_k_without_transpose():
    """Identity spacing, crop = native: output[k] is normalise(image)[:, :, k], axis 1 ↔ X."""
    image = np.random.default_rng(1).random((12, 9, 3))
    result = preprocess_volume(_volume(image, spacing=(2.0, 2.0, 5.0)), _config(2.0, 12))
    expected = normalise(image)
    # Y (9) is padded to 12: one column before, two after.
    for k in range(3):
        np.testing.assert_allclose(result.image[k, :, 1:10], expected[:, :, k], atol=1e-6)
    assert np.all(result.image[:, :, 0] == 0) and np.all(result.image[:, :, 10:] == 0)


def test_resample_slices_shape_and_centred_geometry():
    """A plane linear in mm is resampled exactly onto a grid with the target spacing centred on
    the native field of view (corner- or edge-aligned grids would be off by ~0.5 mm)."""
    spacing, target = (1.5, 1.2, 6.0), 2.5
    x_mm = (np.arange(40) - 19.5) * 1.5
    y_mm = (np.arange(30) - 14.5) * 1.2
    plane = x_mm[:, None] + 100.0 * y_mm[None, :]
    volume = np.stack([plane, -plane], axis=2).astype(np.float32)
    out = resample_slices(volume, spacing, target, "linear")
    assert out.shape == (2, 24, 14)  # round(40 * 1.5 / 2.5) = 24, round(30 * 1.2 / 2.5) = 14
    expected = (np.arange(24) - 11.5)[:, None] * target + 100.0 * (np.arange(14) - 6.5) * target
    np.testing.assert_allclose(out[0], expected, atol=1e-3)
    np.testing.assert_allclose(out[1], -expected, atol=1e-3)


def test_non_positive_target_spacing_raises():
    with pytest.raises(ValueError, match="preprocess.spacing_mm"):
        resample_slices(np.zeros((4, 4, 1)), (1.0, 1.0, 1.0), 0.0, "linear")


def test_resample_labels_nearest_keeps_label_values():
    labels = _random_labels((20, 20, 2))
    out = resample_slices(labels, (1.0, 1.0, 5.0), 1.7, "nearest")
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= set(np.unique(labels))


def test_normalise_maps_percentiles_to_zero_and_one():
    image = np.random.default_rng(2).gamma(2.0, 30.0, size=(30, 30, 5))
    out = normalise(image, (2, 98))
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.percentile(out, [2, 98]), [0.0, 1.0], atol=1e-5)
    ramp = np.arange(101, dtype=np.float32)  # p2 = 2, p98 = 98
    np.testing.assert_allclose(normalise(ramp)[[2, 50, 98]], [0.0, 0.5, 1.0], atol=1e-6)


def test_constant_image_raises_naming_the_case():
    volume = _volume(np.full((10, 10, 2), 7.0), case_id="patient042")
    with pytest.raises(DatasetError, match="patient042.*constant"):
        preprocess_volume(volume, _config(1.5, 16))


def test_non_finite_image_raises():
    image = np.ones((10, 10, 2))
    image[3, 3, 1] = np.nan
    with pytest.raises(DatasetError, match="patient001.*non-finite"):
        preprocess_volume(_volume(image), _config(1.5, 16))


def test_label_shape_mismatch_raises():
    volume = _volume(np.ones((10, 10, 2)), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"label shape \(10, 10, 3\)"):
        preprocess_volume(volume, _config(1.5, 16))


# --- crop / pad ------------------------------------------------------------------------------


def test_pad_odd_difference_is_centred_with_extra_at_end():
    slices = np.array([[[1, 2], [3, 4]]])
    expected = np.array(
        [
            [
                [0, 0, 0, 0, 0],
                [0, 1, 2, 0, 0],
                [0, 3, 4, 0, 0],
                [0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0],
            ]
        ]
    )
    np.testing.assert_array_equal(crop_or_pad(slices, 5), expected)


def test_pad_even_difference_is_centred():
    slices = np.array([[[1, 2], [3, 4]]])
    expected = np.array([[[9, 9, 9, 9], [9, 1, 2, 9], [9, 3, 4, 9], [9, 9, 9, 9]]])
    np.testing.assert_array_equal(crop_or_pad(slices, 4, pad_value=9), expected)


def test_crop_odd_and_even_differences_are_centred():
    slices = np.arange(25).reshape(1, 5, 5)
    np.testing.assert_array_equal(crop_or_pad(slices, 2), [[[6, 7], [11, 12]]])
    np.testing.assert_array_equal(crop_or_pad(slices, 3), [[[6, 7, 8], [11, 12, 13], [16, 17, 18]]])
    slices = np.arange(16).reshape(1, 4, 4)
    np.testing.assert_array_equal(crop_or_pad(slices, 2), [[[5, 6], [9, 10]]])


def test_crop_one_axis_and_pad_the_other():
    slices = np.arange(6).reshape(1, 3, 2)
    np.testing.assert_array_equal(crop_or_pad(slices, 1), [[[2]]])
    np.testing.assert_array_equal(crop_or_pad(slices, (1, 4)), [[[0, 2, 3, 0]]])


# --- inverse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 25, 3), (31, 17, 2)])
def test_label_round_trip_is_exact_at_native_spacing(shape):
    labels = _random_labels(shape, seed=3)
    image = labels.astype(np.float32) + np.random.default_rng(4).random(shape)
    result = preprocess_volume(_volume(image, labels, (1.367, 1.367, 10.0)), _config(1.367, 32))
    restored = restore_labels(result.label, result.geometry)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, labels)


def test_label_round_trip_anisotropic_dice_and_centroids():
    """1.5 mm → 2.5 mm → 1.5 mm: Dice > 0.95 and centroids within half a native pixel."""
    labels = _disc_phantom((121, 100), 1.5)
    image = labels.astype(np.float32) * 50 + 10
    result = preprocess_volume(_volume(image, labels, (1.5, 1.5, 8.0)), _config(2.5, 80))
    assert result.geometry.resampled_shape == (73, 60)
    restored = restore_labels(result.label, result.geometry)
    assert restored.shape == labels.shape
    for structure in (1, 2, 3):
        native, back = labels == structure, restored == structure
        assert _dice(native, back) > 0.95, structure
        shift = np.subtract(ndimage.center_of_mass(native), ndimage.center_of_mass(back))
        assert np.all(np.abs(shift) < 0.5), (structure, shift)


def test_inverse_of_padding_crops_back():
    """Native 20 x 24 at the target spacing, crop 32: the inverse removes the padding."""
    labels = _random_labels((20, 24, 2), seed=5)
    result = preprocess_volume(
        _volume(labels.astype(np.float32), labels, (2.0, 2.0, 6.0)), _config(2.0, 32)
    )
    np.testing.assert_array_equal(result.label[:, 6:26, 4:28], labels.transpose(2, 0, 1))
    np.testing.assert_array_equal(restore_labels(result.label, result.geometry), labels)


def test_inverse_of_cropping_pads_back_with_background():
    """Native 50 x 41, crop 32: the centre comes back, the cropped border becomes 0."""
    labels = np.ones((50, 41, 2), np.uint8)
    labels[20:30, 15:25] = 3
    result = preprocess_volume(
        _volume(labels.astype(np.float32), labels, (2.0, 2.0, 6.0)), _config(2.0, 32)
    )
    restored = restore_labels(result.label, result.geometry)
    assert restored.shape == (50, 41, 2)
    np.testing.assert_array_equal(restored[9:41, 4:36], labels[9:41, 4:36])
    outside = np.ones((50, 41), bool)
    outside[9:41, 4:36] = False
    assert np.all(restored[outside] == 0)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_probability_round_trip_sums_to_one_and_pads_background():
    geometry = SliceGeometry((50, 37, 3), (1.5, 1.5, 8.0), 2.5, (30, 22), 24)
    rng = np.random.default_rng(6)
    probabilities = _softmax(rng.normal(size=(3, 24, 24, 4)) * 3).astype(np.float32)
    restored = restore_probabilities(probabilities, geometry)
    assert restored.shape == (50, 37, 3, 4) and restored.dtype == np.float32
    assert restored.min() >= 0
    np.testing.assert_allclose(restored.sum(axis=-1), 1.0, atol=1e-5)
    # X: 30 resampled rows were cropped to 24, so the outer native rows are background.
    np.testing.assert_allclose(restored[:3, :, :, 0], 1.0, atol=1e-6)
    # Y: 22 resampled columns were padded to 24; the padding is dropped, not interpolated.
    assert restored[20:30, :, :, 1:].sum(axis=-1).min() > 0


def test_probability_round_trip_matches_label_round_trip():
    labels = _disc_phantom((121, 100), 1.5, n_slices=2)
    result = preprocess_volume(
        _volume(labels.astype(np.float32), labels, (1.5, 1.5, 8.0)), _config(2.5, 80)
    )
    one_hot = np.eye(4, dtype=np.float32)[result.label]
    restored = restore_probabilities(one_hot, result.geometry).argmax(axis=-1)
    for structure in (1, 2, 3):
        assert _dice(labels == structure, restored == structure) > 0.95


def test_restore_rejects_wrong_shapes_and_logits():
    geometry = SliceGeometry((20, 20, 3), (1.0, 1.0, 5.0), 1.0, (20, 20), 16)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*found \(2, 16, 16\)"):
        restore_labels(np.zeros((2, 16, 16), np.uint8), geometry)
    with pytest.raises(ValueError, match="integer"):
        restore_labels(np.zeros((3, 16, 16), np.float32), geometry)
    with pytest.raises(ValueError, match="softmax"):
        restore_probabilities(np.full((3, 16, 16, 2), 2.0, np.float32), geometry)


# --- N4 --------------------------------------------------------------------------------------


def _biased_phantom(n_slices=6):
    """Uniform ellipse (100 ± 1) on a zero background times a smooth multiplicative bias."""
    x, y = np.meshgrid(np.arange(48) - 24.0, np.arange(48) - 24.0, indexing="ij")
    inside = (x / 20) ** 2 + (y / 18) ** 2 < 1
    core = np.repeat(((x / 17) ** 2 + (y / 15) ** 2 < 1)[..., None], n_slices, axis=2)
    noise = np.random.default_rng(7).normal(0.0, 1.0, (48, 48, n_slices))
    clean = (100.0 + noise) * inside[..., None]
    bias = np.exp(0.4 * x / 24 + 0.2 * (y / 24) ** 2)[..., None]
    return (clean * bias).astype(np.float32), core


def _coefficient_of_variation(values):
    return float(values.std() / values.mean())


def test_n4_reduces_a_smooth_multiplicative_bias():
    biased, core = _biased_phantom()
    corrected = n4_correct(biased, (1.5, 1.5, 8.0), shrink=[2, 2, 1], iterations=[20, 20])
    assert corrected.shape == biased.shape and corrected.dtype == np.float32
    before = _coefficient_of_variation(biased[core])
    after = _coefficient_of_variation(corrected[core])
    assert before > 0.1
    assert after < before / 4, (before, after)
    assert np.all(corrected[biased == 0] == 0)


def test_n4_never_shrinks_few_slices_away():
    biased, core = _biased_phantom(n_slices=2)
    corrected = n4_correct(biased, (1.5, 1.5, 8.0), shrink=[2, 2, 4], iterations=[10])
    assert _coefficient_of_variation(corrected[core]) < _coefficient_of_variation(biased[core])


def test_n4_rejects_negative_intensities():
    with pytest.raises(DatasetError, match="n4=false"):
        n4_correct(np.full((8, 8, 3), -1.0), (1.0, 1.0, 1.0), [2, 2, 1], [5])


def test_preprocess_with_n4_is_finite_and_normalised():
    biased, _ = _biased_phantom(n_slices=3)
    config = PreprocessConfig(spacing_mm=2.5, crop_size=32, n4=True, n4_shrink=[2, 2, 1])
    config.n4_iterations = [10]
    result = preprocess_volume(_volume(biased), config)
    assert result.image.shape == (3, 32, 32)
    assert np.all(np.isfinite(result.image))
    assert result.image.min() > -0.5 and result.image.max() < 1.5


# --- the semi-supervised literature's preprocessing: min-max, fixed size -----------------------


def _fixed(size, image_interpolation="nearest", normalisation="minmax"):
    return PreprocessConfig(
        crop_size=size,
        n4=False,
        normalisation=normalisation,
        resize="fixed",
        image_interpolation=image_interpolation,
    )


def test_minmax_normalisation_by_hand():
    image = np.array([[[-10.0], [0.0]], [[30.0], [90.0]]])
    expected = np.array([[[0.0], [0.1]], [[0.4], [1.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalise_minmax(image), expected, atol=1e-7)
    assert normalise_minmax(image).dtype == np.float32
    with pytest.raises(DatasetError, match="patient009: image is constant"):
        normalise_minmax(np.full((3, 3, 2), 7.0), name="patient009")


def test_fixed_resize_by_hand():
    """4 x 3 → 8 x 8, nearest, corner-aligned: input row round(i * 3 / 7), column
    round(j * 2 / 7) (halves up), the mapping of scipy.ndimage.zoom(order=0)."""
    plane = np.arange(12, dtype=np.float32).reshape(4, 3)
    rows = [0, 0, 1, 1, 2, 2, 3, 3]
    columns = [0, 0, 1, 1, 1, 1, 2, 2]
    (resized,) = resize_slices(plane[..., None], 8, "nearest")
    np.testing.assert_array_equal(resized, plane[np.ix_(rows, columns)])


def test_fixed_preprocessing_is_their_per_slice_zoom():
    """Each output slice is ``zoom(minmax(volume)[:, :, k], (S / x, S / y), order)``: SSL4MIS's,
    BCP's and UniMatch's preprocessing of an ACDC slice (order 0), or bilinear (order 1)."""
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 30.0, (21, 17, 3))
    label = _random_labels((21, 17, 3))
    for interpolation, order in (("nearest", 0), ("linear", 1)):
        result = preprocess_volume(_volume(image, label), _fixed(32, interpolation))
        normalised = (image - image.min()) / (image.max() - image.min())
        for k in range(3):
            expected = ndimage.zoom(normalised[:, :, k], (32 / 21, 32 / 17), order=order)
            np.testing.assert_allclose(result.image[k], expected, atol=1e-5)
            expected_label = ndimage.zoom(label[:, :, k], (32 / 21, 32 / 17), order=0)
            np.testing.assert_array_equal(result.label[k], expected_label)
    assert result.geometry == SliceGeometry(
        (21, 17, 3), (1.5, 1.5, 8.0), 1.367, (32, 32), 32, "fixed"
    )
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0


@pytest.mark.parametrize("shape", [(21, 17, 3), (32, 32, 2), (5, 31, 1)])
def test_fixed_label_round_trip_is_exact_up_to_the_size(shape):
    label = _random_labels(shape, seed=4)
    result = preprocess_volume(_volume(np.random.default_rng(0).random(shape), label), _fixed(32))
    np.testing.assert_array_equal(restore_labels(result.label, result.geometry), label)


def test_fixed_label_round_trip_above_the_size_is_their_inverse():
    """Above S the round trip loses rows, as ``zoom(pred, (x / S, y / S), order=0)`` does."""
    shape = (45, 38, 2)
    label = _random_labels(shape, seed=5)
    result = preprocess_volume(_volume(np.random.default_rng(0).random(shape), label), _fixed(32))
    restored = restore_labels(result.label, result.geometry)
    assert restored.shape == shape and not np.array_equal(restored, label)
    for k in range(2):
        theirs = ndimage.zoom(result.label[k], (45 / 32, 38 / 32), order=0)
        np.testing.assert_array_equal(restored[:, :, k], theirs)


def test_fixed_probability_round_trip_and_restore_prediction():
    shape = (21, 17, 2)
    label = _random_labels(shape, seed=6)
    result = preprocess_volume(_volume(np.random.default_rng(0).random(shape), label), _fixed(32))
    probabilities = np.eye(4, dtype=np.float32)[result.label] * 0.7 + 0.075
    native = restore_probabilities(probabilities, result.geometry)
    assert native.shape == (*shape, 4)
    np.testing.assert_allclose(native.sum(-1), 1.0, atol=1e-5)
    nearest = restore_prediction(probabilities, result.geometry, "nearest")
    np.testing.assert_array_equal(nearest, label)  # argmax, then nearest back: exact
    linear = restore_prediction(probabilities, result.geometry, "linear")
    np.testing.assert_array_equal(linear, native.argmax(-1))
    with pytest.raises(ValueError, match="'cubic'"):
        restore_prediction(probabilities, result.geometry, "cubic")


def test_restore_prediction_nearest_in_spacing_mode_is_argmax_then_labels():
    shape = (30, 26, 2)
    label = _random_labels(shape, seed=7)
    result = preprocess_volume(
        _volume(np.random.default_rng(0).random(shape), label), _config(2.0, 32)
    )
    probabilities = np.eye(4, dtype=np.float32)[result.label]
    expected = restore_labels(result.label, result.geometry)
    np.testing.assert_array_equal(
        restore_prediction(probabilities, result.geometry, "nearest"), expected
    )


def test_fixed_geometry_json_round_trip_and_old_dicts():
    fixed = SliceGeometry((216, 256, 10), (1.5625, 1.5625, 10.0), 1.367, (256, 256), 256, "fixed")
    assert SliceGeometry.from_dict(json.loads(json.dumps(fixed.to_dict()))) == fixed
    old = {k: v for k, v in fixed.to_dict().items() if k != "resize"}  # written before the key
    assert SliceGeometry.from_dict(old).resize == "spacing"
    with pytest.raises(ValueError, match="resize 'stretch' is not one of spacing, fixed"):
        SliceGeometry.from_dict({**fixed.to_dict(), "resize": "stretch"})


def test_default_preprocessing_is_unchanged_by_the_new_keys():
    """percentile / spacing / linear: exactly the result the preprocessing gave before."""
    rng = np.random.default_rng(8)
    image, label = rng.random((30, 26, 2)) * 50, _random_labels((30, 26, 2), seed=8)
    result = preprocess_volume(_volume(image, label), _config(2.0, 32))
    normalised = normalise(image.astype(np.float32))
    expected = crop_or_pad(resample_slices(normalised, (1.5, 1.5, 8.0), 2.0, "linear"), 32)
    np.testing.assert_array_equal(result.image, expected)
    assert result.geometry.resize == "spacing" and "resize" in result.geometry.to_dict()


@pytest.mark.parametrize("spacing", [(0.5, 10.0, 0.5), (4.0, 1.0, 2.0)])
def test_a_volume_whose_thick_axis_is_in_plane_gets_a_warning_naming_it(spacing):
    image = np.random.default_rng(0).random((12, 12, 4)).astype(np.float32)
    with pytest.warns(DatasetWarning, match=r"patient001: voxel sizes .* is thicker than the"):
        preprocess_volume(_volume(image, spacing=spacing), _config(2.0, 12))


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 8.0), (1.0, 1.0, 1.0), (1.4, 1.2, 1.0)])
def test_slices_along_the_thickest_or_an_isotropic_axis_give_no_warning(spacing):
    image = np.random.default_rng(0).random((12, 12, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        preprocess_volume(_volume(image, spacing=spacing), _config(2.0, 12))
