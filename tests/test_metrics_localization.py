"""Localisation metrics: energy pointing game (seed 003 eq. 6), Quantus parity, IoU, DCNE sweep."""

import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import metrics as jm


def _ranked_heatmap():
    """4x4 heatmap with values 16..1 (row-major), mask = the 4 top pixels and pixel value 5."""
    heat = np.arange(16, 0, -1, dtype=np.float32).reshape(1, 4, 4) / 16
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, :] = True  # values 16..13 (ranks 1-4)
    mask[0, 2, 3] = True  # value 5 (rank 12)
    return heat, mask


def test_energy_pointing_game_each_energy():
    heat, mask = _ranked_heatmap()
    energies = np.arange(1, 21) * 0.05
    out = jm.energy_pointing_game(heat, mask)
    # Energy E keeps k = ceil(16 E) top pixels; hits = min(k, 4) + (k >= 12).
    k = np.ceil(16 * energies - 1e-6).astype(int)
    ref = (np.minimum(k, 4) + (k >= 12)) / k
    np.testing.assert_allclose(out["energies"], energies, rtol=1e-6)
    np.testing.assert_allclose(out["curve"], ref, rtol=1e-6)
    np.testing.assert_allclose(out["mean"], ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["lower"], ref[:10].mean(), rtol=1e-6)
    np.testing.assert_allclose(out["higher"], ref[10:].mean(), rtol=1e-6)


def test_energy_pointing_hit_miss_and_boxes():
    heat = np.zeros((2, 8, 8), np.float32)
    heat[0, 1:3, 1:3] = 1.0  # inside the box
    heat[1, 6:8, 6:8] = 1.0  # outside
    boxes = np.array([[0.0, 0.0, 0.5, 0.5]] * 2, np.float32)  # tfds (ymin, xmin, ymax, xmax)
    out = jm.energy_pointing_game(heat, boxes=boxes)
    np.testing.assert_allclose(out["per_image"][0], 1.0)
    np.testing.assert_allclose(out["per_image"][1], 0.0)
    m = jm.boxes_to_masks(jnp.array([[1, 2, 4, 6]]), (8, 8), box_format="xyxy")
    assert int(m.sum()) == 4 * 3 and bool(m[0, 2, 1]) and not bool(m[0, 1, 1])


def test_all_zero_heatmap_scores_zero_and_empty_mask():
    heat = np.zeros((2, 4, 4), np.float32)
    mask = np.ones((2, 4, 4), bool)
    mask[1] = False
    with pytest.raises(ValueError, match="masks: 1 empty"):
        jm.energy_pointing_game(heat, mask)
    out = jm.energy_pointing_game(heat, mask, empty="ignore")
    np.testing.assert_allclose(out["per_image"][0], 0.0)
    assert np.isnan(out["per_image"][1]).all() and np.isfinite(out["mean"])
    np.testing.assert_array_equal(out["valid"], [True, False])


def _random_case(seed=0, n=6, size=10):
    rng = np.random.default_rng(seed)
    heat = rng.random((n, size, size)).astype(np.float32)
    heat[0, 3, 3] = heat[0, 7, 7] = 2.0  # tie for the maximum
    mask = rng.random((n, size, size)) < 0.3
    return heat, mask


def test_pointing_and_relevance_mass_match_quantus():
    quantus = pytest.importorskip("quantus")
    heat, mask = _random_case()
    x = np.zeros((heat.shape[0], 1, *heat.shape[1:]), np.float32)
    y = np.zeros(heat.shape[0], int)
    kw = dict(model=None, x_batch=x, y_batch=y, a_batch=heat[:, None], s_batch=mask[:, None].astype(float))
    q_pg = quantus.PointingGame(disable_warnings=True)(**kw)
    q_rm = quantus.RelevanceMassAccuracy(disable_warnings=True)(**kw)
    np.testing.assert_allclose(jm.pointing_game(heat, mask)["per_image"], np.asarray(q_pg, float))
    np.testing.assert_allclose(jm.relevance_mass(heat, mask)["per_image"], q_rm, rtol=1e-5)


def test_pointing_tolerance():
    heat = np.zeros((1, 9, 9), np.float32)
    heat[0, 4, 4] = 1.0
    mask = np.zeros((1, 9, 9), bool)
    mask[0, 4, 7] = True  # 3 px from the peak
    assert float(jm.pointing_game(heat, mask)["mean"]) == 0.0
    assert float(jm.pointing_game(heat, mask, tolerance=2)["mean"]) == 0.0
    assert float(jm.pointing_game(heat, mask, tolerance=3)["mean"]) == 1.0


def test_localization_iou_mean_std():
    heat, mask = _random_case(1)
    out = jm.localization_iou(heat, mask)
    thr = heat.mean((1, 2), keepdims=True) + heat.std((1, 2), keepdims=True)
    b = heat > thr
    ref = (b & mask).sum((1, 2)) / (b | mask).sum((1, 2))
    np.testing.assert_allclose(out["per_image"], ref, rtol=1e-5)
    np.testing.assert_allclose(out["mean"], ref.mean(), rtol=1e-5)


def test_mean_max_iou_dcne():
    rng = np.random.default_rng(2)
    n, m, f, s = 3, 4, 2, 8
    maps = rng.random((n, m, s, s)).astype(np.float32)
    masks = rng.random((n, f, s, s)) < 0.4
    masks[1, 1] = False  # feature 1 not annotated in image 1
    out = jm.mean_max_iou(maps, masks)
    ths = np.array(jm.localization.DCNE_THRESHOLDS)
    lo, hi = maps.min((2, 3), keepdims=True), maps.max((2, 3), keepdims=True)
    img = np.floor((maps - lo) / (hi - lo) * 255).astype(np.uint8)
    avg = []
    for t in ths:
        b = img > t
        iou = np.zeros((n, m, f))
        for i in range(n):
            for j in range(m):
                for k in range(f):
                    u = (b[i, j] | masks[i, k]).sum()
                    iou[i, j, k] = (b[i, j] & masks[i, k]).sum() / u if u else 0.0
        best = iou.max(1)
        best[1, 1] = np.nan
        avg.append(np.nanmean(np.nanmean(best, 0)))
    np.testing.assert_allclose(out["average"], avg, rtol=1e-5)
    assert float(out["best_threshold"]) == ths[int(np.argmax(avg))]


def test_shape_and_nan_errors():
    heat, mask = _random_case()
    with pytest.raises(ValueError, match="masks: expected shape"):
        jm.pointing_game(heat, mask[:, :5])
    bad = heat.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="heatmaps: contains NaN"):
        jm.relevance_mass(bad, mask)
    with pytest.raises(ValueError, match="give exactly one"):
        jm.energy_pointing_game(heat)
    with pytest.raises(ValueError, match="empty"):
        jm.localization_iou(heat, mask, empty="skip")
