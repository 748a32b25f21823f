"""Milliseconds per batch of ``dense_image_warp``: eager, ``tf.function`` and XLA.

Usage (tfaug installed, e.g. ``pip install -e .``):
``python bench/warp.py [--batch 20] [--channels 1] [--repeats 20]``. Prints one
line per (size, mode) with the median wall time of a forward warp of a (B,S,S,C) float32
batch by a random flow of up to ±5 px, after two warm-up calls (tracing and compilation
are excluded). Numbers depend on the machine and its load; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from tfaug.ops.warp import dense_image_warp


def time_ms(function, image: tf.Tensor, flow: tf.Tensor, repeats: int) -> float:
    """Median wall time in ms of ``function(image, flow)`` after two warm-up calls."""
    for _ in range(2):
        function(image, flow).numpy()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(image, flow).numpy()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    modes = {
        "eager": dense_image_warp,
        "tf.function": tf.function(dense_image_warp),
        "xla": tf.function(dense_image_warp, jit_compile=True),
    }
    rng = np.random.default_rng(0)
    print(f"dense_image_warp, batch {args.batch}, {args.channels} channel(s), float32, CPU")
    for size in (64, 224):
        image = tf.constant(rng.normal(size=(args.batch, size, size, args.channels)), tf.float32)
        flow = tf.constant(rng.uniform(-5, 5, size=(args.batch, size, size, 2)), tf.float32)
        for name, function in modes.items():
            milliseconds = time_ms(function, image, flow, args.repeats)
            print(f"{size:>4}x{size:<4} {name:<12} {milliseconds:8.2f} ms/batch")


if __name__ == "__main__":
    main()
