"""Tests of tfaug.ops.augment: pure transforms on hand-written arrays, then the layers."""

import numpy as np
import pytest
import tensorflow as tf

from tfaug.ops.augment import (
    AFFINE_TRANSFORMS,
    Mixup,
    RandomAffine,
    RandomElastic,
    RandomIntensity,
    affine_matrices,
    affine_transform,
    elastic_field,
    elastic_transform,
    intensity_transform,
    mixup,
    sigma_px_from_mm,
)

N_CLASSES = 3


def _blob_labels(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """(B,size,size) int label maps made of a few rectangles (large uniform regions)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch, size, size), np.int64)
    for b in range(batch):
        for label in (1, 2, 1):
            top, left = rng.integers(1, size // 2, size=2)
            height, width = rng.integers(size // 4, size // 2, size=2)
            labels[b, top : top + height, left : left + width] = label
    return labels


def _pair(batch: int = 4, size: int = 24) -> dict[str, np.ndarray]:
    """A batch whose image is channel 1 of its own one-hot mask."""
    masks = np.eye(N_CLASSES, dtype=np.float32)[_blob_labels(batch, size)]
    return {"images": masks[..., 1:2].copy(), "segmentation_masks": masks}


def _layers(seed: int = 7) -> list:
    return [
        RandomAffine(probability=1.0, seed=seed),
        RandomElastic(sigma_px=2.0, seed=seed),
        RandomIntensity(seed=seed),
        Mixup(seed=seed),
    ]


LAYER_IDS = ["affine", "elastic", "intensity", "mixup"]


# ----------------------------------------------------------------- pure transforms


def test_sigma_px_from_mm():
    assert sigma_px_from_mm(13.67, 1.367) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="spacing_mm > 0"):
        sigma_px_from_mm(10.0, 0.0)


def test_affine_rotation_by_two_45_degree_steps_is_rot90():
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    labels = np.array(
        [[0, 0, 1, 1, 2], [0, 1, 1, 2, 2], [1, 1, 0, 0, 2], [0, 0, 0, 2, 1], [2, 2, 0, 0, 1]]
    )
    masks = np.eye(N_CLASSES, dtype=np.float32)[labels][None]
    matrices = affine_matrices([1.0], [False], [2 * 45.0], 5, 5)
    images_out, masks_out = affine_transform(image, masks, matrices)
    np.testing.assert_allclose(images_out[0, ..., 0], np.rot90(image[0, ..., 0]), atol=1e-5)
    np.testing.assert_array_equal(masks_out[0], np.rot90(masks[0]))


def test_affine_flip_is_exact_mirror_along_width():
    pair = _pair(batch=2, size=7)
    matrices = affine_matrices([1.0, 1.0], [True, True], [0.0, 0.0], 7, 7)
    images, masks = affine_transform(pair["images"], pair["segmentation_masks"], matrices)
    np.testing.assert_array_equal(images, pair["images"][:, :, ::-1])
    np.testing.assert_array_equal(masks, pair["segmentation_masks"][:, :, ::-1])


def test_affine_scale_two_zooms_about_the_centre_and_fills_background():
    labels = np.array([[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2], [0, 2, 2, 1]])
    masks = np.eye(N_CLASSES, dtype=np.float32)[labels][None]
    zoom = affine_matrices([2.0], [False], [0.0], 4, 4)
    _, zoomed = affine_transform(np.zeros((1, 4, 4, 1), np.float32), masks, zoom)
    # Output pixel i samples 1.5 + (i - 1.5) / 2 = 0.75, 1.25, 1.75, 2.25 → rows 1, 1, 2, 2.
    np.testing.assert_array_equal(zoomed[0], masks[0][[1, 1, 2, 2]][:, [1, 1, 2, 2]])

    shrink = affine_matrices([0.5], [False], [0.0], 4, 4)
    images, shrunk = affine_transform(np.ones((1, 4, 4, 1), np.float32), masks, shrink)
    # Corners sample outside the image: intensity 0 and the background class.
    assert images[0, 0, 0, 0] == 0.0
    np.testing.assert_array_equal(shrunk[0, 0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(tf.reduce_sum(shrunk, -1), 1.0)


def test_affine_rejects_single_channel_masks():
    with pytest.raises(ValueError, match="background in channel 0"):
        affine_transform(
            tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 1)), affine_matrices([1.0], [0], [0.0], 4, 4)
        )


def test_constant_elastic_field_is_an_integer_shift():
    displacements = np.zeros((1, 3, 3, 2), np.float32)
    displacements[..., 0] = 1.0  # every control point moves content one row down
    flow = elastic_field(displacements, 6, 6)
    np.testing.assert_allclose(flow[..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(flow[..., 1], 0.0, atol=1e-6)
    pair = _pair(batch=1, size=6)
    images, masks = elastic_transform(pair["images"], pair["segmentation_masks"], flow)
    np.testing.assert_allclose(images[:, 1:], pair["images"][:, :-1], atol=1e-5)
    np.testing.assert_allclose(masks[:, 1:], pair["segmentation_masks"][:, :-1], atol=1e-5)


def test_intensity_transform_on_a_hand_written_slice():
    images = np.array([1.0, 2.0, 3.0, 6.0], np.float32).reshape(1, 2, 2, 1)  # mean 3
    out = intensity_transform(images, contrast=[2.0], brightness=[0.5])
    expected = np.array([-1.0, 1.0, 3.0, 9.0]) + 0.5
    np.testing.assert_allclose(np.ravel(out), expected, atol=1e-6)


def test_mixup_on_hand_written_pairs():
    images = np.array([0.0, 10.0], np.float32).reshape(2, 1, 1, 1)
    masks = np.eye(2, dtype=np.float32).reshape(2, 1, 1, 2)
    mixed_images, mixed_masks = mixup(images, masks, lam=[0.25, 1.0], permutation=[1, 0])
    np.testing.assert_allclose(np.ravel(mixed_images), [7.5, 10.0])
    np.testing.assert_allclose(mixed_masks[:, 0, 0], [[0.25, 0.75], [0.0, 1.0]])


# ----------------------------------------------------------------- layers


@pytest.mark.parametrize("layer", _layers(), ids=LAYER_IDS)
def test_layers_keep_keys_shapes_dtypes_and_mask_sums(layer):
    pair = _pair()
    out = layer(pair)
    assert set(out) == {"images", "segmentation_masks"}
    assert out["images"].shape == (4, 24, 24, 1) and out["images"].dtype == tf.float32
    assert out["segmentation_masks"].shape == (4, 24, 24, N_CLASSES)
    assert out["segmentation_masks"].dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(out["segmentation_masks"], -1), 1.0, atol=1e-5)
    assert not np.array_equal(out["images"], pair["images"])


@pytest.mark.parametrize("layer", _layers(), ids=LAYER_IDS)
def test_layers_are_identity_when_not_training(layer):
    pair = _pair()
    out = layer(pair, training=False)
    np.testing.assert_array_equal(out["images"], pair["images"])
    np.testing.assert_array_equal(out["segmentation_masks"], pair["segmentation_masks"])


def test_layers_accept_images_without_masks():
    images = _pair()["images"]
    for layer in _layers():
        out = layer({"images": images})
        assert set(out) == {"images"} and out["images"].shape == images.shape


def test_elastic_moves_image_and_mask_identically():
    pair = _pair()
    out = RandomElastic(sigma_px=3.0, seed=3)(pair)
    assert np.abs(out["images"] - pair["images"]).max() > 0.5
    np.testing.assert_allclose(out["images"][..., 0], out["segmentation_masks"][..., 1], atol=1e-6)


def test_affine_moves_image_and_mask_identically():
    pair = _pair(batch=16)
    out = RandomAffine(probability=1.0, seed=3)(pair)
    image = out["images"].numpy()[..., 0]
    mask = out["segmentation_masks"].numpy()[..., 1]
    crisp_one, crisp_zero = image > 1 - 1e-5, image < 1e-5
    assert (crisp_one | crisp_zero).mean() > 0.8
    # Where all bilinear neighbours agree, the nearest-neighbour mask must agree too.
    np.testing.assert_array_equal(mask[crisp_one], 1.0)
    np.testing.assert_array_equal(mask[crisp_zero], 0.0)
    assert np.abs(image - pair["images"][..., 0]).max() > 0.5


@pytest.mark.parametrize(
    "layer",
    [
        RandomAffine(probability=0.0, seed=1),
        RandomAffine(probability=1.0, scale_range=(1.0, 1.0), transforms=("scale",), seed=1),
        RandomElastic(sigma_px=0.0, seed=1),
        RandomIntensity(contrast_range=(1.0, 1.0), brightness_range=(0.0, 0.0), seed=1),
    ],
    ids=["p0", "unit-scale-only", "sigma0", "c1-b0"],
)
def test_degenerate_parameters_are_identity(layer):
    pair = _pair()
    out = layer(pair)
    np.testing.assert_array_equal(out["images"], pair["images"])
    np.testing.assert_array_equal(out["segmentation_masks"], pair["segmentation_masks"])


def test_flip_only_layer_is_exact_mirror():
    pair = _pair()
    out = RandomAffine(probability=1.0, transforms=("flip",), seed=1)(pair)
    np.testing.assert_array_equal(out["images"], pair["images"][:, :, ::-1])
    np.testing.assert_array_equal(out["segmentation_masks"], pair["segmentation_masks"][:, :, ::-1])


def test_affine_parameters_stay_in_range():
    parameters = RandomAffine(seed=5).sample_parameters(4000)
    choice = parameters["choice"].numpy()
    scale, flip = parameters["scale"].numpy(), parameters["flip"].numpy()
    angle = parameters["angle_degrees"].numpy()
    assert abs((choice >= 0).mean() - 0.8) < 0.03
    counts = np.bincount(choice[choice >= 0], minlength=4)
    assert counts.min() > 0.2 * counts.sum()  # each of the four about a quarter
    is_scale, is_rotation, is_turn = choice == 0, choice == 2, choice == 3
    assert np.all((scale[is_scale] >= 0.9) & (scale[is_scale] <= 1.1))
    assert np.all(scale[~is_scale] == 1.0)
    np.testing.assert_array_equal(flip, choice == 1)
    assert np.all(np.abs(angle[is_rotation]) <= 15.0)
    assert set(np.unique(angle[is_turn])) == {45.0 * k for k in range(8)}
    assert np.all(angle[~(is_rotation | is_turn)] == 0.0)


def test_affine_draws_only_enabled_transforms():
    parameters = RandomAffine(1.0, transforms=("flip", "rotation45"), seed=5).sample_parameters(500)
    names = {AFFINE_TRANSFORMS[i] for i in parameters["choice"].numpy()}
    assert names == {"flip", "rotation45"}


def test_other_parameters_stay_in_range():
    intensity = RandomIntensity(seed=2).sample_parameters(1000)
    assert np.all((intensity["contrast"] >= 0.8) & (intensity["contrast"] <= 1.2))
    assert np.all((intensity["brightness"] >= -0.1) & (intensity["brightness"] <= 0.1))
    mix = Mixup(alpha=0.2, seed=2).sample_parameters(1000)
    assert np.all((mix["lam"] >= 0.0) & (mix["lam"] <= 1.0))
    assert np.mean((mix["lam"] < 0.1) | (mix["lam"] > 0.9)) > 0.5  # Beta(0.2, 0.2) is U-shaped
    np.testing.assert_array_equal(np.sort(mix["permutation"]), np.arange(1000))
    displacements = RandomElastic(sigma_px=4.0, grid_size=3, seed=2).sample_parameters(500)
    assert displacements["displacements"].shape == (500, 3, 3, 2)
    assert np.std(displacements["displacements"]) == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("index", range(4), ids=LAYER_IDS)
def test_same_seed_same_result_eager_tf_function_and_tf_data(index):
    pair = _pair(batch=5)
    eager = _layers(seed=11)[index](pair)
    graph = tf.function(_layers(seed=11)[index])(pair)
    dataset = tf.data.Dataset.from_tensor_slices(pair).batch(5).map(_layers(seed=11)[index])
    (mapped,) = list(dataset)
    for key in ("images", "segmentation_masks"):
        np.testing.assert_allclose(graph[key], eager[key], atol=1e-5)
        np.testing.assert_allclose(mapped[key], eager[key], atol=1e-5)


@pytest.mark.parametrize("index", range(4), ids=LAYER_IDS)
def test_draws_change_between_calls_and_seeds(index):
    pair = _pair(batch=5)
    layer = _layers(seed=11)[index]
    first, second = layer(pair), layer(pair)
    other = _layers(seed=12)[index](pair)
    assert not np.allclose(first["images"], second["images"])
    assert not np.allclose(first["images"], other["images"])


def test_tf_data_map_with_dynamic_batch_size():
    pair = _pair(batch=5)
    dataset = tf.data.Dataset.from_tensor_slices(pair).batch(2)  # batches of 2, 2, 1
    for layer in _layers():
        sizes = [int(batch["images"].shape[0]) for batch in dataset.map(layer)]
        assert sizes == [2, 2, 1]


@pytest.mark.parametrize("layer", _layers(seed=3), ids=LAYER_IDS)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    pair = _pair()
    np.testing.assert_allclose(
        clone(pair)["images"], type(layer).from_config(config)(pair)["images"]
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RandomAffine(probability=1.5), "probability in"),
        (lambda: RandomAffine(transforms=("shear",)), "non-empty subset"),
        (lambda: RandomAffine(scale_range=(1.1, 0.9)), "scale_range"),
        (lambda: RandomElastic(sigma_px=-1.0), "sigma_px >= 0"),
        (lambda: RandomIntensity(contrast_range=(1.2, 0.8)), "contrast_range"),
        (lambda: Mixup(alpha=0.0), "alpha > 0"),
    ],
)
def test_bad_arguments_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_data_raise():
    pair = _pair()
    with pytest.raises(ValueError, match="expected a dict"):
        RandomIntensity(seed=1)(pair["images"])
    with pytest.raises(ValueError, match="expected a dict"):
        RandomIntensity(seed=1)({**pair, "labels": pair["images"]})
    with pytest.raises(ValueError, match="equal \\(B,H,W\\)"):
        RandomIntensity(seed=1)(
            {"images": pair["images"], "segmentation_masks": pair["images"][:2]}
        )
