"""First principal component from matmuls (``jinterp.ops.principal``) against float64 LAPACK ``gesdd``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji
from jinterp.ops import principal


def _gesdd_projection(x):
    """PGC's ``get_2d_projection`` core: float64 ``np.linalg.svd`` (gesdd), ``x @ vt[0]``."""
    return np.stack([xi @ np.linalg.svd(xi.astype(np.float64))[2][0] for xi in x])


def _centred(shape, seed):
    x = np.random.default_rng(seed).gamma(0.5, size=shape).astype(np.float32)  # skewed, like ReLU maps
    return x - x.mean(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", [(3, 4, 512), (2, 49, 512), (2, 30, 40), (2, 64, 16), (1, 1, 8)])
def test_projection_is_the_first_component_up_to_sign(shape):
    x = _centred(shape, seed=shape[1])
    ours = np.asarray(principal.projection(jnp.asarray(x)))
    ref = _gesdd_projection(x)
    signs = np.sign((ours * ref).sum(1, keepdims=True))
    np.testing.assert_allclose(ours * signs, ref, atol=2e-5 * np.abs(ref).max())


def test_all_zero_maps_project_to_zero():
    for shape in [(2, 4, 16), (2, 16, 4)]:
        p = np.asarray(principal.projection(jnp.zeros(shape)))
        assert np.isfinite(p).all() and (p == 0).all()


BACKBONE_MAPS = [("resnet18", "layer4", 64), ("resnet18", "layer2", 112), ("vgg16", "conv5_3", 64)]


@pytest.mark.parametrize(("name", "layer", "size"), BACKBONE_MAPS)
def test_sign_as_gesdd_on_backbone_maps(name, layer, size):
    """The leading-order sign is float64 gesdd's (PGC's) on seeded VGG / ResNet maps."""
    model = ji.backbones.create(name, num_classes=10)
    x = jax.random.normal(jax.random.key(3), (4, size, size, 3))
    maps = np.asarray(model.apply(model.init(jax.random.key(size), x), x)[1][layer])
    a = maps.reshape(maps.shape[0], -1, maps.shape[-1])
    a = a - a.mean(axis=1, keepdims=True)
    ours = np.asarray(principal.sign_as_gesdd(principal.projection(jnp.asarray(a))))
    ref = _gesdd_projection(a)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())


def _flip(p, sign):
    if sign == "max":
        return np.where(np.abs(p.min(1, keepdims=True)) > np.abs(p.max(1, keepdims=True)), -p, p)
    return np.where(p[:, :1] > 0, -p, p)


@pytest.mark.parametrize("sign", ["svd", "max"])
def test_eigen_cam_is_the_full_svd_projection(sign):
    """Eigen-CAM's heatmap is PGC's formula on float64 gesdd with the documented sign, for more
    positions than channels (small_cnn conv6 at 96 px: 144 x 128) and fewer (32 px: 16 x 128)."""
    model = ji.backbones.create("small_cnn", num_classes=4)
    for size in (32, 96):
        x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
        variables = model.init(jax.random.key(0), x)
        maps = np.asarray(model.apply(variables, x)[1]["conv6"])
        a = maps.reshape(2, -1, maps.shape[-1])
        p = _flip(_gesdd_projection(a - a.mean(axis=1, keepdims=True)), sign)
        ref = ji.explain.pipeline.finish([jnp.asarray(p.reshape(maps.shape[:3]), jnp.float32)], (size, size))
        spec = f'eigen_cam(layer="conv6", sign="{sign}")'
        ours = ji.explain.explain(spec, model, variables, x, jnp.zeros(2, int))
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-4)
