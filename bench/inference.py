"""Milliseconds per slice and per volume: exported segmenter in TensorFlow vs ONNX Runtime.

Usage (tfaug installed): ``python bench/inference.py --export DIR [--slices 10]
[--batch-size 16] [--repeats 10]``. Both backends get the same inputs: random normalised
slices of the export's size S (float32, U(0, 1)); a "volume" is ``--slices`` slices predicted
in batches of ``--batch-size`` (preprocessing and resampling excluded), a "slice" is one
forward pass of a (1,S,S,1) batch. Prints the median wall time after two warm-up calls and the
largest probability difference between the backends. Numbers depend on the machine and its
load; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfaug.deploy.inference import OnnxPredictor, SavedModelPredictor, predict_slices


def median_ms(function: Callable[[], np.ndarray], repeats: int) -> float:
    """Median wall time in ms of ``function()`` after two warm-up calls."""
    for _ in range(2):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="a 'tfaug export' folder")
    parser.add_argument("--slices", type=int, default=10, help="slices per volume")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    backends = {
        "tensorflow": SavedModelPredictor(args.export / "segmenter" / "1"),
        "onnxruntime": OnnxPredictor(args.export / "segmenter.onnx"),
    }
    size = backends["onnxruntime"].size
    volume = np.random.default_rng(0).uniform(0, 1, (args.slices, size, size, 1))
    volume = volume.astype(np.float32)
    outputs = {}
    print(f"segmenter {size}x{size}, volume of {args.slices} slices, batch {args.batch_size}")
    for name, predictor in backends.items():
        per_slice = median_ms(lambda p=predictor: p.predict(volume[:1]), args.repeats)
        per_volume = median_ms(
            lambda p=predictor: predict_slices(p, volume, args.batch_size), args.repeats
        )
        outputs[name] = predict_slices(predictor, volume, args.batch_size)
        print(f"{name:<12} {per_slice:8.2f} ms/slice  {per_volume:9.2f} ms/volume")
    difference = np.abs(outputs["tensorflow"] - outputs["onnxruntime"]).max()
    print(f"max |p_tf - p_onnx| = {difference:.2e}")


if __name__ == "__main__":
    main()
