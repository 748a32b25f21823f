"""Tests for tfaug/analysis/evaluation.py on the tiny phantom cache: probabilities, Dice,
summaries."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import build_tiny_unet, prepare_tiny_cache

from tfaug.analysis.evaluation import (
    _inference_function,
    evaluate_test,
    load_volumes,
    predict_probabilities,
    summarise,
    validation_dice,
)
from tfaug.data.datasets import list_cases, load_case
from tfaug.data.preprocess import restore_labels
from tfaug.data.records import resolve_data_root
from tfaug.data.splits import make_split
from tfaug.metrics import dice_per_class


class LookupSegmenter(keras.Model):
    """A "perfect" S: finds each input slice among known slices and returns its label's logits.

    Input (B,S,S,1) float32 slices that occur in ``images``; output (B,S,S,C) float32 logits,
    +10 for the labeled class and 0 elsewhere.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_classes: int):
        super().__init__()
        self.images = tf.constant(images)
        self.logits = tf.one_hot(labels, n_classes) * 10.0

    def call(self, inputs, training=False):
        distance = tf.reduce_sum((inputs[:, None] - self.images[None]) ** 2, axis=(2, 3, 4))
        return tf.gather(self.logits, tf.argmin(distance, axis=1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny config, cache and split, and the preprocessed test and validation volumes."""
    cfg, cache = prepare_tiny_cache(tmp_path_factory.getbasetemp())
    split = make_split(cache.case_ids, cfg.split, cache.groups)
    return cfg, cache, split, load_volumes(cache, split.test), load_volumes(cache, split.validation)


def _perfect(volumes, n_classes: int) -> LookupSegmenter:
    return LookupSegmenter(
        np.concatenate([v.images for v in volumes]),
        np.concatenate([v.labels for v in volumes]),
        n_classes,
    )


def test_volumes_are_read_in_the_asked_order(tiny):
    _, cache, split, test_volumes, _ = tiny
    assert [v.case_id for v in test_volumes] == split.test
    for volume in test_volumes:
        n_slices = cache.n_slices(volume.case_id)
        assert volume.images.shape == (n_slices, 32, 32, 1) and volume.images.dtype == np.float32
        assert volume.labels.shape == (n_slices, 32, 32)
    reversed_ids = [v.case_id for v in load_volumes(cache, split.test[::-1])]
    assert reversed_ids == split.test[::-1]


def test_probabilities_sum_to_one_whatever_the_batch_size(tiny):
    cfg, _, _, test_volumes, _ = tiny
    images = test_volumes[0].images
    segmenter = keras.Sequential(
        [keras.Input((32, 32, 1)), keras.layers.Conv2D(4, 3, padding="same")]
    )

    whole = predict_probabilities(segmenter, images)
    in_threes = predict_probabilities(segmenter, images, batch_size=3)

    assert whole.shape == (len(images), 32, 32, cfg.data.n_classes)
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(in_threes, whole, atol=1e-6)


def test_inference_is_traced_once_per_segmenter_and_does_not_keep_it_alive(tiny):
    _, _, _, test_volumes, validation_volumes = tiny
    segmenter = build_tiny_unet(n_classes=4)
    for volume in test_volumes + validation_volumes:
        probabilities = predict_probabilities(segmenter, volume.images, batch_size=5)
        eager = tf.nn.softmax(segmenter(volume.images, training=False), axis=-1).numpy()
        np.testing.assert_allclose(probabilities, eager, atol=1e-6)
    # Batches of 5 and the shorter last batches of every volume: one trace.
    assert _inference_function(segmenter, (32, 32, 1)).experimental_get_tracing_count() == 1
    # New weights in the same S (as when each kept checkpoint is loaded and tested in turn)
    # are what the traced function computes with.
    images = test_volumes[0].images
    before = predict_probabilities(segmenter, images)
    segmenter.set_weights([w * 1.5 for w in segmenter.get_weights()])
    after = predict_probabilities(segmenter, images)
    assert np.abs(after - before).max() > 1e-3
    eager = tf.nn.softmax(segmenter(images, training=False), axis=-1).numpy()
    np.testing.assert_allclose(after, eager, atol=1e-6)
    alive = weakref.ref(segmenter)
    del segmenter
    gc.collect()
    assert alive() is None


def test_validation_dice_is_one_for_a_perfect_and_zero_for_a_background_model(tiny):
    cfg, _, _, test_volumes, validation_volumes = tiny
    volumes = test_volumes + validation_volumes
    n_classes = cfg.data.n_classes

    assert validation_dice(_perfect(volumes, n_classes), volumes, n_classes) == pytest.approx(1.0)
    background = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(n_classes, 1)])
    background.layers[0].set_weights([np.zeros((1, 1, 1, 4)), np.array([5.0, 0, 0, 0])])
    assert validation_dice(background, volumes, n_classes) == 0.0


def test_evaluate_test_scores_every_volume_at_native_resolution(tiny):
    cfg, cache, split, test_volumes, _ = tiny
    root = resolve_data_root(cfg)

    results = evaluate_test(
        _perfect(test_volumes, cfg.data.n_classes), cache, split.test, cfg.data, root
    )

    assert [r["case_id"] for r in results] == split.test
    for result in results:
        assert result["group"] == cache.groups[result["case_id"]]
        assert list(result["dice"]) == ["RV", "Myo", "LV"]
        dice = np.array(list(result["dice"].values()))
        # Perfect on the 5 mm grid; resampling back to the native grid loses only edges.
        assert np.all((dice > 0.6) & (dice <= 1.0))
        assert result["mean_dice"] == pytest.approx(dice.mean())


def test_evaluate_test_with_nearest_restores_the_argmax(tiny):
    """``restore="nearest"``: the argmax on the network's grid, mapped back with nearest
    neighbour, against the label file (SSL4MIS's and BCP's test code), by hand."""
    cfg, cache, split, test_volumes, _ = tiny
    root = resolve_data_root(cfg)
    segmenter = _perfect(test_volumes, cfg.data.n_classes)
    results = evaluate_test(segmenter, cache, split.test, cfg.data, root, restore="nearest")
    refs = {ref.case_id: ref for ref in list_cases(cfg.data, root)}
    for result, volume in zip(results, test_volumes, strict=True):
        native = restore_labels(volume.labels, cache.geometry(volume.case_id))
        reference = load_case(cfg.data, refs[volume.case_id]).label
        expected = dice_per_class(native, reference, cfg.data.n_classes)
        assert list(result["dice"].values()) == pytest.approx(list(expected), abs=1e-12)


def test_summarise_means_and_stds():
    results = [
        {"dice": {"RV": 0.2, "LV": 0.8}, "mean_dice": 0.5},
        {"dice": {"RV": 0.4, "LV": 0.6}, "mean_dice": 0.5},
        {"dice": {"RV": 0.9, "LV": 1.0}, "mean_dice": 0.95},
    ]

    summary = summarise(results, ["RV", "LV"])

    assert list(summary) == ["RV", "LV", "mean_dice"]
    assert summary["RV"]["mean"] == pytest.approx(0.5)
    assert summary["RV"]["std"] == pytest.approx(np.std([0.2, 0.4, 0.9]))
    assert summary["LV"] == {
        "mean": pytest.approx(0.8),
        "std": pytest.approx(np.std([0.8, 0.6, 1.0])),
        "n": 3,
    }
    assert summary["mean_dice"]["mean"] == pytest.approx(0.65)
