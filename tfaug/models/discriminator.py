"""The image discriminator D (docs/method.md §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfaug.models.layers import ConvBNAct, check_spatial_size

LEAKY_SLOPE = 0.2


@keras.saving.register_keras_serializable(package="tfaug")
class Discriminator(keras.Model):
    """Scores whether an image slice looks like the unlabeled population.

    ``len(filters)`` (five by default) 5x5 stride-2 convs, each conv → BN → LeakyReLU(0.2);
    flatten; two dense layers of ``units`` with LeakyReLU(0.2); a dense layer to one logit,
    computed in float32.
    The logit is for "real" (sigmoid cross-entropy, ``tfaug.losses``); no sigmoid is applied.
    D sees images only, never labels.

    With ``patch_levels = k`` (a switch beyond the paper, docs/switches.md), D keeps only the
    first k strided convs and a 1x1 conv to one logit per position: a patch discriminator
    whose logits each see a square of ``1 + 4·(2^k − 1)`` pixels (13 for k = 2, 29 for
    k = 3), so it judges local appearance and cannot recognise a subject by its whole anatomy.

    With ``spectral_norm`` (another switch), every conv and dense layer is wrapped in
    ``keras.layers.SpectralNormalization`` (one power iteration per training call, Miyato et
    al. 2018) and the convs have a bias and no BatchNormalization (conv → LeakyReLU(0.2)),
    which bounds D's Lipschitz constant and so how sharply it can separate real from fake.

    Input shape: (B,H,W,1) float32; H and W multiples of 32, fixed by the first build (the
    flattened size depends on them).
    Output shape: (B,1) float32 logits; with ``patch_levels = k``, (B,H/2^k,W/2^k,1).

    Args:
        filters: filters of the strided convs, one to five of them (the first k are used
            with ``patch_levels``).
        units: units of the two hidden dense layers (unused with ``patch_levels``).
        bn_momentum: BatchNormalization momentum.
        bn_epsilon: BatchNormalization epsilon.
        patch_levels: ``None`` for the paper's image-level D, or the number k in
            1..len(filters) of strided convs of a patch discriminator.
        spectral_norm: spectrally normalised layers without BatchNormalization (``False``:
            the paper).
    """

    def __init__(
        self,
        filters: Sequence[int] = (16, 32, 64, 128, 128),
        units: int = 128,
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        patch_levels: int | None = None,
        spectral_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= len(filters) <= 5:
            raise ValueError(
                f"Discriminator: expected one to five conv filter counts, found {list(filters)}."
                " Set model.discriminator_filters to e.g. [16, 32, 64, 128, 128] (five convs)."
            )
        if patch_levels is not None and not 1 <= patch_levels <= len(filters):
            raise ValueError(
                f"Discriminator: patch_levels {patch_levels} must be in 1..{len(filters)} (the "
                "number of strided convs) or None. Set model.discriminator_patch_levels to "
                "null (the paper) or e.g. 2."
            )
        self.filters = tuple(int(f) for f in filters)
        self.units = units
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.patch_levels = patch_levels
        self.spectral_norm = bool(spectral_norm)
        self.convs = [
            ConvBNAct(
                f,
                5,
                strides=2,
                negative_slope=LEAKY_SLOPE,
                normalize=not self.spectral_norm,
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                name=f"conv{i}",
            )
            for i, f in enumerate(self.filters[:patch_levels])
        ]
        if patch_levels is None:
            self.flatten = keras.layers.Flatten(name="flatten")
            self.hidden = [keras.layers.Dense(units, name=f"dense{i}") for i in range(2)]
            self.logit = keras.layers.Dense(1, name="logit", dtype="float32")
        else:
            self.flatten, self.hidden = None, []
            self.logit = keras.layers.Conv2D(1, 1, name="logit", dtype="float32")
        if self.spectral_norm:
            for conv in self.convs:
                conv.conv = _spectrally_normalized(conv.conv)
            self.hidden = [_spectrally_normalized(dense) for dense in self.hidden]
            self.logit = _spectrally_normalized(self.logit)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        check_spatial_size(input_shape, "Discriminator", require_static=True)
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        if self.flatten is not None:
            shape = self.flatten.compute_output_shape(shape)
        for dense in self.hidden:
            dense.build(shape)
            shape = dense.compute_output_shape(shape)
        self.logit.build(shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        check_spatial_size(tuple(inputs.shape), "Discriminator", require_static=False)
        x = inputs
        for conv in self.convs:
            x = conv(x, training=training)
            if self.spectral_norm:  # a linear conv (no BN): the activation is D's own
                x = ops.leaky_relu(x, negative_slope=LEAKY_SLOPE)
        if self.flatten is not None:
            x = self.flatten(x)
        for dense in self.hidden:
            x = ops.leaky_relu(dense(x, training=training), negative_slope=LEAKY_SLOPE)
        return self.logit(x, training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if self.patch_levels is None:
            return (tuple(input_shape)[0], 1)
        batch, height, width = tuple(input_shape)[:3]
        factor = 2**self.patch_levels
        return (batch, height // factor, width // factor, 1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=list(self.filters),
            units=self.units,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            patch_levels=self.patch_levels,
            spectral_norm=self.spectral_norm,
        )
        return config


def _spectrally_normalized(layer: keras.layers.Layer) -> keras.layers.Layer:
    """``layer`` (with a ``kernel``) wrapped in ``keras.layers.SpectralNormalization``:
    each training call divides the kernel by its largest singular value, estimated by one
    power iteration (the estimate is kept between calls)."""
    return keras.layers.SpectralNormalization(
        layer, power_iterations=1, name=layer.name, dtype=layer.dtype_policy
    )
