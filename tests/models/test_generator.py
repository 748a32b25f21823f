"""Tests for tfaug/models/generator.py."""

import numpy as np
import pytest

from tfaug.models.generator import Generator

SMALL = {"filters": (8, 8, 4, 4, 4), "image_filters": 4, "z_dim": 6}


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape, "float32"), rng.normal(size=(shape[0], 6)).astype("float32")


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 64, 64, 1), (1, 64, 32, 1)])
def test_field_shape_and_float32_dtype(kind, shape):
    field = Generator(kind, **SMALL)(_inputs(shape))
    channels = 2 if kind == "deformation" else 1
    assert tuple(field.shape) == (*shape[:3], channels)
    assert field.dtype == "float32"


def test_intensity_field_lies_in_open_unit_interval():
    image, z = _inputs((2, 32, 32, 1))
    field = np.asarray(Generator("intensity", **SMALL)((10.0 * image, 10.0 * z)))
    assert np.all(field > -1.0) and np.all(field < 1.0)
    assert field.std() > 0.0


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
def test_field_depends_on_z_and_on_the_image(kind):
    generator = Generator(kind, **SMALL)
    image, z = _inputs((2, 32, 32, 1))
    other_image, other_z = _inputs((2, 32, 32, 1), seed=1)
    reference = np.asarray(generator((image, z), training=False))
    assert np.abs(reference - np.asarray(generator((image, other_z), training=False))).max() > 1e-6
    assert np.abs(reference - np.asarray(generator((other_image, z), training=False))).max() > 1e-6


def test_parameter_count_matches_hand_count():
    def conv_bn(c_in, c_out, k):
        return k * k * c_in * c_out + 4 * c_out

    kwargs = {"filters": (4, 3, 2, 2, 2), "image_filters": 2, "z_dim": 5}
    dense = 5 * (1 * 1 * 4) + 4  # 32x32 image → a 1x1x4 seed
    z_branch = conv_bn(4, 4, 2) + conv_bn(4, 3, 2) + conv_bn(3, 2, 2) + conv_bn(2, 2, 2)
    z_branch += 2 * 2 * 2 * 2 + 2  # last block: linear conv with bias
    image_branch = conv_bn(1, 2, 3) + conv_bn(2, 2, 3)
    fusion = conv_bn(2 + 2, 2, 3) + conv_bn(2, 2, 3)
    trunk = dense + z_branch + image_branch + fusion
    shapes = ((None, 32, 32, 1), (None, 5))
    deformation = Generator("deformation", flow_kernel=3, **kwargs)
    deformation.build(shapes)
    intensity = Generator("intensity", **kwargs)
    intensity.build(shapes)
    assert deformation.count_params() == trunk + (3 * 3 * 2 * 2 + 2) == 470
    assert intensity.count_params() == trunk + 1 * 1 * 2 * 1 == 434


@pytest.mark.parametrize("filters", [(4,), (8, 4, 4)])
def test_z_branch_depth_is_the_number_of_filter_counts(filters):
    generator = Generator("deformation", filters=filters, image_filters=4, z_dim=6)
    field = generator(_inputs((2, 64, 32, 1)))
    assert tuple(field.shape) == (2, 64, 32, 2)
    scale = 2 ** len(filters)  # each block doubles the z grid back to the image's size
    assert generator.z_dense.kernel.shape == (6, (64 // scale) * (32 // scale) * filters[0])
    with pytest.raises(ValueError, match="built for 64x32"):
        generator(_inputs((2, 32, 32, 1)))


def test_flow_kernel_sets_the_deformation_head():
    generator = Generator("deformation", flow_kernel=1, **SMALL)
    generator.build(((None, 32, 32, 1), (None, 6)))
    assert tuple(generator.head.kernel.shape) == (1, 1, 4, 2)


@pytest.mark.parametrize("shape", [(1, 48, 48, 1), (1, 32, 40, 1)])
def test_side_not_multiple_of_32_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        Generator("deformation", **SMALL)(_inputs(shape))


def test_calling_with_another_slice_size_than_built_is_a_clear_error():
    generator = Generator("intensity", **SMALL)
    generator(_inputs((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="built for 32x32"):
        generator(_inputs((1, 64, 64, 1)))


def test_wrong_z_size_is_a_clear_error():
    image, _ = _inputs((1, 32, 32, 1))
    with pytest.raises(ValueError, match=r"z of shape \(B, 6\)"):
        Generator("intensity", **SMALL)((image, np.zeros((1, 7), "float32")))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "elastic"}, "kind must be"),
        ({"kind": "intensity", "filters": ()}, "one to five"),
        ({"kind": "intensity", "filters": (8,) * 6}, "one to five"),
        ({"kind": "deformation", "field_bound": 0.0}, "field_bound must be > 0"),
        ({"kind": "intensity", "field_grid": 0}, "field_grid must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Generator(**kwargs)


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
def test_field_bound_limits_every_component(kind):
    image, z = _inputs((2, 32, 32, 1))
    bounded = Generator(kind, field_bound=0.25, **SMALL)
    field = np.asarray(bounded((100.0 * image, 100.0 * z)))
    assert np.abs(field).max() <= 0.25
    assert np.abs(field).max() > 0.05  # saturates towards the bound, not to zero


def test_default_deformation_head_is_unbounded():
    image, z = _inputs((2, 32, 32, 1))
    flow = np.asarray(Generator("deformation", **SMALL)((1e3 * image, 1e3 * z)))
    assert np.abs(flow).max() > 1.0


@pytest.mark.parametrize("kind", ["deformation", "intensity"])
def test_coarse_grid_field_is_bilinear_between_cell_centres(kind):
    image, z = _inputs((1, 32, 32, 1))
    field = np.asarray(Generator(kind, field_grid=8, **SMALL)((image, z), training=False))
    fine = np.asarray(Generator(kind, **SMALL)((image, z), training=False))
    # Second differences along rows vanish inside a cell's bilinear span (rows 4..11 lie
    # between the centres of cells 0 and 1), which a full-resolution head does not give.
    second = np.abs(np.diff(field[0, 4:12, :, 0], n=2, axis=0)).max()
    assert second < 1e-5 * max(1.0, np.abs(field).max())
    assert np.abs(np.diff(fine[0, 4:12, :, 0], n=2, axis=0)).max() > 1e-4


def test_grid_that_does_not_divide_the_slice_is_a_clear_error():
    with pytest.raises(ValueError, match="must divide"):
        Generator("deformation", field_grid=3, **SMALL)(_inputs((1, 32, 32, 1)))


def test_switches_survive_serialisation():
    generator = Generator("deformation", field_bound=2.0, field_grid=4, **SMALL)
    image, z = _inputs((1, 32, 32, 1))
    expected = np.asarray(generator((image, z), training=False))
    clone = Generator.from_config(generator.get_config())
    clone((image, z))
    clone.set_weights(generator.get_weights())
    np.testing.assert_allclose(np.asarray(clone((image, z), training=False)), expected, atol=1e-6)
    assert (clone.field_bound, clone.field_grid) == (2.0, 4)
