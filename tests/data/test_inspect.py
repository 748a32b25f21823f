"""``tfaug data inspect`` (tfaug/data/inspect.py) with the acdc_ssl config on the real ACDC
layout: both frames of the 100 training patients, and the ssl4mis split."""

import json

import nibabel as nib
import numpy as np
import pytest

from data.fixtures import write_acdc_training_set
from tfaug.cli import main

SSL4MIS_LABELED_7 = [99, 38, 50, 100, 58, 21, 49]  # the first 7 of train_slices.list


@pytest.fixture(scope="module")
def acdc_100(tmp_path_factory):
    return write_acdc_training_set(tmp_path_factory.mktemp("acdc100"))


def _inspect(root, *options):
    return main(["data", "inspect", "--dataset", "acdc_ssl", "--data-root", str(root), *options])


def test_inspect_acdc_ssl_lists_both_frames_and_the_ssl4mis_split(acdc_100, capsys):
    code = _inspect(acdc_100, "--json", "--set", "split.n_labeled=7")
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["problems"] == []
    assert report["dataset"] == "acdc_ssl"
    cases = report["cases"]
    assert len(cases) == 200
    assert [(c["case_id"], c["frame"]) for c in cases[:2]] == [
        ("patient001_ED", 1),
        ("patient001_ES", 5),
    ]
    split = report["split"]
    labeled = sorted(f"patient{n:03d}_{phase}" for n in SSL4MIS_LABELED_7 for phase in ("ED", "ES"))
    assert split["labeled"] == labeled
    sizes = [len(split[name]) for name in ("labeled", "unlabeled", "validation", "test")]
    assert sizes == [14, 126, 20, 40]  # 7 / 63 / 10 / 20 patients, two frames each


def test_inspect_acdc_ssl_table_and_a_missing_patient(acdc_100, tmp_path, capsys):
    assert _inspect(acdc_100) == 0
    table = capsys.readouterr().out
    assert "acdc_ssl dataset at" in table and ": 200 volumes" in table
    assert "labeled      6  patient038_ED patient038_ES patient050_ED" in table
    partial = write_acdc_training_set(tmp_path, numbers=[n for n in range(1, 101) if n != 64])
    assert _inspect(partial) == 1
    table = capsys.readouterr().out
    assert "1 problem(s):" in table
    assert "1 are missing from the dataset: patient064; point data.root (--data-root)" in table


def test_inspect_reports_an_image_it_could_not_normalise(tmp_path, capsys):
    """A blank image passes the file checks but would stop `data prepare`; inspect names it."""
    root = write_acdc_training_set(tmp_path, numbers=range(1, 5), shape=(6, 5, 2))
    blank = root / "training" / "patient003" / "patient003_frame05.nii.gz"
    source = nib.load(blank)
    nib.save(nib.Nifti1Image(np.zeros(source.shape, np.float32), source.affine), blank)
    assert main(["data", "inspect", "--dataset", "acdc", "--data-root", str(root), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p for p in problems if str(blank) in p] == [
        f"{blank}: image is constant between its percentiles 2 and 98 (both 0): at least 96 % "
        "of its voxels have that value, so it cannot be normalised. Remove the case if it is "
        "blank; if it is mostly padding, widen preprocess.percentiles (e.g. [0.5, 99.5]) or "
        "set preprocess.normalisation=minmax"
    ]
