"""On-device clustering in JAX: k-means (k-means++ seeding, Lloyd iterations) and spectral clustering.

Both are pure, jittable and vmappable (e.g. one k-means per image for Cluster-CAM, one spectral
clustering per deep region for HICCNN). Shapes are static: ``k`` and iteration counts are Python ints.

>>> res = kmeans(x, 5, jax.random.key(0))             # x: (N, D) -> res.labels (N,), res.centroids (5, D)
>>> labels = spectral_clustering(affinity, 5, key)    # affinity: (N, N) symmetric, >= 0
>>> labels = spectral_clustering_unnormalized(a, 5, key, eigenvectors=3)  # Cluster-CAM §3.1, L = D - A
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans` (the best of ``n_init`` restarts)."""

    labels: jax.Array  # (N,) int32 cluster index of each point
    centroids: jax.Array  # (k, D)
    inertia: jax.Array  # () sum of squared distances of points to their centroid


def _sq_dists(x: jax.Array, c: jax.Array) -> jax.Array:
    """(N, k) squared Euclidean distances via the matmul expansion (one GEMM, no (N, k, D) tensor)."""
    d = jnp.sum(x * x, 1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, 1)[None, :]
    return jnp.maximum(d, 0.0)


def _kmeans_pp(x: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with prob. ~ D(x)^2."""
    n = x.shape[0]
    # One uniform per draw, inverted through the cumulative weights (a single RNG op keeps compiles short).
    u = jax.random.uniform(key, (k,), x.dtype)
    c0 = x[jnp.minimum((u[0] * n).astype(jnp.int32), n - 1)]
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(c0)
    d2 = _sq_dists(x, c0[None])[:, 0]

    def body(i, carry):
        centroids, d2 = carry
        # Fewer distinct points than k leaves d2 == 0 everywhere: fall back to a uniform draw.
        cdf = jnp.cumsum(jnp.where(d2.sum() > 0, d2, 1.0))
        idx = jnp.minimum(jnp.sum(cdf <= u[i] * cdf[-1]), n - 1)
        centroids = centroids.at[i].set(x[idx])
        return centroids, jnp.minimum(d2, _sq_dists(x, x[idx][None])[:, 0])

    centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, d2))
    return centroids


def _lloyd(x: jax.Array, centroids: jax.Array, iters: int, tol: float) -> KMeansResult:
    k = centroids.shape[0]

    def step(c):
        labels = jnp.argmin(_sq_dists(x, c), axis=1)
        onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
        counts = onehot.sum(0)
        means = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
        # An empty cluster keeps its centre (sklearn relocates it; rare with k-means++ seeding).
        return jnp.where(counts[:, None] > 0, means, c)

    def cond(carry):
        i, _, shift = carry
        return (i < iters) & (shift > tol)

    def body(carry):
        i, c, _ = carry
        new = step(c)
        return i + 1, new, jnp.sum((new - c) ** 2)

    _, centroids, _ = jax.lax.while_loop(cond, body, (0, centroids, jnp.array(jnp.inf, x.dtype)))
    d = _sq_dists(x, centroids)
    labels = jnp.argmin(d, axis=1).astype(jnp.int32)
    return KMeansResult(labels, centroids, jnp.take_along_axis(d, labels[:, None], 1).sum())


@functools.partial(jax.jit, static_argnames=("k", "iters", "n_init"))
def kmeans(
    x: jax.Array, k: int, key: jax.Array, iters: int = 100, n_init: int = 10, tol: float = 1e-6
) -> KMeansResult:
    """k-means of the rows of ``x``: k-means++ seeding, Lloyd iterations, best of ``n_init`` restarts.

    Same objective and defaults as ``sklearn.cluster.KMeans(n_init=10, max_iter=300)`` (lloyd), with
    plain (not greedy) k-means++ seeding. Restarts run in parallel (vmap); iterations stop when the
    centroids move less than ``tol`` (squared, summed) or after ``iters``.

    Args:
      x: (N, D) points.
      k: number of clusters (static).
      key: PRNG key; the result is a deterministic function of it.
      iters: maximum Lloyd iterations (static).
      n_init: restarts (static); the one with the lowest inertia is returned.
      tol: convergence threshold on the squared centroid shift.

    Returns:
      :class:`KMeansResult` (labels (N,), centroids (k, D), inertia ()).
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x: expected a (N, D) array, got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k: expected 1 <= k <= N = {x.shape[0]}, got {k}")

    def run(key):
        return _lloyd(x, _kmeans_pp(x, k, key), iters, tol)

    runs = jax.vmap(run)(jax.random.split(key, n_init))
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda a: a[best], runs)


def spectral_embedding(affinity: jax.Array, k: int) -> jax.Array:
    """(N, k) spectral embedding of a precomputed affinity, as sklearn's ``spectral_embedding``.

    The normalised Laplacian ignores self-affinities (scipy's ``laplacian(normed=True)`` zeroes the
    diagonal), so the top-k eigenvectors of D^-1/2 A D^-1/2 (A without its diagonal) are taken and
    divided by sqrt(degree) (sklearn's ``embedding / dd``). Sign flips are skipped: k-means on the
    embedding does not depend on them.
    """
    a = 0.5 * (affinity + affinity.T)
    a = a * (1.0 - jnp.eye(a.shape[0], dtype=a.dtype))
    deg = a.sum(1)
    dd = jnp.sqrt(jnp.where(deg > 0, deg, 1.0))  # isolated nodes: degree 1, as scipy
    _, vecs = jnp.linalg.eigh(a / dd[:, None] / dd[None, :])
    return vecs[:, ::-1][:, :k] / dd[:, None]


@functools.partial(jax.jit, static_argnames=("k", "iters", "n_init"))
def spectral_clustering(
    affinity: jax.Array, k: int, key: jax.Array, iters: int = 100, n_init: int = 10
) -> jax.Array:
    """Spectral clustering of a precomputed affinity (Ng-Jordan-Weiss / sklearn ``SpectralClustering``).

    Mirrors ``sklearn.cluster.SpectralClustering(k, affinity='precomputed', assign_labels='kmeans')``,
    which the icCNN code uses to group filters (reference-code notes §1): normalised spectral
    embedding (:func:`spectral_embedding`), then :func:`kmeans` on its rows. Runs on device.

    Args:
      affinity: (N, N) non-negative similarity (e.g. icCNN's s_ij = Pearson + 1, HICCNN eq. 1).
      k: number of clusters (static).
      key: PRNG key for k-means seeding.
      iters, n_init: k-means settings (static).

    Returns:
      (N,) int32 cluster index per node.
    """
    affinity = jnp.asarray(affinity, jnp.float32)
    if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity: expected a square (N, N) matrix, got shape {affinity.shape}")
    if not 1 <= k <= affinity.shape[0]:
        raise ValueError(f"k: expected 1 <= k <= N = {affinity.shape[0]}, got {k}")
    return kmeans(spectral_embedding(affinity, k), k, key, iters=iters, n_init=n_init).labels


# ------------------------------------------------------------- Cluster-CAM's spectral clustering (§3.1)


def _window_index(h: int, w: int, win: int) -> np.ndarray:
    """(P, win*win) flat pixel indices of each of the P win x win windows fully inside an h x w map."""
    ii, jj = np.meshgrid(np.arange(win), np.arange(win), indexing="ij")
    offsets = (ii * w + jj).reshape(-1)
    starts = (np.arange(h - win + 1)[:, None] * w + np.arange(w - win + 1)[None]).reshape(-1)
    return starts[:, None] + offsets[None]


def ssim_matrix(maps: jax.Array, data_range: float = 1.0, win: int = 7) -> jax.Array:
    """(C, C) mean SSIM (Wang et al. 2004) between every pair of C maps (C, h, w).

    As ``skimage.metrics.structural_similarity(data_range=..., win_size=7)``: uniform ``win`` x ``win``
    windows (``min(win, h, w)`` rounded down to odd), sample (ddof = 1) variances and covariance,
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, the SSIM map averaged over the windows fully inside the
    map. All pairs at once: each window's cross moments are one ``(C, win^2) x (win^2, C)`` product.
    """
    c, h, w = maps.shape
    win = min(win, h, w)
    win -= 1 - win % 2
    x = maps.reshape(c, h * w).astype(jnp.float32)
    patches = jnp.moveaxis(x[:, _window_index(h, w, win)], 1, 0)  # (P, C, win^2)
    mu = patches.mean(-1)  # (P, C)
    norm = win**2 / (win**2 - 1)  # ddof = 1
    var = norm * ((patches * patches).mean(-1) - mu * mu)
    exy = jnp.einsum("pcq,pdq->pcd", patches, patches, precision=jax.lax.Precision.HIGHEST) / win**2
    cov = norm * (exy - mu[:, :, None] * mu[:, None, :])
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu[:, :, None] * mu[:, None, :] + c1) * (2 * cov + c2)
    den = (mu[:, :, None] ** 2 + mu[:, None, :] ** 2 + c1) * (var[:, :, None] + var[:, None, :] + c2)
    return jnp.mean(num / den, axis=0)


def laplacian_eigenvectors(affinity: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Cluster-CAM eq. 13, 15-16: ``L = D - A`` (unnormalised), ``L = U^T Lambda U``, and
    ``B = [u_2 ... u_{k+1}]``, the k smoothest eigenvectors after the constant u_1.

    Returns:
      ``(B (N, k), eigenvalues (N,) ascending)``.
    """
    a = 0.5 * (affinity + affinity.T)
    lap = jnp.diag(a.sum(1)) - a
    vals, vecs = jnp.linalg.eigh(lap)
    return vecs[:, 1 : k + 1], vals


@functools.partial(jax.jit, static_argnames=("k", "eigenvectors", "iters", "n_init"))
def spectral_clustering_unnormalized(
    affinity: jax.Array, k: int, key: jax.Array, eigenvectors: int = 0, iters: int = 100, n_init: int = 10
) -> jax.Array:
    """Cluster-CAM §3.1: k-means (:func:`kmeans`) of the rows ``q_n`` of eq. 16's ``B``.

    Args:
      affinity: (N, N) symmetric weighted adjacency ``A`` (eq. 11 / 12).
      k: number of clusters Q (static).
      key: PRNG key for k-means seeding.
      eigenvectors: K, the eigenvectors ``u_2 ... u_{K+1}`` (static); 0 means Q - 1 (for Q = 2, the
        Fiedler vector u_2 alone, as the paper's two-cluster case).
      iters, n_init: k-means settings (static).

    Returns:
      (N,) int32 cluster index per node.
    """
    affinity = jnp.asarray(affinity, jnp.float32)
    n = affinity.shape[0]
    if affinity.ndim != 2 or affinity.shape[1] != n:
        raise ValueError(f"affinity: expected a square (N, N) matrix, got shape {affinity.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= N = {n}, got {k}")
    kk = eigenvectors or max(k - 1, 1)
    if not 1 <= kk <= n - 1:
        raise ValueError(f"eigenvectors: expected 1 <= K <= N - 1 = {n - 1}, got {kk}")
    b, _ = laplacian_eigenvectors(affinity, kk)
    return kmeans(b, k, key, iters=iters, n_init=n_init).labels
