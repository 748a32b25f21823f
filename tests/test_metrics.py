"""Tests for tfaug/metrics.py, including medpy agreement and empty masks."""

import numpy as np
import pytest
import tensorflow as tf
from medpy.metric.binary import dc

from tfaug.metrics import batch_dice, dice_per_class, mean_foreground_dice


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ([0, 1, 1, 2], [0, 1, 2, 2], [2 / 3, 2 / 3]),  # partial overlaps
        ([1, 1, 2, 2], [1, 1, 2, 2], [1.0, 1.0]),  # perfect
        ([0, 0, 0, 0], [0, 0, 0, 0], [0.0, 0.0]),  # both empty: ACDC convention → 0
        ([0, 0, 2, 0], [0, 0, 2, 0], [0.0, 1.0]),  # class 1 absent from both
        ([1, 1, 0, 0], [0, 0, 0, 0], [0.0, 0.0]),  # false positives only
        ([0, 0, 0, 0], [2, 2, 0, 0], [0.0, 0.0]),  # empty prediction
    ],
)
def test_dice_per_class_hand_cases(prediction, reference, expected):
    result = dice_per_class(np.array(prediction), np.array(reference), 3)
    assert result.shape == (2,)
    np.testing.assert_allclose(result, expected)


@pytest.mark.parametrize("seed", range(4))
def test_dice_per_class_agrees_with_medpy_on_random_volumes(seed):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 4, size=(12, 10, 6))
    prediction = np.where(rng.random(reference.shape) < 0.7, reference, rng.integers(0, 4))
    if seed == 3:
        prediction[prediction == 2] = 0  # class 2 missing from the prediction
        reference[reference == 2] = 0  # ... and from the reference
    result = dice_per_class(prediction, reference, 4)
    for c in range(1, 4):
        if (prediction == c).any() or (reference == c).any():
            assert result[c - 1] == pytest.approx(dc(prediction == c, reference == c), rel=1e-12)
        else:  # both empty: medpy >= 0.5 disagrees with itself (1.0 or NaN); ACDC says 0
            assert result[c - 1] == 0.0


def test_mean_foreground_dice_is_mean_over_foreground_classes():
    prediction = np.array([[0, 1], [2, 2]], np.uint8)
    reference = np.array([[0, 1], [1, 2]], np.int16)
    assert mean_foreground_dice(prediction, reference, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)


@pytest.mark.parametrize(
    ("prediction", "reference", "n_classes", "match"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), 2, "differs from reference shape"),
        (np.zeros((2, 2)), np.zeros((2, 2), int), 2, "integer class labels"),
        (np.full((2, 2), 3), np.zeros((2, 2), int), 3, r"must lie in \[0, 2\]"),
        (np.zeros((2, 2), int), np.zeros((2, 2), int), 1, "must be >= 2"),
    ],
)
def test_bad_inputs_are_clear_errors(prediction, reference, n_classes, match):
    with pytest.raises(ValueError, match=match):
        dice_per_class(prediction, reference, n_classes)


def test_batch_dice_with_hard_predictions_equals_dice_per_class():
    rng = np.random.default_rng(5)
    reference = rng.integers(0, 3, size=(3, 8, 8))
    prediction = np.where(rng.random(reference.shape) < 0.6, reference, 0)
    prediction[prediction == 1] = 0  # class 1 never predicted
    result = batch_dice(tf.one_hot(reference, 3), tf.one_hot(prediction, 3))
    assert result.dtype == tf.float32 and result.shape == (2,)
    np.testing.assert_allclose(result.numpy(), dice_per_class(prediction, reference, 3), rtol=1e-6)


def test_batch_dice_soft_value_and_empty_class():
    labels = tf.constant([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    probabilities = tf.constant([[[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]]])
    # class 1: overlap 1, sizes 1 + 1.5 → 0.8; class 2 absent from both → 0
    np.testing.assert_allclose(batch_dice(labels, probabilities).numpy(), [0.8, 0.0], rtol=1e-6)
