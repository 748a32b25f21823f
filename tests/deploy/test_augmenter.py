"""The exported augmenter as a Keras layer over tf.data pipelines."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from deploy_run import phantom_slices

from tfaug.deploy.augmenter import LearnedAugmentation
from tfaug.deploy.export import ExportError, run_savedmodel


def test_maps_over_a_batched_tf_data_pipeline_of_images_and_one_hot_masks(export_dir, finished_run):
    images, onehot = phantom_slices(finished_run, count=4)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"images": images, "segmentation_masks": onehot}
    ).batch(2)
    augmented = list(dataset.map(LearnedAugmentation(export_dir, seed=1)))
    assert len(augmented) == 2
    out_images = np.concatenate([b["images"].numpy() for b in augmented])
    out_masks = np.concatenate([b["segmentation_masks"].numpy() for b in augmented])
    assert out_images.shape == images.shape and out_masks.shape == onehot.shape
    np.testing.assert_allclose(out_masks.sum(-1), 1.0, atol=1e-5)
    assert np.abs(out_images - images).max() > 1e-3  # something was applied


def test_equals_the_exported_augmenter_for_the_same_z(export_dir, finished_run):
    images, onehot = phantom_slices(finished_run, count=2)
    layer = LearnedAugmentation(export_dir, seed=3)
    z = keras.random.normal((2, layer.z_dim), seed=keras.random.SeedGenerator(3)).numpy()
    out = layer({"images": images, "segmentation_masks": onehot})
    expected = run_savedmodel(
        export_dir / "augmenter/1", {"image": images, "label": onehot, "z": z}
    )
    np.testing.assert_allclose(out["images"].numpy(), expected["augmented_image"], atol=1e-5)
    np.testing.assert_allclose(
        out["segmentation_masks"].numpy(), expected["augmented_label"], atol=1e-5
    )


def test_integer_masks_of_unbatched_elements_stay_integer_and_extra_keys_pass(
    export_dir, finished_run
):
    images, onehot = phantom_slices(finished_run, count=3)
    labels = onehot.argmax(-1)[..., None].astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"images": images, "segmentation_masks": labels, "case": ["a", "b", "c"]}
    )
    elements = list(dataset.map(LearnedAugmentation(export_dir, seed=0)))
    for element, name in zip(elements, [b"a", b"b", b"c"], strict=True):
        assert element["images"].shape == (32, 32, 1)
        assert element["segmentation_masks"].shape == (32, 32, 1)
        assert element["segmentation_masks"].dtype == tf.int32
        assert set(np.unique(element["segmentation_masks"])) <= {0, 1, 2, 3}
        assert element["case"].numpy() == name


def test_inference_mode_is_the_identity_and_the_config_round_trips(export_dir, finished_run):
    images, onehot = phantom_slices(finished_run, count=2)
    layer = LearnedAugmentation(export_dir, seed=7)
    out = layer({"images": images, "segmentation_masks": onehot}, training=False)
    np.testing.assert_array_equal(out["images"], images)
    clone = LearnedAugmentation.from_config(layer.get_config())
    assert clone.export_dir == str(export_dir) and clone.seed == 7
    assert not clone.trainable and clone.z_dim == 8


def test_float_masks_with_the_wrong_class_count_are_refused(export_dir, finished_run):
    images, onehot = phantom_slices(finished_run, count=2)
    with pytest.raises(ValueError, match="one-hot with 4 classes, found shape"):
        LearnedAugmentation(export_dir)({"images": images, "segmentation_masks": onehot[..., :3]})


def test_an_export_without_augmenter_is_refused(export_dir, tmp_path):
    (tmp_path / "export.json").write_text((export_dir / "export.json").read_text(encoding="utf-8"))
    with pytest.raises(ExportError, match="no exported augmenter"):
        LearnedAugmentation(tmp_path)


def test_tfaug_exposes_the_layer_lazily_without_importing_tensorflow():
    import subprocess
    import sys

    import tfaug

    assert tfaug.LearnedAugmentation is LearnedAugmentation
    code = "import sys, tfaug; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert result.stdout.split() == ["False", "False"], result.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = tfaug.Nothing
