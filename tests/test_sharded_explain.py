"""Explanations over several devices: images split over a ``data`` mesh of the 4 fake CPU devices give
the heatmaps of the one-device call, for every registered method (jit's sharding propagation, the
documented path: ``jax.device_put(images, NamedSharding(mesh, P("data")))`` then ``ji.explain.jitted``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import jinterp as ji

SKIP = {"clam": "needs a fitted CLAM checkpoint (tests/test_clam.py covers it)"}
OPTIONS = {"score_cam": "(batch=32)", "ablation_cam": "(batch=32)", "group_cam": "(groups=4)"}


@pytest.fixture(scope="module")
def setup():
    model = ji.backbones.create("small_cnn", num_classes=5, widths=(4, 8), strides=(2, 2))
    images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
    variables = model.init(jax.random.key(1), images)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return model, variables, images, jnp.array([0, 1, 2, 3, 4, 0, 1, 2]), mesh


@pytest.mark.parametrize("name", sorted(set(ji.explain.METHODS) - set(SKIP)))
def test_sharded_images_give_the_one_device_heatmaps(setup, name):
    model, variables, images, targets, mesh = setup
    spec = name + OPTIONS.get(name, "")
    one = np.asarray(ji.explain.explain(spec, model, variables, images, targets))
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    heat = ji.explain.jitted(spec)(model, variables, sharded, jax.device_put(targets, sharded.sharding))
    assert len(heat.sharding.device_set) == 4  # the work stayed spread over the devices
    np.testing.assert_allclose(np.asarray(heat), one, atol=2e-5)
