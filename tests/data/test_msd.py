"""Tests of tfaug/data/msd.py and of tfaug/data/datasets.py for Decathlon tasks."""

import json
import os

import numpy as np
import pytest

from data.fixtures import make_label, write_msd_dataset, write_nifti
from tfaug.config import DataConfig
from tfaug.data.datasets import check_dataset, list_cases, load_case, verify_dataset
from tfaug.data.msd import load_msd
from tfaug.data.volume import DatasetError

PROSTATE_IDS = [16, 0, 7, 2]  # listed out of order, with gaps, as in the real dataset.json
PROSTATE = DataConfig(dataset="prostate", class_names=["background", "PZ", "TZ"], modality="T2")
PANCREAS = DataConfig(
    dataset="pancreas", class_names=["background", "pancreas"], merge_labels={2: 1}
)


@pytest.fixture
def prostate(tmp_path):
    return write_msd_dataset(tmp_path, "Task05_Prostate", PROSTATE_IDS, test_ids=[3])


def _edit_training(root, index, key, value):
    path = root / "dataset.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content["training"][index][key] = value
    path.write_text(json.dumps(content), encoding="utf-8")


def test_lists_training_cases_in_natural_order_with_modality_meta(prostate):
    cases = list_cases(PROSTATE, prostate.root)
    assert [c.case_id for c in cases] == [
        "prostate_00", "prostate_02", "prostate_07", "prostate_16",
    ]  # fmt: skip
    assert cases[0].meta["modality"] == {0: "T2", 1: "ADC"}
    assert cases[0].meta["labels"] == {0: "background", 1: "PZ", 2: "TZ"}
    assert cases[3].image_path == prostate.cases["prostate_16"].image_path
    assert all(not c.image_path.name.startswith("._") for c in cases)
    assert (prostate.root / "imagesTr" / "._prostate_16.nii.gz").is_file()  # decoy present


def test_loads_the_t2_channel_of_the_4d_image(prostate):
    truth = prostate.cases["prostate_07"]
    assert truth.image.shape == (12, 10, 3, 2)
    case = next(c for c in list_cases(PROSTATE, prostate.root) if c.case_id == "prostate_07")
    volume = load_msd(case, modality="T2", merge_labels={}, label_set={0, 1, 2})
    assert volume.image.shape == (12, 10, 3) and volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.image, truth.image[..., 0])
    assert not np.array_equal(volume.image, truth.image[..., 1])
    np.testing.assert_array_equal(volume.label, truth.label)
    assert volume.spacing == pytest.approx((0.6, 0.6, 3.6))
    adc = load_msd(case, modality="adc", merge_labels={}, label_set={0, 1, 2})
    np.testing.assert_array_equal(adc.image, truth.image[..., 1])


def test_4d_image_without_modality_is_an_error(prostate):
    case = list_cases(PROSTATE, prostate.root)[0]
    with pytest.raises(DatasetError, match=r"4D image .* no modality is configured.*'ADC', 'T2'"):
        load_msd(case, modality=None, merge_labels={}, label_set={0, 1, 2})


def test_unknown_modality_is_an_error(prostate):
    case = list_cases(PROSTATE, prostate.root)[0]
    with pytest.raises(DatasetError, match=r"data\.modality 'DWI' is not in dataset\.json"):
        load_msd(case, modality="DWI", merge_labels={}, label_set={0, 1, 2})


@pytest.mark.parametrize("stored", ["3d", "x_y_z_1", "three_channels"])
def test_an_image_without_one_channel_per_listed_modality_is_an_error(prostate, stored):
    truth = prostate.cases["prostate_07"]
    image = {
        "3d": truth.image[..., 0],
        "x_y_z_1": truth.image[..., :1],
        "three_channels": np.concatenate([truth.image, truth.image[..., :1]], axis=-1),
    }[stored]
    write_nifti(truth.image_path, image, spacing=(0.6, 0.6, 3.6))
    case = next(c for c in list_cases(PROSTATE, prostate.root) if c.case_id == "prostate_07")
    found = 3 if stored == "three_channels" else 1
    for modality in ("T2", "ADC"):  # a lone channel is not read as either modality
        with pytest.raises(DatasetError) as raised:
            load_msd(case, modality=modality, merge_labels={}, label_set={0, 1, 2})
        assert str(raised.value).startswith(f"{truth.image_path}: image of shape ")
        assert f"holds {found} channel(s), but dataset.json's modality lists 2" in str(raised.value)
        assert "(X, Y, Z, 2) image of all modalities" in str(raised.value)


def test_label_names_that_disagree_with_the_class_names_are_a_listing_problem(prostate):
    path = prostate.root / "dataset.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content["labels"] = {"0": "background", "1": "TZ", "2": "PZ"}  # the config says PZ, TZ
    path.write_text(json.dumps(content), encoding="utf-8")
    (problem,) = verify_dataset(PROSTATE, prostate.root)
    assert problem.startswith(f"{path}: dataset.json's labels disagree with data.class_names")
    assert "1 is 'TZ' there, 'PZ' here; 2 is 'PZ' there, 'TZ' here" in problem
    assert "set data.class_names to ['background', 'TZ', 'PZ']" in problem
    with pytest.raises(DatasetError, match="labels disagree"):
        list_cases(PROSTATE, prostate.root)  # data prepare and training stop on it
    swapped = DataConfig(
        dataset="prostate", class_names=["Background", "tz", "pz"], modality="T2"
    )  # the names the message suggests, in any case
    assert verify_dataset(swapped, prostate.root) == []


def test_pancreas_labels_are_merged_into_one_foreground(tmp_path):
    task = write_msd_dataset(tmp_path, "Task07_Pancreas", [1, 4], image_dtype=np.int16)
    truth = task.cases["pancreas_004"]
    assert set(np.unique(truth.label)) == {0, 1, 2}
    cases = list_cases(PANCREAS, task.root)
    assert [c.case_id for c in cases] == ["pancreas_001", "pancreas_004"]
    volume = load_case(PANCREAS, cases[1])
    assert volume.image.dtype == np.float32
    np.testing.assert_array_equal(volume.image, truth.image.astype(np.float32))
    np.testing.assert_array_equal(volume.label, (truth.label > 0).astype(np.uint8))
    unmerged = DataConfig(dataset="pancreas", class_names=["background", "pancreas"])
    with pytest.raises(DatasetError, match=r"outside \[0, 1\]: 2 \("):
        load_case(unmerged, cases[1])


def test_a_ct_stored_as_x_y_z_1_loads_as_3d_with_or_without_a_modality(tmp_path):
    task = write_msd_dataset(tmp_path, "Task07_Pancreas", [1], image_dtype=np.int16)
    truth = task.cases["pancreas_001"]
    write_nifti(truth.image_path, truth.image[..., None], spacing=(0.6, 0.6, 3.6))
    case = list_cases(PANCREAS, task.root)[0]
    for modality in (None, "CT"):
        volume = load_msd(case, modality=modality, merge_labels={2: 1}, label_set={0, 1})
        np.testing.assert_array_equal(volume.image, truth.image.astype(np.float32))


def test_datasets_prostate_reads_t2_through_the_entry_point(prostate):
    cases = check_dataset(PROSTATE, prostate.root)
    volume = load_case(PROSTATE, cases[-1])
    np.testing.assert_array_equal(volume.image, prostate.cases["prostate_16"].image[..., 0])


def test_vector_images_as_itk_writes_them_read_the_modality_channel(tmp_path):
    """ITK/SimpleITK store a multi-modal image as (X, Y, Z, 1, C); data.modality picks C."""
    task = write_msd_dataset(tmp_path, "Task05_Prostate", PROSTATE_IDS, vector_images=True)
    truth = task.cases["prostate_16"]
    assert truth.image.shape == (12, 10, 3, 1, 2)
    assert verify_dataset(PROSTATE, task.root) == []
    case = check_dataset(PROSTATE, task.root)[-1]
    np.testing.assert_array_equal(load_case(PROSTATE, case).image, truth.image[:, :, :, 0, 0])
    adc = load_msd(case, modality="ADC", merge_labels={}, label_set={0, 1, 2})
    np.testing.assert_array_equal(adc.image, truth.image[:, :, :, 0, 1])
    with pytest.raises(DatasetError, match=r"4D image of shape \(12, 10, 3, 2\) .* data\.modality"):
        load_msd(case, modality=None, merge_labels={}, label_set={0, 1, 2})


@pytest.mark.parametrize(
    "text, message",
    [
        ("../outside.nii.gz", "outside the task folder"),
        ("./imagesTr/../../outside.nii.gz", "outside the task folder"),
        ("/etc/passwd", "absolute path"),
    ],
)
def test_entry_escaping_the_root_is_an_error(prostate, text, message):
    write_nifti(prostate.root.parent / "outside.nii.gz", make_label((12, 10, 3)))
    _edit_training(prostate.root, 1, "image", text)
    with pytest.raises(DatasetError, match=rf"training\[1\] image: .*{message}"):
        list_cases(PROSTATE, prostate.root)


def test_symlink_escaping_the_root_is_an_error(prostate):
    outside = write_nifti(prostate.root.parent / "outside.nii.gz", make_label((12, 10, 3)))
    os.symlink(outside, prostate.root / "labelsTr" / "linked.nii.gz")
    _edit_training(prostate.root, 2, "label", "./labelsTr/linked.nii.gz")
    with pytest.raises(DatasetError, match=r"training\[2\] label: .*outside the task folder"):
        list_cases(PROSTATE, prostate.root)


def test_listed_appledouble_file_is_an_error(prostate):
    _edit_training(prostate.root, 0, "label", "./labelsTr/._prostate_16.nii.gz")
    with pytest.raises(DatasetError, match=r"training\[0\] label: .*macOS metadata file"):
        list_cases(PROSTATE, prostate.root)


def test_listed_file_that_does_not_exist_is_an_error(prostate):
    prostate.cases["prostate_02"].image_path.unlink()
    with pytest.raises(DatasetError, match=r"prostate_02\.nii\.gz not found"):
        list_cases(PROSTATE, prostate.root)


def test_missing_dataset_json_is_an_error(prostate):
    (prostate.root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match=r"dataset\.json not found\. Pass the Decathlon task"):
        list_cases(PROSTATE, prostate.root)


def test_malformed_modality_table_is_an_error(prostate):
    path = prostate.root / "dataset.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content["modality"] = ["T2", "ADC"]
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DatasetError, match="'modality' must map channel/label numbers"):
        list_cases(PROSTATE, prostate.root)


def test_datasets_missing_root_says_where_to_download(tmp_path):
    with pytest.raises(DatasetError, match=r"prostate dataset folder not found\. Download "):
        list_cases(PROSTATE, tmp_path / "Task05_Prostate")
    (message,) = verify_dataset(PANCREAS, tmp_path / "Task07_Pancreas")
    assert "medicaldecathlon.com" in message and "Task07_Pancreas" in message


def test_verify_dataset_reports_every_problem_at_once(prostate):
    _edit_training(prostate.root, 3, "image", "../outside.nii.gz")  # prostate_02: escapes
    cases = prostate.cases
    image = cases["prostate_00"].image.copy()
    image[0, 0, 0, 0] = np.nan
    write_nifti(cases["prostate_00"].image_path, image)  # NaN voxel
    write_nifti(cases["prostate_07"].label_path, cases["prostate_07"].label, spacing=(1, 1, 1))
    empty = cases["prostate_16"].label_path
    empty.write_bytes(b"")  # zero-byte label
    problems = verify_dataset(PROSTATE, prostate.root)
    assert len(problems) == 4
    assert "training[3] image" in problems[0]
    joined = "\n".join(problems)
    assert "1 NaN or infinite voxel(s)" in joined
    assert "label affine differs from the image affine" in joined
    assert "empty (0 bytes)" in joined
    with pytest.raises(DatasetError, match=r"4 problem\(s\)"):
        check_dataset(PROSTATE, prostate.root)
