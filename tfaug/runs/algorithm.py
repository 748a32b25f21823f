"""Algorithm 1 of the paper, end to end (docs/method.md §2), as resumable stages.

1. Prepare (or reuse) the TFRecords cache and the split.
2. ``pretrain``: S on labeled slices with affine augmentation (generator methods only).
3. ``generator_deformation``: (S, GV, DV) trained jointly from the pre-trained S; S is
   validated every k iterations and GV's weights at the best score are kept.
4. ``generator_intensity``: the same for (S, GI, DI), independently.
5. ``segmenter``: a fresh S trained on labeled + affine + the method's samples (for
   ``gdgi``: X_GV, X_GI, X_GVI generated on the fly from the frozen best generators);
   the best validation checkpoint is kept.
6. Test evaluation at native resolution, figures, and ``results.json`` (written last).
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfaug.analysis.diagnostics import write_run_diagnostics
from tfaug.analysis.evaluation import evaluate_test, load_volumes, summarise
from tfaug.analysis.figures import save_generator_figures, save_prediction_figure
from tfaug.baselines.comparisons import train_comparison
from tfaug.config import Config
from tfaug.data.datasets import list_cases
from tfaug.data.pipeline import labeled_dataset
from tfaug.data.records import prepare_cache, resolve_data_root
from tfaug.data.splits import Split, split_cases
from tfaug.io import write_json_atomic
from tfaug.methods import (
    COMPARISON_METHODS,
    FINAL_STAGE_GENERATORS,
    GENERATOR_METHODS,
    METHODS,
    PRETRAIN_STAGE,
    SEGMENTER_STAGE,
    STAGE_SEED_OFFSETS,
    final_stage,
    generator_stage,
)
from tfaug.models.generator import Generator
from tfaug.runs.rundir import RunDirectory
from tfaug.runs.shared import (
    GENERATOR_WEIGHTS,
    exclusive_lock,
    generator_weights_sha256,
    open_generator_directory,
)
from tfaug.source_guard import check_source_unchanged
from tfaug.training.builders import (
    build_adam,
    build_discriminator,
    build_generator,
    build_joint_model,
    build_labeled_augmentation,
    build_method_augmentation,
    build_segmenter,
)
from tfaug.training.distribute import is_chief, make_strategy
from tfaug.training.loop import load_best
from tfaug.training.segmenter import SegmenterModel
from tfaug.training.stage import StageContext
from tfaug.version import __version__


def plan_split(cfg: Config) -> tuple[Path, Split]:
    """The data folder and the split of a run, checked before anything is trained.

    Resolves the data folder (generating the phantom into the cache folder if needed),
    lists its cases (no voxel is read) and makes the split, so bad input (``--data-root``
    unset or missing, ``--nl`` larger than the labeled pool, a bad draw index) fails before a
    run directory is created. Does not preprocess or write the TFRecords cache.

    Returns:
        The absolute data folder and the :class:`Split` of ``cfg.split``.

    Raises:
        DatasetError: the data folder is unset, missing or unlistable, or the split is
            impossible for its cases.
    """
    root = resolve_data_root(cfg)
    return root, split_cases(list_cases(cfg.data, root), cfg.split)


class Algorithm:
    """Runs Algorithm 1 for one (dataset, method, draw, seed) into a run directory.

    Args:
        cfg: the resolved config (``cfg.method`` selects the method).
        run: the opened run directory.
        progress: show progress bars.
        strategy: the ``tf.distribute`` strategy every stage trains under (models, optimisers
            and checkpoints are created in its scope); default: one device.
    """

    def __init__(
        self,
        cfg: Config,
        run: RunDirectory,
        *,
        progress: bool = True,
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        if cfg.method not in METHODS:
            raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
        self.cfg = cfg
        self.run = run
        self.progress = progress
        self.strategy = strategy or tf.distribute.get_strategy()
        self.writer = tf.summary.create_file_writer(str(run.tensorboard))
        self.generator_weights: dict[str, str] = {}  # stage → SHA-256 of the kept weights

    # -- data ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Step 1: the data folder, the split, the cache and the validation volumes in memory."""
        self.root, self.split = plan_split(self.cfg)
        self.cache = prepare_cache(self.cfg, progress=self.progress)
        self.context = StageContext(
            cfg=self.cfg,
            cache=self.cache,
            split=self.split,
            validation=load_volumes(self.cache, self.split.validation),
            extra_validation=(
                load_volumes(self.cache, self.split.extra_validation)
                if self.split.extra_validation
                else []
            ),
            stage_dir=self.run.stage,
            writer=self.writer,
            strategy=self.strategy,
            progress=self.progress,
        )

    @property
    def stages(self) -> dict:
        """The :class:`StageResult` of every stage run so far, by name."""
        return self.context.results

    def _seed(self, stage: str) -> int:
        return self.context.seed(STAGE_SEED_OFFSETS[stage])

    def _labeled(self, stage: str, start: int) -> tf.data.Dataset:
        return self.context.labeled(self.cfg.train.batch_size, self._seed(stage) + start)

    # -- stages -------------------------------------------------------------------------
    def pretrain(self) -> keras.Model:
        """Step 2: S on labeled affine-augmented slices; returns S with the last weights."""
        return self._fit_segmenter(
            PRETRAIN_STAGE, None, self.cfg.train.pretrain_iterations, validated=False
        )

    def train_generator(self, kind: str) -> Generator:
        """Steps 3/4: (S, G, D) jointly from the pre-trained S; returns G at the best score."""
        stage = generator_stage(kind)
        seed = self._seed(stage)
        keras.utils.set_random_seed(seed)
        cfg = self.cfg
        segmenter = build_segmenter(cfg)
        load_best({"segmenter": segmenter}, self.run.stage(PRETRAIN_STAGE))
        generator = build_generator(cfg, kind)
        discriminator = build_discriminator(cfg)
        model = build_joint_model(cfg, kind, segmenter, generator, discriminator, seed)
        samples = self._sample_batch()

        def make_dataset(start: int) -> tf.data.Dataset:
            unlabeled = self.context.unlabeled(cfg.train.batch_size, seed + start)
            return tf.data.Dataset.zip((self._labeled(stage, start), unlabeled))

        def on_validation(step: int) -> None:
            x_g, _, _ = model.generate(samples[0], samples[1], samples[2], training=False)
            with self.writer.as_default(step=step):
                tf.summary.image(f"{stage}/generated", _to_unit(x_g), max_outputs=4)

        self.context.run_stage(
            stage,
            model,
            make_dataset,
            cfg.train.generator_iterations,
            keep={"generator": generator, "discriminator": discriminator, "segmenter": segmenter},
            validated=segmenter,
            on_validation=on_validation,
        )
        load_best({"generator": generator}, self.run.stage(stage))
        return generator

    def train_generators(self, kinds: tuple[str, ...]) -> dict[str, Generator]:
        """Steps 2–4 in the generator directory shared with the other generator methods.

        Stages already trained there (by another method's run) are reused, not repeated.
        Returns the best generator of each kind in ``kinds`` (none for an empty tuple), and
        keeps the SHA-256 of their weights files in :attr:`generator_weights` (results.json
        records them, so that ``tfaug export`` can tell if the shared generators were
        retrained after the run finished).
        """
        if not kinds:
            return {}
        stages = [PRETRAIN_STAGE, *(generator_stage(kind) for kind in kinds)]
        shared = open_generator_directory(self.cfg, self.run, stages)
        with exclusive_lock(shared.path / ".lock"):
            self.pretrain()
            generators = {kind: self.train_generator(kind) for kind in kinds}
            self.generator_weights = generator_weights_sha256(self.run, kinds)
        return generators

    def train_segmenter(self, generators: dict[str, Generator]) -> keras.Model:
        """Step 5: a fresh S with the method's augmentation; returns S at the best score."""
        augmentation = build_method_augmentation(
            self.cfg.method, self.cfg, generators, self._seed(SEGMENTER_STAGE)
        )
        return self._fit_segmenter(
            SEGMENTER_STAGE, augmentation, self.cfg.train.segmenter_iterations, validated=True
        )

    def _fit_segmenter(
        self,
        stage: str,
        augmentation: keras.layers.Layer | None,
        iterations: int,
        *,
        validated: bool,
    ) -> keras.Model:
        """Train a fresh S as one stage; returns it with the kept (best or last) weights."""
        seed = self._seed(stage)
        keras.utils.set_random_seed(seed)
        cfg = self.cfg
        segmenter = build_segmenter(cfg)
        model = SegmenterModel(
            segmenter,
            n_classes=cfg.data.n_classes,
            class_weights=cfg.train.class_weights,
            affine=build_labeled_augmentation(cfg, seed),
            augmentation=augmentation,
        )
        model.compile(optimizer=build_adam(cfg))
        self.context.run_stage(
            stage,
            model,
            lambda start: self._labeled(stage, start),
            iterations,
            keep={"segmenter": segmenter},
            validated=segmenter if validated else None,
        )
        load_best({"segmenter": segmenter}, self.run.stage(stage))
        return segmenter

    def _final_stage_generators(self) -> dict[str, Generator]:
        """The generators the final stage trained and kept beside S (``unimatch_gdgi_joint``),
        at the kept step; none for the other methods."""
        cfg = self.cfg
        stage_dir = self.run.stage(final_stage(cfg.method, cfg.train.self_training_rounds))
        found = {}
        for kind in FINAL_STAGE_GENERATORS.get(cfg.method, ()):
            found[kind] = build_generator(cfg, kind)
            load_best({generator_stage(kind): found[kind]}, stage_dir)
        return found

    def _sample_batch(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """A fixed batch of up to 4 labeled slices with a fixed z, for image summaries."""
        images, labels = next(iter(labeled_dataset(self.cache, self.split.labeled, 4, seed=0)))
        onehot = tf.one_hot(labels, self.cfg.data.n_classes)
        z = tf.random.stateless_normal((4, self.cfg.model.z_dim), seed=(0, 1))
        return images, onehot, z

    def _test(self, segmenter: keras.Model) -> list[dict]:
        """3D Dice per structure per test volume at native resolution (``evaluate_test``)."""
        check_source_unchanged("the test evaluation")
        return evaluate_test(
            segmenter,
            self.cache,
            self.split.test,
            self.cfg.data,
            self.root,
            restore=self.cfg.preprocess.restore_interpolation,
        )

    def _evaluate_other_checkpoints(self, test: list[dict]) -> dict:
        """The test scores of the final stage's other kept segmenters.

        ``last`` (the stage's last step), with ``split.n_extra_validation`` ``best_wide``
        (the best step on the wider validation set), and with ``train.budget_marks``
        ``best_at_<mark>`` (the choice the stage had made at step ``mark``). A checkpoint at
        the chosen step reuses ``test``, and each distinct step is tested once; a stage
        finished before these were kept has none.

        Returns:
            name → ``{"step", "test", "summary"}`` (and ``"mark"`` for ``best_at_<mark>``),
            shaped like results.json's ``test`` and ``summary``.
        """
        name = final_stage(self.cfg.method, self.cfg.train.self_training_rounds)
        stage, stage_dir = self.stages[name], self.run.stage(name)
        kept = [
            ("last", "last", stage.iterations, None),
            ("best_wide", "best_wide", stage.wide_best_step, None),
        ]
        kept += [(f"best_at_{m}", f"best_at/{m}", step, m) for m, step in stage.budget_steps]
        found, tested = {}, {stage.best_step: test}  # one evaluation per distinct step
        segmenter = None  # one S (one traced inference function), loaded with each checkpoint
        for key, folder, step, mark in kept:
            if step is None or not (stage_dir / folder / "segmenter.weights.h5").is_file():
                continue
            if step not in tested:
                if segmenter is None:
                    segmenter = build_segmenter(self.cfg)
                load_best({"segmenter": segmenter}, stage_dir, folder)
                tested[step] = self._test(segmenter)
            summary = summarise(tested[step], self.cfg.data.class_names[1:])
            found[key] = {"step": step, "test": tested[step], "summary": summary}
            if mark is not None:
                found[key]["mark"] = mark
        return found

    # -- the whole algorithm ------------------------------------------------------------
    def execute(self, command: list[str] | None = None) -> dict:
        """Run every stage (skipping finished ones), evaluate, draw, write results.json."""
        started = time.perf_counter()
        self.prepare()
        with self.strategy.scope():
            generators = self.train_generators(GENERATOR_METHODS.get(self.cfg.method, ()))
            if self.cfg.method in COMPARISON_METHODS:
                # self_training, adv_*, the consistency methods (unimatch_gdgi's generators)
                segmenter = train_comparison(self.context, generators)
            else:
                segmenter = self.train_segmenter(generators)
        if not is_chief(self.strategy):
            return {}  # the chief evaluates and writes the results

        test = self._test(segmenter)
        checkpoints = self._evaluate_other_checkpoints(test)
        self.run.figures.mkdir(parents=True, exist_ok=True)
        samples = self._sample_batch()
        trained_here = self._final_stage_generators()
        for kind, generator in {**generators, **trained_here}.items():
            save_generator_figures(
                generator,
                samples[0],
                samples[1],
                samples[2],
                self.run.figures / f"generated_{kind}.png",
                spacing_mm=self.cfg.preprocess.spacing_mm,
            )
        if generators or trained_here:  # figures/generator_diagnostics.png and .json
            write_run_diagnostics(
                self.run.path,
                spacing_mm=self.cfg.preprocess.spacing_mm,
                crop_size=self.cfg.preprocess.crop_size,
            )
        test_volumes = load_volumes(self.cache, self.split.test[:3])
        save_prediction_figure(segmenter, test_volumes, self.run.figures / "test_predictions.png")

        results = {
            "run": self.run.path.name,
            "dataset": self.cfg.data.dataset,
            "method": self.cfg.method,
            "n_labeled": self.cfg.split.n_labeled,
            "draw": self.cfg.split.draw,
            "seed": self.cfg.train.seed,
            "generator_mode": self.cfg.train.generator_mode,
            "split": self.split.to_dict(),
            "stages": {name: vars(result) for name, result in self.stages.items()},
            "test": test,
            "summary": summarise(test, self.cfg.data.class_names[1:]),
            "checkpoints": checkpoints,
            "command": command if command is not None else sys.argv,
            "versions": {
                "tfaug": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "wall_time_s": {
                **{name: result.wall_time_s for name, result in self.stages.items()},
                "this_session_total": time.perf_counter() - started,
            },
            "cpu_time_s": {name: result.cpu_time_s for name, result in self.stages.items()},
        }
        if self.generator_weights:
            results[GENERATOR_WEIGHTS] = self.generator_weights
        write_json_atomic(self.run.results_path, results)
        return results


def _to_unit(images: tf.Tensor) -> tf.Tensor:
    """Map normalised intensities (about [0, 1]) to [0, 1] for image summaries."""
    return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0)


def configure_tensorflow(cfg: Config) -> None:
    """Apply ``cfg``'s process-wide TensorFlow settings; call before building any model.

    - ``train.mixed_precision: true``: the ``mixed_float16`` dtype policy.
    - ``train.graph_optimization: false``: TensorFlow's graph optimiser (Grappler) off. It
      spends about 10 s on the first call of every freshly traced step, which a short run
      (the test suite's, a smoke test) never earns back.

    Settings left at their defaults leave TensorFlow's own untouched.
    """
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if not cfg.train.graph_optimization:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def run_algorithm(
    cfg: Config, run: RunDirectory, *, progress: bool = True, command: list[str] | None = None
) -> dict:
    """Run Algorithm 1 for ``cfg`` into ``run``; returns the content of results.json."""
    strategy = make_strategy(cfg.strategy, cfg.train.cpu_replicas)
    configure_tensorflow(cfg)
    return Algorithm(cfg, run, progress=progress, strategy=strategy).execute(command)
