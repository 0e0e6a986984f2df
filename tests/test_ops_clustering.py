"""On-device clustering (``jinterp.ops.clustering``): k-means and spectral clustering against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.metrics import adjusted_rand_score

from jinterp.ops import clustering


def block_affinity(sizes, key, within=1.8, across=0.9, noise=0.05):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    a = np.where(labels[:, None] == labels[None], within, across)
    a = a + noise * np.asarray(jax.random.uniform(key, a.shape))
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(labels)))
    a = a[perm][:, perm]
    return (a + a.T) / 2, labels[perm]


@pytest.mark.parametrize("sizes", [(10, 3, 8, 6, 5), pytest.param((5, 7, 4), marks=pytest.mark.slow)])
def test_spectral_clustering_matches_sklearn(sizes):
    a, truth = block_affinity(sizes, jax.random.key(len(sizes)))
    ours = np.asarray(clustering.spectral_clustering(jnp.asarray(a), len(sizes), jax.random.key(0)))
    ref = SpectralClustering(len(sizes), affinity="precomputed", random_state=21).fit(a).labels_
    assert adjusted_rand_score(ref, ours) == 1.0
    assert adjusted_rand_score(truth, ours) == 1.0


def test_spectral_embedding_matches_sklearn_subspace():
    from sklearn.manifold import spectral_embedding

    a, _ = block_affinity((6, 5, 7), jax.random.key(9), noise=0.5)
    ours = np.asarray(clustering.spectral_embedding(jnp.asarray(a, jnp.float32), 3), np.float64)
    ref = spectral_embedding(a, n_components=3, drop_first=False, random_state=0)
    # Same column space (eigenvector signs/rotations within the top-k space are arbitrary).
    proj = ours @ np.linalg.lstsq(ours, ref, rcond=None)[0]
    np.testing.assert_allclose(proj, ref, atol=1e-4)


def test_kmeans_blobs_and_inertia_vs_sklearn():
    key = jax.random.key(11)
    centers = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 6.0], [6.0, -1.0]])
    truth = np.repeat(np.arange(4), 25)
    x = centers[truth] + 0.5 * np.asarray(jax.random.normal(key, (100, 2)))
    res = clustering.kmeans(jnp.asarray(x), 4, jax.random.key(0))
    assert adjusted_rand_score(truth, np.asarray(res.labels)) == 1.0
    ref = KMeans(4, n_init=10, random_state=0).fit(x)
    np.testing.assert_allclose(res.inertia, ref.inertia_, rtol=1e-4)
    # Centroids are the means of their members.
    for k in range(4):
        np.testing.assert_allclose(res.centroids[k], x[np.asarray(res.labels) == k].mean(0), atol=1e-4)


def test_kmeans_vmapped_with_duplicate_points():
    x = jnp.concatenate([jnp.zeros((5, 3)), jnp.ones((5, 3))])  # 2 distinct points, k = 3
    res = jax.vmap(lambda xi, k: clustering.kmeans(xi, 3, k))(
        jnp.stack([x, x[::-1]]), jax.random.split(jax.random.key(1), 2)
    )
    assert np.all(np.isfinite(res.centroids)) and np.all(np.asarray(res.inertia) == 0.0)
    for labels, truth in zip(
        np.asarray(res.labels), (np.repeat([0, 1], 5), np.repeat([1, 0], 5)), strict=True
    ):
        assert len(set(labels[truth == 0]) & set(labels[truth == 1])) == 0  # never mixes the two points


def test_clustering_bad_input():
    with pytest.raises(ValueError, match="affinity"):
        clustering.spectral_clustering(jnp.ones((3, 4)), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="k:"):
        clustering.kmeans(jnp.ones((3, 2)), 5, jax.random.key(0))


# ------------------------------------------------------- Cluster-CAM §3.1: SSIM graph, L = D - A


def _ssim_np(a, b, win=7, data_range=1.0):
    """Mean SSIM of two maps, one window at a time in float64 (skimage's uniform-window definition)."""
    h, w = a.shape
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(h - win + 1):
        for j in range(w - win + 1):
            x, y = a[i : i + win, j : j + win].ravel(), b[i : i + win, j : j + win].ravel()
            mx, my = x.mean(), y.mean()
            vx, vy, cxy = x.var(ddof=1), y.var(ddof=1), np.cov(x, y)[0, 1]
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.mean(vals)


def test_ssim_matrix_matches_a_per_pair_numpy_rederivation():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (4, 9, 10))
    maps[3] = maps[0]  # an identical pair: SSIM 1
    ours = np.asarray(clustering.ssim_matrix(jnp.asarray(maps, jnp.float32)))
    ref = np.array([[_ssim_np(a, b) for b in maps] for a in maps])
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(ours[0, 3], 1.0, atol=1e-5)


def test_laplacian_eigenvectors_are_those_of_d_minus_a():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (7, 7))
    a = (a + a.T) / 2
    b, vals = clustering.laplacian_eigenvectors(jnp.asarray(a, jnp.float32), 3)
    ref_vals, ref_vecs = np.linalg.eigh(np.diag(a.sum(1)) - a)
    np.testing.assert_allclose(vals, ref_vals, atol=1e-5)
    assert abs(vals[0]) < 1e-5  # u_1: constant, eigenvalue 0, left out of B
    for k in range(3):  # columns u_2..u_4 (eigenvalues distinct here), up to sign
        np.testing.assert_allclose(np.abs(np.asarray(b[:, k]) @ ref_vecs[:, k + 1]), 1.0, atol=1e-4)


def test_ssim_graph_of_block_structured_maps_has_the_planted_components():
    """Three groups of maps, each a noisy copy of one blob: within a group SSIM is high, across low;
    thresholded at θ (eq. 12) the graph has exactly three components, so L = D - A has three zero
    eigenvalues, and spectral clustering (K = 2 eigenvectors, Q = 3) recovers the groups."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:12, :12]
    blobs = [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0) for cy, cx in ((3, 3), (8, 8), (3, 9))]
    truth = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    maps = np.stack([blobs[g] + 0.05 * rng.uniform(0, 1, (12, 12)) for g in truth]).astype(np.float32)
    s = np.asarray(clustering.ssim_matrix(jnp.asarray(maps)))
    same = truth[:, None] == truth[None]
    theta = 0.5
    assert s[same].min() > theta > s[~same].max()
    flat = maps.reshape(len(maps), -1)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    a = np.where(s > theta, np.exp(-d2 / np.median(d2)), 0.0)  # eq. 12
    _, vals = clustering.laplacian_eigenvectors(jnp.asarray(a, jnp.float32), 2)
    assert np.sum(np.abs(np.asarray(vals)) < 1e-4) == 3
    labels = clustering.spectral_clustering_unnormalized(jnp.asarray(a), 3, jax.random.key(0), eigenvectors=2)
    assert adjusted_rand_score(truth, np.asarray(labels)) == 1.0
