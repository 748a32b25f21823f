"""The gather-based affine resampling against TensorFlow's projective-transform kernel, and XLA."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfaug.ops.augment import RandomAffine, affine_matrices, affine_transform

N_CLASSES = 3


def _kernel(values: tf.Tensor, matrices: tf.Tensor, interpolation: str) -> tf.Tensor:
    """``ImageProjectiveTransformV3`` with constant 0 fill: the reference implementation."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=values,
        transforms=tf.reshape(matrices, [-1, 9])[:, :8],
        output_shape=tf.shape(values)[1:3],
        fill_value=tf.constant(0.0),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def _random_batch(batch: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(size=(batch, height, width, 2)), tf.float32)
    labels = rng.integers(0, N_CLASSES, size=(batch, height, width))
    masks = tf.constant(np.eye(N_CLASSES, dtype=np.float32)[labels])
    scale = rng.uniform(0.6, 1.5, batch)
    flip = rng.uniform(size=batch) < 0.5
    angle = rng.uniform(-180, 180, batch)
    matrices = affine_matrices(scale, flip, angle, height, width)
    return images, masks, matrices


@pytest.mark.parametrize("size", [(9, 9), (8, 13)], ids=["odd-square", "even-by-odd"])
def test_matches_the_projective_transform_kernel(size):
    images, masks, matrices = _random_batch(6, *size, seed=sum(size))
    out_images, out_masks = affine_transform(images, masks, matrices)
    np.testing.assert_allclose(out_images, _kernel(images, matrices, "BILINEAR"), atol=1e-5)
    # The kernel fills the complement of the background with 0, i.e. masks with background.
    complement = tf.concat([1.0 - masks[..., :1], masks[..., 1:]], axis=-1)
    moved = _kernel(complement, matrices, "NEAREST")
    expected = tf.concat([1.0 - moved[..., :1], moved[..., 1:]], axis=-1)
    assert np.mean(np.all(out_masks.numpy() == expected.numpy(), axis=-1)) > 0.999
    np.testing.assert_array_equal(tf.reduce_sum(out_masks, -1), 1.0)


def test_border_fades_to_zero_over_one_pixel():
    # A half-pixel shift to the left: the last column blends its value with the 0 outside.
    matrices = tf.constant([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    images, _ = affine_transform(tf.ones((1, 3, 4, 1)), None, matrices)
    np.testing.assert_allclose(images[0, :, :, 0], [[1.0, 1.0, 1.0, 0.5]] * 3, atol=1e-6)


def test_compiles_with_xla_and_matches_eager():
    images, masks, matrices = _random_batch(4, 16, 16, seed=1)
    eager_images, eager_masks = affine_transform(images, masks, matrices)
    compiled = tf.function(affine_transform, jit_compile=True)
    xla_images, xla_masks = compiled(images, masks, matrices)
    np.testing.assert_allclose(xla_images, eager_images, atol=1e-5)
    assert np.mean(np.all(xla_masks.numpy() == eager_masks.numpy(), axis=-1)) > 0.99


def test_layer_runs_under_xla():
    images, masks, _ = _random_batch(4, 16, 16, seed=2)
    layer = RandomAffine(probability=1.0, seed=7)
    step = tf.function(lambda data: layer(data, training=True), jit_compile=True)
    out = step({"images": images, "segmentation_masks": masks})
    assert out["images"].shape == images.shape
    assert not np.allclose(out["images"], images)
    np.testing.assert_array_equal(tf.reduce_sum(out["segmentation_masks"], -1), 1.0)
