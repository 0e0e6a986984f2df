"""VGG fc6 with the adaptive pool folded into its kernel (``layers.PooledDense``) equals the unfolded head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji
from jinterp.backbones import layers
from jinterp.explain import lrp_sites


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 3), (5, 5), (6, 6), (2, 3), (4, 1)])
def test_folded_kernel_equals_pool_then_dense(hw):
    kx, kw = jax.random.split(jax.random.key(hw[0] * 10 + hw[1]))
    x = jax.random.uniform(kx, (3, *hw, 8))
    kernel = jax.random.normal(kw, (7 * 7 * 8, 5))
    pooled = layers.AdaptiveAvgPool(7).apply({}, x).reshape(3, -1)
    folded = layers.fold_pool_into_kernel(kernel, hw, (7, 7))
    assert folded.shape == (hw[0] * hw[1] * 8, 5)
    assert _rel(x.reshape(3, -1) @ folded, pooled @ kernel) < 1e-6


def _unfolded_logits(params, pool5):
    x = layers.AdaptiveAvgPool(7).apply({}, pool5).reshape(pool5.shape[0], -1)
    for name in ("fc6", "fc7"):
        x = jax.nn.relu(x @ params[name]["kernel"] + params[name]["bias"])
    return x @ params["fc8"]["kernel"] + params["fc8"]["bias"]


@pytest.mark.parametrize("size", [32, 64, 96])
def test_vgg_logits_and_gradients_equal_the_unfolded_head(size):
    model = ji.backbones.create("vgg11", num_classes=10)
    x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
    variables = model.init(jax.random.key(0), x)
    pool5 = model.apply(variables, x)[1]["pool5"]
    assert pool5.shape[1] * pool5.shape[2] < 49  # the folded path runs

    def ours(params):
        return model.apply({**variables, "params": params}, x)[0]

    def ref(params):
        return _unfolded_logits(params, pool5)

    params = variables["params"]
    assert _rel(ours(params), ref(params)) < 1e-5
    g_ours = jax.grad(lambda p: jnp.sum(jnp.sin(ours(p))))(params)["fc6"]["kernel"]
    g_ref = jax.grad(lambda p: jnp.sum(jnp.sin(ref(p))))(params)["fc6"]["kernel"]
    assert _rel(g_ours, g_ref) < 1e-5


def test_lrp_sees_the_unfolded_pool_and_dense():
    """LRP's rule sites at 64 px are the same as at 224 px, where nothing is folded."""
    model = ji.backbones.create("vgg11", num_classes=10)
    small = [(s.path, s.kind) for s in lrp_sites.sites(model, (1, 64, 64, 3))]
    assert small == [(s.path, s.kind) for s in lrp_sites.sites(model, (1, 224, 224, 3))]
    assert ("avgpool", "avgpool") in small and ("fc6", "dense") in small
