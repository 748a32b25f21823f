"""bench/profile_step.py: the categoriser, the time attribution, and a real trace parsed;
bench/train_step.py's consistency steps (which profile_step.py builds too).

The real-trace tests profile a tiny conv → BatchNorm → ReLU → conv model's training step
(a (4,16,16,1) batch, Adam) under ``tf.function`` and under XLA, so the parser is checked
against what TensorFlow 2.21's profiler actually writes. The UM and FM steps are built and
run once at the tiny config (32², batch 4).
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.compiler.xla.service import hlo_pb2
from tiny import SIDE, tiny_overrides

from tfaug.baselines.comparisons import consistency_batch_sizes
from tfaug.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import profile_step  # noqa: E402
from flops import model_flops  # noqa: E402
from profile_step import (  # noqa: E402
    CATEGORIES,
    IDLE,
    Kernel,
    attribute,
    categorize,
    interleaved_ms,
    profile,
    run_step,
)
from train_step import (  # noqa: E402
    STEP_NAMES,
    build_step,
    random_batch,
    segmenter_flops,
    unimatch_ratios,
)


@pytest.mark.parametrize(
    ("op_type", "op_name", "opcodes", "expected"),
    [
        ("_MklNativeConv2D", "u_net/down0/a/conv/convolution", (), "conv forward"),
        ("_MklNativeFusedConv2D", "generator/flow/BiasAdd", (), "conv forward"),
        ("_MklNativeConv2DBackpropInput", "gradient_tape/x", (), "conv backprop input"),
        ("_MklNativeConv2DBackpropFilterWithBias", "g/x", (), "conv backprop filter"),
        ("Conv2DBackpropFilter", "", {"convolution"}, "conv backprop filter"),
        ("", "", {"convolution"}, "conv forward"),
        ("ResizeBilinear", "u_net/up0/upsample/resize", {"convolution"}, "pooling / resize"),
        ("_MklNativeMaxPoolGrad", "gradient_tape/u_net/pool/MaxPool2d", (), "pooling / resize"),
        ("", "", {"select-and-scatter"}, "pooling / resize"),
        ("Mul", "u_net_1/down0_1/b_1/bn_1/batchnorm/mul", (), "batch norm"),
        ("Mul", "u_net_1/up0_1/conv_bn_relu_1/Relu", (), "elementwise / fusions"),
        ("FusedBatchNormV3", "x", (), "batch norm"),
        ("Square", "adam/Square_57", (), "optimizer / variable updates"),
        ("AssignSubVariableOp", "x", (), "optimizer / variable updates"),
        ("Mul", "gradient_tape/dense_image_warp_1/mul_8/Mul", (), "gather / warp"),
        ("GatherV2", "random_affine_1/GatherV2_3", (), "gather / warp"),
        ("", "", {"gather", "add"}, "gather / warp"),
        ("_MklMatMul", "discriminator/dense/MatMul", (), "matmul"),
        ("", "", {"dot"}, "matmul"),
        ("Transpose", "x", (), "layout copy / transpose"),
        ("", "", {"transpose", "copy"}, "layout copy / transpose"),
        ("", "", {"transpose", "copy", "multiply"}, "elementwise / fusions"),
        ("ReadVariableOp", "x", (), "other"),
        ("AddV2", "add_1", (), "elementwise / fusions"),
    ],
)
def test_categorize(op_type, op_name, opcodes, expected):
    assert categorize(op_type, op_name, opcodes) == expected


def _convolution(output: list[int], window: list[int]) -> hlo_pb2.HloInstructionProto:
    """An NHWC HLO convolution with the given output shape and window sizes."""
    instruction = hlo_pb2.HloInstructionProto(opcode="convolution")
    instruction.shape.dimensions.extend(output)
    instruction.convolution_dimension_numbers.output_spatial_dimensions.extend([1, 2])
    for size in window:
        instruction.window.dimensions.add(size=size)
    return instruction


def test_filter_gradient_is_recognised_by_its_window():
    # dW of a 3x3 conv over 64x64 maps: a 64x64 window producing the 3x3 kernel.
    assert profile_step._is_filter_gradient(_convolution([8, 3, 3, 16], [64, 64]))
    assert not profile_step._is_filter_gradient(_convolution([16, 64, 64, 8], [3, 3]))


def _kernel(start: int, end: int, op_type: str) -> Kernel:
    return Kernel(start, end, op_type, "", frozenset(), op_type)


def test_attribute_shares_overlaps_and_counts_idle():
    # Window [0, 100): a conv alone 0-40, conv and Mul overlap 40-60 (10 each), Mul alone
    # 60-70, nothing 70-100 (idle 30); a kernel outside the window counts for nothing.
    kernels = [_kernel(0, 60, "Conv2D"), _kernel(40, 70, "AddV2"), _kernel(150, 160, "Conv2D")]
    categories, labels = attribute(kernels, [(0, 100)])
    assert categories == pytest.approx(
        {"conv forward": 50.0, "elementwise / fusions": 20.0, IDLE: 30.0}
    )
    assert labels[("Conv2D", "conv forward")] == pytest.approx(50.0)
    assert sum(categories.values()) == pytest.approx(100.0)


def _tiny_step(jit_compile: bool):
    """A compiled training step of conv → BN → ReLU → conv on (4,16,16,1); its batches."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(2, 3, padding="same"),
        ]
    )
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def step(images: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(images, training=True)))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    batches = [tf.random.stateless_uniform((4, 16, 16, 1), seed=(i, 0)) for i in range(5)]
    return step, batches


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf.function", "xla"])
def test_profile_of_a_real_trace(tmp_path, jit_compile):
    step, batches = _tiny_step(jit_compile)
    run_step(step, batches[0])  # tracing and compilation stay out of the trace
    result = profile(step, batches[1:3], tmp_path)

    assert result["trace"].suffix == ".pb" and result["trace"].is_relative_to(tmp_path)
    assert result["traced_ms"] > 0
    assert set(result["categories"]) <= set(CATEGORIES)
    assert sum(result["categories"].values()) == pytest.approx(result["traced_ms"], rel=1e-6)
    for conv in ("conv forward", "conv backprop filter"):
        assert result["categories"].get(conv, 0.0) > 0, conv
    labels = {label for label, _ in result["labels"]}
    if jit_compile:
        # Thunks carry their TF op; the launch op that contains them is not a kernel.
        assert "XLA convolution <- Conv2D" in labels
        assert all(label.startswith("XLA ") for label in labels), labels
    else:
        assert any("Conv2DBackpropFilter" in label for label in labels), labels
        assert not any(label.startswith("XLA ") for label in labels), labels
        assert result["categories"].get("batch norm", 0.0) > 0


def test_interleaved_ms_times_every_mode():
    step, batches = _tiny_step(False)
    run_step(step, batches[0])
    timed = interleaved_ms({"a": step, "b": step}, batches[1:3])
    assert set(timed) == {"a", "b"} and all(ms > 0 for ms in timed.values())


def test_missing_trace_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        profile_step.load_xspace(tmp_path)


@pytest.mark.parametrize("step", ["UM", "FM", "UMG", "UMJ"])
def test_consistency_step_builds_runs_and_counts_its_passes(step):
    cfg = load_config("phantom", overrides=tiny_overrides())
    model, flops = build_step(cfg, step)
    assert cfg.method == load_config("phantom").method  # the caller's config is not changed
    n_labeled, n_unlabeled = consistency_batch_sizes(cfg)
    (x_l, y_l), x_u = batch = random_batch(cfg, step, seed=0)
    assert x_l.shape == (n_labeled, SIDE, SIDE, 1) and y_l.shape == (n_labeled, SIDE, SIDE)
    assert x_u.shape == (n_unlabeled, SIDE, SIDE, 1)

    result = model.train_step(batch)  # eagerly: the bench compiles it as a stage does
    assert np.isfinite(float(result["total_loss"]))
    unimatch, learned = step != "FM", step in ("UMG", "UMJ")
    assert model.strong_views == (2 if unimatch else 1)
    assert ("fp_loss" in result) == unimatch
    assert ("learned_loss" in result) == learned
    assert ("d_loss" in result) == (step == "UMJ")

    # 3 × forward: S on B_l + B_u weak rows and V·B_u strong rows, the decoder on B_u more.
    encoder, decoder = segmenter_flops(model.segmenter)
    assert encoder > 0 and decoder > 0
    s_rows = n_labeled + n_unlabeled + (model.strong_views + learned) * n_unlabeled
    decoder_rows = n_unlabeled if unimatch else 0
    generated_rows = n_labeled - n_labeled // 2  # the generated half of the labeled rows
    generated = 0
    if step == "UMG":
        # GV and GI forward only (frozen) on the B_u rows of the learned view, and on the
        # generated labeled rows GV once and GI twice (the "choice" composition transforms
        # the image and the warped image, then picks one).
        deformation = model_flops(model.learned.deformation)
        intensity = model_flops(model.learned.intensity)
        generated = n_unlabeled * (deformation + intensity)
        generated += generated_rows * (deformation + 2 * intensity)
        assert generated_rows >= 1 and intensity > 0
    if step == "UMJ":
        # Trained: GV, GI and D (judging them) on every generated row, D's update on the
        # real unlabeled rows and the generated ones.
        rows = n_unlabeled + generated_rows
        networks = (model.deformation, model.intensity, model.discriminator)
        discriminator = model_flops(model.discriminator)
        generated = 3 * (rows * sum(model_flops(n) for n in networks))
        generated += 3 * (n_unlabeled + rows) * discriminator
        assert discriminator > 0
    assert flops == 3 * (s_rows * (encoder + decoder) + decoder_rows * decoder) + generated


def test_unimatch_ratios_divide_by_the_rows_present():
    def row(step: str, mode: str, ms: float) -> dict:
        return {"config": "phantom", "step": STEP_NAMES[step], "mode": mode, "ms_per_step": ms}

    rows = [
        row("S", "tf.function", 100.0),
        row("GV", "tf.function", 200.0),
        row("UM", "tf.function", 250.0),
        row("UM", "xla", 300.0),  # no S or joint row in this mode: no line
    ]
    lines = unimatch_ratios(rows)
    assert len(lines) == 2
    assert "2.50× S" in lines[1] and "1.25× joint (S, GV, DV)" in lines[1]
    assert "GI" not in lines[1] and "xla" not in lines[1]
    assert unimatch_ratios(rows[:2]) == []
