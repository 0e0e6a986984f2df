"""Modules (seed 002 §IV-E): JAX spectral clustering, module consistency, NMI / ARI / AVI, pruning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.cluster import SpectralClustering

from jinterp import metrics as jm


def _block_similarity(labels, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels)
    s = (lab[:, None] == lab[None, :]).astype(np.float32) + noise * rng.random((lab.size, lab.size))
    return ((s + s.T) / 2).astype(np.float32)


def test_spectral_labels_recover_blocks_like_sklearn():
    truth = np.repeat(np.arange(4), [3, 5, 2, 6])
    perm = np.random.default_rng(1).permutation(truth.size)
    truth = truth[perm]
    s = _block_similarity(truth)
    ours = np.asarray(jm.spectral_labels(jnp.asarray(s), 4))
    ref = SpectralClustering(4, affinity="precomputed", random_state=0).fit_predict(s)
    assert skm.adjusted_rand_score(truth, ours) == 1.0
    assert skm.adjusted_rand_score(ref, ours) == 1.0


def _module_maps(n=6, consistent=True):
    """Filters 0-2 fire at the top-left cell, 3-5 at the bottom-right; optionally swapped per image."""
    maps = np.zeros((n, 4, 4, 6), np.float32)
    for i in range(n):
        a, b = (0, 3) if consistent or i % 2 == 0 else (3, 0)
        maps[i, 0, 0, a : a + 3] = 1.0
        maps[i, 3, 3, b : b + 3] = 1.0
        if not consistent and i % 3 == 1:  # filter 2 joins the other group in some images
            maps[i, :, :, 2] = maps[i, :, :, 3]
    return maps


def test_module_consistency_zero_when_modules_stable():
    out = jm.module_consistency(_module_maps(), n_modules=2)
    np.testing.assert_allclose(out["consistency"], 0.0, atol=1e-7)
    p = np.asarray(out["comembership"])
    np.testing.assert_allclose(p[0, 1], 1.0)
    np.testing.assert_allclose(p[0, 4], 0.0)


def test_module_consistency_matches_numpy_std():
    maps = _module_maps(n=6, consistent=False)
    out = jm.module_consistency(maps, n_modules=2, chunk=4)
    conn = []
    for i in range(6):
        a = maps[i].reshape(16, 6)
        a = a / np.maximum(np.linalg.norm(a, axis=0, keepdims=True), 1e-12)
        lab = SpectralClustering(2, affinity="precomputed", random_state=0).fit_predict(a.T @ a + 1e-9)
        conn.append((lab[:, None] == lab[None, :])[np.triu_indices(6, 1)])
    ref = np.std(np.array(conn, float), axis=0).mean()
    np.testing.assert_allclose(out["consistency"], ref, rtol=1e-5)
    assert ref > 0


def test_filter_modules_and_alignment_equal_sklearn():
    maps = _module_maps()
    modules = np.asarray(jm.filter_modules(maps, 2))
    assert skm.adjusted_rand_score([0, 0, 0, 1, 1, 1], modules) == 1.0
    rng = np.random.default_rng(3)
    mod, part = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
    out = jm.module_part_alignment(mod, part)
    assert out["nmi"] == pytest.approx(skm.normalized_mutual_info_score(part, mod))
    assert out["ari"] == pytest.approx(skm.adjusted_rand_score(part, mod))
    keep = rng.random(40) < 0.5
    out2 = jm.module_part_alignment(mod, part, assigned=keep)
    assert out2["n_filters"] == keep.sum()
    assert out2["ari"] == pytest.approx(skm.adjusted_rand_score(part[keep], mod[keep]))


def _avi_reference(u, v):
    """Vinh et al. 2009/2010 AVI = 2(I - E[I]) / (H(U) + H(V) - 2E[I]), E[I] by exact hypergeometric sum."""
    from math import comb, log

    n = len(u)
    a = np.bincount(u)
    b = np.bincount(v)
    a, b = a[a > 0], b[b > 0]
    cont = np.zeros((a.size, b.size))
    ui, vi = np.unique(u, return_inverse=True)[1], np.unique(v, return_inverse=True)[1]
    np.add.at(cont, (ui, vi), 1)
    p = cont / n
    mi = sum(
        p[i, j] * log(p[i, j] / (a[i] / n * b[j] / n))
        for i in range(a.size)
        for j in range(b.size)
        if p[i, j]
    )
    emi = 0.0
    for ai in a:
        for bj in b:
            for nij in range(max(1, ai + bj - n), min(ai, bj) + 1):
                prob = comb(bj, nij) * comb(n - bj, ai - nij) / comb(n, ai)
                emi += nij / n * log(n * nij / (ai * bj)) * prob
    h = lambda c: -sum(x / n * log(x / n) for x in c)
    return 2 * (mi - emi) / (h(a) + h(b) - 2 * emi)


def test_avi_matches_definition():
    rng = np.random.default_rng(4)
    u, v = rng.integers(0, 3, 25), rng.integers(0, 4, 25)
    v[:10] = u[:10]
    assert jm.adjusted_variation_of_information(u, v) == pytest.approx(_avi_reference(u, v), rel=1e-6)
    assert jm.adjusted_variation_of_information(u, u) == pytest.approx(1.0)


def test_taylor_importance_and_pruning_curve():
    maps = jnp.ones((3, 2, 2, 4)) * jnp.array([1.0, 2.0, 0.0, 4.0])
    grads = jnp.ones((3, 2, 2, 4))
    imp = jm.taylor_importance(maps, grads)
    np.testing.assert_allclose(imp, np.array([1, 2, 0, 4]) / np.sqrt(21), rtol=1e-6)

    def apply_fn(x, keep):  # class 0 iff channel 0 (2nd least important) is kept
        s = x.mean((1, 2, 3)) * 0 + keep[0]
        return jnp.stack([s, jnp.full_like(s, 0.5)], -1)

    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 3))
    out = jm.pruning_curve(apply_fn, x, jnp.zeros(5, jnp.int32), imp, n_pruned=[0, 1, 2, 3])
    np.testing.assert_allclose(out["accuracy"], [1, 1, 0, 0])  # pruned 2nd (after channel 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_modules"):
        jm.module_consistency(np.ones((2, 4, 4, 3), np.float32), n_modules=5)
    with pytest.raises(ValueError, match="part_labels"):
        jm.module_part_alignment([0, 1, 1], [0, 1])
