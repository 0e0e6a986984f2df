"""Explanations are differentiable: finite differences (float64) agree with jax.grad for Grad-CAM, LRP
and Score-CAM (whose fast forward skips constant channels in a ``while_loop``; its custom VJP
differentiates the same computation with every chunk run), w.r.t. the images and the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji

SPECS = ["grad_cam", "lrp", "score_cam(batch=8)"]


@pytest.fixture(scope="module")
def model_and_inputs():
    model = ji.backbones.create("small_cnn", num_classes=5, widths=(4, 8), strides=(2, 2))
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3), jnp.float64)
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(1), x))
        # Off the initialisation (BatchNorm bias 0, mean 0): there a zero input sits exactly on every
        # ReLU's kink (Score-CAM's zero image and masked-out regions), where no derivative exists.
        leaves, tree = jax.tree.flatten(variables)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        noise = [0.1 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
        variables = tree.unflatten([a + n if a.ndim == 1 else a for a, n in zip(leaves, noise, strict=True)])
    return model, variables, x, jnp.array([0, 3])


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("wrt", ["images", "params"])
def test_finite_differences_match_jax_grad(model_and_inputs, spec, wrt):
    model, variables, x, targets = model_and_inputs
    fn = ji.explain.get(spec)
    weights = jnp.linspace(0.0, 1.0, 256).reshape(16, 16)  # a weighted sum: every pixel counts
    with jax.enable_x64(True):
        if wrt == "images":
            f = lambda images: (fn(model, variables, images, targets) * weights).sum()
            args = (x,)
        else:
            f = lambda params: (fn(model, {**variables, "params": params}, x, targets) * weights).sum()
            args = (variables["params"],)
        assert f(*args).dtype == jnp.float64
        grad = jax.grad(f)(*args)
        for seed in range(3):  # central differences along seeded random directions
            keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(args[0])))
            leaves, tree = jax.tree.flatten(args[0])
            d = tree.unflatten(
                [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
            )
            # a small step: ReLU kinks and LRP's sign(z) stabiliser make the maps only piecewise smooth
            step = lambda s, d=d: jax.tree.map(lambda p, q: p + s * q, args[0], d)
            fd = (f(step(1e-7)) - f(step(-1e-7))) / 2e-7
            ad = sum(jnp.vdot(g, b) for g, b in zip(jax.tree.leaves(grad), jax.tree.leaves(d), strict=True))
            assert float(fd) == pytest.approx(float(ad), rel=1e-5, abs=1e-6)


def test_score_cam_gradient_is_not_zero_and_its_forward_is_unchanged(model_and_inputs):
    model, variables, x, targets = model_and_inputs
    images = x.astype(jnp.float32)
    v32 = jax.tree.map(lambda a: a.astype(jnp.float32), variables)
    fn = ji.explain.get("score_cam(batch=8)")
    heat = fn(model, v32, images, targets)
    jitted = ji.explain.explain("score_cam(batch=8)", model, v32, images, targets)
    np.testing.assert_allclose(heat, jitted, atol=1e-6)
    grad = jax.jit(jax.grad(lambda im: fn(model, v32, im, targets).sum()))(images)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
