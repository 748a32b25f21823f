"""The fully convolutional discriminator of the ``adv_pixel`` comparison (Hung et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

LEAKY_SLOPE = 0.2


@keras.saving.register_keras_serializable(package="tfaug")
class PixelDiscriminator(keras.Model):
    """Scores, per pixel, whether a class-probability map looks like a ground-truth map.

    Hung et al. (2018), "Adversarial learning for semi-supervised semantic segmentation":
    4x4 stride-2 convolutions with LeakyReLU(0.2) and no normalisation, a last 4x4 stride-2
    convolution to one channel, and a bilinear resize back to the input size. The output is
    a logit map for "ground truth" (sigmoid cross-entropy, ``tfaug.losses``); no sigmoid is
    applied. Its sigmoid is the confidence map of the self-taught term.

    Input shape: (B,H,W,C) float32 class probabilities (a softmax map or a one-hot map),
    H and W divisible by ``2 ** (len(filters) + 1)``.
    Output shape: (B,H,W,1) float32 logits.

    Args:
        filters: filters of the hidden strided convs (the last conv to one channel is added).

    Does not apply a softmax to its input or see the image.
    """

    def __init__(self, filters: Sequence[int] = (64, 128, 256, 512), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(filters) == 0 or any(int(f) < 1 for f in filters):
            raise ValueError(
                f"PixelDiscriminator: expected one or more positive filter counts, found "
                f"{list(filters)}. Set model.pixel_discriminator_filters, e.g. [64, 128, 256, 512]."
            )
        self.filters = tuple(int(f) for f in filters)
        self.convs = [
            keras.layers.Conv2D(f, 4, strides=2, padding="same", name=f"conv{i}")
            for i, f in enumerate(self.filters)
        ]
        self.logit = keras.layers.Conv2D(1, 4, strides=2, padding="same", name="logit")

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        height, width = inputs.shape[1], inputs.shape[2]
        x = inputs
        for conv in self.convs:
            x = conv(x)
            # LeakyReLU written as max(x, 0.2x): the same values, and Grappler's remapper
            # does not try (and fail, with an error log) to fuse it into the convolution.
            x = ops.maximum(x, LEAKY_SLOPE * x)
        logits = self.logit(x)
        return ops.cast(ops.image.resize(logits, (height, width), "bilinear"), "float32")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:3], 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": list(self.filters)}
