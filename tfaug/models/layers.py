"""Building blocks shared by the U-Net, the generators and the discriminator.

Three blocks cover every convolution of docs/method.md §3:

- :class:`ConvBNAct`: convolution → BatchNormalization → ReLU / LeakyReLU
  (or a plain linear convolution with bias when ``normalize=False``);
- :class:`DoubleConv`: two 3x3 :class:`ConvBNAct` (ReLU), one U-Net level or generator branch;
- :class:`UpConvBlock`: bilinear x2 resize followed by a 2x2 :class:`ConvBNAct`.

:func:`check_spatial_size` is the one place that checks the "side is a multiple of 32"
contract of the three networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

#: The networks halve (or double) the image at most five times (five with the default
#: depths), so H and W must divide by 32.
SIZE_MULTIPLE = 32


def check_spatial_size(shape: Sequence[int | None], owner: str, *, require_static: bool) -> None:
    """Check that an image shape (B,H,W,C) has H and W divisible by :data:`SIZE_MULTIPLE`.

    Args:
        shape: the image shape, (B,H,W,C); ``None`` marks an unknown dimension.
        owner: the model's class name, used in the error message.
        require_static: ``True`` when the model's weights depend on H and W (generator,
            discriminator), so unknown sides are an error too.

    Raises:
        ValueError: the shape is not 4-D, a side is unknown while ``require_static``, or a
            known side is not a multiple of 32.

    Does not check the channel count or the batch size.
    """
    if len(shape) != 4:
        raise ValueError(
            f"{owner}: expected an image batch of shape (B,H,W,C), found shape {tuple(shape)}. "
            "Add the batch and channel axes, e.g. image[None, ..., None]."
        )
    sides = tuple(shape[1:3])
    if require_static and any(side is None for side in sides):
        raise ValueError(
            f"{owner}: the layer sizes depend on the image height and width, found unknown "
            f"sides {sides} in shape {tuple(shape)}. Build the model with a fixed slice size, "
            "e.g. model.build(...) with (B, 64, 64, 1)."
        )
    if any(side is not None and side % SIZE_MULTIPLE for side in sides):
        raise ValueError(
            f"{owner}: image height and width must be multiples of {SIZE_MULTIPLE} (up to five 2x "
            f"resolution steps), found shape {tuple(shape)}. Crop or pad the slices to a "
            f"multiple of {SIZE_MULTIPLE} (config preprocess.crop_size, e.g. 64 or 224)."
        )


@keras.saving.register_keras_serializable(package="tfaug")
class ConvBNAct(keras.layers.Layer):
    """Convolution → BatchNormalization → ReLU (or LeakyReLU), "same" padding.

    With ``normalize=False`` the block is a plain linear convolution with bias (no BN, no
    activation), as in the generator's last z-branch block. With ``normalize=True`` the
    convolution has no bias: BatchNormalization's offset takes its place.

    Input shape: (B,H,W,C_in), float.
    Output shape: (B,H/s,W/s,filters) for stride s, same dtype as the layer's compute dtype.

    Args:
        filters: output channels.
        kernel_size: square kernel side.
        strides: square stride.
        negative_slope: 0 for ReLU, e.g. 0.2 for LeakyReLU(0.2).
        normalize: apply BatchNormalization and the activation.
        bn_momentum: BatchNormalization momentum of the moving statistics.
        bn_epsilon: BatchNormalization epsilon.

    A block created under a ``tf.distribute`` strategy scope synchronises its batch
    statistics across replicas (``synchronized=True``), so a distributed step normalises
    with the global batch's statistics, as one device would.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        negative_slope: float = 0.0,
        normalize: bool = True,
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.negative_slope = negative_slope
        self.normalize = normalize
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=not normalize,
            kernel_initializer="he_normal",
            name="conv",
        )
        self.bn = (
            keras.layers.BatchNormalization(
                momentum=bn_momentum,
                epsilon=bn_epsilon,
                synchronized=tf.distribute.has_strategy(),
                name="bn",
            )
            if normalize
            else None
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = self.conv(inputs)
        if self.bn is None:
            return x
        x = self.bn(x, training=training)
        if self.negative_slope:
            return ops.leaky_relu(x, negative_slope=self.negative_slope)
        return ops.relu(x)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            negative_slope=self.negative_slope,
            normalize=self.normalize,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class UpConvBlock(keras.layers.Layer):
    """Bilinear x2 resize, then a 2x2 :class:`ConvBNAct` (ReLU).

    Input shape: (B,H,W,C_in), float.
    Output shape: (B,2H,2W,filters).

    Args:
        filters: output channels.
        normalize: BN + ReLU after the conv; ``False`` leaves a linear conv with bias.
        bn_momentum: BatchNormalization momentum.
        bn_epsilon: BatchNormalization epsilon.

    Does not concatenate skip connections; the U-Net does that itself.
    """

    def __init__(
        self,
        filters: int,
        normalize: bool = True,
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.normalize = normalize
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.upsample = keras.layers.UpSampling2D(2, interpolation="bilinear", name="upsample")
        self.conv = ConvBNAct(
            filters,
            2,
            normalize=normalize,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            name="conv_bn_relu" if normalize else "conv",
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.conv.build(self.upsample.compute_output_shape(input_shape))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.conv(self.upsample(inputs), training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return self.conv.compute_output_shape(self.upsample.compute_output_shape(input_shape))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            normalize=self.normalize,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="tfaug")
class DoubleConv(keras.layers.Layer):
    """Two 3x3 :class:`ConvBNAct` blocks with ReLU and the same number of filters.

    Input shape: (B,H,W,C_in), float.
    Output shape: (B,H,W,filters).

    Args:
        filters: output channels of both convolutions.
        bn_momentum: BatchNormalization momentum.
        bn_epsilon: BatchNormalization epsilon.
    """

    def __init__(
        self, filters: int, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.first = ConvBNAct(filters, 3, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, name="a")
        self.second = ConvBNAct(
            filters, 3, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, name="b"
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.first.build(input_shape)
        self.second.build(self.first.compute_output_shape(input_shape))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.second(self.first(inputs, training=training), training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return self.first.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon
        )
        return config
