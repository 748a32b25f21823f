"""Validation and test evaluation of a segmenter (docs/method.md §7, "Evaluation").

Validation (every k iterations) scores the preprocessed grid: mean foreground 3D Dice of
the volume's slices, averaged over volumes. Test evaluation is at native resolution: the
softmax probabilities are mapped back to each volume's original slice grid (un-crop,
linear resampling) before the argmax (or, with ``preprocess.restore_interpolation:
nearest``, the argmax is mapped back with nearest neighbour), and compared with the label
file as read from disk.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfaug.config import DataConfig
from tfaug.data.datasets import list_cases, load_case
from tfaug.data.pipeline import volume_dataset
from tfaug.data.preprocess import Interpolation, restore_prediction
from tfaug.data.records import Cache
from tfaug.metrics import dice_per_class, mean_foreground_dice


@dataclass
class VolumeSlices:
    """One preprocessed volume held in memory.

    Attributes:
        case_id: the volume's id.
        images: float32 (Z,S,S,1) normalised slices.
        labels: int32 (Z,S,S) class indices.
    """

    case_id: str
    images: np.ndarray
    labels: np.ndarray


def load_volumes(cache: Cache, case_ids: Sequence[str]) -> list[VolumeSlices]:
    """Read the preprocessed slices of ``case_ids`` from the cache, in order."""
    return [
        VolumeSlices(
            case_id=element["case_id"].numpy().decode(),
            images=element["images"].numpy(),
            labels=element["labels"].numpy(),
        )
        for element in volume_dataset(cache, list(case_ids))
    ]


def predict_probabilities(
    segmenter: keras.Model, images: np.ndarray, batch_size: int = 32
) -> np.ndarray:
    """Softmax probabilities of S for a stack of slices, in inference mode.

    Args:
        segmenter: S, (B,S,S,1) → logits (B,S,S,C).
        images: float32 (Z,S,S,1).
        batch_size: slices per forward pass.

    Returns:
        float32 (Z,S,S,C), each pixel summing to 1.
    """
    infer = _inference_function(segmenter, images.shape[1:])
    outputs = [
        infer(tf.convert_to_tensor(images[begin : begin + batch_size])).numpy()
        for begin in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs, axis=0)


_INFERENCE_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per segmenter, its traced inference function; an entry goes when its segmenter goes."""


def _inference_function(
    segmenter: keras.Model, slice_shape: tuple[int, ...]
) -> Callable[[tf.Tensor], tf.Tensor]:
    """S's softmax in inference mode, traced once per segmenter for batches of any size.

    Called eagerly, every layer's Python runs at every call: a validation of the phantom's 8
    volumes took 2.5x as long as with the traced function (the same probabilities). The
    function refers to S weakly, so the cache does not keep a segmenter alive.

    Args:
        segmenter: S, (B,H,W,1) → logits (B,H,W,C).
        slice_shape: (H,W,1) of the slices it is first called with, traced for any batch
            size; other slice shapes trace again.

    Returns:
        float32 (B,H,W,1) → float32 (B,H,W,C) probabilities.
    """
    function = _INFERENCE_FUNCTIONS.get(segmenter)
    if function is None:
        model = weakref.ref(segmenter)

        @tf.function(reduce_retracing=True)
        def function(images: tf.Tensor) -> tf.Tensor:
            logits = model()(images, training=False)
            return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

        function.get_concrete_function(tf.TensorSpec((None, *slice_shape), tf.float32))
        _INFERENCE_FUNCTIONS[segmenter] = function
    return function


def validation_dice(
    segmenter: keras.Model, volumes: Sequence[VolumeSlices], n_classes: int
) -> float:
    """Mean over volumes of the mean foreground 3D Dice, on the preprocessed grid."""
    scores = [
        mean_foreground_dice(
            predict_probabilities(segmenter, volume.images).argmax(axis=-1),
            volume.labels,
            n_classes,
        )
        for volume in volumes
    ]
    return float(np.mean(scores))


def evaluate_test(
    segmenter: keras.Model,
    cache: Cache,
    case_ids: Sequence[str],
    data: DataConfig,
    root: Path,
    restore: Interpolation = "linear",
) -> list[dict]:
    """3D Dice per structure per test volume, at native resolution.

    Args:
        segmenter: S in inference mode.
        cache: the preprocessed cache (slices and each volume's geometry).
        case_ids: the test volumes.
        data: the dataset config (class names, label merging for reading ground truth).
        root: the dataset folder, where the native label files are read.
        restore: ``preprocess.restore_interpolation``, how predictions reach the native grid
            (:func:`tfaug.data.preprocess.restore_prediction`).

    Returns:
        One dict per volume: ``case_id``, ``group`` (or ``None``), ``dice``
        ``{class name: value}`` for the foreground classes, ``mean_dice``.
    """
    refs = {ref.case_id: ref for ref in list_cases(data, root)}
    results = []
    for volume in load_volumes(cache, case_ids):
        probabilities = predict_probabilities(segmenter, volume.images)
        prediction = restore_prediction(probabilities, cache.geometry(volume.case_id), restore)
        reference = load_case(data, refs[volume.case_id]).label
        dice = dice_per_class(prediction, reference, data.n_classes)
        results.append(
            {
                "case_id": volume.case_id,
                "group": cache.groups.get(volume.case_id),
                "dice": {
                    name: float(d) for name, d in zip(data.class_names[1:], dice, strict=True)
                },
                "mean_dice": float(np.mean(dice)),
            }
        )
    return results


def summarise(results: Sequence[dict], class_names: Sequence[str]) -> dict:
    """Mean and standard deviation of the per-volume Dice, per structure and overall."""
    summary = {}
    for name in list(class_names) + ["mean_dice"]:
        values = np.array(
            [r["mean_dice"] if name == "mean_dice" else r["dice"][name] for r in results]
        )
        summary[name] = {"mean": float(values.mean()), "std": float(values.std()), "n": len(values)}
    return summary
