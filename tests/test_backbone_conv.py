"""The patches-and-matmul convolution (``jinterp.backbones.conv``) against ``lax.conv_general_dilated``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.backbones import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, stride, pad):
    return jax.lax.conv_general_dilated(x, w, (stride,) * 2, ((pad, pad),) * 2, dimension_numbers=NHWC)


def _assert_close(ours, ref):
    """Equal to 1e-6 of the output's scale (float32 sums of up to 1176 products)."""
    assert ours.shape == ref.shape
    assert np.abs(np.asarray(ours) - np.asarray(ref)).max() <= 1e-6 * np.abs(np.asarray(ref)).max()


def _inputs(size, kernel, seed, batch=3, cin=24, cout=16):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, size, size, cin))
    w = jax.random.normal(kw, (kernel, kernel, cin, cout)) / np.sqrt(kernel * kernel * cin)
    return x, w


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 7])
@pytest.mark.parametrize("size", range(1, 9))
def test_patches_conv_equals_lax_conv_plain_and_vmapped(size, kernel, stride):
    """Every map size 1-8 (both sides of the kernel size); the dispatching function vmapped over
    images (jitted, where XLA:CPU once miscompiled a conv) equals the unbatched patches result."""
    pad = kernel // 2
    x, w = _inputs(size, kernel, seed=size * 10 + kernel + stride)
    pads, strides = ((pad, pad), (pad, pad)), (stride, stride)
    ref = _lax(x, w, stride, pad)
    ours = jax.jit(lambda x, w: conv.patches_conv(x, w, strides, pads))(x, w)
    _assert_close(ours, ref)
    per_image = jax.jit(
        jax.vmap(
            lambda xi, w: conv.conv_general_dilated(xi[None], w, strides, pads, dimension_numbers=NHWC)[0],
            (0, None),
        )
    )(x, w)
    _assert_close(per_image, ref)
    if conv.smaller_than_kernel((size, size), (kernel, kernel)):
        np.testing.assert_array_equal(per_image, ours)


def test_dispatch_routes_only_maps_smaller_than_the_kernel():
    def dots(size, kernel, **kwargs):
        x, w = _inputs(size, kernel, seed=0)
        jaxpr = jax.make_jaxpr(
            lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), **kwargs)
        )(x, w)
        return {e.primitive.name for e in jaxpr.eqns} & {"dot_general", "conv_general_dilated"}

    assert dots(2, 3, dimension_numbers=NHWC) == {"dot_general"}
    assert dots(3, 3, dimension_numbers=NHWC) == {"conv_general_dilated"}
    assert dots(2, 3, dimension_numbers=NHWC, rhs_dilation=(2, 2)) == {"conv_general_dilated"}


def test_taps_reading_only_padding_are_left_out():
    """A 1x1 map under a 3x3 pad-1 kernel reads only the centre tap: a (C_in, C_out) matmul."""
    x, w = _inputs(1, 3, seed=1)
    jaxpr = jax.make_jaxpr(lambda x, w: conv.patches_conv(x, w, (1, 1), ((1, 1), (1, 1))))(x, w)
    (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dot.invars[1].aval.shape == (24, 16)


def test_gradients_match_lax_conv():
    x, w = _inputs(2, 3, seed=2)
    pads = ((1, 1), (1, 1))

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    ours = jax.grad(loss(lambda x, w: conv.patches_conv(x, w, (1, 1), pads)), (0, 1))(x, w)
    ref = jax.grad(loss(lambda x, w: _lax(x, w, 1, 1)), (0, 1))(x, w)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
