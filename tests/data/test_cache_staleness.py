"""The TFRecords cache follows edits inside the dataset folder: a case whose files (or
listing metadata) changed after it was written is rebuilt, and only that case."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data.fixtures import WrittenDataset, write_acdc_patient, write_msd_dataset, write_nifti
from tfaug.config import Config, load_config
from tfaug.data.datasets import list_cases, load_case
from tfaug.data.preprocess import preprocess_volume
from tfaug.data.records import Cache, prepare_cache
from tfaug.data.volume import DatasetError

SPACING = (0.6, 0.6, 3.6)  # write_msd_dataset's default: edited files keep the grid


@pytest.fixture
def prostate(tmp_path) -> WrittenDataset:
    """Three tiny Task05_Prostate cases (12x10x3 voxels, labels 0..2)."""
    return write_msd_dataset(tmp_path, "Task05_Prostate", ids=[1, 2, 3], shape=(12, 10, 3))


def prostate_config(written: WrittenDataset, cache_dir: Path) -> Config:
    cfg = load_config("prostate", overrides=["preprocess.crop_size=16", "preprocess.n4=false"])
    cfg.data.root, cfg.data.cache_dir = str(written.root), str(cache_dir)
    return cfg


def record_labels(cache: Cache, case_id: str) -> np.ndarray:
    """The uint8 label slices (Z, S, S) stored in ``case_id``'s record file."""
    slices = []
    for record in tf.data.TFRecordDataset(str(cache.record_file(case_id))):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        slices.append(np.frombuffer(feature["label"].bytes_list.value[0], dtype=np.uint8))
    return np.stack(slices).reshape(-1, cache.crop_size, cache.crop_size)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_edited_label_is_rebuilt_and_the_other_cases_are_kept(prostate, tmp_path, capsys):
    cfg = prostate_config(prostate, tmp_path / "cache")
    cache = prepare_cache(cfg, progress=False)
    assert (record_labels(cache, "prostate_02") == 2).any()
    before = mtimes(cache.path)
    capsys.readouterr()

    case = prostate.cases["prostate_02"]
    fixed = np.where(case.label == 2, 1, case.label).astype(np.uint8)  # class 2 removed
    write_nifti(case.label_path, fixed, spacing=SPACING)
    again = prepare_cache(cfg, progress=False)

    assert again.path == cache.path
    assert capsys.readouterr().err.splitlines() == [
        f"prostate_02: its label file changed since the cache was built "
        f"({case.label_path.resolve()}); rebuilding it"
    ]
    ref = list_cases(cfg.data, prostate.root)[1]
    expected = preprocess_volume(load_case(cfg.data, ref), cfg.preprocess).label
    np.testing.assert_array_equal(record_labels(again, "prostate_02"), expected)
    assert not (record_labels(again, "prostate_02") == 2).any()
    after = mtimes(cache.path)
    for name in ("prostate_01.tfrecord", "prostate_01.json", "prostate_03.tfrecord"):
        assert after[name] == before[name]
    assert after["prostate_02.tfrecord"] != before["prostate_02.tfrecord"]


def test_label_replaced_by_another_file_is_rebuilt(prostate, tmp_path, capsys):
    cfg = prostate_config(prostate, tmp_path / "cache")
    prepare_cache(cfg, progress=False)
    capsys.readouterr()
    case = prostate.cases["prostate_03"]
    corrected = case.label_path.with_name("prostate_03_corrected.nii.gz")
    write_nifti(corrected, np.zeros_like(case.label), spacing=SPACING)
    listing = json.loads((prostate.root / "dataset.json").read_text())
    listing["training"][2]["label"] = "./labelsTr/prostate_03_corrected.nii.gz"
    (prostate.root / "dataset.json").write_text(json.dumps(listing))

    cache = prepare_cache(cfg, progress=False)

    assert capsys.readouterr().err.splitlines() == [
        f"prostate_03: its label file is now {corrected.resolve()} (it was built from "
        f"{case.label_path.resolve()}); rebuilding it"
    ]
    assert not record_labels(cache, "prostate_03").any()
    assert cache.case("prostate_03")["sources"]["label"]["path"] == str(corrected.resolve())


def test_unchanged_dataset_prepared_twice_rebuilds_nothing(prostate, tmp_path, capsys):
    cfg = prostate_config(prostate, tmp_path / "cache")
    cache = prepare_cache(cfg, progress=False)
    before = mtimes(cache.path)
    capsys.readouterr()

    again = prepare_cache(cfg, progress=False)

    assert capsys.readouterr().err == ""
    assert mtimes(cache.path) == before
    assert again.manifest == cache.manifest
    label = cache.case("prostate_01")["sources"]["label"]
    stat = prostate.cases["prostate_01"].label_path.stat()
    assert (label["size"], label["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)


def test_cache_without_source_fingerprints_is_rebuilt_once(prostate, tmp_path, capsys):
    """A cache written before ``sources`` existed (simulated by removing the field)."""
    cfg = prostate_config(prostate, tmp_path / "cache")
    cache = prepare_cache(cfg, progress=False)
    for info_path in cache.path.glob("prostate_*.json"):
        info = json.loads(info_path.read_text())
        del info["sources"]
        info_path.write_text(json.dumps(info))
    manifest = json.loads((cache.path / "manifest.json").read_text())
    for info in manifest["cases"]:
        del info["sources"]
    (cache.path / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()

    rebuilt = prepare_cache(cfg, progress=False)

    assert capsys.readouterr().err.splitlines() == [
        f"{case_id}: it was cached by an older tfaug that did not record its source files; "
        "rebuilding it"
        for case_id in ("prostate_01", "prostate_02", "prostate_03")
    ]
    assert rebuilt.manifest == cache.manifest
    before = mtimes(cache.path)
    prepare_cache(cfg, progress=False)
    assert capsys.readouterr().err == ""
    assert mtimes(cache.path) == before


def test_invalid_edit_is_reported_not_hidden_behind_the_old_records(prostate, tmp_path):
    cfg = prostate_config(prostate, tmp_path / "cache")
    prepare_cache(cfg, progress=False)
    case = prostate.cases["prostate_01"]
    write_nifti(case.label_path, np.full_like(case.label, 7), spacing=SPACING)
    for _ in range(2):  # the first failure does not leave the old records trusted
        with pytest.raises(DatasetError, match="prostate_01"):
            prepare_cache(cfg, progress=False)


def test_changed_acdc_group_is_rebuilt(tmp_path, capsys):
    for number, patient in enumerate(("patient001", "patient002")):
        write_acdc_patient(tmp_path / "ACDC" / "training", patient, "NOR", 3, seed=number)
    cfg = load_config("acdc", overrides=["preprocess.crop_size=16", "preprocess.n4=false"])
    cfg.data.root, cfg.data.cache_dir = str(tmp_path / "ACDC"), str(tmp_path / "cache")
    prepare_cache(cfg, progress=False)
    info_cfg = tmp_path / "ACDC" / "training" / "patient002" / "Info.cfg"
    info_cfg.write_text(info_cfg.read_text().replace("Group: NOR", "Group: DCM"))
    capsys.readouterr()

    cache = prepare_cache(cfg, progress=False)

    assert capsys.readouterr().err.splitlines() == [
        "patient002: its metadata (group, info) changed since the cache was built; rebuilding it"
    ]
    assert cache.groups == {"patient001": "NOR", "patient002": "DCM"}
