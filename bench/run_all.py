"""Run every benchmark once and write ``docs/benchmarks.md`` (machine, tables, targets).

Usage (from the repository root, tfaug installed): ``python bench/run_all.py
[--out docs/benchmarks.md] [--cache-dir cache] [--work-dir bench-work] [--quick]``.

Runs, each in its own process (so one's threads and memory do not colour the next):
``bench/train_step.py`` (training steps, three modes, phantom and paper configs),
``bench/data_pipeline.py`` (tf.data slices/s at 64 and 224 px), ``bench/warp.py``
(``dense_image_warp``) and ``bench/inference.py`` (TensorFlow vs ONNX Runtime on a segmenter
exported here at the paper's size with untrained weights: the speed does not depend on the
weights) and ``bench/profile_step.py`` (where the joint GV step's time goes, tf.function vs
XLA, phantom config: under a minute). The markdown page gets the machine's description, the
training-step table, the other scripts' output verbatim, and the issue's targets checked
from the measured ratios.
``--quick`` runs the phantom config only (a smoke run; do not commit its page).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_description() -> str:
    """Markdown bullet list: CPU, cores usable by this process, OS, Python, TF, Keras, ORT."""
    import keras
    import onnxruntime
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = tf.config.list_physical_devices("GPU")
    return "\n".join(
        [
            f"- CPU: {cpu_model()}, {cores} cores available to the process",
            f"- GPU: {', '.join(g.name for g in gpus) if gpus else 'none'}",
            f"- OS: {platform.platform()}; Python {platform.python_version()}",
            f"- TensorFlow {tf.__version__}, Keras {keras.__version__}, "
            f"ONNX Runtime {onnxruntime.__version__}",
            f"- date: {datetime.date.today().isoformat()}",
        ]
    )


def run_script(name: str, arguments: list[str], saved: Path, reuse: bool) -> str:
    """Run ``bench/<name>`` with this interpreter; returns its stdout (stderr passes through).

    The output is also written to ``saved``; with ``reuse`` and ``saved`` present, the script
    is not run again and the saved output is returned (to rewrite the page after a failure).

    Raises:
        RuntimeError: the script failed; names it and its exit code.
    """
    if reuse and saved.is_file():
        return saved.read_text(encoding="utf-8")
    command = [sys.executable, str(BENCH / name), *arguments]
    print("$", " ".join(command), flush=True)
    completed = subprocess.run(command, stdout=subprocess.PIPE, encoding="utf-8", check=False)
    print(completed.stdout, flush=True)
    if completed.returncode != 0:
        raise RuntimeError(f"bench/{name} failed with exit code {completed.returncode}")
    saved.write_text(completed.stdout, encoding="utf-8")
    return completed.stdout


def export_untrained_segmenter(folder: Path) -> Path:
    """Write the paper-size U-Net S (untrained) as ``folder/segmenter/1`` and ``.onnx``."""
    from tfaug.config import load_config
    from tfaug.deploy.export import save_onnx, save_savedmodel, segmenter_function
    from tfaug.training.builders import build_segmenter

    cfg = load_config("acdc")
    segmenter = build_segmenter(cfg)
    function = segmenter_function(segmenter, cfg.preprocess.crop_size)
    save_savedmodel(function, [segmenter], folder / "segmenter" / "1")
    save_onnx(function, folder / "segmenter.onnx", opset=17)
    return folder


def _numbers(pattern: str, text: str, script: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    if not found:
        raise RuntimeError(
            f"bench/run_all.py: no line of bench/{script}'s output matches {pattern!r}; its "
            "output format changed, update the pattern in bench/run_all.py."
        )
    return found


def targets(rows: list[dict], pipeline: str, inference: str) -> str:
    """The issue's targets as a markdown list, each with the measured ratio and a verdict."""
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    for config in sorted({r["config"] for r in rows}):
        modes = {(r["step"], r["mode"]): r for r in rows if r["config"] == config}
        for step in ("joint (S, GV, DV)", "joint (S, GI, DI)"):
            plain, xla = modes.get((step, "tf.function")), modes.get((step, "xla"))
            if plain and xla:
                ratio = xla["slices_per_s"] / plain["slices_per_s"]
                lines.append(
                    f"- XLA ≥ 1.3× tf.function, {step}, {config}: {ratio:.2f}× "
                    f"({verdict(ratio >= 1.3)})"
                )
        for step, goal in (("S", 0.55), ("joint (S, GV, DV)", 0.45), ("joint (S, GI, DI)", 0.45)):
            default = modes.get((step, "tf.function"))  # the training default (no XLA)
            if default is not None and config == "paper":
                ok = verdict(default["fraction"] >= goal)
                lines.append(
                    f"- fraction of the machine ≥ {goal}, {step}, paper config, tf.function: "
                    f"{default['fraction']:.2f} ({ok})"
                )
    rates = {
        int(size): float(rate)
        for size, rate in _numbers(
            r"^\s*(\d+)x\d+\s+\d+ slices\s+pipeline\s+([\d.]+) slices/s",
            pipeline,
            "data_pipeline.py",
        )
    }
    for config, size in (("phantom", 64), ("paper", 224)):
        steps = [r for r in rows if r["config"] == config]
        if size in rates and steps:
            best = max(steps, key=lambda r: r["slices_per_s"])
            ratio = rates[size] / best["slices_per_s"]
            lines.append(
                f"- tf.data ≥ 5× the fastest step, {config} ({size} px): {rates[size]:.0f} vs "
                f"{best['slices_per_s']:.1f} slices/s ({best['step']}, {best['mode']}) = "
                f"{ratio:.0f}× ({verdict(ratio >= 5)})"
            )
    per_slice = dict(
        _numbers(r"^(tensorflow|onnxruntime)\s+([\d.]+) ms/slice", inference, "inference.py")
    )
    if {"tensorflow", "onnxruntime"} <= set(per_slice):
        ratio = float(per_slice["tensorflow"]) / float(per_slice["onnxruntime"])
        lines.append(
            f"- ONNX Runtime at least as fast as TensorFlow per slice: {per_slice['onnxruntime']}"
            f" vs {per_slice['tensorflow']} ms, ORT {ratio:.2f}× TF ({verdict(ratio >= 1)})"
        )
    return "\n".join(lines)


def page(machine: str, table: str, outputs: dict[str, str], checked: str) -> str:
    """The markdown page; hand-written analysis goes below the marker and is kept on rewrite."""
    sections = [
        "# Benchmarks",
        "",
        "Written by `python bench/run_all.py` (numbers from one run; the machine is shared "
        "and busy, so absolute times drift between rows: compare the ratios, each measured "
        "side by side in one process).",
        "",
        "## Machine",
        "",
        machine,
        "",
        "## Training steps (`bench/train_step.py`)",
        "",
        "Slices/s on random batches in memory; GFLOP/s from the conv/dense FLOPs "
        "(3× forward); fraction = GFLOP/s ÷ a float32 2048² matmul's GFLOP/s timed right "
        "before the row.",
        "",
        table,
        "",
        "## Targets (issue 8)",
        "",
        checked,
        "",
    ]
    for name, text in outputs.items():
        sections += [f"## `bench/{name}`", "", "```", text.strip(), "```", ""]
    return "\n".join(sections)


ANALYSIS_MARKER = "<!-- analysis: kept by bench/run_all.py -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--work-dir", type=Path, default=Path("bench-work"))
    parser.add_argument("--quick", action="store_true", help="phantom config only")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse outputs saved in --work-dir by a previous run"
    )
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    rows_path = args.work_dir / "train_step.json"
    configs = "phantom" if args.quick else "phantom,paper"
    train_args = ["--configs", configs, "--warmup", "1", "--json", str(rows_path)]
    crops = "64" if args.quick else "64,224"
    export = args.work_dir / "export"
    scripts = {
        "train_step.py": train_args,
        "data_pipeline.py": ["--crops", crops, "--cache-dir", args.cache_dir],
        "warp.py": [],
        "inference.py": ["--export", str(export)],
        "profile_step.py": ["--step", "GV", "--logdir", str(args.work_dir / "profile")],
    }
    outputs = {}
    for name, arguments in scripts.items():
        saved = args.work_dir / f"{name}.txt"
        if name == "inference.py" and not (args.reuse and saved.is_file()):
            export_untrained_segmenter(export)
        outputs[name] = run_script(name, arguments, saved, args.reuse)

    rows = json.loads(rows_path.read_text(encoding="utf-8"))
    table = outputs["train_step.py"][outputs["train_step.py"].index("| config") :]
    checked = targets(rows, outputs["data_pipeline.py"], outputs["inference.py"])
    text = page(machine_description(), table.strip(), outputs, checked)
    if args.out.is_file() and ANALYSIS_MARKER in args.out.read_text(encoding="utf-8"):
        kept = args.out.read_text(encoding="utf-8").split(ANALYSIS_MARKER, 1)[1]
        text = f"{text}\n{ANALYSIS_MARKER}{kept}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
