"""Tests for tfaug/training/segmenter.py: batch composition and which weights a step trains."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny import GENERATOR_FILTERS, SIDE, build_tiny_unet

from tfaug.models.generator import Generator
from tfaug.ops.generated import GeneratedAugmentation
from tfaug.training.segmenter import SegmenterModel

BATCH = 6


class FlipX(keras.layers.Layer):
    """Deterministic stand-in for the affine layer: mirror image and mask along x."""

    def call(self, inputs, training=None):
        return {key: value[:, :, ::-1] for key, value in inputs.items()}


class Constant(keras.layers.Layer):
    """Deterministic stand-in for a method layer: images set to 0.25, masks kept."""

    def call(self, inputs, training=None):
        images = tf.fill(tf.shape(inputs["images"]), 0.25)
        return {"images": images, "segmentation_masks": inputs["segmentation_masks"]}


def _batch(seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Random images (6,32,32,1) float32 in [0, 1) and labels (6,32,32) int32 in {0, 1}."""
    rng = np.random.default_rng(seed)
    images = rng.random((BATCH, SIDE, SIDE, 1), dtype=np.float32)
    labels = (rng.random((BATCH, SIDE, SIDE)) > 0.7).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def test_affine_half_and_method_half(make_segmenter_model):
    model = make_segmenter_model(affine=FlipX(), augmentation=Constant())
    images, labels = _batch()
    onehot = tf.one_hot(labels, 2)

    out_images, out_masks = model.augment_batch(images, onehot)

    flipped = images.numpy()[:, :, ::-1]
    assert out_images.shape == images.shape and out_masks.shape == onehot.shape
    np.testing.assert_array_equal(out_images[:3], flipped[:3])
    np.testing.assert_array_equal(out_images[3:], np.full((3, SIDE, SIDE, 1), 0.25, np.float32))
    np.testing.assert_array_equal(out_masks, onehot.numpy()[:, :, ::-1])


def test_without_method_the_whole_batch_is_affine(make_segmenter_model):
    model = make_segmenter_model(affine=FlipX())
    images, labels = _batch()

    out_images, _ = model.augment_batch(images, tf.one_hot(labels, 2))

    np.testing.assert_array_equal(out_images, images.numpy()[:, :, ::-1])


def test_none_leaves_the_batch_unchanged(make_segmenter_model):
    model = make_segmenter_model()
    images, labels = _batch()
    onehot = tf.one_hot(labels, 2)

    out_images, out_masks = model.augment_batch(images, onehot)

    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_masks, onehot)


def test_a_step_trains_only_the_segmenter(make_segmenter_model):
    generator = Generator(
        "intensity", filters=GENERATOR_FILTERS, image_filters=4, z_dim=8, bn_momentum=0.9
    )
    generator((tf.zeros((1, SIDE, SIDE, 1)), tf.zeros((1, 8))))
    augmentation = GeneratedAugmentation(intensity=generator, z_dim=8, seed=0)
    model = make_segmenter_model(affine=FlipX(), augmentation=augmentation)
    segmenter_before = [w.copy() for w in model.segmenter.get_weights()]
    generator_before = [w.copy() for w in generator.get_weights()]  # BN statistics included

    logs = model.train_step(_batch())

    assert np.isfinite(float(logs["total_loss"]))
    assert float(logs["seg_loss"]) == pytest.approx(float(logs["total_loss"]))
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(model.segmenter.get_weights(), segmenter_before, strict=True)
    ]
    assert all(changed[:2]) and sum(changed) > len(changed) // 2
    for after, before in zip(generator.get_weights(), generator_before, strict=True):
        np.testing.assert_array_equal(after, before)


def test_class_weights_must_match_the_classes():
    with pytest.raises(ValueError, match="class_weights has 3 entries but there are 2 classes"):
        SegmenterModel(build_tiny_unet(), n_classes=2, class_weights=[0.1, 0.45, 0.45])
