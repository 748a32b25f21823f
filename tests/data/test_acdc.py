"""Tests of tfaug/data/acdc.py and of tfaug/data/datasets.py for the ACDC layout."""

import numpy as np
import pytest

from data.fixtures import make_label, write_acdc_case, write_acdc_patient, write_nifti
from tfaug.config import DataConfig
from tfaug.data.acdc import load_acdc, read_info_cfg
from tfaug.data.datasets import check_dataset, list_cases, load_case, verify_dataset
from tfaug.data.volume import DatasetError

ACDC = DataConfig(dataset="acdc")
BOTH = DataConfig(dataset="acdc", frames="both")

# In the real ACDC, patients 001-020 are DCM, 021-040 HCM, ...: these groups disagree with
# any guess from the id, so a reader that infers the group fails.
CASES = [("patient001", "RV", 9), ("patient002", "NOR", 3), ("patient021", "MINF", 12)]


@pytest.fixture
def classic(tmp_path):
    """ACDC 2017 layout: training/ with ground truth, testing/ without (challenge set)."""
    written = {
        case_id: write_acdc_case(tmp_path / "training", case_id, group, es, seed=i)
        for i, (case_id, group, es) in enumerate(CASES)
    }
    challenge = write_acdc_case(tmp_path / "testing", "patient101", "NOR", 4)
    challenge.label_path.unlink()
    (challenge.label_path.parent / "patient101_frame01_gt.nii.gz").unlink()
    return tmp_path, written


def test_lists_es_frames_with_group_and_info_from_info_cfg(classic):
    root, written = classic
    cases = list_cases(ACDC, root)
    assert [c.case_id for c in cases] == ["patient001", "patient002", "patient021"]
    for case, (case_id, group, es) in zip(cases, CASES, strict=True):
        assert case.meta["group"] == group
        assert case.meta["frame"] == es
        assert case.meta["subset"] == "training"
        assert case.image_path == written[case_id].image_path
        assert case.image_path.name == f"{case_id}_frame{es:02d}.nii.gz"
        assert case.label_path.name == f"{case_id}_frame{es:02d}_gt.nii.gz"
    info = cases[0].meta["info"]
    assert info == {
        "ED": 1, "ES": 9, "Group": "RV", "Height": 172.0, "NbFrame": 11, "Weight": 70.5,
    }  # fmt: skip
    assert isinstance(info["ES"], int) and isinstance(info["Height"], float)


def test_loads_the_es_frame_not_ed_nor_the_4d_file(classic):
    root, written = classic
    case = list_cases(ACDC, root)[0]
    volume = load_acdc(case)
    truth = written["patient001"]
    assert volume.image.dtype == np.float32 and volume.image.shape == (12, 10, 3)
    assert volume.label.dtype == np.uint8
    np.testing.assert_array_equal(volume.image, truth.image)
    np.testing.assert_array_equal(volume.label, truth.label)
    assert volume.spacing == pytest.approx((1.5, 1.5, 10.0))
    assert volume.meta["group"] == "RV"
    assert set(np.unique(volume.label)) == {0, 1, 2, 3}


def test_training_folder_itself_is_accepted(classic):
    root, _ = classic
    assert [c.case_id for c in list_cases(ACDC, root / "training")] == [c[0] for c in CASES]


def test_2023_release_reads_training_and_testing(tmp_path):
    database = tmp_path / "database"
    write_acdc_case(database / "training", "patient001", "DCM", 5)
    write_acdc_case(database / "testing", "patient101", "HCM", 7)
    (database / "MANDATORY_CITATION.md").write_text("cite", encoding="utf-8")
    cases = list_cases(ACDC, tmp_path)
    assert [(c.case_id, c.meta["subset"], c.meta["frame"]) for c in cases] == [
        ("patient001", "training", 5),
        ("patient101", "testing", 7),
    ]
    assert [c.case_id for c in list_cases(ACDC, database)] == ["patient001", "patient101"]


def test_plain_nii_files_are_accepted(tmp_path):
    truth = write_acdc_case(tmp_path / "training", "patient005", "HCM", 2, suffix=".nii")
    (case,) = list_cases(ACDC, tmp_path)
    assert case.image_path.name == "patient005_frame02.nii"
    np.testing.assert_array_equal(load_acdc(case).image, truth.image)


def test_missing_info_cfg_names_the_file(classic):
    root, _ = classic
    (root / "training" / "patient002" / "Info.cfg").unlink()
    with pytest.raises(DatasetError, match=r"patient002/Info\.cfg: Info\.cfg not found"):
        list_cases(ACDC, root)


def test_missing_es_key_is_reported(classic):
    root, _ = classic
    config = root / "training" / "patient001" / "Info.cfg"
    config.write_text("ED: 1\nGroup: RV\nNbFrame: 11\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"Info\.cfg: no 'ES' key"):
        list_cases(ACDC, root)


def test_es_beyond_nbframe_is_reported(classic):
    root, _ = classic
    config = root / "training" / "patient001" / "Info.cfg"
    config.write_text("ED: 1\nES: 40\nGroup: RV\nNbFrame: 11\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"ES = 40, expected a frame number between 1 and"):
        list_cases(ACDC, root)


def test_malformed_info_cfg_line_is_reported(tmp_path):
    config = tmp_path / "Info.cfg"
    config.write_text("ED: 1\nES 9\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 2: expected 'Key: value', found 'ES 9'"):
        read_info_cfg(config)


def test_missing_gt_file_names_the_expected_path(classic):
    root, written = classic
    written["patient021"].label_path.unlink()
    with pytest.raises(DatasetError, match=r"patient021_frame12_gt\.nii\.gz: end-systole label"):
        list_cases(ACDC, root)


def test_listing_collects_every_broken_patient(classic):
    root, written = classic
    (root / "training" / "patient002" / "Info.cfg").unlink()
    written["patient021"].image_path.unlink()
    with pytest.raises(DatasetError, match=r"2 problem\(s\)") as error:
        list_cases(ACDC, root)
    assert "patient002" in str(error.value) and "patient021_frame12" in str(error.value)


def test_folder_without_patients_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="no patientXXX folders found"):
        list_cases(ACDC, tmp_path)


def test_label_value_outside_acdc_labels_is_reported(classic):
    root, written = classic
    label = written["patient001"].label.copy()
    label[0, 0, 0] = 7
    write_nifti(written["patient001"].label_path, label)
    case = list_cases(ACDC, root)[0]
    with pytest.raises(DatasetError, match=r"outside \[0, 1, 2, 3\]: 7 \(1 voxels\)"):
        load_acdc(case)


def test_datasets_missing_root_says_where_to_download(tmp_path):
    with pytest.raises(DatasetError, match=r"acdc dataset folder not found\. Download ACDC from"):
        list_cases(DataConfig(dataset="acdc"), tmp_path / "nowhere")
    (message,) = verify_dataset(DataConfig(dataset="acdc"), tmp_path / "nowhere")
    assert "creatis.insa-lyon.fr" in message and "--data-root" in message


def test_datasets_acdc_and_phantom_use_the_acdc_reader(classic):
    root, written = classic
    for name in ("acdc", "phantom"):
        data = DataConfig(dataset=name)
        cases = check_dataset(data, root)
        assert [c.case_id for c in cases] == ["patient001", "patient002", "patient021"]
        volume = load_case(data, cases[2])
        np.testing.assert_array_equal(volume.label, written["patient021"].label)


def test_datasets_label_set_follows_class_names(classic):
    root, _ = classic
    data = DataConfig(dataset="acdc", class_names=["background", "RV"])
    with pytest.raises(DatasetError, match=r"outside \[0, 1\]: 2 .*, 3 "):
        load_case(data, list_cases(data, root)[0])


def test_datasets_unknown_dataset_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="no reader for it"):
        list_cases(DataConfig(dataset="brats"), tmp_path)


def test_verify_dataset_reports_every_problem_at_once(classic):
    root, written = classic
    (root / "training" / "patient002" / "Info.cfg").unlink()  # listing problem
    bad_label = make_label((12, 10, 3))
    bad_label[2, 2, 2] = 7
    write_nifti(written["patient001"].label_path, bad_label)  # label value problem
    write_nifti(written["patient021"].label_path, make_label((12, 10, 2)))  # shape problem
    data = DataConfig(dataset="acdc")
    problems = verify_dataset(data, root)
    assert len(problems) == 3
    assert "Info.cfg not found" in problems[0]
    assert any("7 (1 voxels)" in p for p in problems)
    assert any("label shape (12, 10, 2) differs" in p for p in problems)
    with pytest.raises(DatasetError, match=r"3 problem\(s\)"):
        check_dataset(data, root)


def test_listing_reads_no_voxel_data(classic):
    root, written = classic
    path = written["patient002"].image_path
    path.write_bytes(path.read_bytes()[:-100])  # truncated: only loading can notice
    case = list_cases(ACDC, root)[1]
    assert case.image_path == path
    with pytest.raises(DatasetError, match="truncated or damaged"):
        load_acdc(case)


# --- data.frames: both -------------------------------------------------------------------


def test_both_frames_give_an_ed_and_an_es_case_per_patient(tmp_path):
    written = {
        "patient001": write_acdc_patient(tmp_path / "training", "patient001", "RV", 9, ed=2),
        "patient021": write_acdc_patient(tmp_path / "training", "patient021", "MINF", 12),
    }
    cases = list_cases(BOTH, tmp_path)
    assert [c.case_id for c in cases] == [
        "patient001_ED", "patient001_ES", "patient021_ED", "patient021_ES",
    ]  # fmt: skip
    assert [(c.meta["phase"], c.meta["frame"]) for c in cases] == [
        ("ED", 2), ("ES", 9), ("ED", 1), ("ES", 12),
    ]  # fmt: skip
    assert [c.meta["patient"] for c in cases] == ["patient001"] * 2 + ["patient021"] * 2
    assert cases[0].image_path.name == "patient001_frame02.nii.gz"
    assert cases[1].label_path.name == "patient001_frame09_gt.nii.gz"
    for case in cases:
        truth = written[case.meta["patient"]][case.meta["phase"]]
        volume = load_case(BOTH, case)
        np.testing.assert_array_equal(volume.image, truth.image)
        np.testing.assert_array_equal(volume.label, truth.label)
        assert volume.meta["group"] == case.meta["group"]


def test_es_only_listing_is_unchanged_by_the_switch(classic):
    root, _ = classic
    cases = list_cases(ACDC, root)
    assert [c.case_id for c in cases] == ["patient001", "patient002", "patient021"]
    assert all("patient" not in c.meta and "phase" not in c.meta for c in cases)


def test_both_frames_need_the_ed_key_and_file(classic):
    root, _ = classic
    config = root / "training" / "patient001" / "Info.cfg"
    config.write_text("ES: 9\nGroup: RV\nNbFrame: 11\n", encoding="utf-8")
    (root / "training" / "patient021" / "patient021_frame01_gt.nii.gz").unlink()
    assert [c.case_id for c in list_cases(ACDC, root)] == [c[0] for c in CASES]  # ES only: fine
    problems = verify_dataset(BOTH, root)
    assert len(problems) == 2
    assert "patient001/Info.cfg: no 'ED' key" in problems[0]
    assert "patient021_frame01_gt.nii.gz: end-diastole label (_gt) not found" in problems[1]
    assert "Info.cfg gives ED = 1" in problems[1]


def test_both_frames_refuse_ed_equal_to_es(tmp_path):
    write_acdc_case(tmp_path, "patient003", "NOR", 4)
    (tmp_path / "patient003" / "Info.cfg").write_text(
        "ED: 4\nES: 4\nGroup: NOR\nNbFrame: 6\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError, match="ED and ES are both frame 4.*data.frames=es"):
        list_cases(BOTH, tmp_path)


def test_frames_other_than_es_need_the_acdc_layout(tmp_path):
    with pytest.raises(DatasetError, match="frames exist only in the ACDC layout"):
        list_cases(DataConfig(dataset="prostate", frames="both"), tmp_path)
