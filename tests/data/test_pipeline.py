"""tf.data pipelines over a real cache of a tiny phantom: values, order, sampling, seeds."""

import math

import numpy as np
import pytest
import tensorflow as tf

from data.fixtures import write_acdc_case, write_nifti
from data.test_records import tiny_config
from tfaug.config import load_config
from tfaug.data.datasets import list_cases, load_case
from tfaug.data.pipeline import (
    decode_example,
    labeled_dataset,
    unlabeled_dataset,
    volume_dataset,
)
from tfaug.data.preprocess import preprocess_volume
from tfaug.data.records import prepare_cache, resolve_data_root
from tfaug.data.volume import DatasetError


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    # The folder test_records uses: the phantom and the cache are reused when present.
    return tiny_config(tmp_path_factory.getbasetemp() / "tiny-cache")


@pytest.fixture(scope="module")
def cache(config):
    return prepare_cache(config, progress=False)


@pytest.fixture(scope="module")
def preprocessed(config):
    """Case id → PreprocessedVolume, computed directly from the NIfTI files."""
    refs = list_cases(config.data, resolve_data_root(config))
    return {
        ref.case_id: preprocess_volume(load_case(config.data, ref), config.preprocess)
        for ref in refs
    }


def slice_keys(preprocessed, case_ids):
    """Image bytes → (case id, slice index) for every slice of ``case_ids``."""
    return {
        preprocessed[case_id].image[k].tobytes(): (case_id, k)
        for case_id in case_ids
        for k in range(preprocessed[case_id].image.shape[0])
    }


def test_decode_example_returns_the_preprocessed_slice(cache, preprocessed):
    pre = preprocessed["patient002"]
    records = tf.data.TFRecordDataset(str(cache.record_file("patient002")))
    decoded = [decode_example(record) for record in records]
    assert len(decoded) == pre.image.shape[0]
    for k, example in enumerate(decoded):
        assert example["image"].dtype == tf.float32 and example["image"].shape == (32, 32, 1)
        assert example["label"].dtype == tf.int32 and example["label"].shape == (32, 32)
        np.testing.assert_array_equal(example["image"].numpy()[..., 0], pre.image[k])
        np.testing.assert_array_equal(example["label"].numpy(), pre.label[k])
        assert example["case_id"].numpy() == b"patient002"
        assert int(example["slice_index"]) == k
        assert int(example["n_slices"]) == pre.image.shape[0]


def test_volume_dataset_keeps_order_shapes_and_values(cache, preprocessed):
    order = ["patient004", "patient001", "patient005"]
    dataset = volume_dataset(cache, order)
    assert dataset.element_spec["images"].shape.as_list() == [None, 32, 32, 1]
    assert dataset.element_spec["labels"].shape.as_list() == [None, 32, 32]
    volumes = list(dataset)
    assert [v["case_id"].numpy().decode() for v in volumes] == order
    for volume, case_id in zip(volumes, order, strict=True):
        pre = preprocessed[case_id]
        assert volume["images"].shape == (pre.image.shape[0], 32, 32, 1)
        np.testing.assert_array_equal(volume["images"].numpy()[..., 0], pre.image)
        np.testing.assert_array_equal(volume["labels"].numpy(), pre.label.astype(np.int32))


def test_labeled_dataset_covers_every_slice_with_its_label(cache, preprocessed):
    case_ids = ["patient001", "patient003"]
    keys = slice_keys(preprocessed, case_ids)
    batch_size = 4
    n_batches = math.ceil(len(keys) / batch_size)
    images, labels = [], []
    for x, y in labeled_dataset(cache, case_ids, batch_size, seed=3).take(n_batches):
        assert x.shape == (batch_size, 32, 32, 1) and x.dtype == tf.float32
        assert y.shape == (batch_size, 32, 32) and y.dtype == tf.int32
        images += list(x.numpy()[..., 0])
        labels += list(y.numpy())
    first_pass = [keys[image.tobytes()] for image in images[: len(keys)]]
    assert sorted(first_pass) == sorted(keys.values())  # a permutation of all slices
    for image, label in zip(images, labels, strict=True):
        case_id, k = keys[image.tobytes()]
        np.testing.assert_array_equal(label, preprocessed[case_id].label[k])


def test_background_only_slices_are_kept(tmp_path):
    """The paper samples every labeled slice, with or without foreground."""
    case = write_acdc_case(tmp_path / "training", "patient001", "NOR", es=2, shape=(20, 20, 3))
    label = case.label.copy()
    label[:, :, 1] = 0
    write_nifti(case.label_path, label)
    cfg = load_config("acdc", overrides=["preprocess.crop_size=16", "preprocess.n4=false"])
    cfg.data.root, cfg.data.cache_dir = str(tmp_path), str(tmp_path / "cache")
    cache = prepare_cache(cfg, progress=False)

    batch = next(iter(labeled_dataset(cache, ["patient001"], 3, seed=0)))
    foreground = sorted(bool(y.numpy().any()) for y in batch[1])
    assert foreground == [False, True, True]


def test_labeled_dataset_is_deterministic_under_a_seed(cache):
    def first_batches(seed):
        batches = labeled_dataset(cache, ["patient002", "patient005"], 6, seed).take(4)
        return np.concatenate([x.numpy() for x, _ in batches])

    np.testing.assert_array_equal(first_batches(11), first_batches(11))
    assert not np.array_equal(first_batches(11), first_batches(12))


def test_one_volume_fills_batches_larger_than_its_slice_count(cache):
    n = cache.n_slices("patient002")
    batches = list(labeled_dataset(cache, ["patient002"], n + 5, seed=0).take(3))
    assert [x.shape[0] for x, _ in batches] == [n + 5] * 3


def test_unlabeled_dataset_yields_image_batches_forever(cache):
    case_ids = ["patient003", "patient004"]
    total = cache.n_slices("patient003") + cache.n_slices("patient004")
    batches = list(unlabeled_dataset(cache, case_ids, 5, seed=1).take(total))  # > one pass
    assert len(batches) == total
    assert all(b.shape == (5, 32, 32, 1) and b.dtype == tf.float32 for b in batches)


def test_bad_arguments_raise_clear_errors(cache):
    with pytest.raises(ValueError, match="not one id"):
        labeled_dataset(cache, "patient001", 4, seed=0)
    with pytest.raises(ValueError, match="non-empty list"):
        volume_dataset(cache, [])
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, found 0"):
        unlabeled_dataset(cache, ["patient001"], 0, seed=0)
    with pytest.raises(DatasetError, match="'patient042' is not in this cache"):
        labeled_dataset(cache, ["patient001", "patient042"], 4, seed=0)
