"""tf.data pipelines over the TFRecords cache (:mod:`tfaug.data.records`).

Three datasets, all decoded by :func:`decode_example` with parallel reads and maps and
ending in ``prefetch``:

- :func:`labeled_dataset`: infinite, shuffled ``(images, labels)`` batches of slices;
- :func:`unlabeled_dataset`: infinite, shuffled ``images`` batches of slices;
- :func:`volume_dataset`: one element per volume, in order (validation and test).

No augmentation, normalisation or one-hot encoding happens here: images are the cache's
normalised float32 intensities and labels its integer class indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfaug.data.records import Cache, example_features

AUTOTUNE = tf.data.AUTOTUNE


def decode_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialised slice Example of the cache.

    Args:
        serialized: scalar tf.string, one record of a cache file.

    Returns:
        ``image`` float32 (H, W, 1) normalised intensities; ``label`` int32 (H, W) class
        indices; ``case_id`` tf.string scalar; ``slice_index`` int32 scalar (0-based);
        ``n_slices`` int32 scalar. H and W come from the record, so the static shape is
        unknown; the pipelines below set it from the cache's crop size.
    """
    features = tf.io.parse_single_example(serialized, example_features())
    height, width = features["height"], features["width"]
    image = tf.io.decode_raw(features["image"], tf.float32, little_endian=True)
    label = tf.io.decode_raw(features["label"], tf.uint8)
    return {
        "image": tf.reshape(image, tf.stack([height, width, 1])),
        "label": tf.cast(tf.reshape(label, tf.stack([height, width])), tf.int32),
        "case_id": features["case_id"],
        "slice_index": tf.cast(features["slice_index"], tf.int32),
        "n_slices": tf.cast(features["n_slices"], tf.int32),
    }


def labeled_dataset(
    cache: Cache, case_ids: Sequence[str], batch_size: int, seed: int
) -> tf.data.Dataset:
    """Infinite batches of labeled slices drawn uniformly from the chosen volumes.

    All slices of ``case_ids`` are decoded once and kept in memory (``cache()``), then
    shuffled with a buffer holding every slice, repeated forever (each pass is a new
    permutation) and batched. Every slice is drawn equally often; a batch may span two
    passes when it is larger than the number of slices (N_L = 1). Slices without
    foreground are kept, as in the paper. The order is fixed by ``seed`` together with
    TensorFlow's global seed (``keras.utils.set_random_seed``).

    Args:
        cache: a complete cache.
        case_ids: the labeled volumes (ids of ``cache``).
        batch_size: B, slices per batch (every batch is full).
        seed: shuffle seed.

    Returns:
        A dataset of ``(images, labels)``: images float32 (B, S, S, 1), labels int32
        (B, S, S) with values in [0, n_classes).
    """
    slices = _slices(cache, case_ids).map(
        lambda example: (example["image"], example["label"]), num_parallel_calls=AUTOTUNE
    )
    return _shuffled_batches(slices, _total_slices(cache, case_ids), batch_size, seed)


def unlabeled_dataset(
    cache: Cache, case_ids: Sequence[str], batch_size: int, seed: int
) -> tf.data.Dataset:
    """Infinite batches of unlabeled slices: images only, sampled as in :func:`labeled_dataset`.

    Args:
        cache: a complete cache.
        case_ids: the unlabeled volumes (their labels are never read out).
        batch_size: B, slices per batch.
        seed: shuffle seed.

    Returns:
        A dataset of images float32 (B, S, S, 1).
    """
    slices = _slices(cache, case_ids).map(
        lambda example: example["image"], num_parallel_calls=AUTOTUNE
    )
    return _shuffled_batches(slices, _total_slices(cache, case_ids), batch_size, seed)


def volume_dataset(cache: Cache, case_ids: Sequence[str]) -> tf.data.Dataset:
    """One element per volume, in the order of ``case_ids``, slices in slice order.

    Args:
        cache: a complete cache.
        case_ids: the volumes to read (validation or test ids).

    Returns:
        A finite dataset of dicts: ``case_id`` tf.string scalar, ``images`` float32
        (Z, S, S, 1), ``labels`` int32 (Z, S, S); Z varies between volumes. Predictions
        are mapped back to the native grid with ``cache.geometry(case_id)``, not here.
    """
    files = _record_files(cache, case_ids)
    depth = max(cache.n_slices(case_id) for case_id in case_ids)

    def read_volume(path: tf.Tensor) -> tf.data.Dataset:
        # Each file yields exactly one batch (depth >= its slice count), so the
        # deterministic interleave below keeps the order of `files`.
        return _decoded(tf.data.TFRecordDataset(path), cache.crop_size).batch(depth)

    volumes = tf.data.Dataset.from_tensor_slices(files).interleave(
        read_volume,
        cycle_length=2,
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return volumes.map(
        lambda batch: {
            "case_id": batch["case_id"][0],
            "images": batch["image"],
            "labels": batch["label"],
        }
    ).prefetch(AUTOTUNE)


def class_shares(cache: Cache, case_ids: Sequence[str]) -> np.ndarray:
    """The share of each class among the pixels of the slices of ``case_ids``.

    Args:
        cache: a complete cache.
        case_ids: the volumes to count (e.g. the labeled ones).

    Returns:
        float64 (C,), background first, summing to 1 (C: the cache's ``n_classes``).
    """
    counts = np.zeros(cache.n_classes, np.int64)
    for volume in volume_dataset(cache, case_ids).as_numpy_iterator():
        counts += np.bincount(volume["labels"].ravel(), minlength=cache.n_classes)
    return counts / counts.sum()


def _slices(cache: Cache, case_ids: Sequence[str]) -> tf.data.Dataset:
    """Decoded slices of ``case_ids``, files read in parallel, in a deterministic order."""
    files = _record_files(cache, case_ids)
    records = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
    return _decoded(records, cache.crop_size)


def _decoded(records: tf.data.Dataset, size: int) -> tf.data.Dataset:
    def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        example = decode_example(serialized)
        example["image"] = tf.ensure_shape(example["image"], (size, size, 1))
        example["label"] = tf.ensure_shape(example["label"], (size, size))
        return example

    return records.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)


def _shuffled_batches(
    slices: tf.data.Dataset, n_slices: int, batch_size: int, seed: int
) -> tf.data.Dataset:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
    return (
        slices.cache()
        .shuffle(n_slices, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(AUTOTUNE)
    )


def _total_slices(cache: Cache, case_ids: Sequence[str]) -> int:
    return sum(cache.n_slices(case_id) for case_id in case_ids)


def _record_files(cache: Cache, case_ids: Sequence[str]) -> list[str]:
    """The record files of ``case_ids``; a clear error for a bare string or an empty list."""
    if isinstance(case_ids, str) or len(case_ids) == 0:
        raise ValueError(
            f"case_ids: expected a non-empty list of case ids of {cache.path}, found "
            f"{case_ids!r}. Pass e.g. split.labeled (a list), not one id or an empty set."
        )
    return [str(cache.record_file(case_id)) for case_id in case_ids]
