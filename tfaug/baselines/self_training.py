"""Self-training with refined pseudo-labels, the ``self_training`` comparison (Bai et al. 2017).

The pieces of one round: S labels the unlabeled volumes (inference mode, volume by volume,
:func:`pseudo_label_volumes`); the labels are refined (:func:`refine_pseudo_labels`, the
deterministic stand-in for the paper's CRF); they are stored per round
(:func:`save_pseudo_labels`, :func:`load_pseudo_labels`) and served as training batches
(:func:`pseudo_labeled_dataset`); :class:`SelfTrainingModel` retrains S on half labeled,
half pseudo-labeled batches. The rounds themselves are run by
:mod:`tfaug.baselines.comparisons`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from scipy import ndimage

from tfaug.analysis.evaluation import VolumeSlices, predict_probabilities
from tfaug.io import atomic_path
from tfaug.losses import weighted_cross_entropy
from tfaug.training.distribute import scale_for_replicas
from tfaug.training.gradients import step_gradients
from tfaug.training.segmenter import SegmenterModel

# 6-connectivity in 3D (faces only): blobs touching by an edge or a corner stay apart.
_FACES_3D = ndimage.generate_binary_structure(3, 1)


def refine_pseudo_labels(
    probabilities: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Refine S's prediction of one volume into pseudo-labels and per-pixel loss weights.

    1. labels = argmax over classes;
    2. per foreground class, only the largest 3D connected component (6-connectivity) is
       kept; the pixels of the other components become background;
    3. per slice, background holes of each foreground class's 2D mask are filled with
       that class; a structure enclosed by another keeps its label (the LV cavity inside
       the myocardium stays LV), and a hole enclosed by both takes the innermost class;
    4. weight 1 where the maximum softmax probability is at least ``confidence`` or where
       steps 2–3 changed the label, 0 elsewhere (those pixels give no loss).

    Args:
        probabilities: float (Z,H,W,C) softmax probabilities of one volume, C ≥ 2,
            background first.
        confidence: threshold in [0, 1] on the maximum probability.

    Returns:
        labels uint8 (Z,H,W) in [0, C) and weights float32 (Z,H,W) in {0, 1}.

    Raises:
        ValueError: ``probabilities`` is not 4-D with at least two classes, or
            ``confidence`` is outside [0, 1].

    Does not smooth boundaries, use the image, or look at other volumes (no CRF).
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[-1] < 2:
        raise ValueError(
            f"refine_pseudo_labels: expected probabilities of shape (Z,H,W,C) with C >= 2, "
            f"found {probabilities.shape}. Pass the softmax of one volume's slices."
        )
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(
            f"refine_pseudo_labels: confidence must be in [0, 1], found {confidence}. "
            "Set train.pseudo_label_confidence."
        )
    predicted = probabilities.argmax(axis=-1).astype(np.uint8)
    labels = predicted.copy()
    for label in range(1, probabilities.shape[-1]):
        components, count = ndimage.label(labels == label, structure=_FACES_3D)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            labels[(components > 0) & (components != 1 + int(sizes.argmax()))] = 0
    for plane in labels:  # a view: the slice is filled in place
        _fill_holes(plane, probabilities.shape[-1])
    trusted = (probabilities.max(axis=-1) >= confidence) | (labels != predicted)
    return labels, trusted.astype(np.float32)


def _fill_holes(plane: np.ndarray, n_classes: int) -> None:
    """Fill the background holes of each foreground class's mask in one (H,W) slice.

    A background pixel enclosed by several classes (a hole in the LV cavity is enclosed by
    the LV and by the myocardium around it) takes the innermost one: classes are written
    in order of decreasing filled area, so the smallest enclosing mask is written last.
    """
    background = plane == 0
    fills = []
    for label in range(1, n_classes):
        filled = ndimage.binary_fill_holes(plane == label)
        fills.append((int(filled.sum()), label, filled & background))
    for _, label, holes in sorted(fills, key=lambda fill: fill[0], reverse=True):
        plane[holes] = label


@dataclass
class PseudoLabels:
    """The refined pseudo-labels of the unlabeled volumes, slices concatenated in order.

    Attributes:
        case_ids: the volumes, in order.
        n_slices: slices per volume (Z of each), same order.
        labels: uint8 (N,H,W) class indices, N = sum(n_slices).
        weights: float32 (N,H,W) per-pixel loss weights in {0, 1}.
    """

    case_ids: list[str]
    n_slices: list[int]
    labels: np.ndarray
    weights: np.ndarray


def pseudo_label_volumes(
    segmenter: keras.Model, volumes: Sequence[VolumeSlices], confidence: float
) -> PseudoLabels:
    """Label each volume with S in inference mode, then refine it (:func:`refine_pseudo_labels`).

    Args:
        segmenter: S, (B,H,W,1) → logits (B,H,W,C).
        volumes: the unlabeled volumes (their stored labels are not read).
        confidence: see :func:`refine_pseudo_labels`.
    """
    labels, weights = [], []
    for volume in volumes:
        refined, trusted = refine_pseudo_labels(
            predict_probabilities(segmenter, volume.images), confidence
        )
        labels.append(refined)
        weights.append(trusted)
    return PseudoLabels(
        case_ids=[volume.case_id for volume in volumes],
        n_slices=[len(volume.images) for volume in volumes],
        labels=np.concatenate(labels),
        weights=np.concatenate(weights),
    )


def save_pseudo_labels(path: Path, pseudo: PseudoLabels) -> None:
    """Write ``pseudo`` to an ``.npz`` file through a temporary sibling and an atomic rename."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(
            handle,
            case_ids=np.array(pseudo.case_ids),
            n_slices=np.array(pseudo.n_slices, dtype=np.int64),
            labels=pseudo.labels.astype(np.uint8),
            weights=pseudo.weights.astype(np.uint8),
        )


def load_pseudo_labels(path: Path) -> PseudoLabels:
    """Read what :func:`save_pseudo_labels` wrote (weights back to float32)."""
    with np.load(Path(path)) as content:
        return PseudoLabels(
            case_ids=[str(case_id) for case_id in content["case_ids"]],
            n_slices=[int(n) for n in content["n_slices"]],
            labels=content["labels"],
            weights=content["weights"].astype(np.float32),
        )


def pseudo_labeled_dataset(
    volumes: Sequence[VolumeSlices],
    pseudo: PseudoLabels,
    n_classes: int,
    batch_size: int,
    seed: int,
) -> tf.data.Dataset:
    """Infinite shuffled batches of unlabeled slices with their weighted pseudo-labels.

    Args:
        volumes: the unlabeled volumes, in the order of ``pseudo.case_ids``.
        pseudo: their pseudo-labels.
        n_classes: C.
        batch_size: slices per batch (every batch is full).
        seed: shuffle seed.

    Returns:
        A dataset of ``(images float32 (B,H,W,1), targets float32 (B,H,W,C))``: targets
        are the one-hot pseudo-labels times the pixel weight, so a zero-weight pixel is an
        all-zero vector and gives no cross-entropy.

    Raises:
        ValueError: the volumes are not those the pseudo-labels were made for.
    """
    found = ([v.case_id for v in volumes], [len(v.images) for v in volumes])
    if found != (pseudo.case_ids, pseudo.n_slices):
        raise ValueError(
            f"pseudo-labels of volumes {pseudo.case_ids} with {pseudo.n_slices} slices, but "
            f"the unlabeled volumes are {found[0]} with {found[1]} slices. Delete the round's "
            "pseudo_labels.npz (or use --force) so that they are made again."
        )
    images = np.concatenate([volume.images for volume in volumes])

    def to_targets(image, label, weight):
        return image, tf.one_hot(tf.cast(label, tf.int32), n_classes) * weight[..., None]

    return (
        tf.data.Dataset.from_tensor_slices((images, pseudo.labels, pseudo.weights))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .map(to_targets, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


class SelfTrainingModel(SegmenterModel):
    """Retrains S on labeled and pseudo-labeled slices (one self-training round).

    ``train_step(data)`` takes ``data = ((x_l, y_l), (x_p, t_p))``: labeled images x_l
    (B_l,H,W,1) float32 with labels y_l (B_l,H,W) int32, and pseudo-labeled images x_p
    (B_p,H,W,1) float32 with weighted one-hot targets t_p (B_p,H,W,C) float32
    (:func:`pseudo_labeled_dataset`). Per step:

    1. one-hot y_l; both pairs are affine-augmented together (one draw per row; all-zero
       target pixels stay all-zero under the nearest-neighbour mask transform);
    2. one tape over S on the concatenated batch: ``seg_loss`` = weighted cross-entropy on
       the labeled rows, ``pseudo_loss`` on the pseudo-labeled rows, ``total_loss`` = their
       row-weighted mean (= the cross-entropy of the whole batch); update S;
    3. update and return the trackers ``seg_loss``, ``pseudo_loss`` and this step's
       ``total_loss``.

    Args: those of :class:`SegmenterModel`, without ``augmentation``.
    """

    def __init__(
        self,
        segmenter: keras.Model,
        *,
        n_classes: int,
        class_weights: Sequence[float],
        affine: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(
            segmenter, n_classes=n_classes, class_weights=class_weights, affine=affine, **kwargs
        )
        self.pseudo_loss_tracker = keras.metrics.Mean(name="pseudo_loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.seg_loss_tracker, self.pseudo_loss_tracker]

    def train_step(self, data):
        # 1. Unpack, one-hot, augment both pairs with one affine call (no gradient).
        (x_l, y_l), (x_p, t_p) = data
        n_labeled = tf.shape(x_l)[0]
        images = tf.concat([tf.cast(x_l, tf.float32), tf.cast(x_p, tf.float32)], axis=0)
        targets = tf.concat([tf.one_hot(y_l, self.n_classes), tf.cast(t_p, tf.float32)], 0)
        images, targets = self.augment_batch(images, targets)
        images, targets = tf.stop_gradient(images), tf.stop_gradient(targets)
        # 2. L_S on labeled and pseudo-labeled rows; the gradient reaches S's weights only.
        with tf.GradientTape() as tape:
            logits = self.segmenter(images, training=True)
            seg_loss = weighted_cross_entropy(
                targets[:n_labeled], logits[:n_labeled], self.class_weights
            )
            pseudo_loss = weighted_cross_entropy(
                targets[n_labeled:], logits[n_labeled:], self.class_weights
            )
            share = tf.cast(n_labeled, tf.float32) / tf.cast(tf.shape(images)[0], tf.float32)
            loss = share * seg_loss + (1.0 - share) * pseudo_loss
            scaled = self.optimizer.scale_loss(scale_for_replicas(loss))  # as SegmenterModel
        variables = self.segmenter.trainable_variables
        gradients = step_gradients(tape, scaled, variables, "self-training step")
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        # 3. Trackers.
        self.seg_loss_tracker.update_state(seg_loss)
        self.pseudo_loss_tracker.update_state(pseudo_loss)
        return {
            "seg_loss": self.seg_loss_tracker.result(),
            "pseudo_loss": self.pseudo_loss_tracker.result(),
            "total_loss": loss,
        }
