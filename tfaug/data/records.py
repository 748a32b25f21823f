"""The TFRecords cache: every case preprocessed once, one record file per case.

Layout of a cache folder ``<cache_dir>/records/<dataset>-<hash>/``::

    patient001.tfrecord    one tf.train.Example per slice, in slice order
    patient001.json        the case's slice count, geometry, metadata and source files
    ...
    manifest.json          written last; a cache is complete only if it exists

The hash covers everything that changes the records (see :func:`cache_key_inputs`), so a
different crop size or spacing gives a different folder and old caches stay valid. Edits
inside the dataset folder are caught per case instead: ``<case>.json`` records ``sources``,
the resolved path, size in bytes and modification time in ns of the case's image and label
files, and a case whose files (or listing metadata) no longer match is rebuilt.
Selecting the cases of a split is choosing files: no split is baked into the cache.

Each Example holds one slice (features of :func:`example_features`):
``image`` (float32 little-endian bytes, H×W, normalised intensities), ``label`` (uint8
bytes, H×W, class indices), ``case_id``, ``slice_index`` (0-based), ``n_slices``,
``height`` and ``width`` (H = W = crop size). Decoding lives in :mod:`tfaug.data.pipeline`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfaug.config import Config, PreprocessConfig
from tfaug.data.datasets import DOWNLOAD_HINTS, check_dataset, list_cases, load_case
from tfaug.data.phantom import generate_phantom
from tfaug.data.preprocess import PreprocessedVolume, SliceGeometry, preprocess_volume
from tfaug.data.volume import CaseRef, DatasetError
from tfaug.io import atomic_path, write_text_atomic

RECORDS_FORMAT = 1
MANIFEST = "manifest.json"


def dataset_folder(cfg: Config) -> Path:
    """The dataset folder ``cfg`` names, which may not exist (yet): nothing is generated.

    ``data.root``, or for the phantom with ``data.root`` unset the folder
    ``<cache_dir>/phantom-<variant>-s<seed>-n<subjects>`` that :func:`resolve_data_root`
    generates it into.

    Raises:
        DatasetError: ``data.root`` is unset for a real dataset.
    """
    data = cfg.data
    if data.root is not None:
        return Path(data.root).expanduser()
    if data.dataset != "phantom":
        raise DatasetError(
            f"dataset {data.dataset!r}: no data folder given (data.root is unset). "
            f"{DOWNLOAD_HINTS.get(data.dataset, 'Pass its folder with --data-root')} "
            "(or --set data.root=PATH)."
        )
    phantom = cfg.phantom
    return (
        Path(data.cache_dir).expanduser()
        / f"phantom-{phantom.variant}-s{phantom.seed}-n{phantom.subjects}"
    )


def resolve_data_root(cfg: Config) -> Path:
    """The dataset folder of ``cfg`` (:func:`dataset_folder`), generating the phantom if needed.

    The phantom with ``data.root`` unset is generated (or reused, if complete). Every other
    dataset needs ``data.root`` (``--data-root``). This function does not check the folder's
    content (:func:`tfaug.data.datasets.check_dataset` does).

    Returns:
        The absolute dataset folder.

    Raises:
        DatasetError: ``data.root`` is unset for a real dataset, or the folder is missing.
    """
    folder = dataset_folder(cfg)
    if cfg.data.root is None:
        phantom = cfg.phantom
        return generate_phantom(
            folder, subjects=phantom.subjects, seed=phantom.seed, variant=phantom.variant
        ).resolve()
    root = folder.resolve()
    if not root.is_dir():
        raise DatasetError(
            f"{root}: data folder not found (dataset {cfg.data.dataset!r}, from --data-root / "
            "data.root). Check the path; 'tfaug data inspect' lists what a dataset folder "
            "must contain."
        )
    return root


def cache_key_inputs(cfg: Config, root: Path) -> dict[str, Any]:
    """Everything that changes the records: the inputs of the cache folder's hash.

    Args:
        cfg: the run configuration.
        root: the resolved dataset folder (from :func:`resolve_data_root`).

    Returns:
        A JSON-serialisable dict: format version, dataset name, root path, the
        PreprocessConfig, modality, label merging, class count, (phantom only) the
        phantom parameters and, when not ``es``, ``data.frames``. Split, model and training
        settings are not part of it. Keys added after caches existed are left out at their
        default, so the caches of configs that do not set them keep their folder.
    """
    inputs = {
        "format": RECORDS_FORMAT,
        "dataset": cfg.data.dataset,
        "root": str(root),
        "preprocess": _preprocess_key(cfg.preprocess),
        "modality": cfg.data.modality,
        "merge_labels": {str(k): v for k, v in sorted(cfg.data.merge_labels.items())},
        "n_classes": cfg.data.n_classes,
        "phantom": dataclasses.asdict(cfg.phantom) if cfg.data.dataset == "phantom" else None,
    }
    if cfg.data.frames != "es":
        inputs["frames"] = cfg.data.frames
    return inputs


ADDED_PREPROCESS_KEYS: dict[str, Any] = {
    "n4_negatives": "clip",
    "normalisation": "percentile",
    "resize": "spacing",
    "image_interpolation": "linear",
}
"""PreprocessConfig keys added after caches existed, and the value that reproduces what those
caches hold. At that value a key is left out of the hash, so those caches keep their folder
(``clip`` changes nothing on the non-negative volumes they could hold: N4 refused any other)."""

NOT_IN_RECORDS = ("restore_interpolation",)
"""PreprocessConfig keys that do not change the records (how predictions are mapped back)."""


def _preprocess_key(preprocess: PreprocessConfig) -> dict[str, Any]:
    """The PreprocessConfig as hashed: :data:`ADDED_PREPROCESS_KEYS` at their old value and
    :data:`NOT_IN_RECORDS` are left out."""
    values = dataclasses.asdict(preprocess)
    for key, old_value in ADDED_PREPROCESS_KEYS.items():
        if values.get(key) == old_value:
            del values[key]
    for key in NOT_IN_RECORDS:
        values.pop(key, None)
    return values


def cache_path(cfg: Config, root: Path) -> Path:
    """``<cache_dir>/records/<dataset>-<hash>`` for ``cfg`` and the resolved ``root``."""
    text = json.dumps(cache_key_inputs(cfg, root), sort_keys=True)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return (
        Path(cfg.data.cache_dir).expanduser().resolve()
        / "records"
        / (f"{cfg.data.dataset}-{digest}")
    )


@dataclass(frozen=True)
class Cache:
    """A complete TFRecords cache, described by its manifest.

    Attributes:
        path: the cache folder.
        manifest: the parsed ``manifest.json``.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def case_ids(self) -> list[str]:
        """Case ids in dataset order."""
        return [case["case_id"] for case in self.manifest["cases"]]

    @property
    def groups(self) -> dict[str, str | None]:
        """Case id → ACDC pathology group (``None`` for datasets without groups)."""
        return {case["case_id"]: case["meta"].get("group") for case in self.manifest["cases"]}

    @property
    def crop_size(self) -> int:
        """Side S of every slice, in pixels."""
        return int(self.manifest["crop_size"])

    @property
    def n_classes(self) -> int:
        """Number of classes, background included."""
        return int(self.manifest["n_classes"])

    def case(self, case_id: str) -> dict[str, Any]:
        """The manifest entry of ``case_id``; a DatasetError names the cache if unknown."""
        for case in self.manifest["cases"]:
            if case["case_id"] == case_id:
                return case
        raise DatasetError(
            f"{self.path}: case {case_id!r} is not in this cache (it holds "
            f"{len(self.manifest['cases'])} cases, e.g. {self.case_ids[:3]}). Use ids from "
            "Cache.case_ids, or prepare a cache of the dataset that holds the case."
        )

    def record_file(self, case_id: str) -> Path:
        """The TFRecord file of ``case_id`` (one Example per slice, in slice order)."""
        return self.path / self.case(case_id)["record"]

    def geometry(self, case_id: str) -> SliceGeometry:
        """How ``case_id``'s slices map back to its native grid."""
        return SliceGeometry.from_dict(self.case(case_id)["geometry"])

    def n_slices(self, case_id: str) -> int:
        """Number of slices Z of ``case_id``."""
        return int(self.case(case_id)["n_slices"])


def open_cache(path: str | Path) -> Cache:
    """Open a complete cache folder.

    Raises:
        DatasetError: no ``manifest.json`` (preparation unfinished), an unreadable or
            foreign manifest, or a record file listed by the manifest is missing.
    """
    path = Path(path).expanduser().resolve()
    manifest_path = path / MANIFEST
    rebuild = "run 'tfaug data prepare' with the same config to rebuild it"
    if not manifest_path.is_file():
        raise DatasetError(
            f"{path}: incomplete TFRecords cache: {MANIFEST} not found (it is written last, "
            f"so preparation was interrupted or never ran); {rebuild}."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{manifest_path}: not valid JSON ({error}); {rebuild}.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != RECORDS_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest)
        raise DatasetError(
            f"{manifest_path}: expected a records manifest of format {RECORDS_FORMAT}, "
            f"found format {found!r}; delete the folder and {rebuild}."
        )
    missing = [c["record"] for c in manifest["cases"] if not (path / c["record"]).is_file()]
    if missing:
        raise DatasetError(
            f"{path}: {len(missing)} record file(s) listed in {MANIFEST} are missing "
            f"({', '.join(missing[:5])}); {rebuild} (cases already written are kept)."
        )
    return Cache(path=path, manifest=manifest)


def prepare_cache(cfg: Config, *, progress: bool = True) -> Cache:
    """Build (or reuse, or finish) the TFRecords cache of ``cfg``.

    A complete cache whose case ids match the dataset listing, and whose cases' source
    files still have the path, size and modification time recorded when they were written,
    is reused without reading any image. Otherwise the dataset is checked (all problems
    reported at once), and every case not yet written, or whose source files or metadata
    changed since (one line on stderr names it and why), is loaded, preprocessed
    (:func:`tfaug.data.preprocess.preprocess_volume`) and written atomically; the other
    cases, e.g. those written by an interrupted run, are kept. Cases written by a tfaug
    that recorded no source files are rebuilt once. The manifest is written last.

    This function does not split the dataset, augment, or read file contents to decide
    whether a case changed: a file whose modification time changed (even ``touch``) has
    its case rebuilt.

    Args:
        cfg: the run configuration (``data``, ``phantom`` and ``preprocess`` are used).
        progress: show a progress bar on stderr while preprocessing.

    Returns:
        The complete :class:`Cache`.

    Raises:
        DatasetError: the dataset folder is missing or inconsistent, or a case has no label.
    """
    root = resolve_data_root(cfg)
    path = cache_path(cfg, root)
    cache = _reusable_cache(cfg, root, path)
    if cache is not None:
        return cache
    refs = check_dataset(cfg.data, root)
    path.mkdir(parents=True, exist_ok=True)
    written = _up_to_date_cases(path, refs)
    cases = []
    for ref in tqdm(
        refs, desc=f"preprocess {cfg.data.dataset}", disable=not progress, file=sys.stderr
    ):
        info = written.get(ref.case_id)
        cases.append(info if info is not None else _write_case(cfg, ref, path))
    manifest = {
        "format": RECORDS_FORMAT,
        "dataset": cfg.data.dataset,
        "crop_size": cfg.preprocess.crop_size,
        "n_classes": cfg.data.n_classes,
        "class_names": list(cfg.data.class_names),
        "preprocess": dataclasses.asdict(cfg.preprocess),
        "hash_inputs": cache_key_inputs(cfg, root),
        "cases": cases,
    }
    write_text_atomic(path / MANIFEST, _to_json(manifest))
    return open_cache(path)


def encode_slice(pre: PreprocessedVolume, index: int) -> bytes:
    """Serialise slice ``index`` of a preprocessed volume as a tf.train.Example.

    Args:
        pre: image float32 (Z, S, S) and label uint8 (Z, S, S).
        index: slice index in [0, Z).

    Returns:
        The serialised Example (features of :func:`example_features`).
    """
    image = np.ascontiguousarray(pre.image[index], dtype="<f4")
    label = np.ascontiguousarray(pre.label[index], dtype=np.uint8)
    feature = {
        "image": _bytes_feature(image.tobytes()),
        "label": _bytes_feature(label.tobytes()),
        "case_id": _bytes_feature(pre.case_id.encode("utf-8")),
        "slice_index": _int_feature(index),
        "n_slices": _int_feature(pre.image.shape[0]),
        "height": _int_feature(image.shape[0]),
        "width": _int_feature(image.shape[1]),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def example_features() -> dict[str, tf.io.FixedLenFeature]:
    """The parsing spec of one slice Example (the counterpart of :func:`encode_slice`)."""
    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "case_id": tf.io.FixedLenFeature([], tf.string),
        "slice_index": tf.io.FixedLenFeature([], tf.int64),
        "n_slices": tf.io.FixedLenFeature([], tf.int64),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
    }


def _reusable_cache(cfg: Config, root: Path, path: Path) -> Cache | None:
    """The complete cache at ``path`` if it holds exactly the dataset's cases, each built
    from the files now listed for it, else None. Reads no image, only file sizes and times."""
    if not (path / MANIFEST).is_file():
        return None
    try:
        cache = open_cache(path)
    except DatasetError:
        return None  # damaged (e.g. a record deleted): preparing again repairs it
    refs = list_cases(cfg.data, root)
    if cache.case_ids != [ref.case_id for ref in refs]:
        return None
    cases = zip(cache.manifest["cases"], refs, strict=True)
    return cache if all(_stale_reason(info, ref) is None for info, ref in cases) else None


def _up_to_date_cases(path: Path, refs: list[CaseRef]) -> dict[str, dict[str, Any]]:
    """Case id → case info of the cases already written in ``path`` from ``refs``' files.

    A written case whose files or metadata changed is left out (so it is rebuilt), with
    one line on stderr naming it and why.
    """
    written = {}
    for ref in refs:
        if not (_record_path(path, ref).is_file() and _case_info_path(path, ref).is_file()):
            continue
        info = json.loads(_case_info_path(path, ref).read_text(encoding="utf-8"))
        reason = _stale_reason(info, ref)
        if reason is None:
            written[ref.case_id] = info
        else:
            print(f"{ref.case_id}: {reason}; rebuilding it", file=sys.stderr)
    return written


def _stale_reason(info: dict[str, Any], ref: CaseRef) -> str | None:
    """Why the written case ``info`` may not hold what ``ref``'s files hold now; None if the
    files (path, size, modification time) and the listing metadata are as recorded."""
    recorded = info.get("sources")
    if recorded is None:
        return "it was cached by an older tfaug that did not record its source files"
    for role, now in _source_fingerprints(ref).items():
        then = recorded.get(role, {})
        if then.get("path") != now["path"]:
            return f"its {role} file is now {now['path']} (it was built from {then.get('path')})"
        if then != now:
            return f"its {role} file changed since the cache was built ({now['path']})"
    listed = _json_round_trip(ref.meta)
    changed = sorted(k for k in {*info["meta"], *listed} if info["meta"].get(k) != listed.get(k))
    if changed:
        return f"its metadata ({', '.join(changed)}) changed since the cache was built"
    return None


def _source_fingerprints(ref: CaseRef) -> dict[str, dict[str, Any]]:
    """``"image"`` (and ``"label"`` if the case has one) → :func:`_fingerprint` of the file."""
    files = {"image": ref.image_path, "label": ref.label_path}
    return {role: _fingerprint(Path(file)) for role, file in files.items() if file is not None}


def _fingerprint(file: Path) -> dict[str, Any]:
    """The resolved ``path`` of ``file``, its ``size`` in bytes and ``mtime_ns`` (last
    modification, ns since the epoch). Only the file system's metadata is read."""
    resolved = file.resolve()
    status = resolved.stat()
    return {"path": str(resolved), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _record_path(path: Path, ref: CaseRef) -> Path:
    return path / f"{ref.case_id}.tfrecord"


def _case_info_path(path: Path, ref: CaseRef) -> Path:
    return path / f"{ref.case_id}.json"


def _write_case(cfg: Config, ref: CaseRef, path: Path) -> dict[str, Any]:
    """Preprocess one case; write its record file, then its case info (the marker of done).

    Both are written under temporary names and renamed into place, so a process reading the
    cache meanwhile (another grid shard) sees the old file or the new one, never none. The
    case info, which records the source files' fingerprints, comes last: a failure or a
    kill in between leaves the old case info (or none) beside the new record, and the case
    is rebuilt next time. The source files are stat'ed before they are read: a file edited
    during the run has a newer time than the recorded one, and its case is rebuilt next time.

    Returns:
        The case info written to ``<case>.json``.
    """
    sources = _source_fingerprints(ref)
    pre = preprocess_volume(load_case(cfg.data, ref), cfg.preprocess)
    if pre.label is None:
        raise DatasetError(
            f"{ref.image_path}: case {ref.case_id!r} has no label, but the records cache "
            "holds labeled training cases only. Remove the case from the dataset listing."
        )
    info = {
        "case_id": ref.case_id,
        "record": _record_path(path, ref).name,
        "n_slices": int(pre.image.shape[0]),
        "geometry": pre.geometry.to_dict(),
        "meta": ref.meta,
        "image_path": str(ref.image_path),
        "label_path": None if ref.label_path is None else str(ref.label_path),
        "sources": sources,
    }
    with (
        atomic_path(_record_path(path, ref)) as temporary,
        tf.io.TFRecordWriter(str(temporary)) as writer,
    ):
        for serialized in _serialized_slices(pre):
            writer.write(serialized)
    text = _to_json(info)
    write_text_atomic(_case_info_path(path, ref), text)
    return json.loads(text)


def _serialized_slices(pre: PreprocessedVolume) -> Iterator[bytes]:
    for index in range(pre.image.shape[0]):
        yield encode_slice(pre, index)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a cache manifest")


def _to_json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=_json_default)


def _json_round_trip(value: Any) -> Any:
    """``value`` as read back from its JSON file (e.g. int dict keys become strings)."""
    return json.loads(_to_json(value))


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
