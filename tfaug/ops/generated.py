"""The learned transformations applied to a batch: GV's flow, GI's ΔI, and the layer that
draws them from frozen generators for the final segmenter stage.

Every function here takes ``images`` (B,H,W,1) float and ``masks`` (B,H,W,C) one-hot or
soft labels; a flow is (B,H,W,2) in pixels (the ``dense_image_warp`` convention, see
docs/method.md §10) and ΔI is (B,H,W,1) in intensity units. The layers act on
``{"images", "segmentation_masks"}`` dicts, like Keras' preprocessing layers and
:mod:`tfaug.ops.augment`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfaug.methods import GENERATED_COMPOSITIONS
from tfaug.ops.seeds import ReplicaSeedGenerator
from tfaug.ops.warp import dense_image_warp


def apply_deformation(
    images: tf.Tensor, masks: tf.Tensor, flow: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Warp an image and its soft label map with the same flow.

    Args:
        images: (B,H,W,1) float.
        masks: (B,H,W,C) one-hot or soft labels.
        flow: (B,H,W,2) displacement in pixels (``dense_image_warp`` convention).

    Returns:
        Warped ``(images, masks)``; masks stay soft (bilinear on one-hot maps).
    """
    flow = tf.cast(flow, images.dtype)
    return dense_image_warp(images, flow), dense_image_warp(masks, tf.cast(flow, masks.dtype))


def apply_intensity(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """``x + ΔI``: the additive intensity transformation (no clipping; labels unchanged)."""
    return images + tf.cast(delta, images.dtype)


def apply_field(
    kind: str, images: tf.Tensor, masks: tf.Tensor, field: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply a generator's output to a labeled batch.

    Args:
        kind: ``"deformation"`` (``field`` is a (B,H,W,2) flow in pixels: image and mask are
            warped alike) or ``"intensity"`` (``field`` is (B,H,W,1) ΔI: ``images + ΔI``,
            masks unchanged).
        images: (B,H,W,1) float.
        masks: (B,H,W,C) one-hot or soft labels.
        field: the generator's output for ``images``.

    Returns:
        ``(images, masks)`` transformed; differentiable in ``field``.
    """
    if kind == "deformation":
        return apply_deformation(images, masks, field)
    return apply_intensity(images, field), masks


def apply_generators(
    deformation: keras.Model | None,
    intensity: keras.Model | None,
    images: tf.Tensor,
    masks: tf.Tensor,
    z: tf.Tensor,
    *,
    training: bool = False,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
    """GV's warp of an image and its soft labels, then GI's ΔI on the warped image (X_GVI of
    docs/method.md §2), both fed the same z; a missing generator is skipped.

    Args:
        deformation, intensity: GV and GI (``(image, z)`` → field), or ``None``.
        images: (B,H,W,1) float. masks: (B,H,W,K) soft maps, warped with the image.
        z: (B,z_dim) noise. training: the generators' BatchNormalization mode.

    Returns:
        ``(images, masks, flow (B,H,W,2) or None, delta (B,H,W,1) or None)``; the fields are
        cast to the images' dtype. Differentiable in the generators' weights. Not clipped.
    """
    flow = delta = None
    if deformation is not None:
        flow = tf.cast(deformation((images, z), training=training), images.dtype)
        images, masks = apply_deformation(images, masks, flow)
    if intensity is not None:
        delta = tf.cast(intensity((images, z), training=training), images.dtype)
        images = apply_intensity(images, delta)
    return images, masks, flow, delta


@keras.saving.register_keras_serializable(package="tfaug")
class GeneratedAugmentation(keras.layers.Layer):
    """Task-driven augmentation from frozen generators GV and/or GI.

    With ``composition="choice"`` (the original code), each row gets, with equal
    probability, one of the transformations available: GV alone (deformation), GI alone
    (additive intensity), or GI applied to GV's output (GVI, the same z fed to both, as in
    the original final stage). With ``composition="chain"`` every row gets GVI (when both
    generators are given), as ``rdri`` applies RD then RI to every row. z ~ N(0, I) is
    drawn per row. With ``strength=(a, b)``, each field is multiplied by its own factor
    u ~ U(a, b) per row (and per generator), so a frozen generator yields a range of
    transformations between the identity (u = 0) and its own (u = 1). The generators run
    in inference mode; no gradient flows through this layer.

    Args:
        deformation: the GV generator, or ``None``.
        intensity: the GI generator, or ``None``.
        z_dim: size of z.
        seed: seed of z and of the per-row choice.
        composition: ``"choice"`` or ``"chain"`` (see above).
        strength: (min, max), 0 <= min <= max, of the field factor u; (1, 1): the paper.

    Call on ``{"images": (B,H,W,1), "segmentation_masks": (B,H,W,C)}``.
    """

    def __init__(
        self,
        deformation: keras.Model | None = None,
        intensity: keras.Model | None = None,
        z_dim: int = 100,
        seed: int | None = None,
        composition: str = "choice",
        strength: tuple[float, float] = (1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if deformation is None and intensity is None:
            raise ValueError("GeneratedAugmentation needs at least one generator")
        if composition not in GENERATED_COMPOSITIONS:
            raise ValueError(
                f"GeneratedAugmentation: composition must be one of {GENERATED_COMPOSITIONS}, "
                f"found {composition!r}. Set augment.generated_composition accordingly."
            )
        self.composition = composition
        low, high = (float(v) for v in strength)
        if not 0.0 <= low <= high:
            raise ValueError(
                f"GeneratedAugmentation: strength must be (min, max) with 0 <= min <= max, "
                f"found {tuple(strength)}. Set augment.generated_strength, e.g. [0.0, 1.0]."
            )
        self.strength = (low, high)
        self.deformation = deformation
        self.intensity = intensity
        self.z_dim = z_dim
        self.seed = seed
        self.seed_generator = ReplicaSeedGenerator(seed)

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> dict:
        images, masks = inputs["images"], inputs["segmentation_masks"]
        batch = tf.shape(images)[0]
        z = keras.random.normal((batch, self.z_dim), seed=self.seed_generator)
        both = self.deformation is not None and self.intensity is not None
        chain = both and self.composition == "chain"
        candidates = []
        if self.deformation is not None:
            flow = self._scaled(self.deformation((images, z), training=False))
            warped_images, warped_masks = apply_deformation(images, masks, flow)
            candidates.append((warped_images, warped_masks))
        if self.intensity is not None and not chain:
            delta = self._scaled(self.intensity((images, z), training=False))
            candidates.append((apply_intensity(images, delta), masks))
        if both:
            delta = self._scaled(self.intensity((warped_images, z), training=False))
            candidates.append((apply_intensity(warped_images, delta), warped_masks))
        if chain:
            candidates = candidates[-1:]  # GVI on every row
        choice = keras.random.randint((batch,), 0, len(candidates), seed=self.seed_generator)
        out_images, out_masks = candidates[0]
        for index, (cand_images, cand_masks) in enumerate(candidates[1:], start=1):
            chosen = tf.reshape(tf.equal(choice, index), (-1, 1, 1, 1))
            out_images = tf.where(chosen, cand_images, out_images)
            out_masks = tf.where(chosen, cand_masks, out_masks)
        return {
            "images": tf.stop_gradient(out_images),
            "segmentation_masks": tf.stop_gradient(out_masks),
        }

    def _scaled(self, field: tf.Tensor) -> tf.Tensor:
        """``field`` (B,H,W,C) times a per-row factor u ~ U(strength); unchanged for (1, 1)."""
        if self.strength == (1.0, 1.0):
            return field
        factor = keras.random.uniform(tf.shape(field)[:1], *self.strength, seed=self.seed_generator)
        return field * tf.cast(tf.reshape(factor, (-1, 1, 1, 1)), field.dtype)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "deformation": keras.saving.serialize_keras_object(self.deformation),
            "intensity": keras.saving.serialize_keras_object(self.intensity),
            "z_dim": self.z_dim,
            "seed": self.seed,
            "composition": self.composition,
            "strength": list(self.strength),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GeneratedAugmentation:
        """The layer with its generators rebuilt from their configs (weights not included)."""
        config = dict(config)
        for key in ("deformation", "intensity"):
            config[key] = keras.saving.deserialize_keras_object(config.get(key))
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfaug")
class ChainAugmentation(keras.layers.Layer):
    """Applies dict-to-dict augmentation layers one after the other (e.g. RD then RI)."""

    def __init__(self, stages: list[keras.layers.Layer], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stages = stages

    def build(self, input_shape: Any) -> None:
        """Nothing to create here: each stage builds itself on its first call."""
        self.built = True

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> dict:
        for stage in self.stages:
            inputs = stage(inputs, training=training)
        return inputs

    def get_config(self) -> dict[str, Any]:
        stages = [keras.saving.serialize_keras_object(stage) for stage in self.stages]
        return {**super().get_config(), "stages": stages}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ChainAugmentation:
        config = dict(config)
        config["stages"] = [keras.saving.deserialize_keras_object(s) for s in config["stages"]]
        return cls(**config)


def augment_second_half(
    layer: keras.layers.Layer, images: tf.Tensor, masks: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The batch composition of the augmentation methods: ``layer`` on the second half.

    Args:
        layer: a ``{"images", "segmentation_masks"}`` layer (called with ``training=True``).
        images: (B,H,W,1) float. masks: (B,H,W,C) one-hot or soft labels.

    Returns:
        ``(images, masks)`` of the same shapes: rows [0, B // 2) as they are, rows
        [B // 2, B) through ``layer`` (with B = 1, the one row is transformed). Under
        ``tf.distribute`` B is the replica's share, so each replica mixes alike.
    """
    half = tf.shape(images)[0] // 2
    out = layer({"images": images[half:], "segmentation_masks": masks[half:]}, training=True)
    images = tf.concat([images[:half], tf.cast(out["images"], images.dtype)], axis=0)
    masks = tf.concat([masks[:half], tf.cast(out["segmentation_masks"], masks.dtype)], axis=0)
    return images, masks


@keras.saving.register_keras_serializable(package="tfaug")
class SecondHalfAugmentation(keras.layers.Layer):
    """A ``{"images", "segmentation_masks"}`` layer that applies ``layer`` to the second half
    of the batch's rows and passes the first half through (:func:`augment_second_half`), as
    the final segmenter stage mixes generated pairs with the others (docs/method.md §6)."""

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape: Any) -> None:
        """Nothing to create here: the wrapped layer builds itself on its first call."""
        self.built = True

    def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> dict:
        images, masks = augment_second_half(
            self.layer, inputs["images"], inputs["segmentation_masks"]
        )
        return {**inputs, "images": images, "segmentation_masks": masks}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layer": keras.saving.serialize_keras_object(self.layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SecondHalfAugmentation:
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
