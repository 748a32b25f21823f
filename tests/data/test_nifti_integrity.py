"""Tests of tfaug/data/nifti.py against damaged or inconsistent files.

Corrupted gzip streams, voxel sizes that disagree with the affine, voxel types that are not
real numbers, values beyond float32, and the fix hints for labels stored flipped or swapped
with their image and for 4D ACDC frames. Every file is a real NIfTI written with nibabel.
"""

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from data.fixtures import grid_affine, make_label, write_nifti
from tfaug.data.acdc import load_acdc
from tfaug.data.nifti import (
    check_label_matches_image,
    check_label_values,
    load_nifti,
    read_header,
)
from tfaug.data.volume import CaseRef, DatasetError

SHAPE = (12, 10, 3)


def _silently_corrupted(path):
    """Flip one byte of a .nii.gz so that nibabel alone reads wrong voxels without error.

    Returns the voxels nibabel reads from the corrupted file (the test's precondition).
    """
    content, original = path.read_bytes(), np.asanyarray(nib.load(path).dataobj)
    for position in range(len(content) - 9, 20, -1):  # the last 8 bytes are CRC and length
        damaged = bytearray(content)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        try:
            read = np.asanyarray(nib.load(path).dataobj)
        except (OSError, EOFError, ValueError, zlib.error):
            continue
        if not np.array_equal(read, original):
            return read
    pytest.fail("no single-byte flip reads silently; the test file needs more voxels")


def test_a_flipped_byte_in_a_gzipped_label_is_reported_as_damaged(tmp_path):
    path = write_nifti(tmp_path / "label.nii.gz", make_label((24, 20, 4)))
    _silently_corrupted(path)
    with pytest.raises(gzip.BadGzipFile):  # gzip's CRC sees the damage
        gzip.decompress(path.read_bytes())
    with pytest.raises(DatasetError, match=r"label\.nii\.gz: the label voxels .* damaged"):
        load_nifti(path, what="label")


def test_an_intact_gzipped_nifti2_file_reads_like_the_plain_file(tmp_path):
    data = np.random.default_rng(0).normal(size=(*SHAPE, 2)).astype(np.float32)
    nib.save(nib.Nifti2Image(data, grid_affine((1.5, 1.5, 10.0))), tmp_path / "a.nii.gz")
    loaded, _, zooms = load_nifti(tmp_path / "a.nii.gz", channel=1)
    np.testing.assert_array_equal(loaded, data[..., 1])
    assert zooms == (1.5, 1.5, 10.0, 1.0)


def _write_with_pixdim(path, affine, pixdim):
    """Write zeros whose sform is ``affine`` and whose pixdim[1:4] is ``pixdim``."""
    image = nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine)
    image.header["pixdim"][1:4] = pixdim
    nib.save(image, path)
    return path


@pytest.mark.parametrize(
    "affine_mm, pixdim, expected",
    [
        (
            (1.25, 1.25, 5.0),
            (0.0, 1.25, 5.0),
            r"pixdim\) \(1\.0, 1\.25, 5\.0\) mm \(nibabel reads a pixdim of 0 as 1\) differs "
            r"from the affine's voxel size \(1\.25, 1\.25, 5\.0\) mm",
        ),
        (
            (2.5, 2.5, 5.0),
            (1.25, 1.25, 5.0),
            r"pixdim\) \(1\.25, 1\.25, 5\.0\) mm differs from the affine's voxel size "
            r"\(2\.5, 2\.5, 5\.0\) mm",
        ),
    ],
    ids=["zero pixdim", "sform twice pixdim"],
)
def test_pixdim_that_disagrees_with_the_affine_is_refused(tmp_path, affine_mm, pixdim, expected):
    path = _write_with_pixdim(tmp_path / "a.nii.gz", grid_affine(affine_mm), pixdim)
    for read in (read_header, load_nifti):
        with pytest.raises(
            DatasetError, match=rf"a\.nii\.gz: image header voxel size .*{expected}"
        ):
            read(path)
    with pytest.raises(DatasetError, match="img.header.set_zooms"):
        read_header(path)


def test_oblique_affine_with_float32_rounded_pixdim_is_accepted(tmp_path):
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9375, 0.9375, 3.0])
    # pixdim off by 2e-5 relative: what a converter's float32 and 6-decimal cosines give
    path = _write_with_pixdim(tmp_path / "a.nii.gz", affine, (0.9375 * (1 + 2e-5), 0.9375, 3.0))
    _, loaded_affine, zooms = load_nifti(path)
    np.testing.assert_allclose(zooms, (0.9375, 0.9375, 3.0), rtol=1e-4)
    np.testing.assert_allclose(loaded_affine, affine, atol=1e-5)


def test_a_file_without_sform_or_qform_uses_its_pixdim(tmp_path):
    image = nib.Nifti1Image(np.zeros(SHAPE, np.float32), None)
    image.header.set_zooms((0.8, 0.7, 4.0))
    nib.save(image, tmp_path / "a.nii")
    _, affine, zooms = load_nifti(tmp_path / "a.nii")
    assert zooms == pytest.approx((0.8, 0.7, 4.0))
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), (0.8, 0.7, 4.0))


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]),
            r"has colour voxels \(R, G, B\), expected real numbers .* Convert the image to "
            "grey levels",
        ),
        (
            np.ones(SHAPE, np.complex64) * (1 + 2j),
            r"has complex voxels \(complex64\), expected real numbers .* Take the magnitude "
            r"\(np\.abs\)",
        ),
    ],
    ids=["rgb24", "complex64"],
)
def test_rgb_and_complex_images_are_refused_with_the_conversion(tmp_path, data, expected):
    path = write_nifti(tmp_path / "a.nii.gz", data)
    for read in (read_header, load_nifti):
        with pytest.raises(DatasetError, match=rf"a\.nii\.gz: image {expected}"):
            read(path)


def test_float64_values_beyond_float32_range_are_named_as_such(tmp_path):
    data = np.zeros(SHAPE, np.float64)
    data[0, 0, 0], data[1, 1, 1] = 1e300, -1e40
    path = write_nifti(tmp_path / "a.nii.gz", data)
    with pytest.raises(
        DatasetError,
        match=r"2 voxel\(s\) out of 360 whose magnitude \(up to "
        r"1e\+300\) exceeds float32's range",
    ) as raised:
        load_nifti(path)
    assert "NaN" not in str(raised.value)


def test_label_stored_flipped_gets_a_reorient_hint_that_works(tmp_path):
    image_affine = grid_affine((1.5, 1.5, 10.0))
    label = make_label(SHAPE)
    flip_x = np.diag([-1.0, 1, 1, 1])
    flip_x[0, 3] = SHAPE[0] - 1  # voxel i of the label is voxel X-1-i of the image
    flipped = nib.Nifti1Image(label[::-1].copy(), image_affine @ flip_x)
    with pytest.raises(DatasetError, match="label axis 0 = image axis 0 reversed") as raised:
        check_label_matches_image(
            SHAPE, image_affine, SHAPE, flipped.affine, tmp_path / "i.nii", tmp_path / "l.nii"
        )
    assert "Copy the image header" not in str(raised.value)
    transform = orientations.ornt_transform(
        orientations.io_orientation(flipped.affine), orientations.io_orientation(image_affine)
    )
    fixed = flipped.as_reoriented(transform)  # the recipe the message gives
    check_label_matches_image(
        SHAPE, image_affine, fixed.shape, fixed.affine, tmp_path / "i.nii", tmp_path / "l.nii"
    )
    np.testing.assert_array_equal(np.asanyarray(fixed.dataobj), label)


def test_label_stored_with_swapped_axes_gets_the_reorient_hint(tmp_path):
    image_affine = grid_affine((1.5, 1.25, 10.0))
    label_affine = image_affine[:, [1, 0, 2, 3]]  # label voxel (j, i, k) = image voxel (i, j, k)
    with pytest.raises(
        DatasetError, match="label axis 0 = image axis 1, label axis 1 = image axis 0\\)"
    ):
        check_label_matches_image(
            SHAPE,
            image_affine,
            (SHAPE[1], SHAPE[0], SHAPE[2]),
            label_affine,
            tmp_path / "i.nii",
            tmp_path / "l.nii",
        )


def test_label_on_a_different_grid_still_gets_the_header_hint(tmp_path):
    image_affine = grid_affine((1.5, 1.5, 10.0))
    label_affine = image_affine @ np.diag([-1.0, 1, 1, 1])  # flipped, not moved: other voxels
    with pytest.raises(DatasetError, match="Copy the image header onto the label if"):
        check_label_matches_image(
            SHAPE, image_affine, SHAPE, label_affine, tmp_path / "i.nii", tmp_path / "l.nii"
        )


def test_an_intensity_image_given_as_label_is_named_as_such(tmp_path):
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    with pytest.raises(
        DatasetError, match=r"l\.nii: label has 360 distinct non-integer values"
    ) as raised:
        check_label_values(image, {0, 1, 2}, tmp_path / "l.nii")
    assert "does not look like a label map" in str(raised.value)
    assert "Round the label" not in str(raised.value)


def test_a_few_fractional_label_values_still_get_the_rounding_hint(tmp_path):
    label = make_label(SHAPE).astype(np.float32)
    label[0, 0, 0] = 1.5
    with pytest.raises(DatasetError, match="Round the label map"):
        check_label_values(label, {0, 1, 2, 3}, tmp_path / "l.nii")


def test_a_4d_acdc_frame_is_told_it_is_not_a_frame(tmp_path):
    ref = CaseRef(
        "patient001",
        write_nifti(tmp_path / "patient001_frame12.nii.gz", np.zeros((*SHAPE, 4), np.float32)),
        write_nifti(tmp_path / "patient001_frame12_gt.nii.gz", make_label(SHAPE)),
        {"group": "NOR", "frame": 12},
    )
    with pytest.raises(DatasetError, match=r"frame12\.nii\.gz: expected one 3D frame") as raised:
        load_acdc(ref)
    assert "'_4d' files hold the whole sequence" in str(raised.value)
    assert "data.modality" not in str(raised.value)
