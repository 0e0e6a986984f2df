"""Confidence drop / increase (seed 004 eq. 23) and deletion / insertion curves on analytic models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import metrics as jm


def mean_pixel_model(x):
    """logits = (4 m, -4 m) with m the mean pixel: p(class 0) = sigmoid(8 m)."""
    m = x.mean((1, 2, 3))
    return jnp.stack([4.0 * m, -4.0 * m], -1)


def region_model(x):
    """Class 0 logit = 8 * mean of the top-left 4x4 block (channel 0); class 1 logit = 2."""
    r = x[:, :4, :4, 0].mean((1, 2))
    return jnp.stack([8.0 * r, jnp.full_like(r, 2.0)], -1)


def test_all_ones_mask_is_no_change():
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 3))
    out = jm.confidence_change(mean_pixel_model, x, jnp.ones((5, 8, 8)))
    for k in ("average_drop", "drop_signed", "drop_absolute", "increase"):
        np.testing.assert_allclose(out[k], 0.0, atol=1e-6)


def test_drop_and_increase_match_formulas():
    x = np.ones((4, 8, 8, 3), np.float32)
    x[2:] *= -1.0  # negative mean: masking towards 0 raises p(class 0)
    heat = np.full((4, 8, 8), 0.5, np.float32)
    targets = np.zeros(4, np.int32)
    out = jm.confidence_change(mean_pixel_model, x, heat, targets=targets, batch_size=3)
    sig = lambda v: 1 / (1 + np.exp(-v))
    p = sig(8 * np.array([1, 1, -1, -1.0]))
    o = sig(8 * np.array([0.5, 0.5, -0.5, -0.5]))
    np.testing.assert_allclose(out["p_image"], p, rtol=1e-5)
    np.testing.assert_allclose(out["p_explanation"], o, rtol=1e-5)
    np.testing.assert_allclose(out["average_drop"], np.mean(np.maximum(p - o, 0) / (p + 1e-7)), rtol=1e-5)
    np.testing.assert_allclose(out["drop_signed"], np.mean((p - o) / (p + 1e-7)), rtol=1e-5)
    np.testing.assert_allclose(out["drop_absolute"], np.mean(np.maximum(p - o, 0)), rtol=1e-5)
    np.testing.assert_allclose(out["increase"], 0.5)  # the two negative-mean images


def test_deletion_perfect_ranking_beats_reversed():
    x = jnp.ones((2, 8, 8, 3))
    perfect = np.zeros((2, 8, 8), np.float32)
    perfect[:, :4, :4] = 1.0
    perfect += np.linspace(0, 0.1, 64, dtype=np.float32).reshape(8, 8)  # break ties deterministically
    targets = jnp.zeros(2, jnp.int32)
    kw = dict(targets=targets, pixels_per_step=8, batch_size=5)
    good = jm.perturbation_curve(region_model, x, perfect, **kw)
    bad = jm.perturbation_curve(region_model, x, 1.0 - perfect, **kw)
    assert float(good["auc_mean"]) < float(bad["auc_mean"]) - 0.2
    # Perfect MoRF deletion removes the block in the first 2 steps: p(class 0) falls to sigmoid(-2).
    np.testing.assert_allclose(good["curve"][2:], 1 / (1 + np.exp(2.0)), rtol=1e-5)
    np.testing.assert_allclose(good["fractions"], np.arange(9) / 8)
    ins_good = jm.perturbation_curve(region_model, x, perfect, mode="insertion", substrate="constant", **kw)
    ins_bad = jm.perturbation_curve(
        region_model, x, 1.0 - perfect, mode="insertion", substrate="constant", **kw
    )
    assert float(ins_good["auc_mean"]) > float(ins_bad["auc_mean"]) + 0.2
    lerf = jm.perturbation_curve(region_model, x, perfect, order="lerf", **kw)
    np.testing.assert_allclose(lerf["auc"], bad["auc"], rtol=1e-6)  # LeRF of h == MoRF of reversed h
    # seed 003 style: accuracy stays 1 while the least relevant 48 pixels go.
    np.testing.assert_allclose(lerf["accuracy_curve"][:7], 1.0)


def test_curve_trapezoid_and_partial_sweep():
    x = jnp.ones((1, 8, 8, 3))
    heat = jnp.linspace(0, 1, 64).reshape(1, 8, 8)
    out = jm.perturbation_curve(
        region_model, x, heat, targets=jnp.zeros(1, jnp.int32), pixels_per_step=4, n_steps=3
    )
    assert out["prob"].shape == (1, 4)
    np.testing.assert_allclose(out["fractions"], [0, 4 / 64, 8 / 64, 12 / 64])
    np.testing.assert_allclose(
        out["auc"], np.trapezoid(np.asarray(out["prob"][0]), np.asarray(out["fractions"]))
    )


def test_blur_substrate_preserves_constants():
    x = jnp.full((1, 9, 9, 3), 0.3)
    np.testing.assert_allclose(jm.gaussian_blur(x), 0.3, rtol=1e-6)
    y = jnp.zeros((1, 21, 21, 1)).at[0, 10, 10, 0].set(1.0)  # kernel fully inside: mass kept
    np.testing.assert_allclose(jm.gaussian_blur(y).sum(), 1.0, rtol=1e-5)


def test_no_retrace_for_same_apply_fn(monkeypatch):
    """A second call with the same apply_fn and shapes reuses the compiled program (fails if it traces)."""
    chex.clear_trace_counter()
    for name, static in (
        ("_confidence", ("apply_fn", "batch_size", "has_targets")),
        ("_curve", ("apply_fn", "batch_size", "has_targets", "insertion", "morf", "pps", "n_steps", "blur")),
    ):
        fn = getattr(jm.faithfulness, name).__wrapped__
        monkeypatch.setattr(
            jm.faithfulness, name, jax.jit(chex.assert_max_traces(fn, n=1), static_argnames=static)
        )
    x = jnp.ones((2, 8, 8, 3))
    h = jnp.ones((2, 8, 8))
    for scale in (1.0, 0.5):
        jm.confidence_change(region_model, x + scale, h * scale)
        jm.perturbation_curve(region_model, x + scale, h * scale, mode="insertion", blur_sigma=scale * 4)


def test_bad_inputs():
    x = jnp.ones((2, 8, 8, 3))
    with pytest.raises(ValueError, match="heatmaps"):
        jm.confidence_change(region_model, x, jnp.ones((2, 8, 7)))
    with pytest.raises(ValueError, match="targets"):
        jm.perturbation_curve(region_model, x, jnp.ones((2, 8, 8)), targets=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="mode"):
        jm.perturbation_curve(region_model, x, jnp.ones((2, 8, 8)), mode="remove")
    with pytest.raises(ValueError, match="NaN"):
        jm.confidence_change(region_model, x, jnp.full((2, 8, 8), jnp.nan))
