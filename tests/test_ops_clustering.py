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
