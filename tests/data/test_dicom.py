"""DICOM series written by SimpleITK, read back as tfaug reads NIfTI volumes."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from data.fixtures import write_nifti
from data.scanner_fixtures import (
    SeriesGeometry,
    mr_with_negative_tail,
    write_colour_dicom_series,
    write_dicom_series,
    write_multiframe_dicom,
)
from tfaug.data.dicom import read_series, safe_file_name, series_uids
from tfaug.data.inputs import find_inputs, plan_outputs
from tfaug.data.volume import DatasetError, DatasetWarning

UID = "1.2.826.0.1.3680043.2.1125.7.1"


@pytest.fixture
def volume() -> np.ndarray:
    return mr_with_negative_tail(shape=(20, 16, 5))


def test_series_is_read_in_position_order_with_its_geometry(tmp_path, volume):
    geometry = SeriesGeometry()
    files = write_dicom_series(
        tmp_path / "s", volume, geometry=geometry, file_order=[3, 0, 4, 1, 2]
    )
    assert sorted(p.name for p in files) != [p.name for p in files]  # names do not sort slices
    image, nifti, description = read_series(tmp_path / "s", UID)
    assert image.dtype == np.float32 and image.shape == volume.shape
    np.testing.assert_array_equal(image, volume)
    np.testing.assert_allclose(nifti.affine, geometry.nifti_affine(), atol=1e-4)
    np.testing.assert_allclose(nifti.header.get_zooms(), geometry.spacing, rtol=1e-5)
    assert description == "t2_tse tra/4mm"
    assert nifti.header["descrip"].item().decode() == description


def test_the_nifti_affine_places_voxels_where_simpleitk_does(tmp_path, volume):
    write_dicom_series(tmp_path / "s", volume)
    _, nifti, _ = read_series(tmp_path / "s", UID)
    path = tmp_path / "as.nii.gz"
    nib.save(nifti, path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    series, written = reader.Execute(), sitk.ReadImage(str(path))
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, getter)(), getattr(series, getter)(), atol=1e-4)


def test_slices_with_their_own_rescale_slope_keep_their_values(tmp_path, volume):
    # PET and some Philips MR: slice 0 has an integer scaling, the others a slope of 0.01; the
    # series reader must not read them all with the first slice's integer pixel type.
    rescale = [(1.0, 0.0)] + [(0.01, -2.5)] * (volume.shape[2] - 1)
    write_dicom_series(tmp_path / "pet", volume, rescale=rescale, modality="PT")
    image, _, _ = read_series(tmp_path / "pet", UID)
    slopes, intercepts = np.array(rescale).T
    np.testing.assert_allclose(image, volume * slopes + intercepts, rtol=1e-6, atol=1e-5)
    assert np.any(image[:, :, 1:] != np.round(image[:, :, 1:]))  # fractions kept
    write_dicom_series(tmp_path / "ct", volume, rescale=[(1.0, -1024.0)] * volume.shape[2])
    np.testing.assert_array_equal(read_series(tmp_path / "ct", UID)[0], volume - 1024.0)


def test_a_colour_series_is_refused(tmp_path):
    # Read as float32, SimpleITK would turn colour into grey without a word.
    write_colour_dicom_series(tmp_path / "rgb", slices=3, uid=UID)
    with pytest.raises(
        DatasetError,
        match=r"rgb: expected a (3D )?grey-level series, found .*3 component\(s\) per voxel",
    ):
        read_series(tmp_path / "rgb", UID)


def test_a_series_acquired_with_gantry_tilt_is_refused_with_the_fix(tmp_path, volume):
    write_dicom_series(tmp_path / "tilted", volume, gantry_tilt=20.0, modality="CT")
    with pytest.raises(DatasetError, match=r"tilted: .*gantry tilt of 20\.0°.*dcm2niix"):
        read_series(tmp_path / "tilted", UID)
    # A drift of a sixth of the tolerance over the whole stack (0.012 mm) is accepted.
    write_dicom_series(tmp_path / "straight", volume, gantry_tilt=0.05)
    image, _, _ = read_series(tmp_path / "straight", UID)
    np.testing.assert_array_equal(image, volume)


def test_a_one_slice_series_takes_its_slice_spacing_from_the_header(tmp_path, volume):
    # With no second position to measure it from: SpacingBetweenSlices, else SliceThickness
    # (3.5 mm, the fixture's slice distance), else 1 mm with a warning naming the file.
    geometry, one = SeriesGeometry(), volume[:, :, :1]
    write_dicom_series(tmp_path / "mr", one, geometry=geometry, spacing_between_slices=4.5)
    _, nifti, _ = read_series(tmp_path / "mr", UID)
    np.testing.assert_allclose(nifti.header.get_zooms(), (0.8, 0.9, 4.5), rtol=1e-5)
    write_dicom_series(tmp_path / "ct", one, geometry=geometry, tags={"0018|0088": None})
    _, nifti, _ = read_series(tmp_path / "ct", UID)
    np.testing.assert_allclose(nifti.affine, geometry.nifti_affine(), atol=1e-4)
    write_dicom_series(tmp_path / "bare", one, tags={"0018|0088": None, "0018|0050": None})
    with pytest.warns(DatasetWarning, match=r"bare/IM0000: a series of one slice.*1 mm"):
        _, nifti, _ = read_series(tmp_path / "bare", UID)
    assert nifti.header.get_zooms()[2] == 1.0


def test_missing_or_repeated_slices_are_refused(tmp_path, volume):
    files = write_dicom_series(tmp_path / "gap", volume)
    files[2].unlink()
    with pytest.raises(DatasetError, match=r"gap: expected evenly spaced slices.*3\.5, 7, 3\.5"):
        read_series(tmp_path / "gap", UID)
    files = write_dicom_series(tmp_path / "twice", volume)
    shutil.copy(files[1], tmp_path / "twice" / "copy")
    with pytest.raises(DatasetError, match="repeated"):
        read_series(tmp_path / "twice", UID)


def test_multi_frame_file_is_refused_with_the_fix(tmp_path, volume):
    write_multiframe_dicom(tmp_path / "mf" / "enhanced.dcm", np.maximum(volume, 0))
    (uid,) = series_uids(tmp_path / "mf")
    with pytest.raises(DatasetError, match=r"enhanced\.dcm is a multi-frame DICOM file.*dcm2niix"):
        read_series(tmp_path / "mf", uid)


def test_a_folder_lists_nifti_files_then_one_input_per_series_folder(tmp_path, volume):
    write_nifti(tmp_path / "in" / "b.nii.gz", volume)
    write_nifti(tmp_path / "in" / "a.nii", volume)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    write_dicom_series(tmp_path / "in" / "p1" / "t2", volume, uid="1.2.3.1")
    write_dicom_series(tmp_path / "in" / "p2" / "t2", volume, uid="1.2.3.2", description="t2")
    write_dicom_series(tmp_path / "in" / "p3", volume, uid="1.2.3.3")
    write_dicom_series(tmp_path / "in", volume[:, :, :2], uid="1.2.3.4")  # beside the NIfTIs
    inputs = find_inputs(tmp_path / "in")
    names = [(item.source.name, item.series_uid) for item in inputs]
    assert names == [
        ("a.nii", None),
        ("b.nii.gz", None),
        ("in", "1.2.3.4"),
        ("t2", "1.2.3.1"),
        ("t2", "1.2.3.2"),
        ("p3", "1.2.3.3"),
    ]
    outputs = [path.name for _, path in plan_outputs(tmp_path / "in", tmp_path / "out")]
    assert outputs[:4] == ["a.nii", "b.nii.gz", "1.2.3.4.nii.gz", "1.2.3.1.nii.gz"]


def test_a_folder_of_several_series_is_one_input_with_a_clear_problem(tmp_path, volume):
    write_dicom_series(tmp_path / "mixed", volume, uid="1.2.3.1", description="t2 ax")
    write_dicom_series(tmp_path / "mixed", volume, uid="1.2.3.2", file_order=range(10, 15))
    (item,) = find_inputs(tmp_path / "mixed")
    assert "expected one DICOM series per folder, found 2" in item.problem
    assert "1.2.3.1 (5 files, 't2 ax')" in item.problem and "own folder" in item.problem


def test_two_copies_of_a_series_do_not_overwrite_each_other(tmp_path, volume):
    write_dicom_series(tmp_path / "in" / "a", volume)
    write_dicom_series(tmp_path / "in" / "b", volume)
    (first, _), (second, _) = plan_outputs(tmp_path / "in", tmp_path / "out")
    assert first.problem is None
    assert "is also the output of" in second.problem and "the same series twice" in second.problem


def test_one_label_file_name_needs_one_volume(tmp_path, volume):
    write_dicom_series(tmp_path / "s", volume)
    ((item, target),) = plan_outputs(tmp_path / "s", tmp_path / "seg.nii.gz")
    assert item.series_uid == UID and target == tmp_path / "seg.nii.gz"
    write_nifti(tmp_path / "s" / "x.nii.gz", volume)
    with pytest.raises(DatasetError, match="holds 2 volumes; pass a folder as -o"):
        plan_outputs(tmp_path / "s", tmp_path / "seg.nii.gz")


def test_a_single_dicom_file_names_its_folder(tmp_path, volume):
    files = write_dicom_series(tmp_path / "s", volume)
    with pytest.raises(DatasetError, match=r"a single DICOM file.*pass the folder"):
        find_inputs(files[0])


def test_safe_file_name():
    assert safe_file_name("1.2.840.10008.5") == "1.2.840.10008.5"
    assert safe_file_name("t2 tse/tra (ax) ") == "t2_tse_tra_ax"
    assert safe_file_name("../..") == "series"
