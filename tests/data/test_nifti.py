"""Tests of tfaug/data/nifti.py: reading NIfTI files and the shared checks."""

import gzip
import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from data.fixtures import grid_affine, make_label, write_nifti
from tfaug.data.nifti import (
    check_label_matches_image,
    check_label_values,
    load_nifti,
    read_header,
    read_volume,
    spatial_shape,
)
from tfaug.data.volume import CaseRef, DatasetError, DatasetWarning

SHAPE = (12, 10, 3)


def _random(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_load_nifti_returns_data_affine_and_zooms(tmp_path):
    data = _random()
    path = write_nifti(tmp_path / "a.nii.gz", data, spacing=(1.25, 1.5, 8.0))
    loaded, affine, zooms = load_nifti(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_allclose(affine, grid_affine((1.25, 1.5, 8.0)))
    assert zooms == (1.25, 1.5, 8.0)


def test_load_nifti_keeps_integer_data_and_reads_plain_nii(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    loaded, _, _ = load_nifti(write_nifti(tmp_path / "a.nii", data))
    assert loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded, data)


def test_load_nifti_reads_one_channel_of_a_4d_file(tmp_path):
    data = np.stack([_random(seed=1), _random(seed=2)], axis=-1)
    path = write_nifti(tmp_path / "a.nii.gz", data)
    loaded, _, zooms = load_nifti(path, channel=1)
    assert loaded.shape == SHAPE
    np.testing.assert_array_equal(loaded, data[..., 1])
    assert len(zooms) == 4
    with pytest.raises(DatasetError, match="cannot read channel 2"):
        load_nifti(path, channel=2)


@pytest.mark.parametrize("units", ["meter", "micron", "mm"])
def test_spatial_units_of_the_header_are_converted_to_mm(tmp_path, units):
    """The same grid stored in metres, microns or mm reads alike, and matches a mm label."""
    spacing, image = (1.25, 1.5, 8.0), _random()
    path = write_nifti(tmp_path / "i.nii.gz", image, spacing=spacing, units=units)
    assert nib.load(path).header.get_xyzt_units()[0] == units
    for read in (read_header, load_nifti):
        _, affine, zooms = read(path)
        np.testing.assert_allclose(affine, grid_affine(spacing), rtol=1e-6)
        assert zooms == pytest.approx(spacing, rel=1e-6)
    label = write_nifti(tmp_path / "l.nii.gz", make_label(SHAPE), spacing=spacing)
    volume = read_volume(CaseRef("c1", path, label), label_set={0, 1, 2, 3})
    assert volume.spacing == pytest.approx(spacing, rel=1e-6)
    np.testing.assert_array_equal(volume.image, image)


def test_a_pixdim_that_disagrees_with_the_affine_is_caught_in_metres_too(tmp_path):
    path = write_nifti(tmp_path / "i.nii.gz", _random(), spacing=(1.5, 1.5, 10.0), units="meter")
    stored = nib.load(path)
    stored.header["pixdim"][3] = 0.008  # 8 mm against the affine's 10 mm
    nib.save(stored, path)
    with pytest.raises(DatasetError, match=r"pixdim\) \(1\.5, 1\.5, 8\.0\) mm differs .*"):
        read_header(path)


def test_read_header_reads_shape_without_voxels(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _random())
    shape, affine, zooms = read_header(path)
    assert shape == SHAPE
    assert affine.shape == (4, 4)
    assert zooms == (1.5, 1.5, 10.0)


def test_missing_file_names_the_path_and_the_role(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.nii\.gz: label file not found"):
        load_nifti(tmp_path / "missing.nii.gz", what="label")


def test_zero_byte_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty \(0 bytes\)"):
        load_nifti(path)


def test_zero_length_axis_is_reported_as_empty(tmp_path):
    path = write_nifti(tmp_path / "empty.nii.gz", np.zeros((12, 0, 3), np.float32))
    with pytest.raises(DatasetError, match=r"array is empty \(shape \(12, 0, 3\)\)"):
        load_nifti(path)


def test_truncated_gzip_is_reported(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _random((20, 20, 4)))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) - 200])
    assert read_header(path)[0] == (20, 20, 4)  # the header survives, the voxels do not
    with pytest.raises(DatasetError, match="truncated or damaged"):
        load_nifti(path)


def test_file_that_is_not_nifti_is_reported(tmp_path):
    path = tmp_path / "a.nii.gz"
    path.write_bytes(b"this is not a NIfTI file at all" * 20)
    with pytest.raises(DatasetError, match="cannot read the image as NIfTI"):
        load_nifti(path)


@pytest.mark.parametrize(
    "name, rewrite, found, new_name",
    [
        ("a.nii", gzip.compress, "is gzip-compressed but named .nii", "a.nii.gz"),
        ("b.NII.GZ", gzip.decompress, "is not compressed but named .nii.gz", "b.nii"),
    ],
)
def test_compression_that_contradicts_the_name_is_refused_with_the_new_name(
    tmp_path, name, rewrite, found, new_name
):
    """The content is an intact NIfTI; the message says to rename it, not to re-download."""
    data = _random()
    path = write_nifti(tmp_path / name, data)
    path.write_bytes(rewrite(path.read_bytes()))
    expected = re.escape(f"{name}: label file {found}") + ".* " + re.escape(f"to {new_name} ")
    for read in (read_header, load_nifti):
        with pytest.raises(DatasetError, match=expected):
            read(path, what="label")
    path.rename(tmp_path / new_name)
    np.testing.assert_array_equal(load_nifti(tmp_path / new_name)[0], data)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_counted(tmp_path, bad):
    data = _random()
    data[0, 0, 0] = data[3, 4, 1] = data[5, 5, 2] = bad
    path = write_nifti(tmp_path / "a.nii.gz", data)
    with pytest.raises(DatasetError, match=r"3 NaN or infinite voxel\(s\) out of 360"):
        load_nifti(path)


def test_label_on_the_image_grid_passes_and_tiny_float_noise_is_tolerated(tmp_path):
    affine = grid_affine((1.5, 1.5, 10.0))
    check_label_matches_image(
        SHAPE, affine, SHAPE, affine + 1e-5, tmp_path / "i.nii", tmp_path / "l.nii"
    )


def test_label_shape_mismatch_names_both_shapes(tmp_path):
    affine = np.eye(4)
    with pytest.raises(DatasetError, match=r"l\.nii: label shape \(12, 10, 2\) differs from"):
        check_label_matches_image(
            SHAPE, affine, (12, 10, 2), affine, tmp_path / "i.nii", tmp_path / "l.nii"
        )


def test_label_affine_mismatch_reports_the_difference(tmp_path):
    image_affine = grid_affine((1.5, 1.5, 10.0))
    label_affine = image_affine.copy()
    label_affine[0, 3] += 0.5
    with pytest.raises(DatasetError, match=r"differs from the image affine .* by up to 0\.5 mm"):
        check_label_matches_image(
            SHAPE, image_affine, SHAPE, label_affine, tmp_path / "i.nii", tmp_path / "l.nii"
        )


def test_label_values_in_the_set_pass_including_integral_floats(tmp_path):
    label = make_label(SHAPE)
    check_label_values(label, {0, 1, 2, 3}, tmp_path / "l.nii")
    check_label_values(label.astype(np.float32), {0, 1, 2, 3}, tmp_path / "l.nii")


def test_label_values_outside_the_set_are_listed_with_counts(tmp_path):
    label = make_label(SHAPE)
    label[0, 0, :] = 7
    label[1, 0, 0] = 9
    expected = r"outside \[0, 1, 2, 3\]: 7 \(3 voxels\), 9 \(1 voxels\)"
    with pytest.raises(DatasetError, match=expected):
        check_label_values(label, {0, 1, 2, 3}, tmp_path / "l.nii")


def test_non_integer_label_values_are_reported(tmp_path):
    label = make_label(SHAPE).astype(np.float32)
    label[0, 0, 0] = 1.5
    with pytest.raises(DatasetError, match=r"non-integer values \[1\.5\]"):
        check_label_values(label, {0, 1, 2, 3}, tmp_path / "l.nii")


def test_read_volume_returns_float_image_uint8_label_and_merges(tmp_path):
    label = make_label(SHAPE, n_classes=3)
    image = np.full(SHAPE, 3, np.int16)
    ref = CaseRef(
        "c1",
        write_nifti(tmp_path / "i.nii.gz", image, spacing=(0.8, 0.8, 2.5)),
        write_nifti(tmp_path / "l.nii.gz", label, spacing=(0.8, 0.8, 2.5)),
        {"dataset": "x"},
    )
    volume = read_volume(ref, label_set={0, 1}, merge_labels={2: 1})
    assert volume.image.dtype == np.float32 and volume.label.dtype == np.uint8
    np.testing.assert_array_equal(volume.label, np.minimum(label, 1))
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert volume.meta["dataset"] == "x"
    assert volume.meta["label_path"] == str(ref.label_path)
    with pytest.raises(DatasetError, match="maps to \\[5\\], outside the label set"):
        read_volume(ref, label_set={0, 1}, merge_labels={2: 5})


def test_read_volume_warns_about_a_label_that_is_background_everywhere(tmp_path):
    image = write_nifti(tmp_path / "i.nii.gz", np.ones(SHAPE, np.float32))
    empty = write_nifti(tmp_path / "l.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.warns(DatasetWarning, match=r"l\.nii\.gz: the label of case c1 is background"):
        read_volume(CaseRef("c1", image, empty), label_set={0, 1, 2, 3})
    # merging a class away can empty a label too
    only_class_3 = write_nifti(
        tmp_path / "l3.nii.gz", np.where(make_label(SHAPE) > 0, 3, 0).astype(np.uint8)
    )
    with pytest.warns(DatasetWarning, match="background"):
        read_volume(CaseRef("c1", image, only_class_3), label_set={0, 1}, merge_labels={3: 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        read_volume(CaseRef("c1", image, only_class_3), label_set={0, 1, 2, 3})


def test_read_volume_rejects_a_4d_image_without_a_channel(tmp_path):
    ref = CaseRef(
        "c1",
        write_nifti(tmp_path / "i.nii.gz", np.zeros((*SHAPE, 2), np.float32)),
        write_nifti(tmp_path / "l.nii.gz", make_label(SHAPE)),
    )
    with pytest.raises(DatasetError, match=r"expected a 3D image .* set data\.modality"):
        read_volume(ref, label_set={0, 1, 2, 3})


@pytest.mark.parametrize(
    "stored, spatial",
    [
        ((4, 5, 6, 1), (4, 5, 6)),
        ((4, 5, 6, 1, 1), (4, 5, 6)),
        ((4, 5, 1), (4, 5, 1)),
        ((4, 5, 6, 2), (4, 5, 6, 2)),
        ((4, 5, 6, 2, 1), (4, 5, 6, 2)),
        ((4, 5, 6, 1, 2), (4, 5, 6, 2)),
        ((4, 5, 6, 3, 2), (4, 5, 6, 3, 2)),
    ],
)
def test_spatial_shape_drops_only_length_one_axes_after_the_third(stored, spatial):
    assert spatial_shape(stored) == spatial


def test_read_volume_reads_a_length_one_fourth_axis_as_3d(tmp_path):
    """Converters write (X, Y, Z, 1) images and (X, Y, Z, 1, 1) labels; both read as 3D."""
    image, label = _random(), make_label(SHAPE)
    ref = CaseRef(
        "c1",
        write_nifti(tmp_path / "i.nii.gz", image[..., None]),
        write_nifti(tmp_path / "l.nii.gz", label[..., None, None]),
    )
    assert read_header(ref.image_path)[0] == (*SHAPE, 1)
    volume = read_volume(ref, label_set={0, 1, 2, 3})
    assert volume.image.shape == SHAPE and volume.label.shape == SHAPE
    np.testing.assert_array_equal(volume.image, image)
    np.testing.assert_array_equal(volume.label, label)
    assert volume.spacing == pytest.approx((1.5, 1.5, 10.0))


def test_a_vector_image_as_itk_writes_it_reads_one_channel(tmp_path):
    """(X, Y, Z, 1, C): NIfTI's time axis of length 1, then C values per voxel."""
    data = np.stack([_random(seed=1), _random(seed=2)], axis=-1)[:, :, :, None, :]
    path = write_nifti(tmp_path / "a.nii.gz", data)
    for channel in (0, 1):
        loaded, _, _ = load_nifti(path, channel=channel)
        np.testing.assert_array_equal(loaded, data[:, :, :, 0, channel])
    assert load_nifti(path)[0].shape == (*SHAPE, 2)
    with pytest.raises(DatasetError, match="cannot read channel 2"):
        load_nifti(path, channel=2)


def test_a_time_series_of_vector_images_is_refused_naming_the_layout(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", np.zeros((*SHAPE, 3, 2), np.float32))
    expected = r"shape \(12, 10, 3, 3, 2\), the NIfTI layout \(X, Y, Z, T, C\): 3 time points"
    for read in (read_header, load_nifti):
        with pytest.raises(DatasetError, match=expected):
            read(path)
