"""Analytical FLOP counts of built Keras models: convolutions and dense layers only.

A multiply-add counts as 2 FLOPs. Per slice (one batch row), forward pass:

- ``Conv2D``: ``2 · k_h · k_w · (C_in / groups) · C_out · H_out · W_out``;
- ``Conv2DTranspose``: ``2 · k_h · k_w · C_in · C_out · H_in · W_in``;
- ``Dense``: ``2 · units · C_in`` times the product of the non-batch, non-feature axes.

Biases, BatchNormalization, activations, resizes, pooling, the warp and the losses are not
counted (they are a few percent of a U-Net's work but may dominate wall time on a CPU: they
are memory-bound). A training step is counted as 3× the forward FLOPs (forward, gradient
w.r.t. activations, gradient w.r.t. weights), the usual convention.

The input shape of every layer is read from what Keras recorded when it was built
(``Layer._build_shapes_dict``), so the model must be built at its real spatial size.
"""

from __future__ import annotations

import math

import keras

TRAINING_FACTOR = 3  # forward + backward (activations) + backward (weights)


def _input_shape(layer: keras.layers.Layer) -> tuple[int | None, ...]:
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None or any(size is None for size in shape[1:]):
        raise ValueError(
            f"bench/flops.py: layer {layer.path!r} has no recorded static input shape (found "
            f"{shape}). Build the model on a tensor of its real size, e.g. "
            "model(tf.zeros((1, S, S, 1))), before counting."
        )
    return tuple(shape)


def layer_flops(layer: keras.layers.Layer) -> int:
    """Forward FLOPs per slice of one layer (0 for layers that are not conv/dense)."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        _, height, width, channels = _input_shape(layer)
        k_h, k_w = layer.kernel_size
        return 2 * k_h * k_w * channels * layer.filters * height * width
    if isinstance(layer, keras.layers.Conv2D):
        shape = _input_shape(layer)
        _, height, width, _ = layer.compute_output_shape(shape)
        k_h, k_w = layer.kernel_size
        per_group = shape[-1] // layer.groups
        return 2 * k_h * k_w * per_group * layer.filters * height * width
    if isinstance(layer, keras.layers.Dense):
        shape = _input_shape(layer)
        return 2 * layer.units * shape[-1] * math.prod(shape[1:-1])
    return 0


def model_flops(model: keras.layers.Layer) -> int:
    """Forward FLOPs per slice of a built model: the sum over its conv and dense layers.

    Walks every nested layer once (shared layers are counted once, as called once).
    """
    layers = model._flatten_layers(include_self=True, recursive=True)
    return sum(layer_flops(layer) for layer in layers)
