"""Tests of tfaug.ops.warp.dense_image_warp against independent references."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import map_coordinates

from tfaug.ops.warp import dense_image_warp


def _scipy_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The warp convention evaluated with scipy's order-1 spline, edges clamped."""
    batch, height, width, channels = image.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    out = np.empty(image.shape, np.float64)
    for b in range(batch):
        coords = [rows - flow[b, ..., 0], cols - flow[b, ..., 1]]
        for c in range(channels):
            out[b, ..., c] = map_coordinates(
                image[b, ..., c].astype(np.float64), coords, order=1, mode="nearest"
            )
    return out


def _non_integer_flow(rng: np.random.Generator, shape: tuple, span: float) -> np.ndarray:
    """Flow in (-span, span) px whose fractional part stays in [0.15, 0.85]."""
    whole = rng.integers(-int(span), int(span), size=shape)
    return whole + rng.uniform(0.15, 0.85, size=shape)


def test_matches_scipy_map_coordinates_including_outside_samples():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 9, 11, 2)).astype(np.float32)
    flow = rng.uniform(-6.0, 6.0, size=(3, 9, 11, 2)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(9), np.arange(11), indexing="ij")
    outside = (rows - flow[..., 0] < 0) | (rows - flow[..., 0] > 8) | (cols - flow[..., 1] < 0)
    assert outside.mean() > 0.2  # the clamped border is really exercised

    out = dense_image_warp(image, flow)

    assert out.shape == (3, 9, 11, 2) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), _scipy_warp(image, flow), atol=1e-5)


def test_zero_flow_is_exact_identity():
    image = np.random.default_rng(1).normal(size=(2, 5, 6, 3)).astype(np.float32)
    out = dense_image_warp(image, np.zeros((2, 5, 6, 2), np.float32))
    np.testing.assert_array_equal(out.numpy(), image)


def test_integer_shift_equals_roll_in_the_interior():
    image = np.random.default_rng(2).normal(size=(2, 8, 10, 1)).astype(np.float32)
    flow = np.zeros((2, 8, 10, 2), np.float32)
    flow[..., 0], flow[..., 1] = 1.0, 2.0  # content moves 1 row down, 2 columns right
    out = dense_image_warp(image, flow).numpy()
    expected = np.roll(image, shift=(1, 2), axis=(1, 2))
    np.testing.assert_allclose(out[:, 1:, 2:], expected[:, 1:, 2:], atol=1e-6)
    # Outside: the first row samples row -1, clamped to row 0.
    np.testing.assert_allclose(out[:, 0, 2:], image[:, 0, :-2], atol=1e-6)


def _loss_weights(shape: tuple) -> tf.Tensor:
    return tf.constant(np.random.default_rng(3).normal(size=shape))


def _central_difference(function, value: np.ndarray, delta: float = 1e-6) -> np.ndarray:
    gradient = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        plus, minus = value.copy(), value.copy()
        plus[index] += delta
        minus[index] -= delta
        gradient[index] = (function(plus) - function(minus)) / (2 * delta)
    return gradient


def test_gradients_match_central_differences_float64():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(2, 4, 5, 2))
    flow = _non_integer_flow(rng, (2, 4, 5, 2), span=3.0)  # some samples land outside
    weights = _loss_weights((2, 4, 5, 2))

    def loss(image_value, flow_value):
        return float(tf.reduce_sum(dense_image_warp(image_value, flow_value) * weights))

    image_t, flow_t = tf.constant(image), tf.constant(flow)
    with tf.GradientTape() as tape:
        tape.watch([image_t, flow_t])
        value = tf.reduce_sum(dense_image_warp(image_t, flow_t) * weights)
    grad_image, grad_flow = tape.gradient(value, [image_t, flow_t])

    assert grad_image.dtype == tf.float64 and grad_flow.dtype == tf.float64
    numeric_image = _central_difference(lambda v: loss(v, flow), image)
    numeric_flow = _central_difference(lambda v: loss(image, v), flow)
    np.testing.assert_allclose(grad_image.numpy(), numeric_image, atol=1e-7)
    np.testing.assert_allclose(grad_flow.numpy(), numeric_flow, atol=1e-7)
    assert np.abs(grad_flow.numpy()).max() > 0.1


def test_flow_gradient_at_zero_flow_is_the_floor_cell_difference():
    image = np.random.default_rng(5).normal(size=(1, 4, 5, 1))
    flow_t = tf.zeros((1, 4, 5, 2), tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(flow_t)
        value = tf.reduce_sum(dense_image_warp(image, flow_t))
    grad = tape.gradient(value, flow_t).numpy()[0]
    plane = image[0, ..., 0]
    forward_y = np.concatenate([np.diff(plane, axis=0), np.diff(plane, axis=0)[-1:]], axis=0)
    forward_x = np.concatenate([np.diff(plane, axis=1), np.diff(plane, axis=1)[:, -1:]], axis=1)
    np.testing.assert_allclose(grad[..., 0], -forward_y, atol=1e-12)
    np.testing.assert_allclose(grad[..., 1], -forward_x, atol=1e-12)


def test_one_hot_warp_keeps_pixel_sums_at_one():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, size=(2, 12, 12))
    one_hot = np.eye(4, dtype=np.float32)[labels]
    flow = rng.uniform(-5.0, 5.0, size=(2, 12, 12, 2)).astype(np.float32)
    out = dense_image_warp(one_hot, flow).numpy()
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-6)
    assert out.min() >= 0.0 and 0.0 < out.max() <= 1.0
    assert np.any((out > 0.05) & (out < 0.95))  # soft labels, not one-hot any more


def test_graph_xla_and_dynamic_batch_agree_with_eager():
    rng = np.random.default_rng(7)
    image = rng.normal(size=(3, 6, 7, 2)).astype(np.float32)
    flow = rng.uniform(-3.0, 3.0, size=(3, 6, 7, 2)).astype(np.float32)
    eager = dense_image_warp(image, flow).numpy()
    dynamic = tf.function(
        dense_image_warp,
        input_signature=[
            tf.TensorSpec([None, 6, 7, 2], tf.float32),
            tf.TensorSpec([None, 6, 7, 2], tf.float32),
        ],
    )
    xla = tf.function(dense_image_warp, jit_compile=True)

    np.testing.assert_allclose(tf.function(dense_image_warp)(image, flow), eager, atol=1e-6)
    np.testing.assert_allclose(xla(image, flow), eager, atol=1e-5)
    np.testing.assert_allclose(dynamic(image, flow), eager, atol=1e-6)
    np.testing.assert_allclose(dynamic(image[:1], flow[:1]), eager[:1], atol=1e-6)


def test_float16_inputs_return_float16():
    rng = np.random.default_rng(8)
    image = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    flow = rng.uniform(-2.0, 2.0, size=(2, 6, 6, 2)).astype(np.float32)
    out = dense_image_warp(image.astype(np.float16), flow.astype(np.float16))
    assert out.dtype == tf.float16
    reference = _scipy_warp(image, flow.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(out.numpy().astype(np.float32), reference, atol=2e-3)


@pytest.mark.parametrize(
    ("image_shape", "flow_shape", "dtype", "message"),
    [
        ((4, 4, 1), (4, 4, 2), tf.float32, "expected image"),
        ((1, 4, 4, 1), (1, 4, 4, 3), tf.float32, "expected image"),
        ((1, 4, 4, 1), (1, 4, 5, 2), tf.float32, "differ in"),
        ((1, 1, 4, 1), (1, 1, 4, 2), tf.float32, "height must be at least 2"),
        ((1, 4, 4, 1), (1, 4, 4, 2), tf.int32, "expected floating"),
    ],
)
def test_bad_inputs_raise_clear_errors(image_shape, flow_shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        dense_image_warp(tf.zeros(image_shape, dtype), tf.zeros(flow_shape, tf.float32))


def test_onnx_export_with_dynamic_batch_has_parity():
    tf2onnx = pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    signature = [
        tf.TensorSpec([None, 8, 9, 3], tf.float32, name="image"),
        tf.TensorSpec([None, 8, 9, 2], tf.float32, name="flow"),
    ]
    warp = tf.function(dense_image_warp, input_signature=signature)
    model, _ = tf2onnx.convert.from_function(warp, input_signature=signature, opset=13)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(9)
    for batch in (1, 4):
        image = rng.normal(size=(batch, 8, 9, 3)).astype(np.float32)
        flow = rng.uniform(-4.0, 4.0, size=(batch, 8, 9, 2)).astype(np.float32)
        (onnx_out,) = session.run(None, {"image": image, "flow": flow})
        assert onnx_out.shape == (batch, 8, 9, 3)
        assert np.abs(onnx_out - dense_image_warp(image, flow).numpy()).max() <= 1e-5
