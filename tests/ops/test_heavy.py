"""Tests of tfaug.ops.heavy: pure transforms on hand-written arrays, then the two layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfaug.ops.augment import affine_matrices, elastic_field
from tfaug.ops.heavy import (
    INTENSITY_STEPS,
    HeavyAugmentation,
    HeavyIntensity,
    contrast_preserving_range,
    cubic_elastic_field,
    gamma_transform,
    gaussian_blur,
    mirror,
    simulate_low_resolution,
    spatial_transform,
)

SIZE = 16
# Every probability off: a layer built from this plus one switch does one thing only.
ALL_OFF = {f"p_{step}": 0.0 for step in INTENSITY_STEPS}
SPATIAL_OFF = {"p_rotation": 0.0, "p_scaling": 0.0, "p_elastic": 0.0, "p_mirror": 0.0}
ALL_ON = {f"p_{step}": 1.0 for step in INTENSITY_STEPS}
SPATIAL_ON = {"p_rotation": 1.0, "p_scaling": 1.0, "p_elastic": 1.0, "elastic_sigma_px": 1.5}


def _square_pair(batch: int = 4, size: int = SIZE) -> dict[str, np.ndarray]:
    """A bright off-centre square; its label (class 1 of 2) is exactly the foreground."""
    labels = np.zeros((batch, size, size), np.int64)
    labels[:, 2 : size // 2, 3 : size // 2 + 2] = 1
    masks = np.eye(2, dtype=np.float32)[labels]
    return {"images": masks[..., 1:2].copy(), "segmentation_masks": masks}


def _noise_images(batch: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(B,size,size,1) float32 uniform in [0, 1): much high-frequency energy."""
    return np.random.default_rng(seed).uniform(size=(batch, size, size, 1)).astype(np.float32)


def _high_frequency_energy(images: np.ndarray) -> np.ndarray:
    """(B,) sum of squared differences between neighbouring pixels."""
    images = np.asarray(images)
    rows = np.diff(images, axis=1) ** 2
    cols = np.diff(images, axis=2) ** 2
    return rows.sum(axis=(1, 2, 3)) + cols.sum(axis=(1, 2, 3))


def _full_layer(seed: int = 7) -> HeavyAugmentation:
    return HeavyAugmentation(**SPATIAL_ON, **ALL_ON, seed=seed)


# ----------------------------------------------------------------- pure transforms


def test_low_resolution_on_a_hand_written_ramp():
    # Rows 0..3 at factor 0.5: nearest-exact keeps rows 1 and 3, linear upsampling
    # (half-pixel) puts them at 0.25/0.75 blends in between, and constant columns stay.
    images = np.tile(np.arange(4, dtype=np.float32)[None, :, None, None], [1, 1, 4, 1])
    out = simulate_low_resolution(images, [0.5]).numpy()[0, ..., 0]
    np.testing.assert_allclose(out, np.tile([[1.0], [1.5], [2.5], [3.0]], [1, 4]), atol=1e-6)
    np.testing.assert_array_equal(simulate_low_resolution(images, [1.0]), images)


def test_blur_of_a_delta_is_the_separable_normalised_gaussian():
    images = np.zeros((1, 9, 9, 1), np.float32)
    images[0, 4, 4, 0] = 1.0
    out = gaussian_blur(images, [[1.0, 0.5]], radius=3).numpy()[0, ..., 0]
    taps = np.arange(-3, 4)
    along_h = np.exp(-0.5 * taps**2)
    along_w = np.exp(-0.5 * (taps / 0.5) ** 2)
    expected = np.outer(along_h / along_h.sum(), along_w / along_w.sum())
    np.testing.assert_allclose(out[1:8, 1:8], expected, atol=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-6)


def test_gamma_on_hand_written_values():
    images = np.array([0.0, 0.5, 1.0, 1.0], np.float32).reshape(1, 2, 2, 1)
    plain = gamma_transform(images, [2.0], invert=False, retain_stats=False)
    np.testing.assert_allclose(np.ravel(plain), [0.0, 0.25, 1.0, 1.0], atol=1e-6)
    # Inverted: 1 − (1 − x)² on [0, 1].
    inverted = gamma_transform(images, [2.0], invert=True, retain_stats=False)
    np.testing.assert_allclose(np.ravel(inverted), [0.0, 0.75, 1.0, 1.0], atol=1e-6)
    kept = gamma_transform(images, [2.0], invert=False, retain_stats=True)
    np.testing.assert_allclose(np.mean(kept), np.mean(images), atol=1e-6)
    np.testing.assert_allclose(np.std(kept), np.std(images), atol=1e-6)


def test_contrast_on_a_hand_written_slice_is_clipped_to_the_original_range():
    images = np.array([1.0, 2.0, 3.0, 6.0], np.float32).reshape(1, 2, 2, 1)  # mean 3
    out = contrast_preserving_range(images, [2.0])  # (−1, 1, 3, 9) before clipping to [1, 6]
    np.testing.assert_allclose(np.ravel(out), [1.0, 1.0, 3.0, 6.0], atol=1e-6)


def test_cubic_field_matches_tensorflow_bicubic_resize():
    displacements = np.random.default_rng(3).normal(size=(2, 3, 3, 2)).astype(np.float32)
    ours = cubic_elastic_field(displacements, 16, 20)
    reference = elastic_field(displacements, 16, 20)
    assert ours.shape == (2, 16, 20, 2)
    # TensorFlow tabulates the cubic weights at 1/1024 px: agreement to ~1e-3 of the values.
    np.testing.assert_allclose(ours, reference, atol=2e-3 * np.abs(displacements).max())


def test_mirror_flips_each_row_along_its_own_axes():
    pair = _square_pair(batch=2)
    flips = tf.constant([[True, False], [False, True]])
    images, masks = mirror(pair["images"], pair["segmentation_masks"], flips)
    np.testing.assert_array_equal(images[0], pair["images"][0, ::-1])
    np.testing.assert_array_equal(images[1], pair["images"][1, :, ::-1])
    np.testing.assert_array_equal(masks[1], pair["segmentation_masks"][1, :, ::-1])


def test_scaling_above_one_shrinks_content_and_fills_background():
    images = np.ones((1, 8, 8, 1), np.float32)
    masks = np.eye(2, dtype=np.float32)[np.ones((1, 8, 8), np.int64)]
    # nnU-Net's convention: a sampling-grid factor 1.4 samples outside at the corners.
    matrices = affine_matrices([1 / 1.4], [False], [0.0], 8, 8)
    out_images, out_masks = spatial_transform(images, masks, matrices)
    assert out_images[0, 0, 0, 0] == 0.0
    np.testing.assert_array_equal(out_masks[0, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(out_images[0, 3:5, 3:5], 1.0, atol=1e-6)
    np.testing.assert_allclose(out_masks[0, 3:5, 3:5], [[[0.0, 1.0]] * 2] * 2, atol=1e-6)
    np.testing.assert_allclose(tf.reduce_sum(out_masks, -1), 1.0, atol=1e-6)


# ----------------------------------------------------------------- layers


@pytest.mark.parametrize("with_masks", [True, False], ids=["masks", "images-only"])
@pytest.mark.parametrize(
    "build", [HeavyAugmentation, HeavyIntensity, _full_layer], ids=["heavy", "intensity", "all-on"]
)
def test_keys_shapes_and_dtypes(build, with_masks):
    pair = _square_pair()
    data = pair if with_masks else {"images": pair["images"]}
    out = build(seed=1)(data)
    assert set(out) == set(data)
    assert out["images"].shape == (4, SIZE, SIZE, 1) and out["images"].dtype == tf.float32
    if with_masks:
        assert out["segmentation_masks"].shape == (4, SIZE, SIZE, 2)
        assert out["segmentation_masks"].dtype == tf.float32


def test_all_probabilities_zero_is_exactly_the_identity():
    images = np.array([[0.0, 1.0, 2.0], [3.0, -4.0, 5.0], [6.0, 7.0, 8.5]], np.float32)
    labels = np.array([[0, 1, 1], [2, 1, 0], [0, 0, 2]])
    data = {"images": images[None, ..., None], "segmentation_masks": np.eye(3)[labels][None]}
    for layer in (HeavyAugmentation(**SPATIAL_OFF, **ALL_OFF), HeavyIntensity(**ALL_OFF)):
        out = layer(data)
        np.testing.assert_array_equal(out["images"][0, ..., 0], images)
        np.testing.assert_array_equal(out["segmentation_masks"][0], np.eye(3)[labels])


def test_every_step_with_unit_parameters_is_the_identity():
    neutral = {
        "rotation_degrees": 0.0,
        "scaling_range": (1.0, 1.0),
        "elastic_sigma_px": 0.0,
        "noise_std_range": (0.0, 0.0),
        "brightness_range": (1.0, 1.0),
        "contrast_range": (1.0, 1.0),
        "low_resolution_range": (1.0, 1.0),
        "gamma_range": (1.0, 1.0),
        "gamma_retain_stats": False,
    }
    pair = _square_pair()
    layer = HeavyAugmentation(**SPATIAL_ON | neutral, **ALL_ON | {"p_blur": 0.0}, p_mirror=0.0)
    out = layer({**pair, "images": _noise_images()})
    np.testing.assert_allclose(out["images"], _noise_images(), atol=1e-6)
    np.testing.assert_allclose(out["segmentation_masks"], pair["segmentation_masks"], atol=1e-6)


def test_pure_mirror_is_tf_reverse_of_image_and_mask():
    pair = _square_pair()
    out = HeavyAugmentation(**SPATIAL_OFF | {"p_mirror": 1.0}, **ALL_OFF, seed=2)(pair)
    np.testing.assert_array_equal(out["images"], tf.reverse(pair["images"], [1, 2]))
    masks = tf.reverse(pair["segmentation_masks"], [1, 2])
    np.testing.assert_array_equal(out["segmentation_masks"], masks)


def test_spatial_linear_masks_stay_distributions_and_move_with_the_image():
    pair = _square_pair(batch=8)
    out = HeavyAugmentation(**SPATIAL_ON, **ALL_OFF, seed=3)(pair)
    image, masks = out["images"].numpy()[..., 0], out["segmentation_masks"].numpy()
    assert np.abs(image - pair["images"][..., 0]).max() > 0.5  # the square moved
    np.testing.assert_allclose(masks.sum(-1), 1.0, atol=1e-5)
    assert masks.min() >= -1e-6 and masks.max() <= 1.0 + 1e-6
    # The label is the foreground: the warped image is the warped label, pixel for pixel.
    np.testing.assert_allclose(image, masks[..., 1], atol=1e-5)


def test_spatial_nearest_masks_stay_one_hot_and_agree_with_crisp_pixels():
    pair = _square_pair(batch=8)
    layer = HeavyAugmentation(**SPATIAL_ON, **ALL_OFF, mask_interpolation="nearest", seed=3)
    out = layer(pair)
    image, masks = out["images"].numpy()[..., 0], out["segmentation_masks"].numpy()
    assert set(np.unique(masks)) <= {0.0, 1.0}
    np.testing.assert_array_equal(masks.sum(-1), 1.0)
    crisp_one, crisp_zero = image > 1 - 1e-5, image < 1e-5
    assert crisp_one.sum() > 0
    np.testing.assert_array_equal(masks[..., 1][crisp_one], 1.0)
    np.testing.assert_array_equal(masks[..., 1][crisp_zero], 0.0)


@pytest.mark.parametrize(
    "layer",
    [HeavyIntensity(**ALL_ON, seed=4), HeavyAugmentation(**SPATIAL_OFF, **ALL_ON, seed=4)],
    ids=["intensity", "heavy-intensity-only"],
)
def test_intensity_transforms_leave_the_mask_unchanged(layer):
    pair = _square_pair()
    out = layer({**pair, "images": _noise_images()})
    np.testing.assert_array_equal(out["segmentation_masks"], pair["segmentation_masks"])
    assert not np.allclose(out["images"], _noise_images())


def _only(step: str, **arguments) -> HeavyIntensity:
    return HeavyIntensity(**ALL_OFF | {f"p_{step}": 1.0}, **arguments, seed=5)


def _per_slice(function, images):
    return np.array([function(np.asarray(row)) for row in images])


def test_noise_raises_the_variance():
    images = _noise_images()
    out = _only("noise", noise_std_range=(0.05, 0.1))({"images": images})["images"]
    assert np.all(_per_slice(np.var, out) > _per_slice(np.var, images))
    residual_std = _per_slice(np.std, out - images)
    assert np.all((residual_std > 0.04) & (residual_std < 0.12))


@pytest.mark.parametrize(
    ("step", "arguments"),
    [("blur", {}), ("low_resolution", {"low_resolution_range": (0.5, 0.6)})],
)
def test_blur_and_low_resolution_lower_the_high_frequency_energy(step, arguments):
    images = _noise_images()
    out = _only(step, **arguments)({"images": images})["images"].numpy()
    assert np.all(_high_frequency_energy(out) < 0.8 * _high_frequency_energy(images))
    # Both are convex blends of input pixels: no new extremes.
    assert np.all(_per_slice(np.min, out) >= _per_slice(np.min, images) - 1e-6)
    assert np.all(_per_slice(np.max, out) <= _per_slice(np.max, images) + 1e-6)


def test_brightness_multiplies_each_slice_by_one_factor():
    images = _noise_images() + 0.5
    out = _only("brightness")({"images": images})["images"].numpy()
    ratio = out / images
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1], ratio.shape), rtol=1e-5)
    assert np.all((ratio >= 0.75 - 1e-6) & (ratio <= 1.25 + 1e-6))


def test_clip_to_input_range_keeps_a_brightened_slice_inside_its_range():
    images = _noise_images() + 0.5
    free = _only("brightness", brightness_range=(1.5, 1.5))({"images": images})["images"]
    clipped = _only("brightness", brightness_range=(1.5, 1.5), clip_to_input_range=True)(
        {"images": images}
    )["images"]
    assert np.all(_per_slice(np.max, free) > _per_slice(np.max, images) + 0.1)  # nnU-Net's
    np.testing.assert_allclose(_per_slice(np.max, clipped), _per_slice(np.max, images))
    maximum = _per_slice(np.max, images)[:, None, None, None]
    np.testing.assert_allclose(clipped, np.minimum(free, maximum))


@pytest.mark.parametrize(
    ("contrast_range", "std_grows"), [((1.2, 1.25), True), ((0.75, 0.8), False)]
)
def test_contrast_stays_in_the_original_range(contrast_range, std_grows):
    images = _noise_images()
    out = _only("contrast", contrast_range=contrast_range)({"images": images})["images"].numpy()
    low, high = _per_slice(np.min, images), _per_slice(np.max, images)
    assert np.all(_per_slice(np.min, out) >= low) and np.all(_per_slice(np.max, out) <= high)
    if std_grows:  # c > 1 pushes the extremes out, where they are clipped: min/max kept
        np.testing.assert_allclose(_per_slice(np.min, out), low, atol=1e-6)
        np.testing.assert_allclose(_per_slice(np.max, out), high, atol=1e-6)
    assert np.all((_per_slice(np.std, out) > _per_slice(np.std, images)) == std_grows)


@pytest.mark.parametrize("step", ["gamma", "inverted_gamma"])
def test_gamma_keeps_min_max_or_mean_std(step):
    images = _noise_images() * 3.0 - 1.0
    plain = _only(step, gamma_retain_stats=False)({"images": images})["images"].numpy()
    np.testing.assert_allclose(_per_slice(np.min, plain), _per_slice(np.min, images), atol=1e-5)
    np.testing.assert_allclose(_per_slice(np.max, plain), _per_slice(np.max, images), atol=1e-5)
    assert np.abs(plain - images).max() > 0.05
    kept = _only(step, gamma_retain_stats=True)({"images": images})["images"].numpy()
    np.testing.assert_allclose(_per_slice(np.mean, kept), _per_slice(np.mean, images), atol=1e-5)
    np.testing.assert_allclose(_per_slice(np.std, kept), _per_slice(np.std, images), atol=1e-5)
    assert np.abs(kept - images).max() > 0.05


@pytest.mark.parametrize(
    "layer",
    [
        HeavyAugmentation(**SPATIAL_OFF | {"p_rotation": 1.0}, **ALL_OFF, seed=6),
        _only("gamma"),
        _only("noise"),
    ],
    ids=["rotation", "gamma", "noise"],
)
def test_rows_of_a_batch_get_different_draws(layer):
    pair = _square_pair()
    data = {**pair, "images": np.repeat(_noise_images(batch=1), 4, axis=0)}
    out = layer(data)["images"].numpy()
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(out[i], out[j])


def test_sampled_parameters_follow_nnunet_defaults():
    parameters = HeavyAugmentation(seed=8).sample_parameters(4000)
    rates = {
        "apply_spatial": 1 - 0.8 * 0.8,  # rotation (0.2) or scaling (0.2)
        "apply_noise": 0.1,
        "apply_blur": 0.2,
        "apply_brightness": 0.15,
        "apply_low_resolution": 0.25,
        "apply_inverted_gamma": 0.1,
        "apply_gamma": 0.3,
    }
    for key, rate in rates.items():
        assert abs(np.mean(parameters[key]) - rate) < 0.03, key
    assert abs(np.mean(parameters["mirror"]) - 0.5) < 0.03
    angle, scaling = parameters["angle_degrees"].numpy(), parameters["scaling"].numpy()
    assert np.all(np.abs(angle) <= 180.0) and np.abs(angle).max() > 170.0
    assert np.all((scaling >= 0.7) & (scaling <= 1.4))
    assert np.all(parameters["displacements"].numpy() == 0.0)  # elastic off by default
    gamma = parameters["gamma"].numpy()
    assert np.all((gamma >= 0.7) & (gamma <= 1.5))
    assert abs(np.mean(gamma < 1.0) - 0.5) < 0.03  # nnU-Net's half below / half above 1
    sigma = parameters["blur_sigma"].numpy()
    assert sigma.shape == (4000, 2) and np.all((sigma >= 0.5) & (sigma <= 1.0))


def test_same_seed_same_result_other_seed_or_call_different():
    data = {**_square_pair(), "images": _noise_images()}
    first = _full_layer(seed=11)
    once, twice = first(data), first(data)
    again = _full_layer(seed=11)(data)
    other = _full_layer(seed=12)(data)
    for key in ("images", "segmentation_masks"):
        np.testing.assert_array_equal(again[key], once[key])
    assert not np.allclose(twice["images"], once["images"])
    assert not np.allclose(other["images"], once["images"])


def test_tf_data_map_matches_eager_and_takes_dynamic_batch_sizes():
    data = {**_square_pair(batch=5), "images": _noise_images(batch=5)}
    eager = _full_layer(seed=13)(data)
    dataset = tf.data.Dataset.from_tensor_slices(data)
    (mapped,) = list(dataset.batch(5).map(_full_layer(seed=13)))
    for key in ("images", "segmentation_masks"):
        np.testing.assert_allclose(mapped[key], eager[key], atol=1e-5)
    sizes = [int(batch["images"].shape[0]) for batch in dataset.batch(2).map(HeavyIntensity())]
    assert sizes == [2, 2, 1]


def test_compiles_with_xla_and_matches_eager_given_the_parameters():
    data = {**_square_pair(), "images": _noise_images()}
    # Without noise: XLA draws another noise field from the same seed (as keras.random does).
    layer = HeavyAugmentation(**SPATIAL_ON, **ALL_ON | {"p_noise": 0.0}, p_mirror=0.5, seed=14)
    parameters = layer.sample_parameters(4)
    eager = layer.transform(data["images"], data["segmentation_masks"], parameters)
    compiled = tf.function(layer.transform, jit_compile=True)
    xla = compiled(data["images"], data["segmentation_masks"], parameters)
    for eager_values, xla_values in zip(eager, xla, strict=True):
        np.testing.assert_allclose(xla_values, eager_values, atol=1e-4)
    # The whole layer, random draws included, also compiles.
    step = tf.function(lambda batch: layer(batch, training=True), jit_compile=True)
    out = step(data)
    assert out["images"].shape == data["images"].shape
    assert not np.allclose(out["images"], data["images"])
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        _full_layer(seed=15),
        HeavyIntensity(p_gamma=0.9, gamma_retain_stats=False, clip_to_input_range=True, seed=15),
    ],
    ids=["heavy", "intensity"],
)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
    data = {**_square_pair(), "images": _noise_images()}
    np.testing.assert_array_equal(clone(data)["images"], type(layer)(**config)(data)["images"])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HeavyIntensity(p_noise=1.5), r"p_noise in \[0, 1\].*Pass 0 to switch"),
        (lambda: HeavyAugmentation(p_rotation=-0.1), r"p_rotation in \[0, 1\]"),
        (lambda: HeavyAugmentation(p_mirror=2.0), r"p_mirror in \[0, 1\]"),
        (lambda: HeavyIntensity(gamma_range=(1.5, 0.7)), r"gamma_range as \(min, max\)"),
        (lambda: HeavyAugmentation(scaling_range=(1.4, 0.7)), r"scaling_range as \(min, max\)"),
        (lambda: HeavyIntensity(blur_sigma_range=(0.0, 1.0)), "blur_sigma_range"),
        (lambda: HeavyAugmentation(rotation_degrees=-1.0), "rotation_degrees >= 0"),
        (lambda: HeavyAugmentation(elastic_grid_size=0), "elastic_grid_size an integer"),
        (lambda: HeavyAugmentation(mask_interpolation="cubic"), "Use 'nearest'"),
    ],
)
def test_bad_arguments_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_training_false_is_the_identity():
    pair = _square_pair()
    out = _full_layer()(pair, training=False)
    np.testing.assert_array_equal(out["images"], pair["images"])
    np.testing.assert_array_equal(out["segmentation_masks"], pair["segmentation_masks"])
