"""Tests of tfaug/ops/cutmix.py: the boxes' law, and one set of boxes for every mixed tensor."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfaug.ops.cutmix import CutMixBoxes, mix_boxes, sample_boxes

SIDE = 32


def _boxes(probability: float = 1.0, rows: int = 256, side: tuple = (SIDE, SIDE)) -> np.ndarray:
    seed = keras.random.SeedGenerator(3)
    boxes = sample_boxes(rows, *side, probability, (0.02, 0.4), (0.3, 1 / 0.3), seed)
    return np.asarray(boxes)


def _extent(box: np.ndarray) -> tuple[int, int]:
    """(height, width) of the one rectangle a (H,W) bool box holds; checks it is one."""
    ys, xs = np.nonzero(box)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert box.sum() == height * width  # a filled axis-aligned rectangle
    return height, width


def test_each_box_is_one_rectangle_of_the_drawn_area_and_aspect():
    boxes = _boxes()
    assert boxes.shape == (256, SIDE, SIDE) and boxes.dtype == bool
    areas, aspects = [], []
    for box in boxes:
        if box.any():
            height, width = _extent(box)
            areas.append(height * width / SIDE**2)
            aspects.append(height / width)
    # ⌊·⌋ of the sides (as UniMatch): areas a little under the drawn 2–40 %, and aspects
    # around 0.3–3.3, further out for the smallest boxes (sides of a few pixels, floored).
    assert len(areas) > 240
    assert min(areas) > 0.005 and max(areas) <= 0.4
    assert max(areas) > 0.3 and min(areas) < 0.05
    assert 0.2 < min(aspects) < 0.5 and 2.0 < max(aspects) <= 5.0


def test_boxes_are_drawn_with_the_probability_and_fit_non_square_slices():
    chosen = _boxes(probability=0.5, rows=400).any(axis=(1, 2))
    assert 0.4 < chosen.mean() < 0.6
    assert not _boxes(probability=0.0, rows=8).any()
    wide = _boxes(rows=64, side=(32, 96))
    assert wide.shape == (64, 32, 96) and wide.any(axis=(1, 2)).all()


def test_images_labels_and_confidences_are_mixed_with_the_same_boxes():
    rows = 6
    ids = tf.range(rows, dtype=tf.float32)
    images = tf.broadcast_to(ids[:, None, None, None], (rows, SIDE, SIDE, 1))
    labels = tf.one_hot(tf.broadcast_to(tf.range(rows)[:, None, None], (rows, SIDE, SIDE)), rows)
    confidence = tf.broadcast_to(ids[:, None, None] / 10.0, (rows, SIDE, SIDE))
    boxes = CutMixBoxes(probability=1.0, seed=0)(images)
    mixed_images, mixed_labels, mixed_confidence = mix_boxes(boxes, [images, labels, confidence])

    source = np.asarray(mixed_images)[..., 0]
    np.testing.assert_array_equal(np.argmax(mixed_labels, axis=-1), source)
    np.testing.assert_allclose(np.asarray(mixed_confidence), source / 10.0)
    # Inside its box slice i shows slice i − 1 (rolled by one), elsewhere itself.
    expected = np.where(np.asarray(boxes), (np.arange(rows) - 1)[:, None, None] % rows,
                        np.arange(rows)[:, None, None])  # fmt: skip
    np.testing.assert_array_equal(source, expected)
    assert np.asarray(boxes).any(axis=(1, 2)).all()


def test_explicit_sources_and_integer_labels():
    boxes = tf.constant([[[True, False], [False, False]]])
    target = tf.zeros((1, 2, 2), tf.int32)
    [mixed] = mix_boxes(boxes, [target], [tf.fill((1, 2, 2), 7)])
    np.testing.assert_array_equal(mixed, [[[7, 0], [0, 0]]])


def test_layer_is_seeded_inert_without_training_compiles_and_round_trips():
    images = tf.zeros((4, SIDE, SIDE, 1))
    first = CutMixBoxes(probability=1.0, seed=5)(images)
    again = CutMixBoxes(probability=1.0, seed=5)(images)
    np.testing.assert_array_equal(first, again)
    assert not np.asarray(CutMixBoxes(seed=5)(images, training=False)).any()
    layer = CutMixBoxes(probability=1.0, seed=5)
    compiled = tf.function(lambda x: layer(x), jit_compile=True)(images)
    assert compiled.shape == (4, SIDE, SIDE) and np.asarray(compiled).any(axis=(1, 2)).all()
    config = layer.get_config()
    assert CutMixBoxes.from_config(config).get_config() == config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probability": 1.5}, "probability in \\[0, 1\\]"),
        ({"area_range": (0.1, 1.5)}, "area_range within"),
        ({"aspect_range": (1.5, 3.0)}, "min <= 1 <= max"),
    ],
)
def test_bad_settings_name_the_config_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CutMixBoxes(**kwargs)
