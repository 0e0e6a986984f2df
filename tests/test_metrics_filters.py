"""Filter interpretability (seed 002 eq. 11-14), inconsistency-diversity (seed 000 §4.1), SRAS."""

import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import metrics as jm


def _two_part_world(n=6, size=16, low=4):
    """Left half = part 0, right half = part 1; filter 0 fires exactly on part 0, filter 1 on part 1."""
    parts = np.zeros((n, size, size, 2), bool)
    parts[:, :, : size // 2, 0] = True
    parts[:, :, size // 2 :, 1] = True
    maps = np.zeros((n, low, low, 2), np.float32)
    maps[:, :, : low // 2, 0] = 1.0
    maps[:, :, low // 2 :, 1] = 1.0
    return maps, parts


def test_filter_on_one_part_is_perfect():
    maps, parts = _two_part_world()
    # Thresholds between 0 and 1: the bilinear ramp at the border is cut at 0.5, exactly the part edge.
    out = jm.filter_interpretability(maps, parts, phi=0.2, thresholds=jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(out["iou"][:, 0, 0], 1.0)
    np.testing.assert_allclose(out["iou"][:, 0, 1], 0.0)
    np.testing.assert_allclose(out["interp"], [1.0, 1.0])
    np.testing.assert_allclose(out["stability"], [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(out["purity"], [0.0, 0.0], atol=1e-7)
    np.testing.assert_array_equal(out["part"], [0, 1])
    # Both parts covered in every image: entropy of (1/2, 1/2) normalised by log 2 = 1.
    np.testing.assert_allclose(out["diversity"], 1.0, rtol=1e-6)


def test_uniform_maps_analytic():
    # A constant map fires everywhere (threshold = its value): IoU with a part = part area fraction.
    n, size = 4, 12
    parts = np.zeros((n, size, size, 3), bool)
    parts[:, :6, :, 0] = True  # 1/2 of the image
    parts[:, 6:9, :, 1] = True  # 1/4
    parts[:, 9:, :3, 2] = True  # 1/16
    maps = np.full((n, 3, 3, 2), 0.7, np.float32)
    out = jm.filter_interpretability(maps, parts, phi=0.2)
    np.testing.assert_allclose(out["iou"][0, 0], [0.5, 0.25, 1 / 16], rtol=1e-6)
    # Assigned to parts 0 and 1 in every image: Interp 1, Stability = Purity = Diversity = log2/log3.
    h = np.log(2) / np.log(3)
    np.testing.assert_allclose(out["interp"], 1.0)
    np.testing.assert_allclose(out["stability"], h, rtol=1e-6)
    np.testing.assert_allclose(out["purity"], h, rtol=1e-6)
    np.testing.assert_allclose(out["diversity"], h, rtol=1e-6)


def test_assignment_metrics_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.random((7, 5, 4)) < 0.3

    def ent(p):
        s = p.sum()
        if s == 0:
            return 0.0
        q = p[p > 0] / s
        return float(-(q * np.log(q)).sum() / np.log(len(p)))

    out = jm.metrics_from_assignment(jnp.asarray(a))
    freq = a.mean(0)
    np.testing.assert_allclose(out["interp"], freq.max(-1), rtol=1e-6)
    np.testing.assert_allclose(out["stability"], [ent(f) for f in freq], rtol=1e-5)
    pur = [np.mean([ent(a[i, f]) for i in range(7) if a[i, f].any()]) for f in range(5)]
    np.testing.assert_allclose(out["purity"], pur, rtol=1e-5)
    np.testing.assert_allclose(
        out["diversity"], [ent(a[i].max(0).astype(float)) for i in range(7)], rtol=1e-5
    )


def test_thresholds_are_top_quantiles_and_iou_matches_numpy():
    rng = np.random.default_rng(1)
    maps = rng.random((5, 4, 4, 3)).astype(np.float32)
    thr = jm.filter_thresholds(maps, top_quantile=0.25)
    for c in range(3):
        assert np.mean(maps[..., c] >= float(thr[c])) == pytest.approx(0.25, abs=1 / 80)
    parts = rng.random((5, 8, 8, 2)) < 0.4
    iou = jm.part_iou(maps, parts, thr, chunk=2)  # chunk not dividing N: padding path
    import jax

    up = np.asarray(jax.image.resize(maps, (5, 8, 8, 3), "bilinear"))
    s = up >= np.asarray(thr)
    ref = np.zeros((5, 3, 2))
    for i in range(5):
        for c in range(3):
            for k in range(2):
                u = (s[i, :, :, c] | parts[i, :, :, k]).sum()
                ref[i, c, k] = (s[i, :, :, c] & parts[i, :, :, k]).sum() / u
    np.testing.assert_allclose(iou, ref, rtol=1e-6)


def test_landmark_curves_monotone_and_exact():
    # Filter 0 peaks on landmark 0 in every image, filter 1 on landmark 1.
    maps = np.zeros((3, 4, 4, 2), np.float32)
    maps[:, 0, 0, 0] = 1.0
    maps[:, 3, 3, 1] = 1.0
    lm = np.tile(np.array([[3.0, 3.0], [13.0, 13.0]], np.float32), (3, 1, 1))
    out = jm.landmark_metric_curves(maps, lm, (16, 16), radii=jnp.array([0.01, 0.1, 1.0]))
    np.testing.assert_allclose(out["interp_mean"], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(out["stability_mean"][1], 0.0, atol=1e-7)
    np.testing.assert_allclose(out["purity_mean"][2], 1.0, rtol=1e-6)  # radius = diagonal: both parts


def test_inconsistency_diversity_curve():
    maps, parts = _two_part_world(n=4, size=16, low=4)
    obj = parts.any(-1)
    obj[:, :, :2] = False  # a strip of background at the left, inside part 0's region
    parts = parts & obj[..., None]
    out = jm.inconsistency_diversity_curve(maps, parts, obj, taus=(0.5, 0.99))
    # At tau 0.5 filter 0 covers columns 0-7: 12 px/row on part 0 ... and 2 px/row background
    # (6 and 2 of 8 columns); filter 1 only part 1.
    p = np.array([6, 2]) / 8
    h0 = -(p * np.log(p)).sum() / np.log(3)
    np.testing.assert_allclose(out["inconsistency"][0], h0 / 2, rtol=1e-5)
    np.testing.assert_allclose(out["diversity"][0], 1.0, rtol=1e-6)
    # At 0.99 only the flat top of each bilinear map survives: cols 2-5 for filter 0? less coverage.
    assert out["diversity"][1] < out["diversity"][0]
    out2 = jm.inconsistency_diversity_curve(maps, parts, obj, taus=(0.5,), assign="argmax")
    np.testing.assert_allclose(out2["inconsistency"], 0.0, atol=1e-7)  # part 0 always wins the argmax


def test_sras():
    maps = np.zeros((2, 8, 8, 3), np.float32)
    maps[:, 2:4, 2:4, :] = 1.0
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 1:5, 1:5] = True
    np.testing.assert_allclose(jm.sras(maps, mask), 1.0)  # map inside the mask
    np.testing.assert_allclose(jm.sras(maps, ~mask), 0.0)
    heat = np.ones((2, 8, 8), np.float32)
    np.testing.assert_allclose(jm.sras(heat, mask), 16 / 64, rtol=1e-6)  # uniform: area fraction
    parts = np.stack([mask, ~mask], -1)
    np.testing.assert_allclose(jm.sras(heat, parts), [[0.25, 0.75]] * 2, rtol=1e-6)
    # A dead channel is left out, not counted as 0.
    maps[..., 2] = 0
    np.testing.assert_allclose(jm.sras(maps, mask), 1.0)


def test_bad_inputs():
    maps, parts = _two_part_world()
    with pytest.raises(ValueError, match="part_masks"):
        jm.filter_interpretability(maps, parts[:3])
    with pytest.raises(ValueError, match="maps"):
        jm.filter_interpretability(maps[..., 0], parts)
    bad = maps.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jm.filter_interpretability(bad, parts)
    with pytest.raises(ValueError, match="top_quantile"):
        jm.filter_thresholds(maps, 0.0)
    obj = parts.any(-1)
    obj[1] = False
    with pytest.raises(ValueError, match="object_mask"):
        jm.inconsistency_diversity_curve(maps, parts, obj)
    with pytest.raises(ValueError, match="non-negative"):
        jm.sras(-maps, parts)
