"""What a training method needs to run its stages: the :class:`StageContext`.

Algorithm 1 (:mod:`tfaug.runs.algorithm`) and the comparison methods
(:mod:`tfaug.baselines`) train through the same context, so every stage is run with the
same schedule switches (validation period, model selection, score smoothing, XLA,
distribution) from one place, :meth:`StageContext.run_stage`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from tfaug.analysis.evaluation import VolumeSlices, validation_dice
from tfaug.config import Config
from tfaug.data.pipeline import labeled_dataset, unlabeled_dataset
from tfaug.data.records import Cache
from tfaug.data.splits import Split
from tfaug.methods import GENERATOR_STAGES, final_stage, stage_seed
from tfaug.source_guard import check_source_unchanged
from tfaug.training.loop import StageResult, run_stage


@dataclass
class StageContext:
    """The data, folders and schedule a run's stages share.

    Attributes:
        cfg: the run's resolved config.
        cache: the prepared TFRecords cache.
        split: the run's split (labeled, unlabeled, validation, test case ids).
        validation: the validation volumes, in memory.
        stage_dir: stage name → its folder (created by the stage).
        writer: TensorBoard writer of the run.
        strategy: the ``tf.distribute`` strategy models are created under.
        progress: show progress bars.
        results: every stage run so far, by name (filled by :meth:`run_stage`).
        extra_validation: the extra validation volumes (``split.n_extra_validation``), in
            memory; with them every validated stage also keeps ``best_wide/``, its best step
            on ``validation + extra_validation``.
    """

    cfg: Config
    cache: Cache
    split: Split
    validation: list[VolumeSlices]
    stage_dir: Callable[[str], Path]
    writer: tf.summary.SummaryWriter
    strategy: tf.distribute.Strategy
    progress: bool = True
    results: dict[str, StageResult] = field(default_factory=dict)
    extra_validation: list[VolumeSlices] = field(default_factory=list)

    def seed(self, offset: int) -> int:
        """The seed of a stage with seed offset ``offset`` (:data:`STAGE_SEED_OFFSETS`)."""
        return stage_seed(self.cfg.train.seed, offset)

    def labeled(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Infinite shuffled labeled batches ``(x (B,H,W,1), y (B,H,W) int)``."""
        return labeled_dataset(self.cache, self.split.labeled, batch_size, seed)

    def unlabeled(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Infinite shuffled unlabeled batches ``x (B,H,W,1)``."""
        return unlabeled_dataset(self.cache, self.split.unlabeled, batch_size, seed)

    @property
    def selects_best(self) -> bool:
        """Whether validated stages keep the best validation checkpoint (else the last)."""
        return self.cfg.train.model_selection == "best"

    def run_stage(
        self,
        name: str,
        model: keras.Model,
        make_dataset: Callable[[int], tf.data.Dataset],
        iterations: int,
        keep: dict[str, keras.Model],
        *,
        validated: keras.Model | None = None,
        on_validation: Callable[[int], None] | None = None,
    ) -> StageResult:
        """Run (or resume, or skip when finished) stage ``name`` and record its result.

        Args:
            name: the stage's folder name.
            model: the compiled training model.
            make_dataset: start step → infinite dataset of training batches.
            iterations: the stage's total steps.
            keep: sub-models whose weights the stage keeps, by file stem.
            validated: the segmenter to validate every ``train.validate_every`` steps and
                select the kept weights by (with ``train.model_selection: best``);
                ``None``: the stage keeps its last weights.
            on_validation: called with the step after each validation.

        Raises:
            tfaug.source_guard.SourceChangedError: tfaug's files changed since this process
                started (the stage would trace their new source).
        """
        check_source_unchanged(f"stage {name!r}")
        train = self.cfg.train
        validate = validate_wide = None
        marks: list[int] = []
        patience = 0
        if validated is not None and self.selects_best:
            n_classes = self.cfg.data.n_classes

            latest: dict[str, float] = {}

            def validate() -> float:
                latest["score"] = validation_dice(validated, self.validation, n_classes)
                return latest["score"]

            if self.extra_validation:
                n, k = len(self.validation), len(self.extra_validation)

                def validate_wide() -> float:
                    # The mean over all n + k volumes; run_stage calls validate() first, so
                    # the n validation volumes are predicted once per validation.
                    extra = validation_dice(validated, self.extra_validation, n_classes)
                    return (n * latest["score"] + k * extra) / (n + k)

            marks = budget_marks(self.cfg, name, iterations)
            patience = stage_patience(self.cfg, name)
        result = run_stage(
            name=name,
            model=model,
            make_dataset=make_dataset,
            iterations=iterations,
            stage_dir=self.stage_dir(name),
            keep=keep,
            validate=validate,
            validate_every=train.validate_every,
            writer=self.writer,
            on_validation=on_validation,
            jit_compile=train.jit_compile,
            progress=self.progress,
            strategy=self.strategy,
            score_smoothing=train.validation_smoothing,
            validate_wide=validate_wide,
            budget_marks=marks,
            patience=patience,
        )
        self.results[name] = result
        return result


def budget_marks(cfg: Config, name: str, iterations: int) -> list[int]:
    """The steps at which stage ``name`` of a ``cfg`` run keeps its choice so far.

    ``train.budget_marks`` = n: the ends of the first n − 1 of n equal parts of the stage,
    each rounded down to a validation step (``train.validate_every``); only the run's final
    stage has marks (:func:`tfaug.methods.final_stage`).
    """
    train = cfg.train
    if train.budget_marks < 2 or name != final_stage(cfg.method, train.self_training_rounds):
        return []
    every, n = train.validate_every, train.budget_marks
    marks = {iterations * i // n // every * every for i in range(1, n)}
    return sorted(m for m in marks if 0 < m < iterations)


def stage_patience(cfg: Config, name: str) -> int:
    """The patience of stage ``name`` of a ``cfg`` run, in steps (0: the stage runs its budget).

    ``train.generator_patience`` for the generator stages; the other stages always run their
    budget (the final stage's fixed length is what comparisons at equal iterations need).
    """
    return cfg.train.generator_patience if name in GENERATOR_STAGES else 0
