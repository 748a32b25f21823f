"""Dice scores: numpy for evaluation on label volumes, TensorFlow for monitoring batches.

Convention for a class absent from both prediction and reference: Dice = 0, as the ACDC
challenge's evaluation script (``metrics_acdc.py``) and ``medpy.metric.binary.dc`` up to
medpy 0.4 return. (medpy 0.5 changed its fallback to 1.0, which numpy 2 turns into NaN;
elsewhere the values agree with medpy.) The numpy and the TensorFlow functions follow the
same convention, so they agree on hard predictions.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _check_label_array(name: str, array: np.ndarray, n_classes: int) -> None:
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"dice_per_class: {name} must hold integer class labels, found dtype {array.dtype}."
            " Take argmax over the class axis of probabilities or cast a label map with "
            ".astype(np.int64)."
        )
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(
            f"dice_per_class: {name} labels must lie in [0, {n_classes - 1}] for "
            f"n_classes={n_classes}, found range [{array.min()}, {array.max()}]. Remap the "
            "labels (config data.merge_labels) or pass the right n_classes."
        )


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice per foreground class between two integer label arrays of any dimension.

    ``Dice_c = 2 |P_c ∩ R_c| / (|P_c| + |R_c|)`` over all voxels (a 3D volume gives a 3D
    Dice, not a mean of slice Dices); a class absent from both arrays scores 0 (the ACDC
    evaluation convention, see the module docstring).

    Args:
        prediction: integer labels in [0, n_classes), any shape, e.g. (X,Y,Z).
        reference: integer labels of the same shape.
        n_classes: number of classes including background (class 0).

    Returns:
        float64 array of shape (n_classes − 1,) in [0, 1], classes 1..n_classes−1 in order.
        Background is not scored.

    Raises:
        ValueError: shapes differ, non-integer arrays, labels outside [0, n_classes), or
            n_classes < 2.

    Does not resample: both arrays must already be on the same grid.
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    if n_classes < 2:
        raise ValueError(
            f"dice_per_class: n_classes counts the background too and must be >= 2, found "
            f"{n_classes}. Pass len(config.data.class_names)."
        )
    if prediction.shape != reference.shape:
        raise ValueError(
            f"dice_per_class: prediction shape {prediction.shape} differs from reference shape "
            f"{reference.shape}. Resample the prediction onto the reference grid first."
        )
    _check_label_array("prediction", prediction, n_classes)
    _check_label_array("reference", reference, n_classes)
    pairs = reference.astype(np.int64).ravel() * n_classes + prediction.astype(np.int64).ravel()
    confusion = np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    overlap = np.diag(confusion)[1:].astype(np.float64)
    sizes = (confusion.sum(axis=0) + confusion.sum(axis=1))[1:].astype(np.float64)
    return np.divide(2.0 * overlap, sizes, out=np.zeros_like(overlap), where=sizes > 0)


def mean_foreground_dice(prediction: np.ndarray, reference: np.ndarray, n_classes: int) -> float:
    """Mean of :func:`dice_per_class` over the foreground classes (the validation score).

    Args and raises as :func:`dice_per_class`.

    Returns:
        float in [0, 1].
    """
    return float(np.mean(dice_per_class(prediction, reference, n_classes)))


def batch_dice(labels: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    """Dice per foreground class over a whole batch, in TensorFlow (for monitoring).

    With one-hot ``prediction`` (e.g. ``one_hot(argmax(logits))``) this is the hard Dice of
    the batch taken as one volume and equals :func:`dice_per_class`; with softmax
    probabilities it is the soft Dice. Differentiable in ``prediction``.

    Args:
        labels: (B,H,W,C) one-hot or soft reference, float.
        prediction: (B,H,W,C) one-hot prediction or probabilities in [0, 1], float.

    Returns:
        float32 tensor of shape (C − 1,) in [0, 1]; 0 for a class absent from both.
    """
    labels = tf.cast(labels, tf.float32)[..., 1:]
    prediction = tf.cast(prediction, tf.float32)[..., 1:]
    axes = tf.range(tf.rank(labels) - 1)
    overlap = tf.reduce_sum(labels * prediction, axis=axes)
    sizes = tf.reduce_sum(labels, axis=axes) + tf.reduce_sum(prediction, axis=axes)
    return tf.math.divide_no_nan(2.0 * overlap, sizes)
