"""Mixed precision for the custom train steps (config ``train.mixed_precision``).

Under the ``mixed_float16`` dtype policy the networks compute in float16 and keep float32
weights; their last layers (U-Net logits, generator heads, discriminator logit) compute in
float32, and every loss of :mod:`tfaug.losses` casts to float32. What remains for a custom
``train_step`` is loss scaling, which prevents small float16 gradients from underflowing:
differentiate ``optimizer.scale_loss(loss)`` and apply the gradients with the same optimiser,
which un-scales them and skips the update when they are not finite.
"""

from __future__ import annotations

import keras


def with_loss_scaling(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Wrap ``optimizer`` in a ``keras.optimizers.LossScaleOptimizer`` under ``mixed_float16``.

    Returns ``optimizer`` itself when the global dtype policy is not ``mixed_float16`` or
    when it is already a ``LossScaleOptimizer`` (Keras' own ``Model.compile`` wraps the
    ``optimizer`` argument the same way; models with several optimisers wrap the others with
    this). The dynamic loss scale starts at 2^15 and adapts every step.

    Does not: set the dtype policy (``run_algorithm`` does, from ``train.mixed_precision``).
    """
    if keras.config.dtype_policy().name != "mixed_float16":
        return optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)
