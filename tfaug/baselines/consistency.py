"""Weak-to-strong consistency on unlabeled slices: the ``fixmatch`` and ``unimatch`` comparisons.

:class:`ConsistencyModel` trains the segmenter S on labeled slices and, on unlabeled ones,
towards its own confident predictions (Sohn et al. 2020, FixMatch; Yang et al. 2023,
UniMatch, in the version of UniMatch's medical code):

- the *weak view* of every slice is the geometric augmentation of the labeled branch;
- the *teacher* is S itself on the weak view of the unlabeled slices, in the same training
  forward pass as the labeled slices; its softmax is cut from the gradient
  (``tf.stop_gradient``): pseudo-labels = argmax, kept where the maximum probability is at
  least the threshold (:func:`confident_pseudo_labels`);
- each *strong view* is an intensity perturbation of the weak view, then CutMix with the
  batch rolled by one slice; the pseudo-labels and confidences are mixed with the same boxes
  (:func:`tfaug.ops.cutmix.mix_boxes`), so each pixel keeps its image's target;
- ``unimatch`` has two strong views and a *feature-perturbation stream*: the encoder's five
  feature maps of the weak view, each with channel dropout, decoded and trained towards the
  same pseudo-labels. ``fixmatch`` has one strong view and no such stream.

The stage that runs it is :func:`tfaug.baselines.comparisons.train_comparison`. Export the
segmenter (``model.segmenter``), never this wrapper: the dropout lives here, not in S.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tfaug.losses import soft_dice_loss, weighted_cross_entropy
from tfaug.methods import SUPERVISED_LOSSES, UNLABELED_LOSSES
from tfaug.ops.augment import IMAGES, MASKS
from tfaug.ops.cutmix import mix_boxes
from tfaug.training.distribute import (
    cross_replica_mean,
    global_batch_size,
    replica_rows,
    scale_for_replicas,
)
from tfaug.training.gradients import step_gradients
from tfaug.training.precision import with_loss_scaling


def confident_pseudo_labels(
    logits: tf.Tensor, threshold: float, alignment: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The teacher's targets from its logits, with no gradient path back to them.

    Args:
        logits: (B,H,W,C) teacher logits (any float dtype).
        threshold: minimum of the maximum softmax probability of a kept pixel, in [0, 1].
        alignment: (C,) float32 positive factors, or ``None``: each pixel's softmax is
            multiplied by them and renormalised before the argmax and the threshold
            (distribution alignment, :meth:`ConsistencyModel.alignment_factors`).

    Returns:
        ``(labels, confidence, kept)``: one-hot argmax (B,H,W,C) float32, maximum
        probability (B,H,W) float32, and (B,H,W) float32 1 where confidence >= threshold.
        All three are ``tf.stop_gradient`` of the logits' functions.
    """
    probabilities = tf.nn.softmax(tf.stop_gradient(tf.cast(logits, tf.float32)), axis=-1)
    if alignment is not None:
        probabilities *= tf.stop_gradient(alignment)
        probabilities /= tf.reduce_sum(probabilities, axis=-1, keepdims=True)
    confidence = tf.reduce_max(probabilities, axis=-1)
    labels = tf.one_hot(tf.argmax(probabilities, axis=-1), tf.shape(probabilities)[-1])
    return labels, confidence, tf.cast(confidence >= threshold, tf.float32)


@keras.saving.register_keras_serializable(package="tfaug")
class ConsistencyModel(keras.Model):
    """Trains S with weak-to-strong consistency on unlabeled slices (see the module docstring).

    ``train_step(data)`` takes ``data = ((x_l, y_l), x_u)``: labeled images x_l (B_l,H,W,1)
    float32, labels y_l (B_l,H,W) int in [0, n_classes), unlabeled images x_u (B_u,H,W,1)
    float32. Per step (V = ``strong_views``):

    1. one-hot y_l; the weak view: ``weak`` on the labeled pair and on x_u (images only);
    2. the strong views of the weak x_u, outside the tape (they do not depend on S's
       weights): per view, ``strong`` (an intensity perturbation), then CutMix boxes
       (``cutmix``) with the batch rolled by one slice; the boxes are kept;
    3. one tape over S:
       a. the weak pass: S's encoder on concat(x_l, x_u) (training mode); its decoder on the
          features, and (``unimatch``) on the unlabeled rows' features after channel
          dropout, in the same decoder batch (B_l + 2·B_u rows);
       b. ``seg_loss`` on the labeled rows (``supervised_loss``);
       c. the teacher: :func:`confident_pseudo_labels` of the unlabeled rows' clean logits
          (no gradient), with ``distribution_alignment`` after aligning its softmax to the
          labeled slices' class shares (:meth:`alignment_factors`); ``confidence`` and
          ``kept_fraction`` are its mean maximum probability and the share of pixels at
          least ``threshold``;
       d. with ``learned``, the learned strong view (:meth:`learned_view`): the weak x_u
          transformed by ``learned``, with the pseudo-labels and confidence warped alike
          and the confidence re-checked against ``threshold``;
       e. the strong pass: S on the V strong views (and the learned view) in one batch
          (training mode); per view, the pseudo-labels and confidences mixed with that
          view's boxes, ``strong_loss_v`` = ``unlabeled_loss`` on the pixels whose (mixed)
          confidence >= ``threshold``; ``learned_loss`` the same on the learned view;
       f. ``fp_loss`` (``unimatch``): the same loss of the perturbed stream against the
          unmixed pseudo-labels;
       g. total = supervised_weight·seg + r·(strong_weight·Σ_v strong_v + feature_weight·fp
          + learned_weight·learned),
          r = 1, or with ``rampup_iterations`` = T > 0 the ramp-up r = exp(−5(1 − t/T)²) for
          the t < T updates made so far (``unlabeled_ramp``);
       Every term reaches S's weights (through the labeled rows, the strong views and the
       perturbed stream); no term reaches the pseudo-labels;
    4. update and return the trackers (:attr:`metrics`).

    Args:
        segmenter: S, a :class:`tfaug.models.unet.UNet` (its ``encode``/``decode`` give the
            feature maps; with ``feature_weight = 0`` any (B,H,W,1) → logits model does).
        n_classes: number of classes including background.
        class_weights: n_classes cross-entropy weights, background first.
        weak: a ``{"images", "segmentation_masks"}`` layer (masks optional), the weak view
            (e.g. :class:`tfaug.ops.augment.RandomAffine`); ``None``: the slices as they are.
        labeled: a ``{"images", "segmentation_masks"}`` layer the labeled pair gets instead
            of ``weak`` (e.g. the ``heavy`` augmentation, so the teacher learns the labeled
            slices under stronger augmentation than its weak view); ``None``: ``weak``.
        strong: an images-only layer applied to the weak unlabeled view for each strong view
            (e.g. :class:`tfaug.ops.heavy.HeavyIntensity`); ``None``: no perturbation.
        cutmix: a :class:`tfaug.ops.cutmix.CutMixBoxes`; ``None``: no CutMix.
        learned: a ``{"images", "segmentation_masks"}`` layer that transforms an image and a
            soft label map alike, the learned strong view (e.g.
            :class:`tfaug.ops.generated.GeneratedAugmentation` of frozen GV and GI with
            ``composition="chain"``: GI(GV(x_u))); ``None``: none.
        learned_weight: weight of ``learned_loss``; ``None``: ``strong_weight``.
        threshold: confidence threshold of a kept pixel, in [0, 1] (UniMatch: 0.95).
        strong_views: V >= 1 (``unimatch``: 2, ``fixmatch``: 1); V = 0 with ``learned``,
            which then replaces the generic views.
        feature_dropout: channel dropout rate of the perturbed stream, in [0, 1) (0.5).
        supervised_weight: weight of ``seg_loss`` (UniMatch: 0.5).
        strong_weight: weight of each strong view's loss (``unimatch``: 0.125;
            ``fixmatch``: 0.5).
        feature_weight: weight of ``fp_loss`` (``unimatch``: 0.25); 0: no perturbed stream.
        supervised_loss: ``"cross_entropy_dice"`` (UniMatch: (class-weighted CE + soft
            Dice) / 2) or ``"cross_entropy"`` (class-weighted; pair it with the
            ``"cross_entropy"`` unlabeled loss, whose gradients are of its scale).
        unlabeled_loss: ``"dice"`` (UniMatch's medical code: soft Dice over the kept pixels)
            or ``"cross_entropy"`` (class-weighted, zero on the other pixels, mean over all).
        rampup_iterations: T > 0: the unlabeled terms are ramped up over the first T updates
            by r(t) = exp(−5(1 − t/T)²) (Laine & Aila 2017, the ramp-up of SSL4MIS's
            consistency weight), so the teacher learns from the labeled slices before its
            pseudo-labels count; 0: off (UniMatch).
        distribution_alignment: align the teacher's class distribution on the unlabeled
            pixels to the labeled slices' (ReMixMatch's distribution alignment, Berthelot et
            al. 2020, per pixel; :meth:`alignment_factors`), so that a teacher cannot label
            far more pixels as one class than the labeled slices have; ``False``: off
            (UniMatch).
        seed: seed of the channel-dropout draws; ``None``: random.

    Distribution and precision: the step runs per replica under
    ``tfaug.training.distribute`` (B_l and B_u are the replica's shares; the dropout masks
    are drawn for the global batch and sliced, the augmentation layers draw per replica;
    CutMix rolls within the replica's slices; the soft Dice is a per-replica batch Dice, as
    in UniMatch's data-parallel code), and under ``mixed_float16`` (``compile`` wraps the
    optimiser in a ``LossScaleOptimizer``; the losses are float32).

    Does not validate or keep checkpoints (``tfaug.training.stage``).
    """

    NESTED_OBJECTS = ("segmenter", "weak", "labeled", "strong", "cutmix", "learned")
    """The constructor arguments that ``get_config`` serialises as Keras objects."""

    ALIGNMENT_MOMENTUM = 0.99
    """Momentum of the running class shares of distribution alignment (an average over the
    last ~100 steps; ReMixMatch averages the last 128 batches)."""

    ALIGNMENT_FLOOR = 1e-4
    """Added to both running class shares before their ratio (a share of the pixels), so a
    class that neither the labeled slices nor the teacher show keeps the factor 1."""

    def __init__(
        self,
        segmenter: keras.Model,
        *,
        n_classes: int,
        class_weights: Sequence[float],
        weak: keras.layers.Layer | None = None,
        labeled: keras.layers.Layer | None = None,
        strong: keras.layers.Layer | None = None,
        cutmix: keras.layers.Layer | None = None,
        learned: keras.layers.Layer | None = None,
        learned_weight: float | None = None,
        threshold: float = 0.95,
        strong_views: int = 2,
        feature_dropout: float = 0.5,
        supervised_weight: float = 0.5,
        strong_weight: float = 0.125,
        feature_weight: float = 0.25,
        supervised_loss: str = "cross_entropy_dice",
        unlabeled_loss: str = "dice",
        rampup_iterations: int = 0,
        distribution_alignment: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.learned = learned
        _check_arguments(
            n_classes=n_classes,
            class_weights=class_weights,
            threshold=threshold,
            strong_views=strong_views,
            learned=self.has_learned_view,
            feature_dropout=feature_dropout,
            weights=(supervised_weight, strong_weight, feature_weight, learned_weight or 0.0),
            supervised_loss=supervised_loss,
            unlabeled_loss=unlabeled_loss,
            rampup_iterations=rampup_iterations,
        )
        self.segmenter = segmenter
        self.weak = weak
        self.labeled = labeled
        self.strong = strong
        self.cutmix = cutmix
        self.learned_weight = float(strong_weight if learned_weight is None else learned_weight)
        self.n_classes = int(n_classes)
        self.class_weights = tuple(float(w) for w in class_weights)
        self.threshold = float(threshold)
        self.strong_views = int(strong_views)
        self.feature_dropout = float(feature_dropout)
        self.supervised_weight = float(supervised_weight)
        self.strong_weight = float(strong_weight)
        self.feature_weight = float(feature_weight)
        self.supervised_loss = supervised_loss
        self.unlabeled_loss = unlabeled_loss
        self.rampup_iterations = int(rampup_iterations)
        self.distribution_alignment = bool(distribution_alignment)
        if self.distribution_alignment:
            # Running class shares (C,) of the labeled slices and of the teacher's softmax on
            # the unlabeled ones; the same on every replica (cross-replica means).
            self.labeled_shares, self.teacher_shares = (
                self.add_weight(
                    shape=(self.n_classes,),
                    initializer="zeros",
                    trainable=False,
                    aggregation="only_first_replica",
                    name=name,
                )
                for name in ("labeled_shares", "teacher_shares")
            )
        self.seed = seed
        # Dropout masks for the global batch, identical on every replica (then sliced).
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.tracker_names}
        self.s_optimizer: keras.optimizers.Optimizer | None = None

    @property
    def perturbs_features(self) -> bool:
        """Whether the step has the feature-perturbation stream (``feature_weight > 0``)."""
        return self.feature_weight > 0

    @property
    def has_learned_view(self) -> bool:
        """Whether the step has a learned strong view (:meth:`learned_view`)."""
        return self.learned is not None

    @property
    def trained_weights(self) -> list:
        """The weights the step's optimiser updates: S's."""
        return self.segmenter.trainable_weights

    @property
    def tracker_names(self) -> tuple[str, ...]:
        """seg_loss, strong_loss (the mean over the generic views, with at least one),
        strong_loss_<v> for each view when there are several, fp_loss (with the perturbed
        stream), total_loss, confidence, kept_fraction, teacher_class_<c> for each
        foreground class c: the share of the unlabeled pixels whose pseudo-label is c (a
        teacher drifting to one class shows there first), unlabeled_ramp (with a ramp-up),
        and with a learned view its loss and the share of its pixels kept after the warp
        (learned_loss, learned_kept_fraction)."""
        views = [f"strong_loss_{v}" for v in range(1, self.strong_views + 1)]
        names = ["seg_loss", *(["strong_loss"] if views else [])]
        names += views if len(views) > 1 else []
        names += ["fp_loss"] if self.perturbs_features else []
        names += ["learned_loss", "learned_kept_fraction"] if self.has_learned_view else []
        shares = [f"teacher_class_{c}" for c in range(1, self.n_classes)]
        ramp = ["unlabeled_ramp"] if self.rampup_iterations > 0 else []
        return (*names, "total_loss", "confidence", "kept_fraction", *shares, *ramp)

    def unlabeled_ramp(self) -> tf.Tensor:
        """r(t) = exp(−5(1 − t/T)²) for the t updates S's optimiser has made, 1 from t = T on
        or without a ramp-up: float32 scalar."""
        if self.rampup_iterations <= 0:
            return tf.constant(1.0)
        if self.s_optimizer is None:
            raise RuntimeError("ConsistencyModel: a ramp-up needs compile(s_optimizer=...) first.")
        progress = tf.cast(self.s_optimizer.iterations, tf.float32) / self.rampup_iterations
        return tf.exp(-5.0 * tf.square(1.0 - tf.minimum(progress, 1.0)))

    def alignment_factors(self, y_onehot: tf.Tensor, teacher_logits: tf.Tensor) -> tf.Tensor:
        """Distribution alignment's factors, after updating the running class shares.

        Updates the running shares (momentum :attr:`ALIGNMENT_MOMENTUM`, from zero, with
        Adam's bias correction by S's optimiser step) with this step's class shares of the
        labeled one-hot labels and of the teacher's softmax on the unlabeled pixels (means
        over the pixels of the global batch), and returns labeled / teacher share per class
        (each + :attr:`ALIGNMENT_FLOOR`): multiplied into the teacher's softmax and
        renormalised, they move its class distribution to the labeled slices'.

        Args:
            y_onehot: (B_l,H,W,C) the labeled rows' one-hot labels.
            teacher_logits: (B_u,H,W,C) the teacher's logits on the unlabeled rows.

        Returns:
            (C,) float32 factors, no gradient.
        """
        if self.s_optimizer is None:
            raise RuntimeError("ConsistencyModel: alignment needs compile(s_optimizer=...) first.")
        probabilities = tf.nn.softmax(tf.stop_gradient(tf.cast(teacher_logits, tf.float32)), -1)
        momentum = self.ALIGNMENT_MOMENTUM
        steps = tf.cast(self.s_optimizer.iterations + 1, tf.float32)
        correction = 1.0 - tf.pow(momentum, steps)
        shares = []
        for running, batch in (
            (self.labeled_shares, tf.cast(y_onehot, tf.float32)),
            (self.teacher_shares, probabilities),
        ):
            value = cross_replica_mean(tf.reduce_mean(batch, axis=(0, 1, 2)))
            running.assign(momentum * running + (1.0 - momentum) * value)
            shares.append(running / correction + self.ALIGNMENT_FLOOR)
        return shares[0] / shares[1]

    def compile(self, s_optimizer: keras.optimizers.Optimizer, **kwargs: Any) -> None:
        """Set S's optimiser and create its slots now (a checkpoint restores them).

        Under the ``mixed_float16`` policy it is wrapped in a ``LossScaleOptimizer``. S must
        be built. Other keyword arguments go to ``keras.Model.compile``.
        """
        super().compile(optimizer=None, **kwargs)
        self.s_optimizer = with_loss_scaling(s_optimizer)
        self.s_optimizer.build(self.trained_weights)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The trackers, in :attr:`tracker_names` order."""
        return list(self.trackers.values())

    # ----------------------------------------------------------------------- the views

    def weak_views(self, x_l: Any, y_l: Any, x_u: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Step 1: ``(x_l (B_l,H,W,1), one-hot y_l (B_l,H,W,C), x_u (B_u,H,W,1))`` float32:
        the labeled pair after ``labeled`` (or ``weak``), together; the unlabeled images
        after ``weak``."""
        x_l, x_u = tf.cast(x_l, tf.float32), tf.cast(x_u, tf.float32)
        y_onehot = tf.one_hot(tf.cast(y_l, tf.int32), self.n_classes)
        labeled_view = self.labeled or self.weak
        if labeled_view is not None:
            pair = labeled_view({IMAGES: x_l, MASKS: y_onehot}, training=True)
            x_l, y_onehot = pair[IMAGES], pair[MASKS]
        if self.weak is not None:
            x_u = self.weak({IMAGES: x_u}, training=True)[IMAGES]
        # One dtype for the weak pass's concat (the layers may compute in different ones
        # under mixed precision).
        return tf.cast(x_l, x_u.dtype), y_onehot, x_u

    def strong_batch(self, x_u: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """Step 2: the V strong views of the weak unlabeled view and their CutMix boxes.

        Args:
            x_u: (B_u,H,W,1) float32, the weak view.

        Returns:
            V images (B_u,H,W,1) float32 (``strong``, then CutMix with the view rolled by
            one slice) and V boxes (B_u,H,W) bool (all false without ``cutmix``).
        """
        images, boxes = [], []
        for _ in range(self.strong_views):
            view = x_u if self.strong is None else self.strong({IMAGES: x_u}, training=True)[IMAGES]
            if self.cutmix is None:
                box = tf.zeros(tf.shape(view)[:3], tf.bool)
            else:
                box = self.cutmix(view, training=True)
            images.append(mix_boxes(box, [view])[0])
            boxes.append(box)
        return images, boxes

    def channel_dropout(self, features: tf.Tensor) -> tf.Tensor:
        """Zero each channel of each slice with probability ``feature_dropout`` and scale
        the rest by 1 / (1 − rate) (``SpatialDropout2D``; PyTorch's ``Dropout2d``).

        Args:
            features: (B,h,w,c) feature maps, any float dtype.

        Returns:
            The same shape and dtype. The (B,c) masks are drawn for the global batch and
            this replica's rows taken, so a distributed step drops what one device would.
        """
        rows = tf.shape(features)[0]
        draws = keras.random.uniform(
            (global_batch_size(rows), features.shape[-1]), seed=self.seed_generator
        )
        keep = tf.cast(replica_rows(draws, rows) >= self.feature_dropout, features.dtype)
        scale = tf.cast(1.0 / (1.0 - self.feature_dropout), features.dtype)
        return features * (keep * scale)[:, None, None, :]

    def weak_pass(
        self, images: tf.Tensor, n_labeled: tf.Tensor, training: bool = True
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Step 3a: S on concat(x_l, x_u), and the perturbed stream of the unlabeled rows.

        Args:
            images: (B_l + B_u,H,W,1) float32, labeled rows first.
            n_labeled: B_l.
            training: S's BatchNormalization mode (the step uses ``True``). The channel
                dropout of the perturbed stream is drawn either way; nothing else is dropped.

        Returns:
            ``(clean, perturbed)``: logits (B_l + B_u,H,W,C) float32 of every row, and of
            the unlabeled rows decoded from their channel-dropped features (B_u,H,W,C), or
            ``None`` without the stream. With the stream, the decoder sees B_l + 2·B_u rows
            in one batch (its BatchNormalization statistics include the perturbed rows).
        """
        if not self.perturbs_features:
            return self.segmenter(images, training=training), None
        features = self.segmenter.encode(images, training=training)
        perturbed = [self.channel_dropout(f[n_labeled:]) for f in features]
        both = [tf.concat([f, p], axis=0) for f, p in zip(features, perturbed, strict=True)]
        logits = self.segmenter.decode(both, training=training)
        rows = tf.shape(images)[0]
        return logits[:rows], logits[rows:]

    def view_targets(
        self, pseudo_labels: tf.Tensor, confidence: tf.Tensor, boxes: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Step 3d: a strong view's targets, the teacher's mixed with the view's boxes.

        Args:
            pseudo_labels: (B_u,H,W,C) one-hot. confidence: (B_u,H,W) float32.
            boxes: (B_u,H,W) bool, the boxes the view's images were mixed with.

        Returns:
            ``(labels (B_u,H,W,C), kept (B_u,H,W) float32)``: inside a box, the pseudo-labels
            and the confidence of the slice the box came from (the batch rolled by one, as
            the images); kept where that confidence >= ``threshold``.
        """
        labels, confidence = mix_boxes(boxes, [pseudo_labels, confidence])
        return labels, tf.cast(confidence >= self.threshold, tf.float32)

    def learned_view(
        self, x_u: tf.Tensor, pseudo_labels: tf.Tensor, confidence: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Step 3d': the learned strong view of the weak unlabeled images and its targets.

        ``learned`` transforms the images and, as a soft label map, the teacher's one-hot
        pseudo-labels and confidence stacked together, so both are warped by exactly the
        field applied to the image (an intensity change leaves them as they are).

        Args:
            x_u: (B_u,H,W,1) the weak unlabeled view.
            pseudo_labels: (B_u,H,W,C) one-hot, no gradient. confidence: (B_u,H,W) float32.

        Returns:
            ``{"images": (B_u,H,W,1), "labels": (B_u,H,W,C) soft, "kept": (B_u,H,W)
            float32}``: kept where the warped confidence is still >= ``threshold``. No
            gradient flows into any of them. (A subclass may add tensors; they reach
            :meth:`compute_losses`' result prefixed ``learned_``.)
        """
        targets = tf.concat([pseudo_labels, confidence[..., None]], axis=-1)
        view = self.learned({IMAGES: x_u, MASKS: targets}, training=True)
        images = tf.stop_gradient(tf.cast(view[IMAGES], x_u.dtype))
        warped = tf.stop_gradient(tf.cast(view[MASKS], tf.float32))
        kept = tf.cast(warped[..., -1] >= self.threshold, tf.float32)
        return {"images": images, "labels": warped[..., :-1], "kept": kept}

    # ----------------------------------------------------------------------- the losses

    def labeled_loss(self, y_onehot: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """``seg_loss``: (B,H,W,C) targets and logits → float32 scalar (``supervised_loss``)."""
        cross_entropy = weighted_cross_entropy(y_onehot, logits, self.class_weights)
        if self.supervised_loss == "cross_entropy":
            return cross_entropy
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return 0.5 * (cross_entropy + soft_dice_loss(y_onehot, probabilities))

    def consistency_loss(
        self, pseudo_labels: tf.Tensor, kept: tf.Tensor, logits: tf.Tensor
    ) -> tf.Tensor:
        """An unlabeled loss (``unlabeled_loss``) on the kept pixels.

        Args:
            pseudo_labels: (B,H,W,C) one-hot targets (no gradient).
            kept: (B,H,W) float32 1 where the target counts.
            logits: (B,H,W,C) the student's logits.

        Returns:
            float32 scalar; 0 when no pixel is kept.
        """
        if self.unlabeled_loss == "dice":
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            return soft_dice_loss(pseudo_labels, probabilities, kept)
        targets = pseudo_labels * kept[..., None]
        return weighted_cross_entropy(targets, logits, self.class_weights)

    def compute_losses(
        self,
        x_l: tf.Tensor,
        y_onehot: tf.Tensor,
        x_u: tf.Tensor,
        strong: Sequence[tf.Tensor],
        boxes: Sequence[tf.Tensor],
    ) -> dict[str, tf.Tensor]:
        """Step 3 of the class docstring (run it under a tape).

        Args:
            x_l: (B_l,H,W,1) float32 weak labeled images. y_onehot: (B_l,H,W,C) labels.
            x_u: (B_u,H,W,1) float32 weak unlabeled images.
            strong: V strong views (B_u,H,W,1); boxes: their V CutMix boxes (B_u,H,W) bool.

        Returns:
            float32 scalars named as :attr:`tracker_names`, and the teacher's tensors
            ``pseudo_labels`` (B_u,H,W,C) and ``confidence_map`` (B_u,H,W), with no gradient.
            Calls S with ``training=True`` (its BatchNormalization statistics move).
        """
        n_labeled = tf.shape(x_l)[0]
        clean, perturbed = self.weak_pass(tf.concat([x_l, x_u], axis=0), n_labeled)
        losses = {"seg_loss": self.labeled_loss(y_onehot, clean[:n_labeled])}
        teacher_logits = clean[n_labeled:]
        alignment = (
            self.alignment_factors(y_onehot, teacher_logits)
            if self.distribution_alignment
            else None
        )
        pseudo_labels, confidence, kept = confident_pseudo_labels(
            teacher_logits, self.threshold, alignment
        )
        views = list(strong)
        if self.has_learned_view:
            learned = self.learned_view(x_u, pseudo_labels, confidence)
            views.append(learned["images"])
        # One dtype for the strong pass's concat (the layers may compute in different ones
        # under mixed precision).
        views = [tf.cast(view, x_u.dtype) for view in views]
        strong_logits = tf.split(
            self.segmenter(tf.concat(views, axis=0), training=True), len(views)
        )
        if self.has_learned_view:
            losses.update({f"learned_{name}": value for name, value in learned.items()})
            losses["learned_loss"] = self.consistency_loss(
                learned["labels"], learned["kept"], strong_logits.pop()
            )
            losses["learned_kept_fraction"] = tf.reduce_mean(learned["kept"])
        view_losses = []
        for logits, box in zip(strong_logits, boxes, strict=True):
            labels, view_kept = self.view_targets(pseudo_labels, confidence, box)
            view_losses.append(self.consistency_loss(labels, view_kept, logits))
        unlabeled = tf.constant(0.0)
        if view_losses:
            losses["strong_loss"] = tf.add_n(view_losses) / len(view_losses)
            unlabeled += self.strong_weight * tf.add_n(view_losses)
        if len(view_losses) > 1:
            losses.update({f"strong_loss_{v}": loss for v, loss in enumerate(view_losses, 1)})
        if self.has_learned_view:
            unlabeled += self.learned_weight * losses["learned_loss"]
        if perturbed is not None:
            losses["fp_loss"] = self.consistency_loss(pseudo_labels, kept, perturbed)
            unlabeled += self.feature_weight * losses["fp_loss"]
        ramp = self.unlabeled_ramp()
        total = self.supervised_weight * losses["seg_loss"] + ramp * unlabeled
        if self.rampup_iterations > 0:
            losses["unlabeled_ramp"] = ramp
        losses.update(
            total_loss=total,
            confidence=tf.reduce_mean(confidence),
            kept_fraction=tf.reduce_mean(kept),
            **{
                f"teacher_class_{c}": tf.reduce_mean(pseudo_labels[..., c])
                for c in range(1, self.n_classes)
            },
            pseudo_labels=pseudo_labels,
            confidence_map=confidence,
        )
        return losses

    # ----------------------------------------------------------------------- Keras steps

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One step on ``((x_l, y_l), x_u)`` (see the class docstring); tracker means."""
        if self.s_optimizer is None:
            raise RuntimeError("ConsistencyModel: call compile(s_optimizer=...) before training.")
        # 1. Unpack: x_l (B_l,H,W,1), y_l (B_l,H,W) int, x_u (B_u,H,W,1); the weak views.
        (x_l, y_l), x_u = data
        x_l, y_onehot, x_u = self.weak_views(x_l, y_l, x_u)

        # 2. The V strong views of the weak x_u and their CutMix boxes (no weights involved).
        strong, boxes = self.strong_batch(x_u)

        # 3. One tape over S: the weak pass (+ perturbed stream), the teacher (cut from the
        #    gradient), the strong pass; every loss term reaches S's weights only.
        weights = self.trained_weights
        with tf.GradientTape() as tape:
            losses = self.compute_losses(x_l, y_onehot, x_u, strong, boxes)
            # Divided by the replicas (their gradients are summed), scaled for mixed precision.
            scaled = self.s_optimizer.scale_loss(scale_for_replicas(losses["total_loss"]))
        gradients = step_gradients(tape, scaled, weights, "consistency step, S")
        self.s_optimizer.apply(gradients, weights)
        losses.update(self.after_update(x_u, losses))

        # 4. Trackers.
        for name, tracker in self.trackers.items():
            tracker.update_state(losses[name])
        result = {name: tracker.result() for name, tracker in self.trackers.items()}
        result["total_loss"] = losses["total_loss"]  # this step's loss (NaN check)
        return result

    def after_update(self, x_u: tf.Tensor, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """What a step does after S's update (a subclass's second network): nothing here.

        Args:
            x_u: (B_u,H,W,1) the weak unlabeled view. losses: :meth:`compute_losses`' result.

        Returns:
            More tracker values by name (none here).
        """
        return {}

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """Segment ``inputs`` (B,H,W,1) with S: logits (B,H,W,n_classes), no softmax."""
        return self.segmenter(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            segmenter=keras.saving.serialize_keras_object(self.segmenter),
            weak=keras.saving.serialize_keras_object(self.weak),
            labeled=keras.saving.serialize_keras_object(self.labeled),
            strong=keras.saving.serialize_keras_object(self.strong),
            cutmix=keras.saving.serialize_keras_object(self.cutmix),
            learned=keras.saving.serialize_keras_object(self.learned),
            learned_weight=self.learned_weight,
            n_classes=self.n_classes,
            class_weights=list(self.class_weights),
            threshold=self.threshold,
            strong_views=self.strong_views,
            feature_dropout=self.feature_dropout,
            supervised_weight=self.supervised_weight,
            strong_weight=self.strong_weight,
            feature_weight=self.feature_weight,
            supervised_loss=self.supervised_loss,
            unlabeled_loss=self.unlabeled_loss,
            rampup_iterations=self.rampup_iterations,
            distribution_alignment=self.distribution_alignment,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConsistencyModel:
        config = dict(config)
        for key in cls.NESTED_OBJECTS:
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _check_arguments(
    *,
    n_classes: int,
    class_weights: Sequence[float],
    threshold: float,
    strong_views: int,
    learned: bool,
    feature_dropout: float,
    weights: Sequence[float],
    supervised_loss: str,
    unlabeled_loss: str,
    rampup_iterations: int,
) -> None:
    """Collect every problem with the constructor arguments and raise once."""
    problems = []
    if len(class_weights) != n_classes:
        problems.append(
            f"class_weights needs one weight per class ({n_classes}), found {list(class_weights)}"
        )
    if not 0.0 <= threshold <= 1.0:
        problems.append(f"threshold must be in [0, 1], found {threshold}")
    if int(strong_views) != strong_views or strong_views < (0 if learned else 1):
        problems.append(
            f"strong_views must be an integer >= {0 if learned else 1} (0 only with a "
            f"learned view), found {strong_views}"
        )
    if not 0.0 <= feature_dropout < 1.0:
        problems.append(f"feature_dropout must be in [0, 1), found {feature_dropout}")
    if int(rampup_iterations) != rampup_iterations or rampup_iterations < 0:
        problems.append(f"rampup_iterations must be an integer >= 0, found {rampup_iterations}")
    if any(not weight >= 0 for weight in weights):
        problems.append(f"the loss weights must be >= 0, found {list(weights)}")
    if supervised_loss not in SUPERVISED_LOSSES:
        problems.append(
            f"supervised_loss must be one of {SUPERVISED_LOSSES}, found {supervised_loss!r}"
        )
    if unlabeled_loss not in UNLABELED_LOSSES:
        problems.append(
            f"unlabeled_loss must be one of {UNLABELED_LOSSES}, found {unlabeled_loss!r}"
        )
    if problems:
        raise ValueError(
            "ConsistencyModel: " + "; ".join(problems) + ". Fix the config's ssl section "
            "(ssl.class_weights: one weight per class, or null)."
        )
