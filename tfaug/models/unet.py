"""The U-Net segmenter S (docs/method.md §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfaug.models.layers import DoubleConv, UpConvBlock, check_spatial_size


@keras.saving.register_keras_serializable(package="tfaug")
class UNet(keras.Model):
    """U-Net (five levels by default) that maps an image slice to per-pixel class logits.

    Encoder: per level two 3x3 conv → BN → ReLU (He-normal init), then a 2x2 max-pool
    between levels. Decoder: bilinear x2 resize, 2x2 conv + BN + ReLU, concatenation with
    the encoder's skip of the same level, two 3x3 conv → BN → ReLU. Head: a 3x3 conv to
    ``n_classes`` logits with bias, no BN and no activation, computed in float32.

    No softmax is applied: apply ``softmax`` over the last axis for probabilities.

    Input shape: (B,H,W,1) float32 (intensities normalised to about [0, 1]); H and W
    multiples of 32 (an L-level U-Net halves L − 1 ≤ 5 times; 32 keeps one slice size valid
    for S, G and D). The model is fully convolutional: any such H, W works after building.
    Output shape: (B,H,W,n_classes) float32 logits.

    Args:
        n_classes: number of classes including background (≥ 2).
        filters: filters per level, shallowest first; their number L (2 to 6) is the depth.
        bn_momentum: BatchNormalization momentum (0.99 in the paper; lower for short runs).
        bn_epsilon: BatchNormalization epsilon.
    """

    def __init__(
        self,
        n_classes: int,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if n_classes < 2:
            raise ValueError(
                f"UNet: n_classes counts the background too and must be >= 2, found {n_classes}."
                " Pass len(config.data.class_names)."
            )
        if not 2 <= len(filters) <= 6:
            raise ValueError(
                f"UNet: expected two to six filter counts (one per level), found {list(filters)}."
                " Set model.unet_filters to e.g. [16, 32, 64, 128, 256] (five levels)."
            )
        self.n_classes = n_classes
        self.filters = tuple(int(f) for f in filters)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        bn = {"bn_momentum": bn_momentum, "bn_epsilon": bn_epsilon}
        self.encoder = [DoubleConv(f, **bn, name=f"down{i}") for i, f in enumerate(self.filters)]
        self.pool = keras.layers.MaxPooling2D(2, name="pool")
        decoder_filters = self.filters[-2::-1]
        self.upsample = [UpConvBlock(f, **bn, name=f"up{i}") for i, f in enumerate(decoder_filters)]
        self.decoder = [DoubleConv(f, **bn, name=f"dec{i}") for i, f in enumerate(decoder_filters)]
        self.head = keras.layers.Conv2D(
            n_classes, 3, padding="same", name="logits", dtype="float32"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        check_spatial_size(input_shape, "UNet", require_static=False)
        shape = tuple(input_shape)
        skips = []
        for level, block in enumerate(self.encoder):
            block.build(shape)
            shape = block.compute_output_shape(shape)
            if level < len(self.encoder) - 1:
                skips.append(shape)
                shape = self.pool.compute_output_shape(shape)
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            upsample.build(shape)
            shape = upsample.compute_output_shape(shape)
            shape = (*skip[:-1], skip[-1] + shape[-1])
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.head.build(shape)

    def encode(self, inputs: Any, training: bool | None = None) -> list[Any]:
        """The encoder's feature maps, the input of :meth:`decode`.

        Args:
            inputs: (B,H,W,1) images, H and W multiples of 32.
            training: BatchNormalization mode.

        Returns:
            L maps, shallowest first: the L − 1 skips (B,H/2^l,W/2^l,filters[l]) of levels
            l = 0..L−2 and the bottleneck (B,H/2^(L−1),W/2^(L−1),filters[L−1]), in the
            compute dtype.
        """
        check_spatial_size(tuple(inputs.shape), "UNet", require_static=False)
        if not self.built:
            self.build(tuple(inputs.shape))
        features = []
        x = inputs
        for level, block in enumerate(self.encoder):
            if level:
                x = self.pool(x)
            x = block(x, training=training)
            features.append(x)
        return features

    def decode(self, features: Sequence[Any], training: bool | None = None) -> Any:
        """Logits (B,H,W,n_classes) float32 from the L maps of :meth:`encode`.

        The maps may be perturbed first (UniMatch's feature perturbation drops channels of
        each); ``call(x)`` is ``decode(encode(x))``.
        """
        *skips, x = features
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = upsample(x, training=training)
            x = block(ops.concatenate([skip, x], axis=-1), training=training)
        return self.head(x)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.decode(self.encode(inputs, training=training), training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.n_classes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            n_classes=self.n_classes,
            filters=list(self.filters),
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config
