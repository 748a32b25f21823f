"""``tfaug segment`` on real-world inputs, with the tiny exported model of the session.

A folder where some files are bad, outputs that exist (resume, ``--overwrite``), preprocessing
overrides (``--set``), DICOM series (written here with SimpleITK), MR volumes with a negative
tail, and outputs that are never half-written.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from data.fixtures import write_nifti
from data.scanner_fixtures import (
    SeriesGeometry,
    mr_with_negative_tail,
    write_dicom_series,
    write_multiframe_dicom,
)

from tfaug.cli import main
from tfaug.data.datasets import list_cases
from tfaug.data.records import resolve_data_root
from tfaug.data.volume import DatasetWarning
from tfaug.deploy.export import EXPORT_JSON
from tfaug.deploy.inference import load_predictor, read_image, segment_image, write_like


@pytest.fixture(scope="module")
def volumes(finished_run) -> list[Path]:
    """The image files of the run's test volumes (real phantom NIfTI files, int16)."""
    _, cfg, _, split = finished_run
    refs = {ref.case_id: ref for ref in list_cases(cfg.data, resolve_data_root(cfg))}
    return [refs[case_id].image_path for case_id in split.test]


def segment_cli(*arguments: str | Path) -> int:
    return main(["segment", *(str(a) for a in arguments)])


def labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


# -- 2. a folder where some files are bad ---------------------------------------------------
def bad_folder(folder: Path, volumes: list[Path]) -> dict[str, str]:
    """Two good volumes and three bad ones; returns bad file name → expected reason."""
    folder.mkdir()
    shutil.copy(volumes[0], folder / "a_good.nii.gz")
    data = (folder / "a_good.nii.gz").read_bytes()
    (folder / "b_truncated.nii.gz").write_bytes(data[: len(data) // 2])
    write_nifti(folder / "c_2d.nii.gz", np.ones((16, 16), np.int16))
    shutil.copy(volumes[1], folder / "d_good.nii.gz")
    write_nifti(folder / "e_constant.nii.gz", np.full((16, 16, 3), 7, np.int16))
    return {
        "b_truncated.nii.gz": "truncated or damaged",
        "c_2d.nii.gz": "found shape (16, 16), one 2D slice; save it as a volume of one slice",
        "e_constant.nii.gz": "cannot be normalised",
    }


def test_a_folder_with_bad_files_segments_every_other_file_and_names_each_failure(
    export_dir, volumes, tmp_path, capsys
):
    bad = bad_folder(tmp_path / "in", volumes)
    code = segment_cli("-i", tmp_path / "in", "-o", tmp_path / "out", "--model", export_dir)
    out, err = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_good.nii.gz",
        "d_good.nii.gz",
    ]
    assert "5 input(s): 2 segmented, 0 skipped (output already there), 3 failed" in out
    failures = [line for line in out.splitlines() if line.startswith("  FAILED")]
    assert len(failures) == 3
    for (name, reason), line in zip(sorted(bad.items()), failures, strict=True):
        assert name in line and reason in line, line
    assert "3 of 5 input(s) could not be segmented" in err


def test_a_2d_slice_is_refused_with_the_fix_and_the_fix_segments_it(
    export_dir, volumes, tmp_path, capsys
):
    volume = nib.load(volumes[0])
    middle = volume.shape[2] // 2
    one_slice = np.asarray(volume.dataobj)[..., middle]
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(one_slice, volume.affine), folder / "slice.nii.gz")
    assert segment_cli("-i", folder, "-o", tmp_path / "out", "--model", export_dir) == 1
    assert (
        "one 2D slice; save it as a volume of one slice, shape (X, Y, 1)" in capsys.readouterr().out
    )

    # the fix the message gives, verbatim
    image = nib.load(folder / "slice.nii.gz")
    nib.save(nib.Nifti1Image(image.get_fdata()[..., None], image.affine), folder / "slice.nii.gz")
    assert segment_cli("-i", folder, "-o", tmp_path / "out", "--model", export_dir) == 0
    whole = tmp_path / "whole"
    whole.mkdir()
    shutil.copy(volumes[0], whole / "volume.nii.gz")
    assert segment_cli("-i", whole, "-o", tmp_path / "out_whole", "--model", export_dir) == 0
    segmented = labels(tmp_path / "out" / "slice.nii.gz")
    assert segmented.shape == (*one_slice.shape, 1)
    # the slice is segmented as it is within its volume (up to interpolation at the edges)
    agreement = np.mean(
        segmented[..., 0] == labels(tmp_path / "out_whole" / "volume.nii.gz")[..., middle]
    )
    assert agreement > 0.99, agreement


def test_outputs_that_exist_are_skipped_and_overwrite_redoes_them(
    export_dir, volumes, tmp_path, capsys
):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for path in volumes:
        shutil.copy(path, folder / path.name)
    model = export_dir / "segmenter.onnx"
    assert segment_cli("-i", folder, "-o", out, "--model", model, "--quiet") == 0
    first, second = (out / path.name for path in volumes)
    expected = labels(second)
    marker = np.full(expected.shape, 9, np.uint8)  # stands for an earlier run's output
    write_like(marker, nib.load(second), second)
    first.unlink()  # as if the run had been interrupted before it
    capsys.readouterr()
    assert segment_cli("-i", folder, "-o", out, "--model", model, "--quiet") == 0
    summary = capsys.readouterr().out
    assert "2 input(s): 1 segmented, 1 skipped" in summary
    assert f"skipped  {folder / second.name} -> {second}" in summary
    assert "pass --overwrite to segment them again" in summary
    assert first.is_file()
    np.testing.assert_array_equal(labels(second), marker)
    assert segment_cli("-i", folder, "-o", out, "--model", model, "--overwrite", "--quiet") == 0
    assert "2 input(s): 2 segmented, 0 skipped" in capsys.readouterr().out
    np.testing.assert_array_equal(labels(second), expected)


def test_an_output_interrupted_while_written_is_never_half_written(volumes, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) raised in the middle of the gzip stream, after the header
    and before the last voxel: the earlier output stays whole and no partial file is left."""
    target = tmp_path / "out" / "case.nii.gz"
    target.parent.mkdir()
    shutil.copy(volumes[0], target)  # an earlier, complete output
    before = target.read_bytes()
    write_gzip, written = gzip.GzipFile.write, []

    def write_until_interrupted(stream: gzip.GzipFile, data) -> int:
        if written:  # the header went out; the voxels are next
            raise KeyboardInterrupt
        written.append(len(data))
        return write_gzip(stream, data)

    monkeypatch.setattr(gzip.GzipFile, "write", write_until_interrupted)
    noise = np.random.default_rng(0).random((32, 32, 16), dtype=np.float32)
    with pytest.raises(KeyboardInterrupt):
        write_like(noise, nib.load(volumes[0]), target)
    assert written  # interrupted after some bytes, not before the first
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["case.nii.gz"]


# -- 3. preprocessing overrides ------------------------------------------------------------
def test_set_n4_at_inference_warns_and_is_applied(export_dir, volumes, tmp_path, capsys):
    model = export_dir / "segmenter.onnx"
    out = tmp_path / "n4.nii.gz"
    settings = ["preprocess.n4=true", "preprocess.n4_iterations=[4]"]
    with pytest.warns(DatasetWarning) as caught:
        code = segment_cli(
            "-i", volumes[0], "-o", out, "--model", model, *(f"--set={s}" for s in settings)
        )
    assert code == 0
    trained = json.loads((export_dir / EXPORT_JSON).read_text(encoding="utf-8"))["preprocess"][
        "n4_iterations"
    ]
    assert sorted(str(w.message) for w in caught) == [
        "the model was trained with preprocess.n4=false; segmenting with preprocess.n4=true "
        "(--set)",
        f"the model was trained with preprocess.n4_iterations={json.dumps(trained)}; segmenting "
        "with preprocess.n4_iterations=[4] (--set)",
    ]
    predictor, manifest = load_predictor(model)
    manifest["preprocess"].update(n4=True, n4_iterations=[4])
    image, nifti = read_image(volumes[0])
    expected, _ = segment_image(predictor, manifest, image, nifti)
    np.testing.assert_array_equal(labels(out), expected)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("preprocess.crop_size=64", "preprocess.crop_size cannot change at inference"),
        ("preprocess.spacing_mm=1.0", "preprocess.spacing_mm cannot change at inference"),
        ("preprocess.gamma=2", "unknown preprocessing key 'gamma'"),
        ("train.batch_size=2", "tfaug segment takes only preprocess.KEY=VALUE"),
        ("preprocess.n4=maybe", "preprocess.n4: expected true/false, found 'maybe'"),
        ("preprocess.n4_negatives=shift", "'shift' is not one of clip, refuse"),
    ],
)
def test_unknown_or_unsafe_preprocessing_keys_are_refused(
    export_dir, volumes, tmp_path, capsys, setting, message
):
    out = tmp_path / "x.nii.gz"
    code = segment_cli("-i", volumes[0], "-o", out, "--model", export_dir, "--set", setting)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# -- 1. an MR volume with a negative tail, with an export trained with N4 ---------------------
def n4_export(export_dir: Path, folder: Path, drop_negatives_key: bool) -> Path:
    """A copy of the export whose export.json says the model was trained with N4."""
    shutil.copytree(export_dir, folder, ignore=shutil.ignore_patterns("generator*", "augmenter*"))
    manifest = json.loads((folder / EXPORT_JSON).read_text(encoding="utf-8"))
    manifest["preprocess"].update(n4=True, n4_shrink=[2, 2, 1], n4_iterations=[4])
    if drop_negatives_key:
        del manifest["preprocess"]["n4_negatives"]  # as in an export made before the key
    (folder / EXPORT_JSON).write_text(json.dumps(manifest))
    return folder / "segmenter.onnx"


def test_export_json_records_how_negative_voxels_are_handled(export_dir):
    manifest = json.loads((export_dir / EXPORT_JSON).read_text(encoding="utf-8"))
    assert manifest["preprocess"]["n4_negatives"] == "clip"


@pytest.mark.parametrize("old_export", [False, True])
def test_segment_clips_a_negative_tail_before_n4_as_training_does(export_dir, tmp_path, old_export):
    model = n4_export(export_dir, tmp_path / "export", old_export)
    volume = mr_with_negative_tail()
    source = write_nifti(tmp_path / "ringing.nii.gz", volume, spacing=(1.5, 1.5, 8.0))
    clipped = write_nifti(
        tmp_path / "clipped.nii.gz", np.maximum(volume, 0), spacing=(1.5, 1.5, 8.0)
    )
    with pytest.warns(DatasetWarning, match=rf"ringing\.nii\.gz.*{np.sum(volume < 0)} negative"):
        assert segment_cli("-i", source, "-o", tmp_path / "a.nii.gz", "--model", model) == 0
    assert segment_cli("-i", clipped, "-o", tmp_path / "b.nii.gz", "--model", model) == 0
    np.testing.assert_array_equal(labels(tmp_path / "a.nii.gz"), labels(tmp_path / "b.nii.gz"))


# -- 4. DICOM --------------------------------------------------------------------------------
def phantom_as_series(volume_path: Path, folder: Path, uid: str, description: str) -> Path:
    """Write a phantom test volume as an oblique DICOM series with the phantom's spacing, and the
    same voxels with the same geometry as NIfTI (returned), for comparison."""
    image = np.asarray(nib.load(volume_path).dataobj).astype(np.int16)
    spacing = tuple(float(z) for z in nib.load(volume_path).header.get_zooms()[:3])
    geometry = SeriesGeometry(spacing=spacing, origin=(-31.5, 12.25, 40.0))
    write_dicom_series(folder, image, geometry=geometry, uid=uid, description=description)
    return write_nifti(
        folder.parent / f"{uid}-reference.nii.gz", image, affine=geometry.nifti_affine()
    )


def read_series_geometry(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_a_dicom_series_is_segmented_onto_its_own_geometry(export_dir, volumes, tmp_path):
    uid = "1.2.826.0.1.3680043.2.1125.9.1"
    reference = phantom_as_series(volumes[0], tmp_path / "dicom" / "series", uid, "cine sa")
    model = export_dir / "segmenter.onnx"
    out = tmp_path / "out"
    assert segment_cli("-i", tmp_path / "dicom" / "series", "-o", out, "--model", model) == 0
    written = out / f"{uid}.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == [written.name]
    assert segment_cli("-i", reference, "-o", tmp_path / "ref.nii.gz", "--model", model) == 0
    np.testing.assert_array_equal(labels(written), labels(tmp_path / "ref.nii.gz"))
    assert labels(written).dtype == np.uint8 and labels(written).max() > 0
    series, result = read_series_geometry(tmp_path / "dicom" / "series"), sitk.ReadImage(written)
    assert result.GetSize() == series.GetSize()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(result, getter)(), getattr(series, getter)(), atol=1e-4)
    assert nib.load(written).header["descrip"].item() == b"cine sa"


def test_a_folder_mixing_nifti_files_and_dicom_series_segments_all_and_names_the_bad_ones(
    export_dir, volumes, tmp_path, capsys
):
    top = tmp_path / "in"
    top.mkdir()
    shutil.copy(volumes[0], top / "case.nii.gz")
    phantom_as_series(volumes[0], top / "patient1" / "sa", "1.2.3.1", "sa")
    phantom_as_series(volumes[1], top / "patient2" / "sa", "1.2.3.2", "sa")
    for uid, names in (("1.2.3.3", range(3)), ("1.2.3.4", range(10, 13))):  # one folder
        write_dicom_series(
            top / "mixed", mr_with_negative_tail((20, 16, 3)), uid=uid, file_order=names
        )
    write_multiframe_dicom(top / "enhanced" / "mf.dcm", np.ones((20, 16, 4)))
    model = export_dir / "segmenter.onnx"
    assert segment_cli("-i", top, "-o", tmp_path / "out", "--model", model, "--quiet") == 1
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "1.2.3.1.nii.gz",
        "1.2.3.2.nii.gz",
        "case.nii.gz",
    ]
    assert "5 input(s): 3 segmented, 0 skipped (output already there), 2 failed" in out
    assert "expected one DICOM series per folder, found 2" in out
    assert "mf.dcm is a multi-frame DICOM file" in out


def test_written_labels_get_their_own_display_range_and_the_label_intent(tmp_path):
    scan = nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.diag([1.5, 1.5, 8.0, 1.0]))
    scan.header["cal_min"], scan.header["cal_max"] = 0.0, 900.0
    scan.header.set_intent("estimate")
    labels = np.zeros((4, 4, 2), np.uint8)
    labels[1:3, 1:3] = 3
    write_like(labels, scan, tmp_path / "seg.nii.gz")
    header = nib.load(tmp_path / "seg.nii.gz").header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 3.0)
    assert header.get_intent()[0] == "label"
    write_like(labels.astype(np.float32) / 3, scan, tmp_path / "p.nii.gz")
    assert nib.load(tmp_path / "p.nii.gz").header.get_intent()[0] == "none"
