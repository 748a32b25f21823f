"""The ``tfaug phantom`` and ``tfaug data inspect|prepare`` commands on a tiny phantom."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tfaug.cli import build_parser, main
from tfaug.data.phantom import generate_phantom
from tfaug.data.records import open_cache

SMALL = [
    "--set", "split.n_unlabeled=2",
    "--set", "split.n_test=1",
    "--set", "split.n_validation=1",
    "--set", "preprocess.crop_size=32",
    "--set", "preprocess.n4=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return generate_phantom(tmp_path_factory.mktemp("cli") / "phantom", subjects=6, seed=0)


def test_phantom_command_writes_the_acdc_layout(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--subjects", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in (out / "training").iterdir()) == ["patient001", "patient002"]


def test_phantom_command_rejects_a_bad_variant(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--variant", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_inspect_json_lists_volumes_and_the_split(phantom, capsys):
    code = main(["data", "inspect", "--json", "--data-root", str(phantom), *SMALL])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["problems"] == []
    assert [c["case_id"] for c in report["cases"]] == [f"patient00{i}" for i in range(1, 7)]
    first = report["cases"][0]
    info = (phantom / "training" / "patient001" / "Info.cfg").read_text(encoding="utf-8")
    assert f"Group: {first['group']}" in info and f"ES: {first['frame']}" in info
    assert first["labels"] == [0, 1, 2, 3]
    assert len(first["shape"]) == 3 and len(first["spacing"]) == 3
    split = report["split"]
    assert (len(split["unlabeled"]), len(split["test"]), len(split["validation"])) == (2, 1, 1)
    assert len(split["labeled"]) == 1 and split["draw"] == 0
    held_out = split["unlabeled"] + split["test"] + split["validation"]
    assert sorted(held_out + split["pool"]) == [c["case_id"] for c in report["cases"]]


def test_inspect_table_is_readable(phantom, capsys):
    assert main(["data", "inspect", "--data-root", str(phantom), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "patient006" in out and "split (draw 0):" in out and "0 problem(s)" in out


def test_inspect_reports_every_problem_and_exits_1(phantom, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(phantom, broken)
    for case in ("patient002", "patient005"):
        for label in (broken / "training" / case).glob("*_gt.nii.gz"):  # ED and ES
            label.write_bytes(b"not a nifti")
    code = main(["data", "inspect", "--json", "--data-root", str(broken), *SMALL])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert any("patient002" in p for p in report["problems"])
    assert any("patient005" in p for p in report["problems"])
    assert "patient002" not in [c["case_id"] for c in report["cases"]]


def test_prepare_prints_an_existing_complete_cache(phantom, tmp_path, capsys):
    args = ["data", "prepare", "--data-root", str(phantom), "--cache-dir", str(tmp_path), *SMALL]
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_dir() and path.parent == tmp_path.resolve() / "records"
    assert open_cache(path).crop_size == 32


def test_missing_data_root_exits_2_naming_the_folder(tmp_path, capsys):
    missing = tmp_path / "no-such-acdc"
    assert main(["data", "prepare", "--dataset", "acdc", "--data-root", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err


def test_real_dataset_without_root_exits_2_naming_the_flag(capsys):
    assert main(["data", "inspect", "--dataset", "pancreas"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_bad_override_exits_2(capsys):
    assert main(["data", "inspect", "--set", "preprocess.crop_sise=32"]) == 2
    assert "crop_sise" in capsys.readouterr().err


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_console_errors_have_no_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "tfaug.cli", "data", "inspect", "--data-root", str(missing)],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"tfaug: error: {missing}" in result.stderr
