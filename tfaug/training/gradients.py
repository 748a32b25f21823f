"""Gradients of a training step, with an error where a weight receives none.

A trainable weight that no loss of a step reaches would never change: after a refactor that
cuts a sub-network off from every loss, training would carry on without a sign. Every
``train_step`` of tfaug takes its gradients here, so such a step fails when it is traced,
naming the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


class DisconnectedWeightsError(ValueError):
    """Trainable weights that no loss of a training step reaches."""


def step_gradients(
    tape: tf.GradientTape, loss: tf.Tensor, weights: Sequence[Any], step: str
) -> list[tf.Tensor]:
    """``tape.gradient(loss, weights)``, refusing weights the loss does not reach.

    Args:
        tape: the tape the loss was computed under.
        loss: the (scaled) scalar loss.
        weights: the trainable weights the step updates with this loss.
        step: what is being trained, for the message (e.g. ``"joint step, G and S"``).

    Returns:
        One gradient per weight, in order (none is ``None``).

    Raises:
        DisconnectedWeightsError: some weights get no gradient; names each one.
    """
    gradients = tape.gradient(loss, list(weights))
    missing = [w.path for w, g in zip(weights, gradients, strict=True) if g is None]
    if missing:
        raise DisconnectedWeightsError(
            f"{step}: no gradient reaches {len(missing)} trainable weight(s): "
            f"{', '.join(missing)}. They are cut off from every loss of this step and would "
            "never train. Connect their layer to the model's output, or set its "
            "`trainable = False` if it is meant to stay fixed."
        )
    return gradients
