"""Listing dataset folders (tfaug/data/msd.py, acdc.py, inputs.py) and what ``tfaug data
inspect`` (tfaug/data/inspect.py) shows when some entries are bad: one file listed as two
volumes, one scan stored under two names, NIfTI names in upper case, Info.cfg encodings."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from data.fixtures import write_acdc_patient, write_acdc_training_set, write_msd_dataset
from tfaug.cli import main
from tfaug.config import DataConfig
from tfaug.data.acdc import read_info_cfg
from tfaug.data.datasets import list_cases, load_case, scan_cases, verify_dataset
from tfaug.data.inputs import find_inputs, is_nifti_name, nifti_stem, plan_outputs
from tfaug.data.nifti import save_nifti_atomic
from tfaug.data.volume import DatasetError
from tfaug.deploy.inference import probabilities_path

PROSTATE = DataConfig(dataset="prostate", class_names=["background", "PZ", "TZ"], modality="T2")
ACDC = DataConfig(dataset="acdc")
SHAPE = (4, 4, 2)


@pytest.fixture
def prostate(tmp_path):
    """A Decathlon task of four tiny cases: prostate_00, _01, _02, _03."""
    return write_msd_dataset(tmp_path, "Task05_Prostate", range(4), shape=SHAPE, hidden_files=False)


def _training(root):
    return json.loads((root / "dataset.json").read_text(encoding="utf-8"))


def _write_training(root, entries):
    content = _training(root)
    content["training"] = entries
    (root / "dataset.json").write_text(json.dumps(content), encoding="utf-8")


def _append_entry(root, image, label):
    _write_training(root, [*_training(root)["training"], {"image": image, "label": label}])


def _case_ids(cases):
    return [case.case_id for case in cases]


# --- one file listed as two volumes -------------------------------------------------------


def test_an_msd_entry_whose_files_are_symlinks_to_another_entry_is_refused(prostate):
    root = prostate.root
    for folder in ("imagesTr", "labelsTr"):
        os.symlink(root / folder / "prostate_00.nii.gz", root / folder / "prostate_05.nii.gz")
    _append_entry(root, "./imagesTr/prostate_05.nii.gz", "./labelsTr/prostate_05.nii.gz")
    problems = verify_dataset(PROSTATE, root)
    assert len(problems) == 1
    assert problems[0].startswith(f"{root / 'dataset.json'} training[4] image: ")
    assert f"(resolves to {(root / 'imagesTr' / 'prostate_00.nii.gz').resolve()})" in problems[0]
    assert f"already listed as {root / 'dataset.json'} training[0] image" in problems[0]
    assert "Remove the duplicated entry from dataset.json" in problems[0]
    with pytest.raises(DatasetError, match=r"training\[4\] image"):
        list_cases(PROSTATE, root)  # data prepare and training still refuse the dataset


def test_an_msd_entry_with_a_label_path_copied_from_another_entry_is_refused(prostate):
    root = prostate.root
    entries = _training(root)["training"]
    entries[2]["label"] = entries[0]["label"]
    _write_training(root, entries)
    problems = verify_dataset(PROSTATE, root)
    assert len(problems) == 1
    assert problems[0].startswith(f"{root / 'dataset.json'} training[2] label: ")
    assert f"already listed as {root / 'dataset.json'} training[0] label" in problems[0]
    assert "resolves to" not in problems[0]  # the same path, no symlink to explain


def test_an_acdc_patient_whose_frame_links_to_another_patients_file_is_refused(tmp_path):
    root = write_acdc_training_set(tmp_path, numbers=range(1, 4), shape=SHAPE)
    source, copy = root / "training" / "patient002", root / "training" / "patient009"
    copy.mkdir()
    shutil.copy(source / "Info.cfg", copy / "Info.cfg")
    for name in ("frame01", "frame01_gt", "frame05", "frame05_gt"):
        os.symlink(source / f"patient002_{name}.nii.gz", copy / f"patient009_{name}.nii.gz")
    with pytest.raises(DatasetError) as raised:
        list_cases(ACDC, root)
    message = str(raised.value)
    assert "1 problem(s)" in message
    assert (
        f"  - {copy} case patient009 image: {copy / 'patient009_frame05.nii.gz'} (resolves"
        in message
    )
    assert f"already listed as {source} case patient002 image" in message
    assert "Remove the patient folder that duplicates another one" in message


def test_one_scan_stored_under_two_names_is_refused_naming_both_files(prostate, tmp_path, capsys):
    root = prostate.root
    scan = nib.load(root / "imagesTr" / "prostate_01.nii.gz")
    # a re-saved copy: another name, uncompressed, int16 on disk; the same voxels
    copy = nib.Nifti1Image(np.asarray(scan.dataobj).round().astype(np.int16), scan.affine)
    original = nib.Nifti1Image(np.asarray(copy.dataobj), scan.affine)
    nib.save(original, root / "imagesTr" / "prostate_01.nii.gz")
    nib.save(copy, root / "imagesTr" / "prostate_07.nii")
    shutil.copy(root / "labelsTr" / "prostate_01.nii.gz", root / "labelsTr" / "prostate_07.nii.gz")
    _append_entry(root, "./imagesTr/prostate_07.nii", "./labelsTr/prostate_07.nii.gz")
    problems = verify_dataset(PROSTATE, root)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{root / 'imagesTr' / 'prostate_01.nii.gz'}, {root / 'imagesTr' / 'prostate_07.nii'}: "
        "cases prostate_01, prostate_07 hold the same image voxels"
    )
    prepare = ["data", "prepare", "--dataset", "prostate", "--data-root", str(root)]
    assert main([*prepare, "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "hold the same image voxels" in capsys.readouterr().err
    code, report = _inspect_json("prostate", root, capsys)
    assert code == 1
    assert len(report["cases"]) == 5
    assert problems[0] in report["problems"]  # beside the split's (5 cases are too few)

    voxels = np.asarray(copy.dataobj).copy()
    voxels[0, 0, 0] += 1
    nib.save(nib.Nifti1Image(voxels, scan.affine), root / "imagesTr" / "prostate_07.nii")
    assert verify_dataset(PROSTATE, root) == []  # one voxel apart: another scan


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("Patient002", "patient002"), ("patient002 (1)", "patient002"), ("patient_2", "patient002")],
)
def test_a_patient_folder_under_another_name_is_a_listing_problem(tmp_path, name, suggested):
    root = write_acdc_training_set(tmp_path, numbers=range(1, 4), shape=SHAPE)
    renamed = root / "training" / name
    (root / "training" / "patient002").rename(renamed)
    (root / "training" / "notes").mkdir()  # a folder without Info.cfg is not a patient
    cases, problems = scan_cases(ACDC, root)
    assert _case_ids(cases) == ["patient001", "patient003"]
    assert problems == [
        f"{renamed}: holds Info.cfg but its name is not patientXXX (lower case, digits only), "
        f"so it is not listed. Rename the folder to {suggested}, the name its files carry."
    ]
    with pytest.raises(DatasetError, match="its name is not patientXXX"):
        list_cases(ACDC, root)


# --- NIfTI names in any case --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "is_nifti", "stem"),
    [
        ("case_0.nii.gz", True, "case_0"),
        ("case_0.NII.GZ", True, "case_0"),
        ("case_0.Nii.Gz", True, "case_0"),
        ("case_0.NII", True, "case_0"),
        ("case_0.nii.gz.bak", False, "case_0.nii.gz.bak"),
        ("notes.txt", False, "notes.txt"),
    ],
)
def test_nifti_names_are_matched_in_any_case(name, is_nifti, stem):
    assert is_nifti_name(name) is is_nifti
    assert nifti_stem(name) == stem


def test_segment_lists_upper_case_nifti_files_and_takes_an_upper_case_output_as_a_file(tmp_path):
    for name in ("a.nii.gz", "b.NII.GZ", "c.Nii", "notes.txt"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    assert [item.source.name for item in find_inputs(tmp_path / "in")] == [
        "a.nii.gz", "b.NII.GZ", "c.Nii",
    ]  # fmt: skip
    pairs = plan_outputs(tmp_path / "in" / "b.NII.GZ", tmp_path / "OUT.NII.GZ")
    assert [(item.source.name, output.name) for item, output in pairs] == [
        ("b.NII.GZ", "OUT.NII.GZ")
    ]


def test_an_upper_case_output_name_is_written_compressed_and_probabilities_beside_it(tmp_path):
    labels = nib.Nifti1Image(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.eye(4))
    written = save_nifti_atomic(labels, tmp_path / "OUT.NII.GZ")
    assert written.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the name says
    np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj), labels.dataobj)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT.NII.GZ"]  # no temporary left
    assert probabilities_path(written).name == "OUT_probabilities.nii.gz"


def test_an_msd_entry_with_an_upper_case_extension_is_listed_and_loaded(prostate):
    root = prostate.root
    for folder in ("imagesTr", "labelsTr"):
        os.rename(root / folder / "prostate_01.nii.gz", root / folder / "prostate_01.NII.GZ")
    entries = _training(root)["training"]
    entries[1] = {
        "image": "./imagesTr/prostate_01.NII.GZ",
        "label": "./labelsTr/prostate_01.NII.GZ",
    }
    _write_training(root, entries)
    cases = list_cases(PROSTATE, root)
    assert _case_ids(cases) == ["prostate_00", "prostate_01", "prostate_02", "prostate_03"]
    volume = load_case(PROSTATE, cases[1])
    np.testing.assert_array_equal(volume.label, prostate.cases["prostate_01"].label)


def test_acdc_frames_with_upper_case_extensions_are_listed_and_loaded(tmp_path):
    written = write_acdc_patient(
        tmp_path / "training", "patient001", "DCM", 4, SHAPE, suffix=".NII.GZ"
    )
    (case,) = list_cases(ACDC, tmp_path)
    assert case.image_path.name == "patient001_frame04.NII.GZ"
    assert case.label_path.name == "patient001_frame04_gt.NII.GZ"
    np.testing.assert_array_equal(load_case(ACDC, case).label, written["ES"].label)


def test_acdc_testing_folder_with_upper_case_ground_truth_is_read(tmp_path):
    write_acdc_patient(tmp_path / "training", "patient001", "DCM", 4, SHAPE)
    write_acdc_patient(tmp_path / "testing", "patient101", "NOR", 3, SHAPE, suffix=".NII.GZ")
    assert _case_ids(list_cases(ACDC, tmp_path)) == ["patient001", "patient101"]


def test_two_files_holding_one_acdc_frame_are_an_error_naming_both(tmp_path):
    written = write_acdc_patient(tmp_path / "training", "patient001", "DCM", 4, SHAPE)
    label = written["ES"].label_path
    shutil.copy(label, label.with_name("patient001_frame04_gt.NII.GZ"))
    problems = verify_dataset(ACDC, tmp_path)
    assert problems == [
        f"{label.parent}: 2 files hold the end-systole label (_gt) (patient001_frame04_gt.NII.GZ, "
        "patient001_frame04_gt.nii.gz), expected one; Info.cfg gives ES = 4. Keep one file and "
        "delete the others."
    ]


# --- Info.cfg encodings ------------------------------------------------------------------

INFO = "ED: 1\nES: 4\nGroup: DCM\nHeight: 172.0\nNbFrame: 6\nWeight: 70.5\n"


def test_info_cfg_with_a_byte_order_mark_and_windows_line_ends_is_read(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_bytes(b"\xef\xbb\xbf" + INFO.replace("\n", "\r\n").encode("ascii"))
    info = read_info_cfg(path)
    assert info["ED"] == 1 and info["ES"] == 4 and info["Group"] == "DCM"


def test_info_cfg_that_is_not_utf8_names_the_file_line_and_offset(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_bytes(INFO.replace("DCM", "D\xf6M").encode("latin-1"))
    with pytest.raises(DatasetError) as raised:
        read_info_cfg(path)
    offset = INFO.index("DCM") + 1
    assert str(raised.value) == (
        f"{path}, line 3: byte 0xf6 at offset {offset} is not UTF-8, expected a UTF-8 or ASCII "
        "text file. Save Info.cfg as UTF-8 (or ASCII), or restore it from the ACDC download."
    )


# --- tfaug data inspect with bad entries ---------------------------------------------------


def _inspect_json(dataset, root, capsys):
    code = main(["data", "inspect", "--dataset", dataset, "--data-root", str(root), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_inspect_lists_the_good_msd_cases_and_one_problem_per_bad_entry(prostate, capsys):
    root = prostate.root
    entries = _training(root)["training"]
    entries[1]["image"] = "./imagesTr/prostate_09.nii.gz"  # missing
    entries[3]["label"] = entries[0]["label"]  # another entry's label
    _write_training(root, entries)
    code, report = _inspect_json("prostate", root, capsys)
    assert code == 1
    assert [case["case_id"] for case in report["cases"]] == ["prostate_00", "prostate_02"]
    assert len(report["problems"]) == 2
    assert report["problems"][0].startswith(f"{root / 'dataset.json'} training[1] image: ")
    assert report["problems"][1].startswith(f"{root / 'dataset.json'} training[3] label: ")
    assert report["split"] is None
    assert report["split_skipped"].startswith("not drawn, because of the 2 listing problem(s)")
    assert not any("cannot hold" in problem for problem in report["problems"])


def test_inspect_table_shows_the_good_acdc_cases_and_names_the_bad_folder(tmp_path, capsys):
    root = write_acdc_training_set(tmp_path, numbers=range(1, 5), shape=SHAPE)
    (root / "training" / "patient003" / "Info.cfg").write_bytes(b"ED: 1\nES: 5\nGroup: D\xf6M\n")
    assert main(["data", "inspect", "--dataset", "acdc", "--data-root", str(root)]) == 1
    table = capsys.readouterr().out
    assert ": 3 volumes" in table
    assert "split: not drawn, because of the 1 listing problem(s) below" in table
    assert "1 problem(s):" in table
    assert f"  - {root / 'training' / 'patient003' / 'Info.cfg'}, line 3: byte 0xf6" in table
