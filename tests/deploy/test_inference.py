"""NIfTI inference with the exported segmenter (ONNX Runtime and SavedModel), and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data.fixtures import write_nifti

from tfaug.cli import main
from tfaug.data.datasets import list_cases, load_case
from tfaug.data.records import resolve_data_root
from tfaug.data.volume import DatasetError
from tfaug.deploy.export import EXPORT_JSON, ExportError
from tfaug.deploy.inference import load_predictor, probabilities_path, segment
from tfaug.metrics import dice_per_class


@pytest.fixture(scope="module")
def test_cases(finished_run):
    """CaseRefs of the run's test volumes, in results.json order, with the reported Dice."""
    run_dir, cfg, _, _ = finished_run
    refs = {ref.case_id: ref for ref in list_cases(cfg.data, resolve_data_root(cfg))}
    reported = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["test"]
    return [(refs[entry["case_id"]], entry["dice"]) for entry in reported]


@pytest.mark.parametrize("model", ["segmenter.onnx", "segmenter"])
def test_segmenting_the_test_volumes_reproduces_the_reported_dice(
    export_dir,
    finished_run,
    test_cases,
    tmp_path,
    model,
):
    cfg = finished_run[1]
    best = max(max(reported.values()) for _, reported in test_cases)
    assert best > 0.05, "the fixture's segmenter should find some structure"
    for ref, reported in test_cases:
        (written,) = segment(ref.image_path, tmp_path / f"{ref.case_id}.nii.gz", export_dir / model)
        prediction = np.asarray(nib.load(written).dataobj)
        dice = dice_per_class(prediction, load_case(cfg.data, ref).label, cfg.data.n_classes)
        for name, value in zip(cfg.data.class_names[1:], dice, strict=True):
            assert abs(value - reported[name]) <= 1e-3, (ref.case_id, name, value, reported)


def test_label_file_keeps_the_input_grid_affine_and_header(export_dir, test_cases, tmp_path):
    ref, _ = test_cases[1]
    (written,) = segment(
        ref.image_path,
        tmp_path / "seg.nii.gz",
        export_dir / "segmenter.onnx",
        save_probabilities=True,
    )
    source, result = nib.load(ref.image_path), nib.load(written)
    assert result.shape == source.shape
    assert result.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(result.affine, source.affine)
    assert result.header.get_zooms() == source.header.get_zooms()
    assert result.header.get_qform_quaternion().tolist() == pytest.approx(
        source.header.get_qform_quaternion().tolist()
    )
    labels = np.asarray(result.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    probabilities = nib.load(probabilities_path(written)).get_fdata()
    assert probabilities.shape == (*source.shape, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probabilities.argmax(-1), labels)


def test_folder_input_writes_one_label_per_volume_and_skips_hidden_files(
    export_dir,
    test_cases,
    tmp_path,
):
    folder = tmp_path / "in"
    folder.mkdir()
    for ref, _ in test_cases:
        shutil.copy(ref.image_path, folder / ref.image_path.name)
    (folder / "._patient.nii.gz").write_bytes(b"AppleDouble")
    written = segment(folder, tmp_path / "out", export_dir / "segmenter", progress=False)
    assert [p.name for p in written] == sorted(ref.image_path.name for ref, _ in test_cases)
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in written)


def _restacked(image_path, path, stack, units=None):
    """Write ``stack(image)`` (float32 (X, Y, Z) → an array) to ``path`` with the image's
    affine, stored in ``units`` (``write_nifti``'s; default: unknown, read as mm); returns
    ``path``."""
    source = nib.load(image_path)
    image = np.asarray(source.dataobj, dtype=np.float32)
    return write_nifti(path, stack(image), affine=source.affine, units=units)


def test_an_input_in_metres_is_segmented_as_in_mm_and_its_label_keeps_its_header(
    export_dir,
    test_cases,
    tmp_path,
):
    """The header's spatial unit (xyzt_units) is honoured; the label keeps the input's."""
    ref, _ = test_cases[0]
    model = export_dir / "segmenter.onnx"
    written = {}
    for units in ("mm", "meter"):
        stored = _restacked(ref.image_path, tmp_path / f"{units}.nii.gz", lambda x: x, units)
        (written[units],) = segment(stored, tmp_path / f"seg_{units}.nii.gz", model)
    (original,) = segment(ref.image_path, tmp_path / "seg.nii.gz", model)
    expected = np.asarray(nib.load(original).dataobj)
    assert len(np.unique(expected)) > 1, "a segmentation with structures tells the units apart"
    for units, path in written.items():
        source, result = nib.load(tmp_path / f"{units}.nii.gz"), nib.load(path)
        np.testing.assert_array_equal(np.asarray(result.dataobj), expected)
        assert result.header.get_xyzt_units()[0] == units
        np.testing.assert_array_equal(result.affine, source.affine)
        assert result.header.get_zooms() == source.header.get_zooms()


@pytest.mark.parametrize("vector_layout", [False, True])
def test_4d_input_needs_a_channel_and_the_channel_gives_the_3d_result(
    export_dir,
    test_cases,
    tmp_path,
    vector_layout,
):
    """(X, Y, Z, C), and (X, Y, Z, 1, C) as ITK/SimpleITK write vector images."""
    ref, _ = test_cases[0]

    def two_channels(image: np.ndarray) -> np.ndarray:
        stacked = np.stack([image * 2.0 + 7.0, image], -1)
        return stacked[:, :, :, None, :] if vector_layout else stacked

    stacked = _restacked(ref.image_path, tmp_path / "two.nii.gz", two_channels)
    model = export_dir / "segmenter.onnx"
    with pytest.raises(DatasetError, match=r"4D image .* with --channel \(0 to 1"):
        segment(stacked, tmp_path / "a.nii.gz", model)
    (from_4d,) = segment(stacked, tmp_path / "b.nii.gz", model, channel=1)
    (from_3d,) = segment(ref.image_path, tmp_path / "c.nii.gz", model)
    np.testing.assert_array_equal(nib.load(from_4d).dataobj, nib.load(from_3d).dataobj)
    with pytest.raises(DatasetError, match="drop --channel"):
        segment(ref.image_path, tmp_path / "d.nii.gz", model, channel=0)


def test_a_length_one_fourth_axis_is_read_as_3d_with_or_without_channel_0(
    export_dir,
    test_cases,
    tmp_path,
):
    ref, _ = test_cases[0]
    stored = _restacked(ref.image_path, tmp_path / "one.nii.gz", lambda x: x[..., None])
    model = export_dir / "segmenter.onnx"
    (from_3d,) = segment(ref.image_path, tmp_path / "a.nii.gz", model)
    (plain,) = segment(stored, tmp_path / "b.nii.gz", model)
    (channel_0,) = segment(stored, tmp_path / "c.nii.gz", model, channel=0)
    expected = np.asarray(nib.load(from_3d).dataobj)
    for written in (plain, channel_0):
        np.testing.assert_array_equal(nib.load(written).dataobj, expected)


def test_a_model_of_another_size_than_export_json_is_refused(export_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(export_dir / "segmenter.onnx", other)
    manifest = json.loads((export_dir / EXPORT_JSON).read_text(encoding="utf-8"))
    manifest["preprocess"]["crop_size"] = 64
    (other / EXPORT_JSON).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="takes 32x32 slices .* expects 64x64 slices"):
        load_predictor(other / "segmenter.onnx")


def test_a_model_without_export_json_is_refused(export_dir, test_cases, tmp_path):
    shutil.copytree(export_dir / "segmenter", tmp_path / "lonely" / "segmenter")
    with pytest.raises(ExportError, match="export.json not found beside the model"):
        segment(test_cases[0][0].image_path, tmp_path / "x.nii.gz", tmp_path / "lonely/segmenter")


def test_cli_segment_writes_labels_and_exits_2_on_bad_input(
    export_dir,
    test_cases,
    tmp_path,
    capsys,
):
    ref, _ = test_cases[0]
    model = str(export_dir / "segmenter.onnx")
    out = tmp_path / "cli.nii.gz"
    assert main(["segment", "-i", str(ref.image_path), "-o", str(out), "--model", model]) == 0
    assert nib.load(out).get_data_dtype() == np.uint8
    missing = tmp_path / "nothing"
    assert main(["segment", "-i", str(missing), "-o", str(out), "--model", model]) == 2
    assert "input not found" in capsys.readouterr().err
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(model, lonely)
    code = main(["segment", "-i", str(ref.image_path), "-o", str(out), "--model", str(lonely)])
    assert code == 2
    assert "export.json not found" in capsys.readouterr().err


def segmenter_copy(export_dir: Path, folder: Path) -> Path:
    """A copy of the export with the segmenter alone (both formats) and its export.json."""
    return shutil.copytree(
        export_dir, folder, ignore=shutil.ignore_patterns("generator*", "augmenter*")
    )


@pytest.mark.parametrize(
    ("model", "unlisted", "listed"),
    [("segmenter", "savedmodel", "onnx"), ("segmenter.onnx", "onnx", "savedmodel")],
)
def test_a_model_export_json_does_not_list_is_refused(
    export_dir, tmp_path, model, unlisted, listed
):
    # What a re-export in another format used to leave: the old model beside a new export.json.
    folder = segmenter_copy(export_dir, tmp_path / "mixed")
    manifest = json.loads((folder / EXPORT_JSON).read_text(encoding="utf-8"))
    del manifest["models"]["segmenter"][unlisted]
    (folder / EXPORT_JSON).write_text(json.dumps(manifest), encoding="utf-8")
    path = folder / ("segmenter/1" if unlisted == "savedmodel" else "segmenter.onnx")
    with pytest.raises(ExportError) as caught:
        load_predictor(folder / model)
    message = str(caught.value)
    assert message.startswith(f"{path}: {folder / EXPORT_JSON} does not list this model")
    assert str(folder / manifest["models"]["segmenter"][listed]) in message
    load_predictor(folder / manifest["models"]["segmenter"][listed])  # the listed one is fine


def damage_savedmodel(folder: Path) -> Path:
    (folder / "segmenter/1/variables/variables.index").unlink()
    return folder / "segmenter"


def truncate_onnx(folder: Path) -> Path:
    model = folder / "segmenter.onnx"
    model.write_bytes(model.read_bytes()[:10000])
    return model


@pytest.mark.parametrize(
    ("damage", "named", "what"),
    [
        (damage_savedmodel, "segmenter/1", "SavedModel"),
        (truncate_onnx, "segmenter.onnx", "ONNX model"),
    ],
)
def test_cli_segment_with_a_damaged_model_names_it_and_exits_2(
    export_dir, test_cases, tmp_path, capsys, damage, named, what
):
    model = damage(segmenter_copy(export_dir, tmp_path / "damaged"))
    out = tmp_path / "seg.nii.gz"
    args = ["segment", "-i", str(test_cases[0][0].image_path), "-o", str(out), "--quiet"]
    assert main([*args, "--model", str(model)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"tfaug: error: {tmp_path / 'damaged' / named}: the {what} cannot be")
    assert "export the run again with 'tfaug export" in error.lower()
    assert "Traceback" not in error and not out.exists()


@pytest.mark.parametrize("batch_size", ["0", "-3", "two"])
def test_cli_segment_refuses_a_batch_size_below_1_as_a_usage_error(
    export_dir, test_cases, tmp_path, capsys, batch_size
):
    args = ["segment", "-i", str(test_cases[0][0].image_path), "-o", str(tmp_path / "x.nii.gz")]
    with pytest.raises(SystemExit) as caught:
        main([*args, "--model", str(export_dir), "--batch-size", batch_size])
    assert caught.value.code == 2
    assert f"argument --batch-size: expected an integer >= 1, found {batch_size}" in (
        capsys.readouterr().err
    )


def test_probabilities_path_is_beside_the_label_file():
    assert probabilities_path(Path("/o/case.nii.gz")) == Path("/o/case_probabilities.nii.gz")
    assert probabilities_path(Path("/o/case.nii")) == Path("/o/case_probabilities.nii.gz")
