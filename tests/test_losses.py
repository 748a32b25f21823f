"""Tests for tfaug/losses.py against numpy hand computations."""

import numpy as np
import pytest
import tensorflow as tf

from tfaug.losses import (
    deformation_ld_loss,
    discriminator_loss,
    generator_adversarial_loss,
    intensity_ld_loss,
    large_deviation_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_weighted_cross_entropy_matches_numpy_pixel_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    labels = rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32")  # soft labels
    weights = np.array([0.1, 0.45, 0.45], "float32")
    expected = np.mean(-np.sum(weights * labels * _log_softmax(logits), axis=-1))
    loss = weighted_cross_entropy(labels, logits, weights)
    assert loss.dtype == tf.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_weighted_cross_entropy_hand_value_single_pixel():
    # two classes, logits (0, 0): log softmax = log 0.5; label class 1 with weight 0.9
    loss = weighted_cross_entropy([[[[0.0, 1.0]]]], [[[[0.0, 0.0]]]], [0.1, 0.9])
    np.testing.assert_allclose(loss.numpy(), 0.9 * np.log(2.0), rtol=1e-6)


def test_weighted_cross_entropy_is_zero_for_a_zero_weight_class_and_accepts_float16():
    labels = tf.one_hot(tf.zeros((1, 2, 2), tf.int32), 2)
    logits = tf.constant(np.random.default_rng(1).normal(size=(1, 2, 2, 2)), tf.float16)
    loss = weighted_cross_entropy(labels, logits, [0.0, 1.0])
    assert loss.dtype == tf.float32 and loss.numpy() == 0.0


def test_weighted_cross_entropy_class_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same number of classes"):
        weighted_cross_entropy(tf.zeros((1, 2, 2, 4)), tf.zeros((1, 2, 2, 4)), [0.1, 0.9])


def test_generator_adversarial_loss_is_non_saturating_cross_entropy():
    fake = np.array([[-3.0], [0.0], [2.5]], "float32")
    expected = np.mean(-np.log(_sigmoid(fake)))
    np.testing.assert_allclose(generator_adversarial_loss(fake).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(generator_adversarial_loss([[0.0]]).numpy(), np.log(2.0), rtol=1e-6)


def test_discriminator_loss_is_mean_of_real_and_fake_terms():
    real = np.array([[1.0], [-0.5]], "float32")
    fake = np.array([[0.3], [-2.0], [4.0]], "float32")
    expected = 0.5 * (np.mean(-np.log(_sigmoid(real))) + np.mean(-np.log(1.0 - _sigmoid(fake))))
    np.testing.assert_allclose(discriminator_loss(real, fake).numpy(), expected, rtol=1e-6)


def test_one_sided_label_smoothing_targets_real_images_below_one():
    real = np.array([[1.0], [-0.5]], "float32")
    fake = np.array([[0.3]], "float32")
    real_term = np.mean(-(0.9 * np.log(_sigmoid(real)) + 0.1 * np.log(1.0 - _sigmoid(real))))
    expected = 0.5 * (real_term + np.mean(-np.log(1.0 - _sigmoid(fake))))
    np.testing.assert_allclose(discriminator_loss(real, fake, 0.9).numpy(), expected, rtol=1e-6)
    # A D certain that real images are real is no longer optimal.
    assert discriminator_loss([[20.0]], [[-20.0]], 0.9).numpy() > 0.1


def test_discriminator_loss_is_small_for_a_confident_correct_discriminator():
    assert discriminator_loss([[20.0]], [[-20.0]]).numpy() < 1e-6
    assert discriminator_loss([[-20.0]], [[20.0]]).numpy() > 19.0


@pytest.mark.parametrize("loss", [deformation_ld_loss, intensity_ld_loss, large_deviation_loss])
def test_large_deviation_is_negative_mean_absolute_value(loss):
    field = np.array([[[[1.5, -2.0]], [[0.0, -0.5]]]], "float32")
    value = loss(field)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), -1.0, rtol=1e-6)


def test_large_deviation_gradient_pushes_the_field_outwards():
    field = tf.Variable([[0.5, -0.25]])
    with tf.GradientTape() as tape:
        loss = deformation_ld_loss(field)
    gradient = tape.gradient(loss, field).numpy()
    np.testing.assert_allclose(gradient, [[-0.5, 0.5]])


def test_soft_dice_matches_numpy_over_the_masked_pixels_of_the_batch():
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, (2, 4, 5))]
    mask = (rng.random((2, 4, 5)) < 0.6).astype("float32")
    kept = mask.astype(bool)
    q, y = probabilities[kept], labels[kept]  # (pixels, C)
    dice = (2 * (q * y).sum(0) + 1e-5) / ((q * q).sum(0) + (y * y).sum(0) + 1e-5)
    loss = soft_dice_loss(labels, probabilities, mask)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), np.mean(1 - dice), rtol=1e-5)
    everywhere = soft_dice_loss(labels, probabilities)
    np.testing.assert_allclose(float(everywhere), float(soft_dice_loss(labels, probabilities, 1)))


def test_soft_dice_is_zero_for_a_perfect_or_an_empty_mask_and_one_for_a_missed_class():
    labels = np.eye(2, dtype="float32")[np.array([[[0, 1], [1, 0]]])]
    assert float(soft_dice_loss(labels, labels)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(labels, 1 - labels, np.zeros((1, 2, 2)))) == 0.0
    assert float(soft_dice_loss(labels, 1 - labels)) == pytest.approx(1.0, abs=1e-5)
