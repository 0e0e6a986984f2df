"""Shared numerics: interpolation matrices and upsampling, Gaussian blurs, spec strings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.ops import blur, resize, spec

# ------------------------------------------------------------------------------------------- resize


def _reference_matrix(n_in, n_out, align_corners=False, loader=False):
    """The two matrices this function replaced, as they were written (CAM pipeline; digits loader)."""
    if loader:  # jinterp.data.loader._interp_matrix
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (src - i0).astype(np.float32)
        m = np.zeros((n_out, n_in), np.float32)
        np.add.at(m, (np.arange(n_out), i0), 1 - w)
        np.add.at(m, (np.arange(n_out), i1), w)
        return m
    i = np.arange(n_out, dtype=np.float64)  # jinterp.explain.pipeline.interp_matrix
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(i)
    else:
        src = (i + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


SIZES = [(n_in, n_out) for n_in in (1, 2, 3, 7, 8, 14) for n_out in (1, 5, 8, 13, 24, 28, 32, 224)]


@pytest.mark.parametrize("n_in, n_out", SIZES)
def test_interp_matrix_is_bitwise_both_former_matrices(n_in, n_out):
    for align_corners in (False, True):
        np.testing.assert_array_equal(
            resize.interp_matrix(n_in, n_out, align_corners), _reference_matrix(n_in, n_out, align_corners)
        )
    loader = resize.interp_matrix(n_in, n_out, compute_dtype="float32")
    np.testing.assert_array_equal(loader, _reference_matrix(n_in, n_out, loader=True))
    # the same weights up to float32 rounding; rows sum to 1
    np.testing.assert_allclose(loader, resize.interp_matrix(n_in, n_out), atol=3e-7, rtol=0)
    np.testing.assert_allclose(loader.sum(1), 1.0, atol=1e-6)


def test_interp_matrix_matches_analytic_half_pixel_and_corner_cases():
    # 2 -> 4 half-pixel: sources -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    np.testing.assert_array_equal(resize.interp_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    # align_corners: sources 0, 1/3, 2/3, 1
    np.testing.assert_allclose(
        resize.interp_matrix(2, 4, True), [[1, 0], [2 / 3, 1 / 3], [1 / 3, 2 / 3], [0, 1]], rtol=1e-6
    )
    with pytest.raises(ValueError, match="compute_dtype"):
        resize.interp_matrix(2, 4, compute_dtype="float16")
    with pytest.raises(ValueError, match="n_in, n_out"):
        resize.interp_matrix(0, 4)


def test_upsample_matches_jax_image_resize_when_upsampling():
    x = jax.random.uniform(jax.random.key(0), (2, 3, 7, 5))
    got = resize.upsample(x, (20, 16))
    ref = jax.image.resize(x, (2, 3, 20, 16), "bilinear", antialias=False)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # the metrics' jax.image-based NHWC upsample is the same interpolation (not bitwise: see its docstring)
    from jinterp.metrics._common import upsample as metrics_upsample

    nhwc = metrics_upsample(jnp.moveaxis(x, 1, -1), (20, 16))
    np.testing.assert_allclose(jnp.moveaxis(nhwc, -1, 1), got, atol=1e-6)


# --------------------------------------------------------------------------------------------- blur


def _conv_reference(images, kernel, mode):
    """Direct 2-D correlation with the outer-product kernel after numpy padding."""
    k = len(kernel)
    lo, hi = (k - 1) // 2, k // 2
    pad = np.pad(images, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode=mode)
    k2 = np.outer(kernel, kernel)
    n, h, w, c = images.shape
    out = np.zeros_like(images, dtype=np.float64)
    for dy in range(k):
        for dx in range(k):
            out += k2[dy, dx] * pad[:, dy : dy + h, dx : dx + w]
    return out


@pytest.mark.parametrize("size, sigma", [(5, 1.0), (4, 2.0), (11, 5.0)])
def test_blurs_equal_direct_convolution_with_their_border(size, sigma):
    x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 9, 10, 3)), np.float64)
    g = blur.gaussian_kernel(size, sigma)
    assert g.shape == (size,) and g.sum() == pytest.approx(1.0) and np.allclose(g, g[::-1])
    got = blur.gaussian_blur_reflect(jnp.asarray(x, jnp.float32), size, sigma)
    np.testing.assert_allclose(got, _conv_reference(x, g, "reflect"), atol=1e-5)
    if size % 2:
        got = blur.gaussian_blur_edge(jnp.asarray(x, jnp.float32), sigma, size)
        np.testing.assert_allclose(got, _conv_reference(x, g, "edge"), atol=1e-5)


def test_gaussian_kernel_traced_sigma_and_bad_input():
    traced = jax.jit(lambda s: blur.gaussian_kernel(11, s))(jnp.float32(5.0))
    np.testing.assert_allclose(traced, blur.gaussian_kernel(11, 5.0), atol=1e-7)
    np.testing.assert_allclose(
        jax.jit(blur.gaussian_blur_edge)(jnp.ones((1, 6, 6, 2)), 2.0), 1.0, rtol=1e-6
    )  # sigma as a jit argument (the faithfulness curves pass it traced)
    with pytest.raises(ValueError, match="sigma"):
        blur.gaussian_kernel(5, 0.0)


# --------------------------------------------------------------------------------------------- spec


def test_parse_format_round_trip_and_literals_only():
    assert spec.parse('score_cam(layer="conv5_3", batch=64)') == (
        "score_cam",
        {"layer": "conv5_3", "batch": 64},
    )
    assert spec.parse("x(a=[1, 2], b=None, c=-1.5)") == ("x", {"a": (1, 2), "b": None, "c": -1.5})
    for s in ("grad_cam", "x(a=(1, 'b'), c=True)"):
        assert spec.parse(spec.format_spec(*spec.parse(s))) == spec.parse(s)
    for bad, match in (
        ("x(1)", "keyword"),
        ("x(**d)", r"\*\*"),
        ("x(a=f())", "literal"),
        ("a.b(c=1)", "expected 'name'"),
        ("x(", "cannot parse"),
    ):
        with pytest.raises(ValueError, match=match):
            spec.parse(bad)
    with pytest.raises(ValueError, match="string"):
        spec.parse(3)


def test_with_options_adds_missing_and_accepted_only():
    assert spec.with_options("sync", layer="c4") == "sync(layer='c4')"
    assert spec.with_options("sync(layer='c6')", layer="c4") == "sync(layer='c6')"  # the spec wins
    assert spec.with_options("cam", accepted=("layer",), layer="c4", batch=8) == "cam(layer='c4')"
    assert spec.with_options("cam", accepted=(), layer="c4") == "cam"
    assert spec.with_options("cam", layer=None) == "cam"  # None: no default
    with pytest.raises(ValueError, match=r"unknown option 'btch' for 'cam'.*\['batch'\]"):
        spec.check_options("spec", "cam", {"btch": 1}, ["batch"])
