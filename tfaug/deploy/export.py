"""Export a finished run: SavedModel (TF Serving layout) and ONNX, plus ``export.json``.

Layout of the export folder ``DIR`` (only the models the run has; ``aff`` and the other
methods without generators export the segmenter alone)::

    DIR/export.json                      everything inference needs (see export_run)
    DIR/segmenter/1/                     SavedModel, signature ``serving_default``
    DIR/segmenter.onnx
    DIR/generator_deformation/1/ + .onnx GV
    DIR/generator_intensity/1/ + .onnx   GI
    DIR/augmenter/1/ + .onnx             GV then GI with the warp, on (image, label, z)

Signatures (N is dynamic, S = ``preprocess.crop_size``, C classes, z_dim from the model):

- segmenter: ``image`` float32 (N,S,S,1) normalised slices → ``probabilities`` float32
  (N,S,S,C) (softmax) and ``labels`` int32 (N,S,S) (argmax).
- generators: ``image`` (N,S,S,1), ``z`` (N,z_dim) ~ N(0, I) → ``field``: GV (N,S,S,2) flow
  in pixels (``dense_image_warp`` convention), GI (N,S,S,1) additive ΔI in (-1, 1).
- augmenter: ``image`` (N,S,S,1), ``label`` one-hot float32 (N,S,S,C), ``z`` (N,z_dim) →
  ``augmented_image`` (N,S,S,1) and ``augmented_label`` (N,S,S,C) soft labels summing to 1.

Every model runs in inference mode (BatchNormalization uses its moving statistics). Nothing
here preprocesses NIfTI volumes (see :mod:`tfaug.deploy.inference`) or trains anything.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml

from tfaug.config import Config, config_from_dict
from tfaug.deploy.orientation import ORIENTATION_KEY, training_orientation
from tfaug.experiments.records import STAGE_DONE
from tfaug.methods import (
    FINAL_STAGE_GENERATORS,
    GENERATOR_METHODS,
    final_stage,
    generator_stage,
)
from tfaug.ops.generated import apply_generators
from tfaug.runs.rundir import RunDirectory
from tfaug.runs.shared import retrained_generators_message
from tfaug.training.builders import build_generator, build_segmenter
from tfaug.version import __version__

EXPORT_JSON = "export.json"
FORMATS = ("savedmodel", "onnx")
SERVING_VERSION = "1"
DEFAULT_OPSET = 17
EXPORT_FORMAT_VERSION = 1
MODEL_NAMES = ("segmenter", "generator_deformation", "generator_intensity", "augmenter")
"""Every model an export can hold (:func:`exported_functions`), as ``NAME/`` and ``NAME.onnx``."""


class ExportError(ValueError):
    """A run directory cannot be exported, or an export folder is incomplete.

    The message names the path, what was expected, what was found and the fix.
    """


def read_run_config(run_dir: str | Path) -> Config:
    """The resolved :class:`Config` recorded in ``RUN_DIR/config.yaml``.

    Raises:
        ExportError: the folder or its config.yaml is missing, or the run is unfinished
            (no results.json).
    """
    run = RunDirectory(Path(run_dir))
    if not run.path.is_dir():
        raise ExportError(
            f"{run.path}: run directory not found; pass the folder that train/run.py created "
            "(runs/<dataset>-nl<N>-<method>-split<k>-seed<s>)"
        )
    if not run.config_path.is_file():
        raise ExportError(
            f"{run.config_path}: config.yaml not found; {run.path} is not a run directory"
        )
    if not run.finished:
        raise ExportError(
            f"{run.results_path}: results.json not found, so the run is unfinished; re-run the "
            "same train command to finish it, then export"
        )
    return config_from_dict(yaml.safe_load(run.config_path.read_text(encoding="utf-8")))


def _weights(path: Path, run: RunDirectory) -> Path:
    """``path`` (``checkpoints/<stage>/best/<file>``) if it exists.

    Raises:
        ExportError: it is missing; the advice depends on whether its stage finished (wrote
            ``done.json``): the weights of a finished stage are gone, and re-running the
            train command would only say the run is finished.
    """
    if path.is_file():
        return path
    stage = path.parent.parent
    if (stage / STAGE_DONE).is_file():
        raise ExportError(
            f"{path}: best weights not found in run {run.path}, although its stage "
            f"{stage.name} finished ({STAGE_DONE} is there): the weights were deleted, or this "
            "is a copy made by 'tfaug records', which holds no weights. Export the original "
            "run directory, or train the run again with the same 'tfaug train' command and "
            "--force (it moves this run aside)"
        )
    raise ExportError(
        f"{path}: best weights not found in run {run.path}; the stage did not finish. "
        "Re-run the same train command to complete it"
    )


def load_run_models(run_dir: str | Path) -> tuple[Config, dict[str, keras.Model]]:
    """Build the run's segmenter and generators and load their best weights.

    The segmenter is the kept S of the run's final stage (:func:`tfaug.methods.final_stage`:
    ``segmenter``, or the last stage of a comparison method, e.g. ``consistency``).

    Returns:
        ``(cfg, models)`` with ``models["segmenter"]`` (S: (B,S,S,1) → logits (B,S,S,C)) and,
        for generator methods, ``models["deformation"]`` / ``models["intensity"]`` (from
        their generator stages, or, for ``unimatch_gdgi_joint``, kept by the final stage
        beside S).

    A run's generator stages may link to a generators folder shared with other runs
    (:mod:`tfaug.runs.shared`), which can be retrained after the run finished; results.json
    records the SHA-256 of the generator weights the run trained with, and generators that
    differ from them are refused. A run finished before tfaug recorded them cannot be
    checked: it is exported as it is.

    Raises:
        ExportError: see :func:`read_run_config`; a best-weights file is missing; or the
            generators were retrained after the run finished.
    """
    cfg = read_run_config(run_dir)
    run = RunDirectory(Path(run_dir))
    retrained = retrained_generators_message(run)
    if retrained is not None:
        raise ExportError(retrained)
    segmenter = build_segmenter(cfg)
    stage = final_stage(cfg.method, cfg.train.self_training_rounds)
    segmenter.load_weights(_weights(run.stage(stage) / "best/segmenter.weights.h5", run))
    models: dict[str, keras.Model] = {"segmenter": segmenter}
    for kind in GENERATOR_METHODS.get(cfg.method, ()):
        generator = build_generator(cfg, kind)
        generator.load_weights(
            _weights(run.stage(generator_stage(kind)) / "best/generator.weights.h5", run)
        )
        models[kind] = generator
    for kind in FINAL_STAGE_GENERATORS.get(cfg.method, ()):  # trained beside S
        generator = build_generator(cfg, kind)
        kept = run.stage(stage) / f"best/{generator_stage(kind)}.weights.h5"
        generator.load_weights(_weights(kept, run))
        models[kind] = generator
    return cfg, models


# -- the exported functions -------------------------------------------------------------------
def _image_spec(size: int) -> tf.TensorSpec:
    return tf.TensorSpec([None, size, size, 1], tf.float32, name="image")


def _z_spec(z_dim: int) -> tf.TensorSpec:
    return tf.TensorSpec([None, z_dim], tf.float32, name="z")


def segmenter_function(segmenter: keras.Model, size: int) -> tf.types.experimental.Function:
    """``image`` (N,S,S,1) → ``{"probabilities": (N,S,S,C) float32, "labels": (N,S,S) int32}``."""

    @tf.function(input_signature=[_image_spec(size)])
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(segmenter(image, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        labels = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "labels": labels}

    return serve


def generator_function(
    generator: keras.Model, size: int, z_dim: int
) -> tf.types.experimental.Function:
    """``image`` (N,S,S,1), ``z`` (N,z_dim) → ``{"field": ...}`` (GV: (N,S,S,2), GI: (N,S,S,1))."""

    @tf.function(input_signature=[_image_spec(size), _z_spec(z_dim)])
    def serve(image: tf.Tensor, z: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"field": tf.cast(generator((image, z), training=False), tf.float32)}

    return serve


def augmenter_function(
    deformation: keras.Model | None,
    intensity: keras.Model | None,
    size: int,
    n_classes: int,
    z_dim: int,
) -> tf.types.experimental.Function:
    """(image, one-hot label, z) → GV's warp of both, then GI's ΔI on the warped image.

    The same z is fed to both generators (X_GVI of docs/method.md §2). With only one generator,
    only that transformation is applied. The label is warped as a soft map; ΔI leaves it
    unchanged. Nothing is clipped.
    """
    if deformation is None and intensity is None:
        raise ExportError("augmenter_function: needs at least one generator")
    label_spec = tf.TensorSpec([None, size, size, n_classes], tf.float32, name="label")

    @tf.function(input_signature=[_image_spec(size), label_spec, _z_spec(z_dim)])
    def serve(image: tf.Tensor, label: tf.Tensor, z: tf.Tensor) -> dict[str, tf.Tensor]:
        image, label, _, _ = apply_generators(deformation, intensity, image, label, z)
        return {"augmented_image": image, "augmented_label": label}

    return serve


def exported_functions(
    cfg: Config, models: dict[str, keras.Model]
) -> dict[str, tf.types.experimental.Function]:
    """Functions to export by name: ``segmenter``, ``generator_<kind>``, ``augmenter``."""
    size, z_dim = cfg.preprocess.crop_size, cfg.model.z_dim
    functions = {"segmenter": segmenter_function(models["segmenter"], size)}
    kinds = [kind for kind in ("deformation", "intensity") if kind in models]
    for kind in kinds:
        functions[generator_stage(kind)] = generator_function(models[kind], size, z_dim)
    if kinds:
        functions["augmenter"] = augmenter_function(
            models.get("deformation"), models.get("intensity"), size, cfg.data.n_classes, z_dim
        )
    return functions


# -- writing --------------------------------------------------------------------------------
def save_savedmodel(
    function: tf.types.experimental.Function, models: Sequence[keras.Model], path: Path
) -> None:
    """Write ``function`` as the ``serving_default`` signature of a SavedModel at ``path``.

    ``models`` are the Keras models whose variables ``function`` reads (tracked so they are
    saved).
    """
    module = tf.Module()
    module.models = list(models)
    module.serve = function
    tf.saved_model.save(module, str(path), signatures={"serving_default": function})


def save_onnx(function: tf.types.experimental.Function, path: Path, opset: int) -> None:
    """Convert ``function`` with tf2onnx (input/output names kept, batch dynamic); check it.

    Raises:
        ExportError: ``onnx.checker`` rejects the converted graph.
    """
    import onnx
    import tf2onnx

    model, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=opset
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path}: the converted ONNX graph is invalid ({error})") from error
    onnx.save(model, str(path))


def random_inputs(
    function: tf.types.experimental.Function, batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random float32 inputs for an exported function, by input name.

    ``image`` ~ U(-0.5, 1.5) (around the normalised range), ``z`` ~ N(0, 1), ``label`` a random
    one-hot map.
    """
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in function.input_signature:
        shape = (batch, *spec.shape[1:])
        if spec.name == "label":
            classes = rng.integers(0, shape[-1], size=shape[:-1])
            inputs[spec.name] = np.eye(shape[-1], dtype=np.float32)[classes]
        elif spec.name == "z":
            inputs[spec.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            inputs[spec.name] = rng.uniform(-0.5, 1.5, size=shape).astype(np.float32)
    return inputs


def run_onnx(path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX model with ONNX Runtime on the CPU; outputs by name."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def run_savedmodel(path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call a SavedModel's ``serving_default`` signature; outputs by name as numpy."""
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
    return {name: value.numpy() for name, value in outputs.items()}


def max_abs_difference(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over the float outputs both dicts share by name."""
    shared = [n for n in first if n in second and np.issubdtype(first[n].dtype, np.floating)]
    if not shared:
        raise ValueError(
            f"max_abs_difference: no float outputs in common ({sorted(first)} vs {sorted(second)})"
        )
    return max(float(np.max(np.abs(first[n] - second[n]))) for n in shared)


def _versions(opset: int | None) -> dict[str, str]:
    versions = {
        "tfaug": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if opset is not None:
        import onnx
        import onnxruntime
        import tf2onnx

        versions |= {
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx_opset": str(opset),
        }
    return versions


def _signature_entry(function: tf.types.experimental.Function) -> dict[str, Any]:
    outputs = function.get_concrete_function().structured_outputs
    return {
        "inputs": {s.name: s.shape.as_list() for s in function.input_signature},
        "outputs": {
            name: {"shape": tensor.shape.as_list(), "dtype": tensor.dtype.name}
            for name, tensor in outputs.items()
        },
    }


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    opset: int = DEFAULT_OPSET,
    parity_batch: int = 2,
) -> dict[str, Any]:
    """Export the segmenter, the generators and the augmenter of a finished run.

    The export is written into a hidden folder beside ``out_dir`` and renamed to it once
    complete, replacing a previous export there as a whole, so ``out_dir`` always holds one
    complete export, never models of two (a failed or killed export leaves the previous one;
    a killed one also leaves its hidden ``.NAME.export-*`` folder, which can be deleted).

    Args:
        run_dir: a finished run directory (config.yaml, checkpoints, results.json).
        out_dir: the export folder: new, empty, or a previous export (replaced).
        formats: any of ``"savedmodel"``, ``"onnx"``.
        opset: ONNX opset of the conversion.
        parity_batch: slices of the random parity check run when both formats are written
            (its max abs difference per model is recorded in export.json as ``parity``).

    Returns:
        The content written to ``out_dir/export.json``: ``models`` (paths relative to
        ``out_dir`` and signatures), ``preprocess`` (spacing in mm, crop size in px, N4 and
        normalisation percentiles), ``data`` (dataset, class names, modality), ``input``
        (size, channels, z_dim, n_classes), ``run`` (path, name, method, test summary),
        ``parity``, ``versions``, ``created``, and ``orientation`` (the training volumes'
        voxel-axis codes, :func:`training_orientation`) when the training data is readable
        here.

    Raises:
        ExportError: an unknown format; ``out_dir`` is a file, or a folder holding anything
            but a previous export (see :func:`check_export_target`); or see
            :func:`load_run_models`.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(
            f"export: unknown format(s) {unknown or '(none given)'}; choose from "
            f"{', '.join(FORMATS)}"
        )
    out = Path(os.path.realpath(out_dir))  # a link to a folder: replace the folder, not it
    check_export_target(out)
    cfg, models = load_run_models(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.export-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        manifest = _write_export(cfg, models, Path(run_dir), staging, formats, opset, parity_batch)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a successful swap
    return manifest


def _write_export(
    cfg: Config,
    models: dict[str, keras.Model],
    run_dir: Path,
    out: Path,
    formats: Sequence[str],
    opset: int,
    parity_batch: int,
) -> dict[str, Any]:
    """Write every model and export.json into the empty folder ``out`` (see export_run)."""
    functions = exported_functions(cfg, models)
    entries: dict[str, dict[str, Any]] = {}
    parity: dict[str, float] = {}
    for name, function in functions.items():
        entry = _signature_entry(function)
        used = [models[k] for k in _model_keys(name) if k in models]
        if "savedmodel" in formats:
            save_savedmodel(function, used, out / name / SERVING_VERSION)
            entry["savedmodel"] = f"{name}/{SERVING_VERSION}"
        if "onnx" in formats:
            save_onnx(function, out / f"{name}.onnx", opset)
            entry["onnx"] = f"{name}.onnx"
        if "savedmodel" in formats and "onnx" in formats:
            inputs = random_inputs(function, parity_batch)
            parity[name] = max_abs_difference(
                run_onnx(out / entry["onnx"], inputs), run_savedmodel(out / name / "1", inputs)
            )
        entries[name] = entry
    manifest = _manifest(cfg, run_dir, entries, parity, opset if "onnx" in formats else None)
    orientation = training_orientation(cfg)
    if orientation is not None:
        manifest[ORIENTATION_KEY] = orientation
    (out / EXPORT_JSON).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def check_export_target(out: Path) -> None:
    """Raise unless ``out`` is missing, an empty folder, or a previous export: a folder with
    an ``export.json`` and nothing but the models an export writes (:data:`MODEL_NAMES`),
    which an export replaces as a whole (also one left mixed by an older tfaug version).

    Raises:
        ExportError: ``out`` is a file, or a folder holding anything else (named).
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; choose another --out")
    entries = sorted(path.name for path in out.iterdir())
    if not entries:
        return
    replaced = "an export replaces its whole folder, so choose a new or empty --out"
    if EXPORT_JSON not in entries:
        shown = ", ".join(entries[:5]) + (
            f" and {len(entries) - 5} more" if len(entries) > 5 else ""
        )
        raise ExportError(
            f"{out}: not a tfaug export folder (no {EXPORT_JSON}; it holds {shown}); {replaced}, "
            "or the folder of a previous export"
        )
    known = {EXPORT_JSON} | {f"{name}{end}" for name in MODEL_NAMES for end in ("", ".onnx")}
    foreign = [name for name in entries if name not in known and not _desktop_metadata(name)]
    if foreign:
        raise ExportError(
            f"{out}: holds {', '.join(foreign)}, which no tfaug export writes; {replaced}, or "
            "move them out of it"
        )


def _desktop_metadata(name: str) -> bool:
    """Whether ``name`` is a file that file browsers leave in any folder they show (macOS
    ``.DS_Store`` and ``._*``, Windows ``Thumbs.db`` and ``desktop.ini``): it goes with the
    export it sits in instead of making the folder count as foreign."""
    return name in {".DS_Store", "Thumbs.db", "desktop.ini"} or name.startswith("._")


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the complete export ``staging`` to ``out``; a previous export there is renamed
    aside first and then deleted, so a reader finds the old export, the new one, or (for the
    moment between the two renames) none, never a mix."""
    check_export_target(out)  # again: it may have changed during the export
    old = staging.with_name(f"{staging.name}.old")
    try:
        if out.exists() and any(out.iterdir()):
            out.rename(old)
        os.replace(staging, out)  # onto a missing or empty folder
    except OSError as error:
        if old.exists() and not out.exists():
            old.rename(out)
        raise ExportError(
            f"{out}: cannot move the new export into place ({error.strerror}); was it written "
            "to meanwhile, or is it a mount point? Export again, or choose another --out"
        ) from error
    shutil.rmtree(old, ignore_errors=True)


def _model_keys(name: str) -> tuple[str, ...]:
    if name == "augmenter":
        return ("deformation", "intensity")
    return (name.removeprefix("generator_"),)


def _manifest(
    cfg: Config,
    run_dir: Path,
    entries: dict[str, Any],
    parity: dict[str, float],
    opset: int | None,
) -> dict[str, Any]:
    results = json.loads(RunDirectory(run_dir).results_path.read_text(encoding="utf-8"))
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "models": entries,
        "preprocess": asdict(cfg.preprocess),
        "data": {
            "dataset": cfg.data.dataset,
            "class_names": list(cfg.data.class_names),
            "modality": cfg.data.modality,
            "merge_labels": [[int(k), int(v)] for k, v in cfg.data.merge_labels.items()],
        },
        "input": {
            "size": cfg.preprocess.crop_size,
            "channels": 1,
            "n_classes": cfg.data.n_classes,
            "z_dim": cfg.model.z_dim,
        },
        "run": {
            "path": str(run_dir.resolve()),
            "name": run_dir.resolve().name,
            "method": cfg.method,
            "generator_mode": cfg.train.generator_mode,
            "test_summary": results.get("summary"),
        },
        "parity": parity,
        "versions": _versions(opset),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def find_export_json(model_path: str | Path) -> Path:
    """``export.json`` of an exported model: beside a ``.onnx`` file, or up to two folders
    above a SavedModel folder (``DIR/segmenter/1`` or ``DIR/segmenter``), or in ``DIR``.

    Raises:
        ExportError: none is found.
    """
    path = Path(model_path)
    start = path.parent if path.is_file() else path
    candidates = [folder / EXPORT_JSON for folder in (start, start.parent, start.parent.parent)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ExportError(
        f"{path}: {EXPORT_JSON} not found beside the model (looked in "
        f"{', '.join(str(c.parent) for c in candidates)}); it holds the preprocessing the model "
        "needs. Keep the export folder written by 'tfaug export' together, or export again"
    )


def read_export_json(path: str | Path) -> dict[str, Any]:
    """Read and check an ``export.json`` (keys ``preprocess``, ``data``, ``input``, ``models``).

    Raises:
        ExportError: the file is missing, not JSON, or lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: {EXPORT_JSON} not found; export the run with 'tfaug export'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: not valid JSON ({error}); export the run again") from error
    missing = [k for k in ("preprocess", "data", "input", "models") if k not in manifest]
    if missing:
        raise ExportError(
            f"{path}: expected the keys preprocess, data, input and models, missing "
            f"{', '.join(missing)}; export the run again with this version of tfaug"
        )
    return manifest
