"""``tfaug segment`` and the voxel order of its inputs (export.json ``orientation``).

The same world image stored in another voxel order (flipped, in-plane axes swapped) is brought
to the training volumes' axis codes before segmenting and its labels back onto its own grid;
an input whose slice axis differs is segmented as stored, with a warning.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tfaug.data.datasets import list_cases
from tfaug.data.records import resolve_data_root
from tfaug.data.volume import DatasetWarning
from tfaug.deploy.export import EXPORT_JSON
from tfaug.deploy.inference import load_predictor, segment_file, segment_image
from tfaug.deploy.orientation import ORIENTATION_KEY, training_orientation

WORLD_AFFINE = np.diag([1.3, 1.7, 10.0, 1.0])  # RAS, anisotropic in plane
"""The world grid of the test image: voxel (i, j, k) at (1.3 i, 1.7 j, 10 k) mm."""

STORAGES = {
    "x_flipped": [[0, -1], [1, 1], [2, 1]],  # LAS
    "y_flipped": [[0, 1], [1, -1], [2, 1]],  # RPS
    "transposed": [[1, 1], [0, 1], [2, 1]],  # ARS
    "transposed_flipped": [[1, -1], [0, 1], [2, -1]],  # PRI
}
"""Voxel orders of the same world image whose slice axis stays the third (nibabel
orientations: row i gives the axis the RAS axis i becomes, and -1 for a flip)."""

SLICE_AXIS_MOVED = [[0, 1], [2, 1], [1, 1]]  # RSA: the third voxel axis runs along A


@pytest.fixture(scope="module")
def predictor(export_dir):
    return load_predictor(export_dir / "segmenter.onnx")


@pytest.fixture(scope="module")
def world_image(finished_run) -> nib.Nifti1Image:
    """A phantom test volume's voxels on :data:`WORLD_AFFINE` (stored RAS)."""
    _, cfg, _, split = finished_run
    refs = {ref.case_id: ref for ref in list_cases(cfg.data, resolve_data_root(cfg))}
    data = np.asarray(nib.load(refs[split.test[0]].image_path).dataobj).astype(np.int16)
    return nib.Nifti1Image(data, WORLD_AFFINE)


def store(image: nib.Nifti1Image, ornt: list[list[int]], path: Path) -> Path:
    """Write ``image`` in the voxel order ``ornt`` (same world positions), as NIfTI."""
    nib.save(image.as_reoriented(np.array(ornt)), path)
    return path


def without_orientation(manifest: dict) -> dict:
    """``manifest`` as an export written before the ``orientation`` key."""
    return {key: value for key, value in manifest.items() if key != ORIENTATION_KEY}


def segment_to_ras(predictor_and_manifest, source: Path, out: Path) -> np.ndarray:
    """Segment ``source`` into ``out``; check the label lies on the input grid; return the
    labels in RAS voxel order (the order of :data:`WORLD_AFFINE`)."""
    segment_file(*predictor_and_manifest, source, out)
    written, given = nib.load(out), nib.load(source)
    assert written.shape == given.shape
    np.testing.assert_allclose(written.affine, given.affine)
    return np.asarray(nib.as_closest_canonical(written).dataobj)


@pytest.fixture(scope="module")
def ras_labels(predictor, world_image, tmp_path_factory) -> np.ndarray:
    """The labels of :func:`world_image` stored RAS, as the training volumes are."""
    folder = tmp_path_factory.mktemp("ras")
    source = store(world_image, [[0, 1], [1, 1], [2, 1]], folder / "ras.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # nothing to reorient
        return segment_to_ras(predictor, source, folder / "ras_seg.nii.gz")


@pytest.mark.parametrize("storage", sorted(STORAGES))
def test_the_same_world_image_in_another_voxel_order_gets_the_same_labels(
    predictor, world_image, ras_labels, tmp_path, storage
):
    source = store(world_image, STORAGES[storage], tmp_path / f"{storage}.nii.gz")
    codes = "".join(nib.aff2axcodes(nib.load(source).affine))
    with pytest.warns(DatasetWarning, match=rf"{storage}\.nii\.gz: voxel axes {codes} reoriented"):
        labels = segment_to_ras(predictor, source, tmp_path / f"{storage}_seg.nii.gz")
    assert np.any(ras_labels > 0)
    np.testing.assert_array_equal(labels, ras_labels)


def test_an_export_without_orientation_segments_the_voxels_as_stored(predictor, world_image):
    """Older exports are unchanged (no reorientation, no warning), and the model is not
    mirror-symmetric, so the test above could fail."""
    model, manifest = predictor
    old = without_orientation(manifest)
    flipped = world_image.as_reoriented(np.array(STORAGES["x_flipped"]))
    image = np.asarray(flipped.dataobj).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        as_stored, _ = segment_image(model, old, image, flipped)
        as_if_trained_so, _ = segment_image(
            model, {**manifest, ORIENTATION_KEY: {"axcodes": ["L", "A", "S"]}}, image, flipped
        )
    np.testing.assert_array_equal(as_stored, as_if_trained_so)
    with pytest.warns(DatasetWarning, match="reoriented"):
        reoriented, _ = segment_image(model, manifest, image, flipped)
    assert np.sum(as_stored != reoriented) > 10


def test_an_input_whose_slice_axis_differs_is_segmented_as_stored_with_a_warning(
    predictor, world_image, tmp_path
):
    model, manifest = predictor
    band = world_image.slicer[:, 40:52, :]  # 12 slices once A is the slice axis
    source = store(band, SLICE_AXIS_MOVED, tmp_path / "coronal.nii.gz")
    nifti = nib.load(source)
    image = np.asarray(nifti.dataobj).astype(np.float32)
    with pytest.warns(DatasetWarning) as caught:
        labels, _ = segment_image(model, manifest, image, nifti, name=str(source))
    messages = [str(w.message) for w in caught]
    (message,) = [m for m in messages if "voxel axes" in m]
    # the preprocessing's warning too: in this voxel order the thick axis is in plane
    assert any("axis 1 (10 mm) is thicker than the slice axis" in m for m in messages)
    assert message.startswith(f"{source}: voxel axes RSA put the slice axis")
    assert "the training volumes' (RAS) along S; segmented as stored" in message
    assert "so that its third voxel axis is the slice axis" in message
    as_stored, _ = segment_image(model, without_orientation(manifest), image, nifti)
    np.testing.assert_array_equal(labels, as_stored)


def test_the_slice_axis_warning_says_when_the_training_orientations_varied(
    predictor, world_image, tmp_path
):
    model, manifest = predictor
    varied = {"axcodes": ["R", "A", "S"], "all_agree": False, "agreeing": 5, "volumes": 8}
    source = store(world_image.slicer[:, 40:52, :], SLICE_AXIS_MOVED, tmp_path / "c.nii.gz")
    nifti = nib.load(source)
    image = np.asarray(nifti.dataobj).astype(np.float32)
    with pytest.warns(DatasetWarning, match="varied: 5 of 8 had these codes"):
        segment_image(model, {**manifest, ORIENTATION_KEY: varied}, image, nifti)


def test_export_json_records_the_training_axis_codes(export_dir):
    manifest = json.loads((export_dir / EXPORT_JSON).read_text(encoding="utf-8"))
    assert manifest[ORIENTATION_KEY] == {
        "axcodes": ["R", "A", "S"],
        "all_agree": True,
        "agreeing": 8,
        "volumes": 8,
    }


def test_training_orientation_reports_the_most_common_codes_and_disagreement(
    finished_run, tmp_path
):
    _, cfg, _, _ = finished_run
    cfg = copy.deepcopy(cfg)
    cfg.data.root = str(shutil.copytree(resolve_data_root(cfg), tmp_path / "data"))
    odd = list_cases(cfg.data, Path(cfg.data.root))[0].image_path
    nib.save(nib.load(odd).as_reoriented(np.array(STORAGES["x_flipped"])), odd)
    assert training_orientation(cfg) == {
        "axcodes": ["R", "A", "S"],
        "all_agree": False,
        "agreeing": 7,
        "volumes": 8,
    }


def test_training_data_missing_at_export_records_no_orientation(finished_run, tmp_path):
    _, cfg, _, _ = finished_run
    cfg = copy.deepcopy(cfg)
    cfg.data.root = str(tmp_path / "elsewhere")
    with pytest.warns(DatasetWarning, match="export.json records no 'orientation'"):
        assert training_orientation(cfg) is None
