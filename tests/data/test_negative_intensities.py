"""MR volumes with a few negative voxels: clipped before N4 with a warning; CT still refused.

The volumes are written as int16 NIfTI files and read back as tfaug reads a dataset.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from data.fixtures import write_nifti
from data.scanner_fixtures import ct_volume, mr_with_negative_tail, signed_volume
from tfaug.config import ConfigError, PreprocessConfig, config_from_dict, load_config
from tfaug.data.nifti import load_nifti
from tfaug.data.preprocess import n4_correct, preprocess_volume
from tfaug.data.records import cache_key_inputs, cache_path
from tfaug.data.volume import DatasetError, DatasetWarning, Volume

SPACING = (1.5, 1.5, 8.0)
N4 = {"n4": True, "n4_shrink": [2, 2, 1], "n4_iterations": [5]}


def read_written(tmp_path, name, volume) -> Volume:
    """Write ``volume`` as an int16 NIfTI file and read it back as a Volume."""
    path = write_nifti(tmp_path / f"{name}.nii.gz", volume, spacing=SPACING)
    image, affine, zooms = load_nifti(path)
    assert image.dtype == np.int16
    meta = {"image_path": str(path)}
    return Volume(name, image.astype(np.float32), None, zooms[:3], affine, meta)


def preprocess(volume: Volume, **settings):
    config = PreprocessConfig(spacing_mm=3.0, crop_size=48, **{**N4, **settings})
    return preprocess_volume(volume, config)


def test_the_mr_fixture_has_a_small_negative_tail():
    volume = mr_with_negative_tail()
    negative = volume < 0
    assert 0.002 < negative.mean() < 0.1 and -200 < volume.min() < -10 and volume.max() > 800


def test_mr_volume_with_a_negative_tail_is_clipped_before_n4_with_one_warning(tmp_path):
    volume = read_written(tmp_path, "ringing", mr_with_negative_tail())
    count = int(np.count_nonzero(volume.image < 0))
    with pytest.warns(DatasetWarning) as caught:
        result = preprocess(volume)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"{count} negative voxels" in message and "ringing.nii.gz" in message
    assert "clipped to 0 before N4" in message and "n4_negatives=clip" in message
    assert np.all(np.isfinite(result.image))
    clipped = Volume("clipped", np.maximum(volume.image, 0), None, volume.spacing, volume.affine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a non-negative volume
        expected = preprocess(clipped)
    np.testing.assert_array_equal(result.image, expected.image)


def test_n4_on_the_clipped_tail_keeps_zeros_zero(tmp_path):
    image = read_written(tmp_path, "ringing", mr_with_negative_tail()).image
    with pytest.warns(DatasetWarning):
        corrected = n4_correct(image, SPACING, [2, 2, 1], [5], name="ringing")
    assert corrected.min() == 0.0
    assert np.all(corrected[image <= 0] == 0)


def test_ct_is_refused_naming_the_file_and_the_fix(tmp_path):
    volume = read_written(tmp_path, "abdomen_ct", ct_volume())
    assert (volume.image < 0).mean() < 0.5  # refused for its depth, not for being mostly negative
    for policy in ("clip", "refuse"):
        with pytest.raises(DatasetError) as error:
            preprocess(volume, n4_negatives=policy)
        message = str(error.value)
        assert "abdomen_ct.nii.gz" in message
        assert "N4 expects non-negative MR intensities" in message
        assert "CT (Hounsfield units)" in message and "set preprocess.n4=false" in message


def test_mostly_negative_signed_data_is_refused(tmp_path):
    volume = read_written(tmp_path, "phase", signed_volume())
    with pytest.raises(DatasetError, match=r"phase\.nii\.gz.*set preprocess\.n4=false"):
        preprocess(volume)
    with pytest.raises(DatasetError, match="n4=false"):
        n4_correct(np.full((8, 8, 3), -1.0), (1.0, 1.0, 1.0), [2, 2, 1], [5])


def test_refuse_keeps_any_negative_voxel_out_and_names_the_switch(tmp_path):
    volume = read_written(tmp_path, "ringing", mr_with_negative_tail())
    with pytest.raises(DatasetError, match=r"ringing\.nii\.gz.*set preprocess\.n4_negatives=clip"):
        preprocess(volume, n4_negatives="refuse")


def test_without_n4_negative_voxels_are_left_alone(tmp_path):
    volume = read_written(tmp_path, "abdomen_ct", ct_volume())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = preprocess(volume, n4=False)
    assert result.image.min() < -0.5  # air stays far below the p2 level


def test_the_key_defaults_to_clip_and_takes_only_clip_or_refuse():
    recorded = {"preprocess": {"spacing_mm": 1.0, "crop_size": 32, "n4": True}}  # an old config
    assert config_from_dict(recorded).preprocess.n4_negatives == "clip"
    with pytest.raises(ConfigError, match="preprocess.n4_negatives: 'shift' is not one of"):
        load_config("phantom", overrides=["preprocess.n4_negatives=shift"])


def test_caches_made_before_the_key_keep_their_folder(tmp_path):
    default = load_config("phantom")
    assert "n4_negatives" not in cache_key_inputs(default, tmp_path)["preprocess"]
    refuse = load_config("phantom", overrides=["preprocess.n4_negatives=refuse"])
    assert cache_key_inputs(refuse, tmp_path)["preprocess"]["n4_negatives"] == "refuse"
    assert cache_path(refuse, tmp_path) != cache_path(default, tmp_path)
