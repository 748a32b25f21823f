"""Shared fixtures of the training tests: tiny segmenter models and the tiny phantom cache."""

from __future__ import annotations

from collections.abc import Callable

import keras
import pytest
from tiny import build_tiny_unet, prepare_tiny_cache

from tfaug.config import Config
from tfaug.data.records import Cache
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


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Cache]:
    """The tiny phantom config and its cache, built once per session."""
    return prepare_tiny_cache(tmp_path_factory.getbasetemp())
