"""Dense image warp with tensorflow-addons' convention, in plain TensorFlow.

``tfa.image.dense_image_warp`` cannot be imported under TensorFlow >= 2.16, so tfaug ships
its own. The convention is tfa's, exactly:

    out[b, y, x, c] = bilinear(image[b, :, :, c], y - flow[b, y, x, 0], x - flow[b, y, x, 1])

with query points clamped to the image the way tfa's ``interpolate_bilinear`` does it: the
floor index is clamped to ``[0, size - 2]`` and the interpolation weight ``alpha`` to
``[0, 1]``, so a query outside the image takes the value of the nearest border pixel
(like ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``). The blend is written
``(1 - alpha) * a + alpha * b`` rather than tfa's ``alpha * (b - a) + a``: the same function,
differing by at most an ulp of rounding, but exact at integer sample points (zero flow is an
exact identity).

The implementation is four ``tf.gather`` calls on the flattened image. It runs eagerly, in
``tf.function`` (also with a dynamic batch size), with ``jit_compile=True``, and converts to
ONNX with tf2onnx (opset >= 13; Gather, Floor, Min/Max, Mul/Add).

Labels are warped with the same function, as one-hot or soft maps (B,H,W,C): the result is a
soft label map whose per-pixel sums stay 1 (the four bilinear weights sum to 1). There is
deliberately no integer-label path.
"""

from __future__ import annotations

import tensorflow as tf

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _check_inputs(image: tf.Tensor, flow: tf.Tensor) -> None:
    """Raise a ValueError for statically known bad ranks, sizes or dtypes."""
    where = "tfaug.ops.warp.dense_image_warp"
    if image.dtype not in _FLOAT_DTYPES or flow.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{where}: expected floating image and flow, found image {image.dtype.name} and "
            f"flow {flow.dtype.name}. Cast them first, e.g. tf.cast(image, tf.float32); warp "
            "label maps as one-hot float maps, never as integers."
        )
    if image.shape.rank != 4 or flow.shape.rank != 4 or flow.shape[-1] not in (None, 2):
        raise ValueError(
            f"{where}: expected image (B,H,W,C) and flow (B,H,W,2), found image "
            f"{image.shape} and flow {flow.shape}. Add the batch axis with image[None] and "
            "give the flow two channels (dy, dx) in pixels."
        )
    if not image.shape[:3].is_compatible_with(flow.shape[:3]):
        raise ValueError(
            f"{where}: image {image.shape} and flow {flow.shape} differ in (B,H,W). The flow "
            "must be defined on the output grid, which is the image grid; resize it first."
        )
    for axis, name in ((1, "height"), (2, "width")):
        size = image.shape[axis]
        if size is not None and size < 2:
            raise ValueError(
                f"{where}: image {name} must be at least 2 pixels for bilinear "
                f"interpolation, found {size} (image shape {image.shape})."
            )


def _axis_floor_and_alpha(
    queries: tf.Tensor, size: tf.Tensor, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Clamped floor index (int32) and clamped weight of one axis, as tfa computes them.

    ``floor = clip(floor(q), 0, size - 2)``; ``alpha = clip(q - floor, 0, 1)``. The clamp of
    alpha is written ``minimum(maximum(alpha, 0), 1)`` with alpha as the *first* argument:
    TensorFlow's Maximum/Minimum gradients go to the first argument on ties, so the gradient
    of alpha is 1 on the closed interval [0, 1] (tfa put the constant first, which zeroes it
    at alpha = 0, i.e. at every integer sample point).
    """
    max_floor = tf.cast(size - 2, dtype)
    floor = tf.minimum(tf.maximum(tf.floor(queries), tf.zeros([], dtype)), max_floor)
    alpha = tf.minimum(tf.maximum(queries - floor, tf.zeros([], dtype)), tf.ones([], dtype))
    return tf.cast(floor, tf.int32), alpha


def dense_image_warp(image: tf.Tensor, flow: tf.Tensor, name: str | None = None) -> tf.Tensor:
    """Warp images (or one-hot/soft label maps) by a dense backward flow, tfa's convention.

    ``out[b, y, x, c] = bilinear(image[b, :, :, c], y - flow[b, y, x, 0], x - flow[b, y, x, 1])``
    with the query clamped to the image (see the module docstring); a flow of (+1, +2) moves
    content one row down and two columns right.

    Args:
        image: (B,H,W,C) floating tensor, any C, H >= 2 and W >= 2; any value range.
            One-hot or soft label maps (B,H,W,n_classes) are warped the same way.
        flow: (B,H,W,2) floating tensor, displacement in pixels, channel 0 along H (rows,
            "dy") and channel 1 along W (columns, "dx"). Its dtype may differ from the image's.
        name: optional name scope.

    Returns:
        (B,H,W,C) tensor of the image's dtype.

    Precision: the coordinates and the interpolation are computed in float32 (float64 if
    either input is float64) and the result is cast back to the image's dtype; float16 and
    bfloat16 inputs are therefore upcast, because float16 cannot represent fractional
    coordinates beyond ~2048 px (and only to 1/8 px at 224 px).

    Gradients: w.r.t. the image (a scatter-add of the bilinear weights) and w.r.t. the flow.
    Away from integer sample points both are the exact derivatives of the bilinear
    interpolant. At an integer sample point ``q = k`` (e.g. everywhere at zero flow) the flow
    gradient is the one-sided derivative from the floor cell ``[k, k + 1]``:
    ``d out / d flow = -(image[k + 1] - image[k])`` (a forward difference), except on the
    last row/column ``k = size - 1`` where the floor is clamped to ``size - 2`` and it is the
    backward difference ``-(image[k] - image[k - 1])``. The reason is the order of the
    arguments in the alpha clamp (see ``_axis_floor_and_alpha``). tfa instead returns an
    exactly zero flow gradient at integer sample points, which starves a deformation
    generator whose field starts at zero. Outside the image (query < 0 or > size - 1) the
    flow gradient is zero along that axis, as in tfa.

    Does not: check at run time that dynamic shapes agree (only static shapes are checked),
    fill outside the image with a constant, or treat integer labels specially.

    Raises:
        ValueError: non-floating inputs, wrong ranks, (B,H,W) mismatch, or H or W < 2.
    """
    with tf.name_scope(name or "dense_image_warp"):
        image = tf.convert_to_tensor(image)
        flow = tf.convert_to_tensor(flow)
        _check_inputs(image, flow)
        output_dtype = image.dtype
        compute_dtype = tf.float64 if tf.float64 in (image.dtype, flow.dtype) else tf.float32
        image = tf.cast(image, compute_dtype)
        flow = tf.cast(flow, compute_dtype)

        shape = tf.shape(image)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        rows, cols = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
        query_y = tf.cast(rows, compute_dtype)[None] - flow[..., 0]  # (B,H,W)
        query_x = tf.cast(cols, compute_dtype)[None] - flow[..., 1]
        floor_y, alpha_y = _axis_floor_and_alpha(query_y, height, compute_dtype)
        floor_x, alpha_x = _axis_floor_and_alpha(query_x, width, compute_dtype)

        flat_image = tf.reshape(image, [-1, channels])  # (B*H*W, C)
        offsets = tf.reshape(tf.range(batch) * height * width, [-1, 1, 1])
        top = offsets + floor_y * width  # (B,H,W) linear index of (floor_y, 0)
        bottom = top + width

        def gather(linear_index: tf.Tensor) -> tf.Tensor:
            return tf.gather(flat_image, linear_index)  # (B,H,W,C)

        alpha_y = alpha_y[..., None]
        alpha_x = alpha_x[..., None]
        interp_top = (1 - alpha_x) * gather(top + floor_x) + alpha_x * gather(top + floor_x + 1)
        interp_bottom = (1 - alpha_x) * gather(bottom + floor_x) + alpha_x * gather(
            bottom + floor_x + 1
        )
        warped = (1 - alpha_y) * interp_top + alpha_y * interp_bottom
        return tf.cast(warped, output_dtype)
