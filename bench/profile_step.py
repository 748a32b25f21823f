"""Where a training step's time goes, tf.function vs XLA: a profiler trace, captured and parsed.

Usage (from the repository root, tfaug installed): ``python bench/profile_step.py
[--step S|GV|GI|UM|FM] [--config phantom|paper] [--modes tf.function,xla] [--warmup 2]
[--steps 3] [--logdir DIR] [--top 8]``. XLA options go through the environment, read once
per process: ``XLA_FLAGS=--xla_cpu_use_onednn=true python bench/profile_step.py``.

For each mode a fresh model (``bench/train_step.py``'s :func:`build_step`) and ``--warmup``
untimed steps (tracing, XLA compilation); then ``--steps`` timed steps without the profiler,
the modes alternating step by step (their medians are the honest speeds, side by side on a
busy machine); then per mode ``--steps`` steps under ``tf.profiler.experimental`` into
``<logdir>/<mode>`` (TensorBoard's profile tab opens it).
The trace (``*.xplane.pb``) is parsed here with the protobufs TensorFlow ships; no
TensorBoard plugin is needed.

Kernels: under ``tf.function``, the TF op events of the executor threads (op type e.g.
``_MklNativeConv2D``: oneDNN); under XLA, each thunk from its start to its completion
event (``end: <name>``; convolution thunks run asynchronously on the intra-op pool), with
its HLO opcode and the TF op it came from read from the HLO module the trace embeds.
Events that contain other kernels on their thread (function calls, the XLA launch) are
containers, not kernels. Each step's wall time is split among the kernels running at each
instant (1/n each when n overlap); instants with none are "idle / framework" (executor
scheduling, Python, XLA dispatch). So categories sum to the step time. Host CPU only: on a
GPU the device planes would hold the kernels, which this parser does not read.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from tensorflow.compiler.xla.service import hlo_pb2
from tensorflow.tsl.profiler.protobuf import xplane_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import CONFIGS, MODES, STEP_NAMES, STEPS, build_step, random_batch  # noqa: E402

from tfaug.config import load_config  # noqa: E402
from tfaug.training.loop import compile_train_step  # noqa: E402

STEP_EVENT = "profiled_step"  # the TraceMe wrapped around each profiled step (not "train_step":
# the tf.function of that name has its own event)
IDLE = "idle / framework"
CATEGORIES = (
    "conv forward",
    "conv backprop input",
    "conv backprop filter",
    "matmul",
    "batch norm",
    "elementwise / fusions",
    "pooling / resize",
    "gather / warp",
    "layout copy / transpose",
    "optimizer / variable updates",
    "other",
    IDLE,
)
_SCOPES = (  # (category, regex on the TF op name), checked after the op-type rules
    ("optimizer / variable updates", r"(^|/)(adam|adamw|sgd|rmsprop)(_\d+)?/"),
    ("batch norm", r"(^|/)(bn|batch_normalization)(_\d+)?/"),
    ("gather / warp", r"(^|/)dense_image_warp(_\d+)?/"),
)
_LAYOUT_OPCODES = {"copy", "transpose", "bitcast", "reshape", "parameter", "tuple"}
_CONTROL_OPCODES = {"while", "call", "conditional"}
_OTHER_TYPES = r"ReadVariableOp|Identity|NoOp|Const|Shape|Reshape|Random|Stateless|Rng|OneHot"


@dataclass(frozen=True)
class Kernel:
    """One kernel execution in a trace.

    ``start``/``end`` in picoseconds since the epoch; ``op_type`` is the TF op type (e.g.
    ``_MklNativeConv2D``, or for an XLA thunk the type of the TF op the HLO came from, ``""``
    if none); ``op_name`` the TF node name; ``opcodes`` the HLO opcodes the thunk runs (the
    instruction's, and for a fusion those of its fused computation; empty for TF ops);
    ``label`` the name shown in the top-ops table.
    """

    start: int
    end: int
    op_type: str
    op_name: str
    opcodes: frozenset[str]
    label: str


def categorize(op_type: str, op_name: str, opcodes: Iterable[str] = ()) -> str:
    """The category (one of :data:`CATEGORIES` but idle) of a kernel.

    Op types first (convolutions, matmuls, pooling, resize, gathers: by what they compute,
    wherever they sit), then name scopes (optimizer, batch norm, the warp), then the HLO
    opcodes of XLA thunks, then layout ops; anything else computing is elementwise.
    Does not look at durations.
    """
    opcodes = frozenset(opcodes)
    if "Conv2DBackpropFilter" in op_type:
        return "conv backprop filter"
    if "Conv2DBackpropInput" in op_type:
        return "conv backprop input"
    if "Conv" in op_type:
        return "conv forward"
    if "MatMul" in op_type or op_type == "Einsum":
        return "matmul"
    if re.search(r"Pool|Resize", op_type):
        return "pooling / resize"
    if re.search(r"Gather|Scatter|UnsortedSegment", op_type):
        return "gather / warp"
    if "FusedBatchNorm" in op_type:
        return "batch norm"
    if op_type.startswith("ResourceApply") or re.fullmatch(r"Assign(Add|Sub)?VariableOp", op_type):
        return "optimizer / variable updates"
    for category, pattern in _SCOPES:
        if re.search(pattern, op_name, flags=re.IGNORECASE):
            return category
    if "convolution" in opcodes:
        return "conv forward"
    if "dot" in opcodes:
        return "matmul"
    if opcodes & {"gather", "scatter"}:
        return "gather / warp"
    if opcodes & {"reduce-window", "select-and-scatter"}:
        return "pooling / resize"
    if op_type == "Transpose" or (opcodes and opcodes <= _LAYOUT_OPCODES):
        return "layout copy / transpose"
    if re.search(_OTHER_TYPES, op_type) or opcodes & {"rng-bit-generator", "rng"}:
        return "other"
    return "elementwise / fusions"


def _stats(plane: xplane_pb2.XPlane, event: Any) -> dict[str, Any]:
    """An event's stats by name (references resolved to their names)."""
    values = {}
    for stat in event.stats:
        kind = stat.WhichOneof("value")
        value = getattr(stat, kind) if kind else None
        if kind == "ref_value":
            value = plane.stat_metadata[value].name
        values[plane.stat_metadata[stat.metadata_id].name] = value
    return values


def _is_filter_gradient(instruction: hlo_pb2.HloInstructionProto) -> bool:
    """Whether an HLO convolution computes a filter gradient: its window (the activation's
    H×W) is larger than its output's spatial size (the kernel's kh×kw). XLA drops the TF
    metadata of these convolutions when it rewrites their layout."""
    if instruction.opcode != "convolution":
        return False
    window = [d.size for d in instruction.window.dimensions]
    spatial = instruction.convolution_dimension_numbers.output_spatial_dimensions
    output = [instruction.shape.dimensions[d] for d in spatial]
    return math.prod(window) > math.prod(output)


def _hlo_instructions(
    xspace: xplane_pb2.XSpace,
) -> dict[tuple[int, str], tuple[str, str, str, set]]:
    """``(program_id, instruction name) → (opcode, TF op type, TF op name, HLO opcodes run)``.

    Read from the HLO modules the trace embeds (plane ``/host:metadata``). The opcodes run
    are a fusion's fused computation's (parameters, constants and broadcasts left out), or
    the instruction's own. Empty when the trace ran no XLA program.
    """
    found = {}
    for plane in xspace.planes:
        if plane.name != "/host:metadata":
            continue
        for program_id, metadata in plane.event_metadata.items():
            for stat in metadata.stats:
                if plane.stat_metadata[stat.metadata_id].name != "Hlo Proto":
                    continue
                module = hlo_pb2.HloProto.FromString(stat.bytes_value).hlo_module
                computations = {c.id: c for c in module.computations}
                for computation in module.computations:
                    for instruction in computation.instructions:
                        opcodes = {instruction.opcode}
                        if instruction.opcode == "fusion":
                            opcodes = {
                                i.opcode
                                for called in instruction.called_computation_ids
                                for i in computations[called].instructions
                            } - {"parameter", "constant", "broadcast"}
                        op_type = instruction.metadata.op_type
                        if not op_type and _is_filter_gradient(instruction):
                            op_type = "Conv2DBackpropFilter"
                        found[program_id, instruction.name] = (
                            instruction.opcode,
                            op_type,
                            instruction.metadata.op_name,
                            opcodes,
                        )
    return found


def host_plane(xspace: xplane_pb2.XSpace, path: Path) -> xplane_pb2.XPlane:
    """The ``/host:CPU`` plane of a trace.

    Raises:
        ValueError: the trace has none (names the file and the planes found).
    """
    for plane in xspace.planes:
        if plane.name == "/host:CPU":
            return plane
    raise ValueError(
        f"{path}: no '/host:CPU' plane in the trace (found {[p.name for p in xspace.planes]}); "
        "capture it with tf.profiler.experimental.start(..., options with host_tracer_level>=2)."
    )


def read_trace(xspace: xplane_pb2.XSpace, path: Path) -> tuple[list[Kernel], list[tuple[int, int]]]:
    """Kernels and step windows (``(start, end)`` ps of each :data:`STEP_EVENT`) of a trace."""
    plane = host_plane(xspace, path)
    hlo = _hlo_instructions(xspace)
    ends: dict[int, int] = {}  # completion time of each XLA thunk, by context id
    events = []  # (line, start, end, metadata, stats)
    for line in plane.lines:
        base = line.timestamp_ns * 1000
        for event in line.events:
            start = base + event.offset_ps
            metadata = plane.event_metadata[event.metadata_id]
            stats = _stats(plane, event)
            if metadata.name.startswith("end: ") and "_c" in stats:
                ends[stats["_c"]] = start
            events.append((line.id, start, start + event.duration_ps, metadata, stats))
    windows = sorted((s, e) for _, s, e, m, _ in events if m.name == STEP_EVENT)

    thunks, ops = [], []
    for line, start, end, metadata, stats in events:
        if "hlo_op" in stats:
            opcode, op_type, op_name, opcodes = hlo.get(
                (stats.get("program_id"), stats["hlo_op"]), (stats["hlo_op"], "", "", set())
            )
            if opcode in _CONTROL_OPCODES:  # their nested thunks are traced themselves
                continue
            label = f"XLA {opcode}" + (f" <- {op_type}" if op_type else "")
            end = ends.get(stats.get("_p"), end)
            thunks.append((line, Kernel(start, end, op_type, op_name, frozenset(opcodes), label)))
        elif metadata.display_name and ":" in metadata.name:
            op_name, op_type = metadata.name.rsplit(":", 1)[0], metadata.display_name
            ops.append((line, Kernel(start, end, op_type, op_name, frozenset(), op_type)))
    starts = defaultdict(list)
    for line, kernel in thunks + ops:
        starts[line].append(kernel.start)
    for line in starts:
        starts[line].sort()

    def is_container(line: int, kernel: Kernel) -> bool:
        index = bisect.bisect_right(starts[line], kernel.start)
        return index < len(starts[line]) and starts[line][index] < kernel.end

    kernels = [k for _, k in thunks] + [k for line, k in ops if not is_container(line, k)]
    return kernels, windows


def attribute(
    kernels: list[Kernel], windows: list[tuple[int, int]]
) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Picoseconds per category and per (kernel label, category), summed over the windows.

    Each instant of a window is shared equally among the kernels running then; instants
    with none go to :data:`IDLE`. The category totals therefore sum to the windows' length.
    """
    by_category: dict[str, float] = defaultdict(float)
    by_label: dict[tuple[str, str], float] = defaultdict(float)
    for window_start, window_end in windows:
        points = []
        for kernel in kernels:
            start, end = max(kernel.start, window_start), min(kernel.end, window_end)
            if start < end:
                points += [(start, 1, kernel), (end, -1, kernel)]
        points.sort(key=lambda p: (p[0], p[1]))
        active: dict[int, Kernel] = {}
        previous = window_start
        for time_ps, change, kernel in [*points, (window_end, 0, None)]:
            if time_ps > previous:
                span = time_ps - previous
                if not active:
                    by_category[IDLE] += span
                for running in active.values():
                    category = categorize(running.op_type, running.op_name, running.opcodes)
                    by_category[category] += span / len(active)
                    by_label[running.label, category] += span / len(active)
                previous = time_ps
            if change > 0:
                active[id(kernel)] = kernel
            elif change < 0:
                active.pop(id(kernel), None)
    return dict(by_category), dict(by_label)


def load_xspace(logdir: Path) -> tuple[xplane_pb2.XSpace, Path]:
    """The newest ``*.xplane.pb`` under ``logdir``, parsed.

    Raises:
        FileNotFoundError: none there (names the folder and the fix).
    """
    paths = sorted(logdir.glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not paths:
        raise FileNotFoundError(
            f"{logdir}: no plugins/profile/*/*.xplane.pb; the profiler wrote no trace. Check "
            "that tf.profiler.experimental.start/stop ran around the steps."
        )
    return xplane_pb2.XSpace.FromString(paths[-1].read_bytes()), paths[-1]


def run_step(function: Callable[[Any], Any], batch: Any) -> None:
    """One call of a training step, waited for (its outputs copied to the host)."""
    keras.tree.map_structure(keras.ops.convert_to_numpy, function(batch))


def interleaved_ms(
    functions: dict[str, Callable[[Any], Any]], batches: list[Any]
) -> dict[str, float]:
    """Median ms per step of each (warm) function, the modes alternating batch by batch.

    Alternating puts the modes side by side in time, so a shared machine's load swings
    affect them alike. No profiler runs.
    """
    times: dict[str, list[float]] = defaultdict(list)
    for batch in batches:
        for mode, function in functions.items():
            start = time.perf_counter()
            run_step(function, batch)
            times[mode].append(time.perf_counter() - start)
    return {mode: 1e3 * statistics.median(values) for mode, values in times.items()}


def profile(function: Callable[[Any], Any], batches: list[Any], logdir: Path) -> dict[str, Any]:
    """Trace one (warm) step per batch into ``logdir`` and parse the trace.

    Returns ``traced_ms`` (mean step window, profiler overhead included), ``categories`` and
    ``labels`` (ms per step, see :func:`attribute`) and ``trace`` (the xplane path).

    Raises:
        RuntimeError: the trace does not hold one step event per batch.
    """
    tf.profiler.experimental.start(str(logdir))
    try:
        for number, batch in enumerate(batches):
            with tf.profiler.experimental.Trace(STEP_EVENT, step_num=number, _r=1):
                run_step(function, batch)
    finally:
        tf.profiler.experimental.stop()
    xspace, path = load_xspace(logdir)
    kernels, windows = read_trace(xspace, path)
    if len(windows) != len(batches):
        raise RuntimeError(
            f"{path}: {len(windows)} '{STEP_EVENT}' events for {len(batches)} traced steps; "
            "another profiler session may have run at the same time, trace again."
        )
    categories, labels = attribute(kernels, windows)
    per_step = 1e-9 / len(batches)  # ps summed over the steps → ms per step
    return {
        "traced_ms": sum(e - s for s, e in windows) * per_step,
        "categories": {k: v * per_step for k, v in categories.items()},
        "labels": {k: v * per_step for k, v in labels.items()},
        "trace": path,
    }


def category_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: ms per step and % of the traced step per category, one column pair per mode.

    With a ``tf.function`` and an ``xla`` column, a last column gives XLA − tf.function (ms).
    """
    modes = list(results)
    delta = {"tf.function", "xla"} <= set(modes)
    header = "| category | " + " | ".join(f"{m} ms | {m} %" for m in modes)
    header += " | XLA − tf.function ms |" if delta else " |"
    lines = [header, "|---" + "|---:" * (2 * len(modes) + delta) + "|"]
    for category in CATEGORIES:
        values = [results[m]["categories"].get(category, 0.0) for m in modes]
        if not any(v >= 0.05 for v in values):
            continue
        cells = [
            f"{v:.1f} | {100 * v / results[m]['traced_ms']:.0f}"
            for m, v in zip(modes, values, strict=True)
        ]
        row = f"| {category} | " + " | ".join(cells)
        if delta:
            difference = values[modes.index("xla")] - values[modes.index("tf.function")]
            row += f" | {difference:+.1f}"
        lines.append(row + " |")
    totals = " | ".join(f"**{results[m]['traced_ms']:.1f}** | 100" for m in modes)
    total_delta = (
        f" | {results['xla']['traced_ms'] - results['tf.function']['traced_ms']:+.1f}"
        if delta
        else ""
    )
    lines.append(f"| step (traced) | {totals}{total_delta} |")
    return "\n".join(lines)


def top_table(result: dict[str, Any], top: int) -> str:
    """Markdown: the ``top`` (kernel label, category) pairs by ms per step."""
    lines = ["| op (TF type, or XLA thunk <- TF op) | category | ms/step | % |"]
    lines.append("|---|---|---:|---:|")
    ranked = sorted(result["labels"].items(), key=lambda item: -item[1])[:top]
    for (label, category), milliseconds in ranked:
        share = 100 * milliseconds / result["traced_ms"]
        lines.append(f"| `{label}` | {category} | {milliseconds:.1f} | {share:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=list(STEPS), default="GV")
    parser.add_argument("--config", choices=list(CONFIGS), default="phantom")
    parser.add_argument("--modes", default="tf.function,xla")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed and traced steps each")
    parser.add_argument("--logdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--top", type=int, default=8, help="rows of each top-ops table")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - {"tf.function", "xla"})
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {unknown or 'empty list'}; choose tf.function, xla")
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="tfaug-profile-"))

    cfg = load_config(CONFIGS[args.config])
    name = (
        f"{args.config} {cfg.preprocess.crop_size}² B={cfg.train.batch_size}, "
        f"{STEP_NAMES[args.step]}"
    )
    print(f"profile of {name}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    functions = {}
    for mode in modes:
        keras.utils.set_random_seed(0)
        model, _ = build_step(cfg, args.step)
        functions[mode] = compile_train_step(model, MODES[mode])
    batches = [random_batch(cfg, args.step, seed) for seed in range(args.warmup + 2 * args.steps)]
    for function in functions.values():
        for batch in batches[: args.warmup]:
            run_step(function, batch)
    timed = interleaved_ms(functions, batches[args.warmup : args.warmup + args.steps])
    results = {}
    for mode, function in functions.items():
        results[mode] = profile(function, batches[args.warmup + args.steps :], logdir / mode)
        print(
            f"{mode:<12} {timed[mode]:8.1f} ms/step (interleaved, no profiler), "
            f"{results[mode]['traced_ms']:8.1f} traced; trace {results[mode]['trace']}",
            flush=True,
        )
    if {"tf.function", "xla"} <= set(results):
        print(
            f"xla speed vs tf.function: {timed['tf.function'] / timed['xla']:.2f}x interleaved, "
            f"{results['tf.function']['traced_ms'] / results['xla']['traced_ms']:.2f}x traced"
        )
    print()
    print(category_table(results))
    for mode, result in results.items():
        print(f"\ntop {args.top} ops, {mode}:\n")
        print(top_table(result, args.top))
    print(f"\nTensorBoard: tensorboard --logdir {logdir} (profile tab)")


if __name__ == "__main__":
    main()
