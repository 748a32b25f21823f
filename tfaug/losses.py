"""Loss terms of the joint objective (docs/method.md §4) and of the comparison methods.

Every function takes tensors (any float dtype; computed in float32) and returns a float32
scalar. None of them applies a weight λ; the training step does that.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def weighted_cross_entropy(
    labels: tf.Tensor, logits: tf.Tensor, class_weights: Sequence[float] | tf.Tensor
) -> tf.Tensor:
    """Class-weighted softmax cross-entropy, averaged over pixels.

    ``L = mean_{b,h,w} ( −Σ_c w_c · y_{bhwc} · log softmax(logits_{bhw})_c )``: the sum over
    classes is weighted, then the *plain* mean over all B·H·W pixels is taken (the result is
    not divided by the per-pixel or total weight Σ w_c y_c).

    Args:
        labels: (B,H,W,C) one-hot or soft labels (each pixel sums to 1, e.g. a warped
            one-hot map), float.
        logits: (B,H,W,C) unnormalised scores; no softmax applied beforehand.
        class_weights: C non-negative weights, background first (e.g. 0.1, 0.3, 0.3, 0.3).

    Returns:
        float32 scalar ≥ 0.

    Raises:
        ValueError: the static class axes of ``labels``, ``logits`` and ``class_weights``
            differ.
    """
    labels = tf.cast(labels, tf.float32)
    logits = tf.cast(logits, tf.float32)
    weights = tf.cast(tf.convert_to_tensor(class_weights), tf.float32)
    channels = {
        "labels": labels.shape[-1],
        "logits": logits.shape[-1],
        "class_weights": weights.shape[-1],
    }
    known = {value for value in channels.values() if value is not None}
    if len(known) > 1:
        raise ValueError(
            f"weighted_cross_entropy: labels, logits and class_weights must have the same "
            f"number of classes, found {channels}. Pass one weight per class (background "
            "first) and one-hot labels with n_classes channels."
        )
    per_pixel = -tf.reduce_sum(weights * labels * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    return tf.reduce_mean(per_pixel)


def soft_dice_loss(
    labels: tf.Tensor,
    probabilities: tf.Tensor,
    mask: tf.Tensor | None = None,
    smooth: float = 1e-5,
) -> tf.Tensor:
    """Soft Dice loss over a whole batch, each class alike, on the pixels of ``mask``.

    For every class c, over every pixel p of the batch with ``mask_p = 1``:
    ``D_c = 1 − (2·Σ q_pc·y_pc + s) / (Σ q_pc² + Σ y_pc² + s)``; the loss is the mean of the
    C values (background included). This is UniMatch's ``DiceLoss`` with its ``ignore``
    argument as ``1 − mask``. A class absent from the masked target costs up to 1 unless the
    prediction puts no mass on it; with no pixel in the mask the loss is 0 (each D_c = s/s).

    Args:
        labels: (B,H,W,C) one-hot or soft targets, float.
        probabilities: (B,H,W,C) predicted probabilities (softmax), float.
        mask: (B,H,W) float or bool, 1 where the pixel counts; ``None``: every pixel.
        smooth: s > 0.

    Returns:
        float32 scalar in [0, 1].
    """
    labels = tf.cast(labels, tf.float32)
    probabilities = tf.cast(probabilities, tf.float32)
    if mask is not None:
        weight = tf.cast(mask, tf.float32)[..., None]
        labels, probabilities = labels * weight, probabilities * weight
    axes = [0, 1, 2]
    overlap = tf.reduce_sum(probabilities * labels, axes)
    sizes = tf.reduce_sum(tf.square(probabilities), axes) + tf.reduce_sum(tf.square(labels), axes)
    return tf.reduce_mean(1.0 - (2.0 * overlap + smooth) / (sizes + smooth))


def _sigmoid_cross_entropy(logits: tf.Tensor, target: float) -> tf.Tensor:
    logits = tf.cast(logits, tf.float32)
    labels = tf.fill(tf.shape(logits), target)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def generator_adversarial_loss(fake_logits: tf.Tensor) -> tf.Tensor:
    """Non-saturating generator loss: sigmoid cross-entropy of D(x_G) with target "real".

    Args:
        fake_logits: (B,1) discriminator logits of generated images, or (B,h,w,1) patch
            logits (the mean runs over every patch).

    Returns:
        float32 scalar ``mean(−log σ(fake_logits))`` ≥ 0; log 2 ≈ 0.693 when D is undecided.
    """
    return _sigmoid_cross_entropy(fake_logits, 1.0)


def discriminator_loss(
    real_logits: tf.Tensor, fake_logits: tf.Tensor, real_label: float = 1.0
) -> tf.Tensor:
    """Discriminator loss: sigmoid cross-entropy, real → ``real_label``, fake → 0, mean of
    the two terms.

    Args:
        real_logits: (B,1) logits of unlabeled (real) images, or (B,h,w,1) patch logits.
        fake_logits: (B',1) logits of generated images, or (B',h,w,1).
        real_label: target of real images: 1 (the paper), or e.g. 0.9 for one-sided label
            smoothing (Salimans et al. 2016).

    Returns:
        float32 scalar ``(CE(real_label, σ(real)) + mean(−log(1 − σ(fake)))) / 2``; with
        ``real_label = 1``, ``(mean(−log σ(real)) + mean(−log(1 − σ(fake)))) / 2``.
    """
    return 0.5 * (
        _sigmoid_cross_entropy(real_logits, real_label) + _sigmoid_cross_entropy(fake_logits, 0.0)
    )


def large_deviation_loss(field: tf.Tensor) -> tf.Tensor:
    """Large-deviation term ``−mean|field|`` over every element (minimising it enlarges it).

    Args:
        field: any-shape float tensor, e.g. a flow (B,H,W,2) or an intensity field (B,H,W,1).

    Returns:
        float32 scalar ≤ 0, in the field's units.
    """
    return -tf.reduce_mean(tf.abs(tf.cast(field, tf.float32)))


def deformation_ld_loss(flow: tf.Tensor) -> tf.Tensor:
    """L_LD of GV: ``−mean|v|`` of the flow v (B,H,W,2), in pixels; float32 scalar ≤ 0."""
    return large_deviation_loss(flow)


def intensity_ld_loss(delta: tf.Tensor) -> tf.Tensor:
    """L_LD of GI: ``−mean|ΔI|`` of the field ΔI (B,H,W,1), intensity units; float32 ≤ 0."""
    return large_deviation_loss(delta)
