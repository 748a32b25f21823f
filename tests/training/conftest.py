"""Shared fixtures of the training tests: tiny segmenter models."""

from __future__ import annotations

from collections.abc import Callable

import keras
import pytest
from tiny import build_tiny_unet

from tfaug.training.segmenter import SegmenterModel


@pytest.fixture
def make_segmenter_model() -> Callable[..., SegmenterModel]:
    """Factory of compiled tiny :class:`SegmenterModel` s (2 classes, 32x32)."""

    def make(
        affine: keras.layers.Layer | None = None,
        augmentation: keras.layers.Layer | None = None,
    ) -> SegmenterModel:
        model = SegmenterModel(
            build_tiny_unet(),
            n_classes=2,
            class_weights=[0.1, 0.9],
            affine=affine,
            augmentation=augmentation,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    return make
