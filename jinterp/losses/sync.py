"""Synchronization-inspired losses: local activation consistency (eq. 3-5) and synchronization (eq. 6-9).

Paper: Han, Qin, Liu, Böhm, Shao, "Synchronization-inspired Interpretable Neural Networks", IEEE TNNLS
35(11), 2024 (shared/seeds/002_*). No code was released (reference-code.md §2); our readings:

* Coordinates x_m of the h x w map are normalised to [0, 1] (a 1-cell map sits at 0.5), so the
  neighbour radius eps = 0.03 (§IV-A5) is a fraction of the map side, independent of its resolution.
* x_bar(f) = E_{m ~ q}(x_m) with q = softmax(a(f)) over positions (eq. 5): a soft-argmax, differentiable.
* Eq. 4 uses exp(-dist / tau). The paper has no tau; with [0, 1] coordinates and tau = 1 the target
  would be nearly flat (dist <= sqrt 2), so ``tau=None`` measures eq. 4's distance in feature-map cells
  (tau = one cell, i.e. the paper's formula on integer cell coordinates). The target p(x_m | x_bar) is
  a stop-gradient target (cross-entropy to a fixed distribution, eq. 3).
* Eq. 6-9 are applied per image (each image is one "sampling" of the neurons' functions, §III-C):
  Nb_eps(f_i) = {f_j : ||x_bar_i - x_bar_j|| <= eps} includes f_i itself (eq. 1 of SynC), is a hard,
  gradient-free division, and q(f_j | f_i) = softmax_j(-dist) runs over all filters (self included).
* Reductions: eq. 3 averages over filters (1/N); eq. 6 sums over filters, which would scale with the
  width of the layer, so L_sync is averaged over filters as well. Both are averaged over images.

Defaults (§IV-A5): eps = 0.03, lambda1 = 0.2 (L_lac), lambda2 = 0.1 (L_sync), both halved for ResNet.
"""

import functools

import jax
import jax.numpy as jnp

EPS = 0.03  # §IV-A5 neighbour radius
LAMBDA_LAC = 0.2  # §IV-A5 lambda1 (VGG); halved for ResNet
LAMBDA_SYNC = 0.1  # §IV-A5 lambda2 (VGG); halved for ResNet


def coordinates(h: int, w: int) -> jax.Array:
    """(h*w, 2) (row, col) cell coordinates normalised to [0, 1], row-major like ``reshape(h*w)``."""
    ys = jnp.linspace(0.0, 1.0, h) if h > 1 else jnp.full((1,), 0.5)
    xs = jnp.linspace(0.0, 1.0, w) if w > 1 else jnp.full((1,), 0.5)
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
    return jnp.stack([yy.ravel(), xx.ravel()], axis=-1)


def _float(x: jax.Array) -> jax.Array:
    """At least float32 (bf16 maps are promoted; float64 stays float64 for gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _safe_norm(d: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis with a zero (not NaN) gradient at 0 (self-distances)."""
    sq = jnp.sum(d * d, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def pairwise_distances(positions: jax.Array) -> jax.Array:
    """(..., C, C) Euclidean distances between positions (..., C, 2), zero diagonal, NaN-free gradients.

    Uses |a|^2 + |b|^2 - 2 a.b (one batched matmul; 2x faster than a (..., C, C, 2) difference tensor on
    CPU). With coordinates in [0, 1] the float32 rounding of sq is ~1e-7, far below eps^2 = 9e-4.
    """
    n = jnp.sum(positions * positions, -1)
    sq = n[..., :, None] + n[..., None, :] - 2.0 * jnp.einsum("...id,...jd->...ij", positions, positions)
    c = positions.shape[-2]
    sq = jnp.maximum(sq, 0.0) * (1.0 - jnp.eye(c, dtype=sq.dtype))
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def expected_positions(fmap: jax.Array) -> jax.Array:
    """x_bar(f) per image and filter, (B, C, 2) in [0, 1]: soft-argmax under q = softmax(a) (eq. 5)."""
    b, h, w, c = fmap.shape
    q = jax.nn.softmax(_float(fmap).reshape(b, h * w, c), axis=1)
    return jnp.einsum("bmc,md->bcd", q, coordinates(h, w))


def lac_loss(fmap: jax.Array, tau: float | None = None) -> jax.Array:
    """Local activation consistency L_lac (eq. 3-5), averaged over filters and images.

    L_lac = -(1/N) sum_f sum_m p(x_m | x_bar) log q(x_m), p = softmax_m(-dist(x_m, x_bar) / tau) (eq. 4,
    stop-gradient), q = softmax_m(a_m) (eq. 5).

    Args:
      fmap: (B, h, w, C) map of the interpretable layer.
      tau: distance scale in normalised units; ``None`` = one cell, 1 / (max(h, w) - 1).
    """
    b, h, w, c = fmap.shape
    if tau is None:
        tau = 1.0 / max(h - 1, w - 1, 1)
    a = _float(fmap).reshape(b, h * w, c)
    log_q = jax.nn.log_softmax(a, axis=1)
    coords = coordinates(h, w)
    xbar = jnp.einsum("bmc,md->bcd", jnp.exp(log_q), coords)
    dist = _safe_norm(coords[None, :, None, :] - xbar[:, None, :, :])  # (B, hw, C)
    p = jax.lax.stop_gradient(jax.nn.softmax(-dist / tau, axis=1))
    return -jnp.mean(jnp.sum(p * log_q, axis=1))


def neighbours(positions: jax.Array, eps: float = EPS) -> jax.Array:
    """Boolean eps-graph (..., C, C) of filters whose positions are within ``eps`` (eq. 1; self included)."""
    return pairwise_distances(positions) <= eps


def sync_loss_from_positions(positions: jax.Array, eps: float = EPS) -> jax.Array:
    """L_sync (eq. 6-9) from activation positions (B, C, 2), averaged over filters and images.

    Per image: -sum_{j in Nb(i)} (1/|Nb(i)|) log q(f_j | f_i), q(f_j | f_i) = softmax_j(-dist(x_bar_i,
    x_bar_j)) (eq. 8). The neighbourhood is gradient-free; the pull on neighbours (dist term of eq. 9)
    and the push on all filters (log-sum-exp term) both act through the positions.
    """
    dist = pairwise_distances(positions)  # (B, C, C)
    nb = jax.lax.stop_gradient((dist <= eps).astype(dist.dtype))
    p = nb / nb.sum(-1, keepdims=True)  # eq. 7; |Nb| >= 1 (self)
    log_q = jax.nn.log_softmax(-dist, axis=-1)
    return -jnp.mean(jnp.sum(p * log_q, axis=-1))


def sync_loss(fmap: jax.Array, eps: float = EPS) -> jax.Array:
    """L_sync (eq. 6-9) of a (B, h, w, C) map; positions from :func:`expected_positions`."""
    return sync_loss_from_positions(expected_positions(fmap), eps)


@functools.partial(jax.jit, static_argnames=("max_iters",))
def modules(fmaps: jax.Array, eps: float = EPS, max_iters: int | None = None) -> jax.Array:
    """Synchronized modules: connected components of the filters' eps-graph (for analysis, §III-C).

    Each filter is represented by its positions over the images of ``fmaps`` (B, h, w, C), P_f =
    (x_bar_f^1, ..., x_bar_f^B); two filters are eps-neighbours when their root-mean-square position
    distance over images, ||P_f - P_g|| / sqrt(B), is <= eps (so eps keeps its per-image meaning).
    Components come from min-label propagation on device (at most C rounds, stops when stable).

    Returns:
      (C,) int32 module id per filter, numbered 0..M-1 in order of each module's lowest filter index.
    """
    rms = jnp.sqrt(jnp.mean(pairwise_distances(expected_positions(fmaps)) ** 2, axis=0))
    return components(rms <= eps, max_iters)


def components(adjacency: jax.Array, max_iters: int | None = None) -> jax.Array:
    """Connected components of a symmetric boolean (C, C) graph; ids 0..M-1 by lowest member (jittable)."""
    c = adjacency.shape[0]
    adj = adjacency | jnp.eye(c, dtype=bool)
    big = jnp.iinfo(jnp.int32).max

    def body(carry):
        i, labels, _ = carry
        new = jnp.min(jnp.where(adj, labels[None, :], big), axis=1)
        return i + 1, new, jnp.any(new != labels)

    def cond(carry):
        i, _, changed = carry
        return changed & (i < (max_iters or c))

    _, labels, _ = jax.lax.while_loop(cond, body, (0, jnp.arange(c, dtype=jnp.int32), jnp.array(True)))
    roots = labels == jnp.arange(c)
    return (jnp.cumsum(roots) - 1)[labels].astype(jnp.int32)
