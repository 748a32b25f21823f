"""Figures of a run: generated fields and samples (paper Fig. 5, 10, 11), predictions.

Everything is drawn with matplotlib's non-interactive Agg backend into PNG files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import matplotlib
import numpy as np
import tensorflow as tf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tfaug.analysis.evaluation import VolumeSlices, predict_probabilities  # noqa: E402
from tfaug.ops.generated import apply_field  # noqa: E402


def _grid_lines(ax: plt.Axes, flow: np.ndarray, step: int) -> None:
    """Draw a regular grid deformed by ``flow`` (H,W,2): where each grid point samples from."""
    height, width = flow.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    source_rows = rows - flow[..., 0]
    source_cols = cols - flow[..., 1]
    for r in range(0, height, step):
        ax.plot(source_cols[r, :], source_rows[r, :], color="yellow", linewidth=0.5)
    for c in range(0, width, step):
        ax.plot(source_cols[:, c], source_rows[:, c], color="yellow", linewidth=0.5)


def save_generator_figures(
    generator: keras.Model,
    images: tf.Tensor,
    onehot: tf.Tensor,
    z: tf.Tensor,
    path: Path,
    *,
    spacing_mm: float,
) -> None:
    """One row per input slice: input, field, transformed image, transformed label.

    Args:
        generator: GV (``kind="deformation"``) or GI (``kind="intensity"``).
        images: (N,H,W,1) input slices.
        onehot: (N,H,W,C) their one-hot labels.
        z: (N,z_dim) noise.
        path: the PNG file to write.
        spacing_mm: pixel size, to state the field magnitude in mm.
    """
    field = generator((images, z), training=False)
    out_images, out_masks = apply_field(generator.kind, images, onehot, field)
    images, field = images.numpy()[..., 0], field.numpy()
    out_images, out_labels = out_images.numpy()[..., 0], out_masks.numpy().argmax(-1)
    rows = len(images)
    figure, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title("input")
        if generator.kind == "deformation":
            magnitude = np.linalg.norm(field[i], axis=-1)
            axes[i, 1].imshow(images[i], cmap="gray", vmin=0, vmax=1)
            _grid_lines(axes[i, 1], field[i], step=max(2, images.shape[1] // 16))
            axes[i, 1].set_title(f"field, mean {magnitude.mean() * spacing_mm:.1f} mm")
        else:
            limit = float(np.abs(field[i]).max()) or 1.0
            shown = axes[i, 1].imshow(field[i, ..., 0], cmap="coolwarm", vmin=-limit, vmax=limit)
            figure.colorbar(shown, ax=axes[i, 1], fraction=0.046)
            axes[i, 1].set_title(f"ΔI, mean |ΔI| {np.abs(field[i]).mean():.3f}")
        axes[i, 2].imshow(out_images[i], cmap="gray", vmin=0, vmax=1)
        axes[i, 2].set_title("transformed")
        axes[i, 3].imshow(out_labels[i], cmap="viridis", vmin=0, vmax=onehot.shape[-1] - 1)
        axes[i, 3].set_title("label")
    for ax in axes.ravel():
        ax.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_prediction_figure(
    segmenter: keras.Model, volumes: Sequence[VolumeSlices], path: Path
) -> None:
    """Mid slice of each volume: image, ground truth, prediction (preprocessed grid)."""
    figure, axes = plt.subplots(len(volumes), 3, figsize=(7.5, 2.6 * len(volumes)), squeeze=False)
    for row, volume in enumerate(volumes):
        middle = len(volume.images) // 2
        prediction = predict_probabilities(segmenter, volume.images[middle : middle + 1])
        n_classes = prediction.shape[-1]
        panels = [
            (volume.images[middle, ..., 0], "gray", f"{volume.case_id} slice {middle}"),
            (volume.labels[middle], "viridis", "ground truth"),
            (prediction[0].argmax(-1), "viridis", "prediction"),
        ]
        for col, (array, cmap, title) in enumerate(panels):
            limits = (0, 1) if cmap == "gray" else (0, n_classes - 1)
            axes[row, col].imshow(array, cmap=cmap, vmin=limits[0], vmax=limits[1])
            axes[row, col].set_title(title)
            axes[row, col].set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
