"""The conditional generators GV (deformation) and GI (intensity) (docs/method.md §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tfaug.methods import GENERATOR_KINDS
from tfaug.models.layers import DoubleConv, UpConvBlock, check_spatial_size


@keras.saving.register_keras_serializable(package="tfaug")
class Generator(keras.Model):
    """Maps an image slice and a noise vector to a transformation field.

    z-branch: Dense z_dim → (H/2^n)(W/2^n)·filters[0] with ReLU, reshaped to
    (H/2^n, W/2^n, filters[0]), then n = len(filters) [bilinear x2, 2x2 conv + BN + ReLU]
    blocks with ``filters`` (the last is a linear conv with bias, no BN/ReLU, as in the
    original code); n = 5 by default.
    x-branch: two 3x3 conv → BN → ReLU with ``image_filters``. The two branches are
    concatenated and fused by two more 3x3 conv → BN → ReLU, then the head:

    - ``kind="deformation"`` (GV): a ``flow_kernel`` x ``flow_kernel`` linear conv to two
      channels = a dense flow in pixels, (B,H,W,2), channel 0 along H (rows), channel 1 along
      W (columns), in the ``dense_image_warp`` convention (``tfaug.ops.warp``); unbounded.
    - ``kind="intensity"`` (GI): a 1x1 conv without bias to one channel, tanh → an additive
      intensity field ΔI in (−1, 1), (B,H,W,1).

    Two switches beyond the paper (both off by default, which is the paper's head):

    - ``field_grid = g > 1``: the head's output is averaged over g x g cells and bilinearly
      upsampled back, so the field is smooth on a coarse grid, as random elastic
      deformations are (g must divide H and W).
    - ``field_bound = m``: the field is ``m · tanh(f / m)`` per component (a soft bound that
      is the identity near 0): at most m pixels of displacement per axis for GV, ΔI in
      (−m, m) for GI. ``None``: unbounded for GV, ``tanh`` (m = 1) for GI, as the paper.

    The generator returns the *field*; it does not warp or add it to the image. The head
    computes in float32 whatever the global dtype policy.

    Call with ``(image, z)``: image (B,H,W,1) float32, z (B,z_dim) float32 ~ N(0, I).
    H and W are fixed by the first build (the dense layer's size depends on them) and must
    be multiples of 32.

    Args:
        kind: ``"deformation"`` or ``"intensity"``.
        filters: filters of the z-branch upsampling blocks; their number n (1 to 5) is the
            branch's depth.
        image_filters: filters of the x-branch and of the fusion convolutions.
        z_dim: size of z.
        flow_kernel: kernel side of the deformation head (3 in the code, 1 in the paper);
            unused by the intensity head (always 1x1).
        bn_momentum: BatchNormalization momentum.
        bn_epsilon: BatchNormalization epsilon.
        field_bound: soft bound m > 0 of the field (pixels for GV, intensity units for GI);
            ``None``: the paper's head.
        field_grid: cell side g >= 1 of the coarse grid the field is smoothed to (1: none).
    """

    def __init__(
        self,
        kind: str,
        filters: Sequence[int] = (128, 64, 32, 16, 16),
        image_filters: int = 16,
        z_dim: int = 100,
        flow_kernel: int = 3,
        bn_momentum: float = 0.99,
        bn_epsilon: float = 1e-3,
        field_bound: float | None = None,
        field_grid: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if field_bound is not None and not field_bound > 0:
            raise ValueError(
                f"Generator: field_bound must be > 0 or None, found {field_bound}. "
                "Set model.deformation_max_mm / model.intensity_max to a positive value or null."
            )
        if int(field_grid) < 1:
            raise ValueError(
                f"Generator: field_grid must be an integer >= 1, found {field_grid}. "
                "Set model.deformation_grid / model.intensity_grid to 1 (no smoothing) or e.g. 8."
            )
        if kind not in GENERATOR_KINDS:
            raise ValueError(
                f"Generator: kind must be one of {GENERATOR_KINDS}, found {kind!r}. "
                "Use 'deformation' for GV or 'intensity' for GI."
            )
        if not 1 <= len(filters) <= 5:
            raise ValueError(
                f"Generator: expected one to five z-branch filter counts, found {list(filters)}."
                " Set model.generator_filters to e.g. [128, 64, 32, 16, 16] (five blocks)."
            )
        self.kind = kind
        self.filters = tuple(int(f) for f in filters)
        self.image_filters = image_filters
        self.z_dim = z_dim
        self.flow_kernel = flow_kernel
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.field_bound = None if field_bound is None else float(field_bound)
        self.field_grid = int(field_grid)
        bn = {"bn_momentum": bn_momentum, "bn_epsilon": bn_epsilon}
        self.z_dense: keras.layers.Dense | None = None
        self.z_grid: tuple[int, int] | None = None
        last = len(self.filters) - 1
        self.z_upsample = [
            UpConvBlock(f, normalize=i < last, **bn, name=f"z_up{i}")
            for i, f in enumerate(self.filters)
        ]
        self.image_branch = DoubleConv(image_filters, **bn, name="image_branch")
        self.fusion = DoubleConv(image_filters, **bn, name="fusion")
        if kind == "deformation":
            self.head = keras.layers.Conv2D(
                2, flow_kernel, padding="same", name="flow", dtype="float32"
            )
        else:
            self.head = keras.layers.Conv2D(
                1, 1, use_bias=False, name="delta_intensity", dtype="float32"
            )
        self.coarse = None
        if self.field_grid > 1:
            self.coarse = keras.Sequential(
                [
                    keras.layers.AveragePooling2D(self.field_grid, dtype="float32"),
                    keras.layers.UpSampling2D(
                        self.field_grid, interpolation="bilinear", dtype="float32"
                    ),
                ],
                name="coarse_grid",
            )

    def build(self, input_shape: tuple[tuple[int | None, ...], tuple[int | None, ...]]) -> None:
        image_shape, z_shape = (tuple(s) for s in input_shape)
        check_spatial_size(image_shape, "Generator", require_static=True)
        if any(side % self.field_grid for side in image_shape[1:3]):
            raise ValueError(
                f"Generator: field_grid={self.field_grid} must divide the slice sides "
                f"{image_shape[1:3]}. Choose a grid that divides the crop size (e.g. 4 or 8)."
            )
        self._check_z_shape(z_shape)
        height, width = image_shape[1] // self._z_scale, image_shape[2] // self._z_scale
        self.z_grid = (height, width)
        self.z_dense = keras.layers.Dense(
            height * width * self.filters[0], activation="relu", name="z_dense"
        )
        self.z_dense.build(z_shape)
        shape = (z_shape[0], height, width, self.filters[0])
        for block in self.z_upsample:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.image_branch.build(image_shape)
        fused = (*image_shape[:-1], self.image_filters + shape[-1])
        self.fusion.build(fused)
        head_input = self.fusion.compute_output_shape(fused)
        self.head.build(head_input)
        if self.coarse is not None:
            self.coarse.build(self.head.compute_output_shape(head_input))

    @property
    def _z_scale(self) -> int:
        """How many times the z-branch enlarges its grid: 2^n for n upsampling blocks."""
        return 2 ** len(self.filters)

    def _check_z_shape(self, z_shape: tuple[int | None, ...]) -> None:
        if len(z_shape) != 2 or z_shape[-1] != self.z_dim:
            raise ValueError(
                f"Generator: expected z of shape (B, {self.z_dim}), found {z_shape}. "
                f"Draw z with shape (batch, z_dim) or rebuild with z_dim={z_shape[-1]}."
            )

    def call(self, inputs: tuple[Any, Any], training: bool | None = None) -> Any:
        image, z = inputs
        check_spatial_size(tuple(image.shape), "Generator", require_static=False)
        self._check_z_shape(tuple(z.shape))
        height, width = self.z_grid
        sides = tuple(image.shape[1:3])
        built_sides = (height * self._z_scale, width * self._z_scale)
        if any(
            side is not None and side != built
            for side, built in zip(sides, built_sides, strict=True)
        ):
            raise ValueError(
                f"Generator: built for {built_sides[0]}x{built_sides[1]} images,"
                f" called with sides {sides}. Build a new generator for this slice size."
            )
        h = ops.reshape(self.z_dense(z), (-1, height, width, self.filters[0]))
        for block in self.z_upsample:
            h = block(h, training=training)
        x = self.image_branch(image, training=training)
        x = self.fusion(ops.concatenate([x, h], axis=-1), training=training)
        field = self.head(x)
        if self.coarse is not None:
            field = self.coarse(field)
        if self.field_bound is not None:
            return self.field_bound * ops.tanh(field / self.field_bound)
        return ops.tanh(field) if self.kind == "intensity" else field

    def compute_output_shape(
        self, input_shape: tuple[tuple[int | None, ...], tuple[int | None, ...]]
    ) -> tuple[int | None, ...]:
        channels = 2 if self.kind == "deformation" else 1
        return (*tuple(input_shape[0])[:-1], channels)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            kind=self.kind,
            filters=list(self.filters),
            image_filters=self.image_filters,
            z_dim=self.z_dim,
            flow_kernel=self.flow_kernel,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            field_bound=self.field_bound,
            field_grid=self.field_grid,
        )
        return config
