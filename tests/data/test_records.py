"""The TFRecords cache: layout, manifest, reuse, resume, hashing and errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data.fixtures import write_acdc_patient, write_msd_dataset
from tfaug.config import Config, load_config
from tfaug.data.datasets import list_cases, load_case
from tfaug.data.pipeline import volume_dataset
from tfaug.data.preprocess import preprocess_volume, restore_labels
from tfaug.data.records import cache_path, open_cache, prepare_cache, resolve_data_root
from tfaug.data.volume import DatasetError

TINY = ["phantom.subjects=5", "preprocess.crop_size=32", "preprocess.n4=false"]


def tiny_config(cache_dir: Path, *overrides: str) -> Config:
    """The phantom config shrunk to 5 subjects, 32x32 slices and no N4."""
    cfg = load_config("phantom", overrides=[*TINY, *overrides])
    cfg.data.cache_dir = str(cache_dir)
    return cfg


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    """One cache folder for the session: later modules reuse its phantom and records."""
    return tmp_path_factory.getbasetemp() / "tiny-cache"


@pytest.fixture(scope="module")
def cache(shared_dir):
    return prepare_cache(tiny_config(shared_dir), progress=False)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_phantom_root_is_generated_into_the_cache_dir(shared_dir, cache):
    root = resolve_data_root(tiny_config(shared_dir))
    assert root == (shared_dir / "phantom-default-s0-n5").resolve()
    assert (root / "training" / "patient005" / "Info.cfg").is_file()
    assert cache.manifest["hash_inputs"]["root"] == str(root)


def test_real_dataset_without_root_names_the_flag(tmp_path):
    cfg = load_config("acdc")
    with pytest.raises(DatasetError, match="--data-root"):
        resolve_data_root(cfg)


def test_missing_root_names_the_folder(tmp_path):
    cfg = load_config("prostate")
    cfg.data.root = str(tmp_path / "Task05_Prostate")
    with pytest.raises(DatasetError, match="Task05_Prostate: data folder not found"):
        resolve_data_root(cfg)


def test_manifest_describes_every_case(shared_dir, cache):
    cfg = tiny_config(shared_dir)
    refs = list_cases(cfg.data, resolve_data_root(cfg))
    assert cache.case_ids == [ref.case_id for ref in refs]
    assert cache.groups == {ref.case_id: ref.meta["group"] for ref in refs}
    assert set(cache.groups.values()) == {"NOR", "MINF", "DCM", "HCM", "RV"}
    assert (cache.crop_size, cache.n_classes) == (32, 4)
    for ref in refs:
        pre = preprocess_volume(load_case(cfg.data, ref), cfg.preprocess)
        assert cache.n_slices(ref.case_id) == pre.image.shape[0]
        assert cache.geometry(ref.case_id) == pre.geometry
        n_records = sum(1 for _ in tf.data.TFRecordDataset(str(cache.record_file(ref.case_id))))
        assert n_records == pre.image.shape[0]
        assert cache.case(ref.case_id)["meta"]["frame"] == ref.meta["frame"]
        assert cache.case(ref.case_id)["image_path"] == str(ref.image_path)
    assert not [p.name for p in cache.path.iterdir() if p.name.endswith(".tmp")]


def test_records_hold_the_preprocessed_slices(shared_dir, cache):
    """Checked with tf.train.Example directly, independently of the pipeline's decoder."""
    cfg = tiny_config(shared_dir)
    ref = list_cases(cfg.data, resolve_data_root(cfg))[2]
    pre = preprocess_volume(load_case(cfg.data, ref), cfg.preprocess)
    records = tf.data.TFRecordDataset(str(cache.record_file(ref.case_id)))
    for index, record in enumerate(records):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        image = np.frombuffer(feature["image"].bytes_list.value[0], dtype="<f4")
        label = np.frombuffer(feature["label"].bytes_list.value[0], dtype=np.uint8)
        np.testing.assert_array_equal(image.reshape(32, 32), pre.image[index])
        np.testing.assert_array_equal(label.reshape(32, 32), pre.label[index])
        assert feature["case_id"].bytes_list.value[0] == ref.case_id.encode()
        assert feature["slice_index"].int64_list.value[0] == index
        assert feature["n_slices"].int64_list.value[0] == pre.image.shape[0]


def test_second_prepare_reuses_the_cache_without_rewriting(shared_dir, cache):
    before = mtimes(cache.path)
    again = prepare_cache(tiny_config(shared_dir), progress=False)
    assert again.path == cache.path
    assert again.manifest == cache.manifest
    assert mtimes(cache.path) == before


def test_interrupted_preparation_redoes_only_what_is_missing(shared_dir, cache, tmp_path):
    cfg = tiny_config(tmp_path, f"data.root={resolve_data_root(tiny_config(shared_dir))}")
    copy = cache_path(cfg, resolve_data_root(cfg))
    assert copy.name == cache.path.name  # same inputs, same hash: the copy is this cache
    shutil.copytree(cache.path, copy, copy_function=shutil.copy2)
    (copy / "manifest.json").unlink()
    (copy / "patient003.tfrecord").unlink()
    kept = {name: t for name, t in mtimes(copy).items() if name != "patient003.json"}
    with pytest.raises(DatasetError, match="manifest.json not found"):
        open_cache(copy)

    resumed = prepare_cache(cfg, progress=False)

    assert resumed.path == copy
    after = mtimes(copy)
    assert {name: after[name] for name in kept} == kept
    assert (copy / "patient003.tfrecord").read_bytes() == cache.record_file(
        "patient003"
    ).read_bytes()
    assert resumed.manifest["cases"] == cache.manifest["cases"]


def test_cache_with_a_missing_record_is_rejected_then_repaired(shared_dir, cache, tmp_path):
    cfg = tiny_config(tmp_path, f"data.root={resolve_data_root(tiny_config(shared_dir))}")
    copy = cache_path(cfg, resolve_data_root(cfg))
    shutil.copytree(cache.path, copy)
    (copy / "patient001.tfrecord").unlink()
    with pytest.raises(DatasetError, match=r"missing \(patient001.tfrecord\)"):
        open_cache(copy)
    assert prepare_cache(cfg, progress=False).n_slices("patient001") == cache.n_slices("patient001")
    assert (copy / "patient001.tfrecord").is_file()


def test_foreign_manifest_is_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99, "cases": []}))
    with pytest.raises(DatasetError, match="found format 99"):
        open_cache(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        open_cache(tmp_path)


def test_hash_changes_with_what_changes_the_records(tmp_path):
    root = tmp_path / "data"
    base = cache_path(tiny_config(tmp_path), root)
    assert cache_path(tiny_config(tmp_path), root) == base
    assert cache_path(tiny_config(tmp_path, "preprocess.crop_size=48"), root) != base
    assert cache_path(tiny_config(tmp_path, "preprocess.spacing_mm=2.0"), root) != base
    assert cache_path(tiny_config(tmp_path), tmp_path / "other") != base
    # Splits and training settings do not change the records.
    assert cache_path(tiny_config(tmp_path, "split.n_test=3", "train.batch_size=2"), root) == base
    assert base.parent == tmp_path.resolve() / "records"
    assert base.name.startswith("phantom-")


# The cache folders of the shipped configs, as computed before data.frames and the
# preprocessing switches (normalisation, resize, interpolation) existed: keys added later are
# left out of the hash at their defaults, so existing caches stay valid.
SHIPPED_CACHE_FOLDERS = {
    "phantom": "phantom-285d80ce6b203cd3",
    "acdc": "acdc-b16a5a79be03c2da",
    "prostate": "prostate-869c3e15f5e94c5f",
    "pancreas": "pancreas-2207c8ff1ffe7b50",
}


@pytest.mark.parametrize("dataset", sorted(SHIPPED_CACHE_FOLDERS))
def test_shipped_configs_keep_their_cache_folder(dataset):
    cfg = load_config(dataset)
    cfg.data.cache_dir = "/cache"
    assert cache_path(cfg, Path("/data/x")).name == SHIPPED_CACHE_FOLDERS[dataset]


@pytest.mark.parametrize(
    "override",
    [
        "data.frames=both",
        "preprocess.normalisation=minmax",
        "preprocess.resize=fixed",
        "preprocess.image_interpolation=nearest",
    ],
)
def test_the_added_keys_change_the_cache_away_from_their_defaults(tmp_path, override):
    root = tmp_path / "data"
    base = cache_path(tiny_config(tmp_path), root)
    assert cache_path(tiny_config(tmp_path, override), root) != base


def test_how_predictions_are_mapped_back_is_not_in_the_records(tmp_path):
    root = tmp_path / "data"
    base = cache_path(tiny_config(tmp_path), root)
    nearest = tiny_config(tmp_path, "preprocess.restore_interpolation=nearest")
    assert cache_path(nearest, root) == base


def test_acdc_ssl_cache_holds_both_frames_resized_and_restorable(tmp_path):
    """The acdc_ssl preprocessing through the cache: ED and ES cases, min-max slices resized
    to the fixed size, and records whose labels map back exactly onto the label files."""
    written = {
        patient: write_acdc_patient(tmp_path / "ACDC" / "training", patient, "NOR", 4, seed=i)
        for i, patient in enumerate(("patient001", "patient002"))
    }
    cfg = load_config("acdc_ssl", overrides=["preprocess.crop_size=32"])
    cfg.data.root, cfg.data.cache_dir = str(tmp_path / "ACDC"), str(tmp_path / "cache")
    cache = prepare_cache(cfg, progress=False)
    ids = ["patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"]
    assert cache.case_ids == ids and cache.crop_size == 32
    assert cache.path.name.startswith("acdc_ssl-")
    for element in volume_dataset(cache, ids):
        case_id = element["case_id"].numpy().decode()
        patient, phase = case_id.split("_")
        geometry = cache.geometry(case_id)
        assert (geometry.resize, geometry.native_shape) == ("fixed", (12, 10, 3))
        images = element["images"].numpy()
        assert images.shape == (3, 32, 32, 1) and (images.min(), images.max()) == (0.0, 1.0)
        native = restore_labels(element["labels"].numpy(), geometry)
        np.testing.assert_array_equal(native, written[patient][phase].label)


def test_unknown_case_id_names_the_cache(cache):
    with pytest.raises(DatasetError, match="'patient999' is not in this cache") as error:
        cache.record_file("patient999")
    assert str(cache.path) in str(error.value)


def test_decathlon_task_is_cached_with_its_modality(tmp_path):
    written = write_msd_dataset(tmp_path, "Task05_Prostate", ids=[2, 7], shape=(12, 10, 3))
    cfg = load_config("prostate", overrides=["preprocess.crop_size=16", "preprocess.n4=false"])
    cfg.data.root, cfg.data.cache_dir = str(written.root), str(tmp_path / "cache")

    cache = prepare_cache(cfg, progress=False)

    assert cache.case_ids == ["prostate_02", "prostate_07"]
    assert cache.groups == {"prostate_02": None, "prostate_07": None}
    assert cache.manifest["hash_inputs"]["phantom"] is None
    assert cache.manifest["hash_inputs"]["modality"] == "T2"
    assert cache.path.name.startswith("prostate-")
    ref = list_cases(cfg.data, written.root)[1]
    pre = preprocess_volume(load_case(cfg.data, ref), cfg.preprocess)
    record = next(iter(tf.data.TFRecordDataset(str(cache.record_file("prostate_07")))))
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    image = np.frombuffer(feature["image"].bytes_list.value[0], dtype="<f4").reshape(16, 16)
    np.testing.assert_array_equal(image, pre.image[0])
