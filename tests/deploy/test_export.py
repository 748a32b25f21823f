"""Export of a finished run: SavedModel + ONNX signatures, parity, checker, export.json.

The finished run and its export are the session fixtures of tests/deploy/conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import tensorflow as tf
from deploy_run import phantom_slices

from tfaug.deploy.export import (
    EXPORT_JSON,
    ExportError,
    export_run,
    find_export_json,
    read_export_json,
    run_onnx,
    run_savedmodel,
)
from tfaug.deploy.inference import load_predictor
from tfaug.experiments.records import copy_records
from tfaug.ops.generated import apply_deformation, apply_intensity

MODELS = ("segmenter", "generator_deformation", "generator_intensity", "augmenter")
TOLERANCE = 1e-4


def test_export_writes_every_model_in_both_formats_with_export_json(export_dir, finished_run):
    manifest = json.loads((export_dir / EXPORT_JSON).read_text(encoding="utf-8"))
    cfg = finished_run[1]
    assert set(manifest["models"]) == set(MODELS)
    for name in MODELS:
        assert (export_dir / name / "1" / "saved_model.pb").is_file()
        assert (export_dir / f"{name}.onnx").is_file()
    assert manifest["preprocess"]["spacing_mm"] == 5.0
    assert manifest["preprocess"]["crop_size"] == 32
    assert manifest["preprocess"]["percentiles"] == [2.0, 98.0]
    assert manifest["data"]["class_names"] == cfg.data.class_names
    assert manifest["input"] == {"size": 32, "channels": 1, "n_classes": 4, "z_dim": 8}
    assert manifest["run"]["name"] == finished_run[0].name
    assert manifest["run"]["test_summary"]["mean_dice"]["n"] == 2
    assert {"tensorflow", "keras", "tf2onnx", "onnxruntime", "onnx_opset"} <= set(
        manifest["versions"]
    )
    assert all(0 <= manifest["parity"][name] <= TOLERANCE for name in MODELS)


def test_segmenter_savedmodel_signature_names_dtypes_and_dynamic_batch(export_dir):
    signature = tf.saved_model.load(str(export_dir / "segmenter/1")).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.name == "image" and spec.dtype == tf.float32
    assert spec.shape.as_list() == [None, 32, 32, 1]
    for batch in (1, 3):
        outputs = signature(image=tf.random.uniform((batch, 32, 32, 1)))
        assert outputs["probabilities"].shape == (batch, 32, 32, 4)
        assert outputs["labels"].shape == (batch, 32, 32)
        assert outputs["labels"].dtype == tf.int32
        np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(
            outputs["labels"].numpy(), outputs["probabilities"].numpy().argmax(-1)
        )


@pytest.mark.parametrize(
    ("name", "inputs", "outputs"),
    [
        ("segmenter", ["image"], ["labels", "probabilities"]),
        ("generator_deformation", ["image", "z"], ["field"]),
        ("generator_intensity", ["image", "z"], ["field"]),
        ("augmenter", ["image", "label", "z"], ["augmented_image", "augmented_label"]),
    ],
)
def test_onnx_graphs_pass_the_checker_with_named_io_and_dynamic_batch(
    export_dir, name, inputs, outputs
):
    model = onnx.load(str(export_dir / f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert sorted(i.name for i in model.graph.input) == inputs
    assert sorted(o.name for o in model.graph.output) == outputs
    for tensor in model.graph.input:
        batch_dim = tensor.type.tensor_type.shape.dim[0]
        assert not batch_dim.HasField("dim_value"), f"{name}: batch axis is fixed"


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_savedmodel_on_random_inputs(export_dir, name):
    signature = tf.saved_model.load(str(export_dir / name / "1")).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    rng = np.random.default_rng(3)
    inputs = {}
    for key, spec in specs.items():
        shape = (3, *spec.shape[1:])
        if key == "label":
            inputs[key] = np.eye(shape[-1], dtype=np.float32)[
                rng.integers(0, shape[-1], shape[:-1])
            ]
        else:
            inputs[key] = rng.standard_normal(shape).astype(np.float32)
    onnx_out = run_onnx(export_dir / f"{name}.onnx", inputs)
    tf_out = run_savedmodel(export_dir / name / "1", inputs)
    assert set(onnx_out) == set(tf_out)
    for key in tf_out:
        assert onnx_out[key].shape == tf_out[key].shape
        assert np.abs(onnx_out[key].astype(np.float64) - tf_out[key]).max() <= TOLERANCE, key


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_savedmodel_on_phantom_slices(export_dir, finished_run, name):
    images, onehot = phantom_slices(finished_run)
    z = np.random.default_rng(5).standard_normal((len(images), 8)).astype(np.float32)
    candidates = {"image": images, "label": onehot, "z": z}
    specs = tf.saved_model.load(str(export_dir / name / "1")).signatures["serving_default"]
    inputs = {key: candidates[key] for key in specs.structured_input_signature[1]}
    onnx_out = run_onnx(export_dir / f"{name}.onnx", inputs)
    tf_out = run_savedmodel(export_dir / name / "1", inputs)
    for key in tf_out:
        assert np.abs(onnx_out[key].astype(np.float64) - tf_out[key]).max() <= TOLERANCE, key


def test_augmenter_is_gv_warp_then_gi_with_the_same_z(export_dir, finished_run):
    images, onehot = phantom_slices(finished_run, count=2)
    z = np.random.default_rng(6).standard_normal((2, 8)).astype(np.float32)
    flow = run_savedmodel(export_dir / "generator_deformation/1", {"image": images, "z": z})
    warped_image, warped_label = apply_deformation(images, onehot, flow["field"])
    delta = run_savedmodel(
        export_dir / "generator_intensity/1", {"image": warped_image.numpy(), "z": z}
    )
    expected_image = apply_intensity(warped_image, delta["field"]).numpy()
    out = run_savedmodel(export_dir / "augmenter/1", {"image": images, "label": onehot, "z": z})
    np.testing.assert_allclose(out["augmented_image"], expected_image, atol=1e-5)
    np.testing.assert_allclose(out["augmented_label"], warped_label.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["augmented_label"].sum(-1), 1.0, atol=1e-5)
    assert np.abs(flow["field"]).max() > 0  # the warp is not the identity


def test_export_of_an_unfinished_run_says_how_to_finish_it(finished_run, tmp_path):
    copy = tmp_path / finished_run[0].name
    shutil.copytree(finished_run[0], copy)
    (copy / "results.json").unlink()
    with pytest.raises(ExportError, match="results.json not found.*re-run the same train"):
        export_run(copy, tmp_path / "out")


def test_export_with_missing_weights_names_the_file(finished_run, tmp_path):
    copy = tmp_path / finished_run[0].name
    shutil.copytree(finished_run[0], copy)
    (copy / "checkpoints/generator_intensity/best/generator.weights.h5").unlink()
    with pytest.raises(
        ExportError,
        match="generator_intensity/best/generator.weights.h5.*the stage did not finish. "
        "Re-run the same train command",
    ):
        export_run(copy, tmp_path / "out")


def test_export_of_a_records_copy_says_the_weights_are_gone_not_unfinished(finished_run, tmp_path):
    runs = tmp_path / "runs"
    run = shutil.copytree(finished_run[0], runs / finished_run[0].name)
    for stage in (run / "checkpoints").iterdir():  # as the training loop ends every stage
        (stage / "done.json").write_text(json.dumps({"iterations": 80}), encoding="utf-8")
    copy_records(runs, tmp_path / "records")
    with pytest.raises(ExportError) as caught:
        export_run(tmp_path / "records" / run.name, tmp_path / "out")
    message = str(caught.value)
    assert "segmenter/best/segmenter.weights.h5" in message
    assert "stage segmenter finished" in message and "'tfaug records'" in message
    assert "--force" in message and "did not finish" not in message
    assert not (tmp_path / "out").exists()


def test_exporting_into_a_previous_export_replaces_it_as_a_whole(
    export_dir, finished_run, tmp_path
):
    out = shutil.copytree(export_dir, tmp_path / "exports" / "phantom")
    (out / ".DS_Store").write_bytes(b"\0")  # a folder once opened in a file browser
    export_run(finished_run[0], out, formats=("onnx",))
    assert sorted(os.listdir(out)) == sorted([EXPORT_JSON, *(f"{name}.onnx" for name in MODELS)])
    assert os.listdir(out.parent) == ["phantom"]  # no staging folder left beside it
    manifest = read_export_json(out / EXPORT_JSON)
    assert all(set(entry) == {"inputs", "outputs", "onnx"} for entry in manifest["models"].values())
    with pytest.raises(ExportError, match="model not found"):
        load_predictor(out / "segmenter")  # the previous SavedModel went with its export


def test_a_failed_export_leaves_the_previous_export_untouched(export_dir, finished_run, tmp_path):
    out = shutil.copytree(export_dir, tmp_path / "exports" / "phantom")
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    with pytest.raises(ValueError, match="Opset 99 is not supported"):  # after segmenter/1
        export_run(finished_run[0], out, opset=99)
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    assert os.listdir(out.parent) == ["phantom"]


def test_export_refuses_a_folder_that_is_not_a_previous_export(export_dir, finished_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ExportError, match=r"mine: not a tfaug export folder.*notes\.txt"):
        export_run(finished_run[0], mine)
    shutil.copy(export_dir / EXPORT_JSON, mine)
    with pytest.raises(ExportError, match=r"mine: holds notes\.txt, which no tfaug export writes"):
        export_run(finished_run[0], mine)
    assert sorted(os.listdir(mine)) == [EXPORT_JSON, "notes.txt"]
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_export_rejects_an_unknown_format(finished_run, tmp_path):
    with pytest.raises(ExportError, match="unknown format.*'tflite'"):
        export_run(finished_run[0], tmp_path / "out", formats=("tflite",))


def test_export_json_is_found_from_either_model_path_and_required(export_dir, tmp_path):
    for model in (export_dir / "segmenter.onnx", export_dir / "segmenter/1", export_dir):
        assert find_export_json(model) == export_dir / EXPORT_JSON
    lonely = tmp_path / "segmenter.onnx"
    shutil.copy(export_dir / "segmenter.onnx", lonely)
    with pytest.raises(ExportError, match="export.json not found beside the model"):
        find_export_json(lonely)
    broken = tmp_path / EXPORT_JSON
    broken.write_text(json.dumps({"models": {}}))
    with pytest.raises(ExportError, match="missing preprocess, data, input"):
        read_export_json(broken)
