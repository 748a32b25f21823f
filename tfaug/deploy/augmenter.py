"""The learned, task-driven augmentation of an exported run as a reusable Keras layer.

:class:`LearnedAugmentation` loads ``DIR/augmenter/1`` (written by ``tfaug export``): GV's
deformation of image and label, then GI's additive intensity field, for a fresh z ~ N(0, I)
per slice. Map it over any ``tf.data`` pipeline of ``{"images", "segmentation_masks"}``
(the convention of Keras' preprocessing layers) to add the learned augmentation to another
training script::

    from tfaug.deploy.augmenter import LearnedAugmentation

    augment = LearnedAugmentation("exports/phantom", seed=0)
    train = train.map(augment, num_parallel_calls=tf.data.AUTOTUNE)

Inputs must already be preprocessed as in the export (``export.json``: spacing, crop size
S, normalisation); this layer does not resample, crop or normalise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfaug.deploy.export import EXPORT_JSON, ExportError, read_export_json


@keras.saving.register_keras_serializable(package="tfaug")
class LearnedAugmentation(keras.layers.Layer):
    """Applies an exported augmenter (GV then GI) to images and their masks.

    Input: ``{"images": (B,S,S,1) or (S,S,1) float32, "segmentation_masks": masks}`` with
    masks either one-hot/soft float (…,S,S,C) or integer class indices (…,S,S,1) / (…,S,S).
    Output: the same keys, shapes and dtypes. Soft masks come back soft (bilinear warp of the
    one-hot maps, summing to 1); integer masks come back as the argmax of the warped one-hot
    maps. Other keys of the dict pass through unchanged.

    The generators run in inference mode and are not trainable; no gradient flows through
    this layer. With ``training=False`` the inputs are returned unchanged.

    Args:
        export_dir: the ``tfaug export`` folder (holds ``export.json`` and ``augmenter/1``).
        seed: seed of z (``None``: a non-deterministic seed).

    Raises:
        ExportError: export.json or the augmenter SavedModel is missing.
    """

    def __init__(self, export_dir: str | Path, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "trainable": False})
        self.export_dir = str(export_dir)
        self.seed = seed
        manifest = read_export_json(Path(export_dir) / EXPORT_JSON)
        folder = Path(export_dir) / "augmenter" / "1"
        if "augmenter" not in manifest["models"] or not (folder / "saved_model.pb").is_file():
            raise ExportError(
                f"{folder}: no exported augmenter (the run's method has no generators, or it "
                "was exported without --format savedmodel); export a gd/gi/gdgi run with "
                "'tfaug export RUN --format savedmodel onnx --out DIR'"
            )
        self.size = int(manifest["input"]["size"])
        self.n_classes = int(manifest["input"]["n_classes"])
        self.z_dim = int(manifest["input"]["z_dim"])
        self._loaded = tf.saved_model.load(str(folder))  # owns the variables of the signature
        self._augmenter = self._loaded.signatures["serving_default"]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = True) -> dict:
        if training is False:
            return inputs
        images = tf.convert_to_tensor(inputs["images"])
        masks = tf.convert_to_tensor(inputs["segmentation_masks"])
        unbatched = images.shape.rank == 3
        if unbatched:
            images, masks = images[None], masks[None]
        onehot = self._to_onehot(masks)
        z = keras.random.normal((tf.shape(images)[0], self.z_dim), seed=self.seed_generator)
        out = self._augmenter(
            image=tf.cast(images, tf.float32), label=onehot, z=tf.cast(z, tf.float32)
        )
        new_images = tf.cast(out["augmented_image"], images.dtype)
        new_masks = self._from_onehot(out["augmented_label"], masks)
        if unbatched:
            new_images, new_masks = new_images[0], new_masks[0]
        return {**inputs, "images": new_images, "segmentation_masks": new_masks}

    def _to_onehot(self, masks: tf.Tensor) -> tf.Tensor:
        """(B,S,S,C) float stays; integer (B,S,S) or (B,S,S,1) → one-hot float32."""
        if masks.dtype.is_floating:
            if masks.shape[-1] != self.n_classes:
                raise ValueError(
                    f"LearnedAugmentation ({self.export_dir}): float masks must be one-hot with "
                    f"{self.n_classes} classes, found shape {masks.shape}; pass integer class "
                    "indices or one-hot maps"
                )
            return tf.cast(masks, tf.float32)
        indices = masks[..., 0] if masks.shape.rank == 4 else masks
        return tf.one_hot(tf.cast(indices, tf.int32), self.n_classes, dtype=tf.float32)

    @staticmethod
    def _from_onehot(soft: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        """Back to ``like``'s format: soft float masks, or argmax indices in its dtype/shape."""
        if like.dtype.is_floating:
            return tf.cast(soft, like.dtype)
        indices = tf.cast(tf.argmax(soft, axis=-1), like.dtype)
        return indices[..., None] if like.shape.rank == 4 else indices

    def compute_output_shape(self, input_shape: dict) -> dict:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "export_dir": self.export_dir, "seed": self.seed}
