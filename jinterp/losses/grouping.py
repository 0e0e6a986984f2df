"""icCNN filter grouping: similarity (HICCNN eq. 1), grouping loss (eq. 2-4), multi-category loss (eq. 5-6).

Papers: Shen et al., "Interpretable Compositional CNNs" (IJCAI'21, icCNN), restated as HICCNN
§3.1 (shared/seeds/000_*). Where the paper and the official icCNN code (``ada-shen/icCNN``,
shared/notes/reference-code.md §1) differ, we follow the code and say so:

* eq. 1 (between epochs): s_ij = cov_ij / (sqrt(cov_ii cov_jj) + 1e-5) + 1, a Pearson correlation
  over (image, position) samples of the post-ReLU map, centred per (channel, position) by the dataset
  mean; the paper's variant (spatially average-pooled maps) is ``update_stats(stats, fmap.mean((1, 2),
  keepdims=True))`` with ``spatial_shape=(1, 1)``.
* eq. 2-4 (per batch): the same Pearson+1, but per image, centred by an EMA (decay 0.95, first update
  takes the batch mean) of the batch-mean map, summed over positions; the ratio of batch means of
  within-group to all-column sums. The code has no epsilon in the Pearson denominator, so a dead
  (all-zero) channel gives NaN; here a channel with zero centred energy gets correlation 0 (s = 1).
* eq. 5-6: z_k is the group mean activation (eq. 6) L2-normalised over groups (code: ``+1e-5``);
  ``activation="code"`` uses the code's |A_k| * sum_{j in A_k} mean(x_j) / C instead.

Group assignments are int arrays ``(C,)`` of ids in [0, K) with K static; masks are built in jit.
"""

import jax
import jax.numpy as jnp

from jinterp.checks import check_choice

# icCNN utils.Cluster_loss / Multiclass_loss: denominators get + 1e-5.
RATIO_EPS = 1e-5


# ----------------------------------------------------------------------------- eq. 1 (between epochs)


def init_stats(num_channels: int, spatial_shape: tuple[int, int]) -> dict:
    """Empty streaming statistics for :func:`similarity` of a (N, h, w, C) map with h, w = spatial_shape."""
    h, w = spatial_shape
    return {
        "count": jnp.zeros((), jnp.float32),
        "mean": jnp.zeros((h, w, num_channels), jnp.float32),
        "m2": jnp.zeros((num_channels, num_channels), jnp.float32),
    }


def update_stats(stats: dict, fmap: jax.Array) -> dict:
    """Add a batch (B, h, w, C) to the statistics (jittable; Chan et al.'s parallel co-moment update).

    ``m2`` is sum over positions u and images n of (x_nu - mu_u)(x_nu - mu_u)^T, with mu_u the running
    per-(position, channel) mean; merging batch-centred moments avoids the cancellation of a raw
    sum-of-squares accumulator in float32 over a whole data set.
    """
    fmap = jnp.asarray(fmap, jnp.float32)
    if fmap.ndim != 4 or fmap.shape[1:] != stats["mean"].shape:
        raise ValueError(
            f"fmap: expected shape (B, {', '.join(map(str, stats['mean'].shape))}), got {fmap.shape}"
        )
    c = fmap.shape[-1]
    n_b = jnp.float32(fmap.shape[0])
    batch_mean = fmap.mean(0)
    xc = (fmap - batch_mean).reshape(-1, c)
    n_a = stats["count"]
    n = n_a + n_b
    delta = (batch_mean - stats["mean"]).reshape(-1, c)
    m2 = stats["m2"] + xc.T @ xc + (n_a * n_b / n) * (delta.T @ delta)
    mean = stats["mean"] + (n_b / n) * (batch_mean - stats["mean"])
    return {"count": n, "mean": mean, "m2": m2}


def similarity(stats: dict, eps: float = 1e-5) -> jax.Array:
    """Filter similarity s_ij in [0, 2] (HICCNN eq. 1; icCNN ``offline_spectral_cluster``), shape (C, C)."""
    cov = stats["m2"] / jnp.maximum(stats["count"], 1.0)
    sd = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 0.0))
    return cov / (sd[:, None] * sd[None, :] + eps) + 1.0


# ----------------------------------------------------------------------------- eq. 2-4 (per batch)


def update_ema(ema: jax.Array, count: jax.Array, fmap: jax.Array, decay: float = 0.95):
    """icCNN ``EMA_FM``: EMA of the batch-mean map (h, w, C); the first update takes the batch mean.

    Returns ``(new_ema, count + 1)``. No gradient flows into the EMA (the code updates it under no_grad).
    """
    d = jnp.where(count == 0, 0.0, decay)
    new = (1.0 - d) * jax.lax.stop_gradient(fmap).mean(0) + d * ema
    return new, count + 1


def _safe_rsqrt(d: jax.Array) -> jax.Array:
    """1/sqrt(d) where d > 0 and 0 elsewhere, with finite gradients at d == 0 (dead channels)."""
    pos = d > 0
    return jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, d, 1.0)), 0.0)


def mean_correlation(fmap: jax.Array, center: jax.Array, sample_weight: jax.Array | None = None) -> jax.Array:
    """(1/B) sum_b w_b corr_b with corr_b = Pearson+1 of image b's channels over positions (icCNN SMGBlock).

    corr_b,ij = L_b,ij / sqrt(L_b,ii L_b,jj) + 1, L_b = (x_b - m)^T (x_b - m) summed over positions,
    m = ``center`` (h, w, C). Computed as one (C x B*hw) GEMM without materialising (B, C, C).
    """
    b, c = fmap.shape[0], fmap.shape[-1]
    xc = (fmap - center).reshape(b, -1, c)
    xs = xc * _safe_rsqrt(jnp.sum(xc * xc, axis=1))[:, None, :]
    w = jnp.ones((b,), fmap.dtype) if sample_weight is None else jnp.asarray(sample_weight, fmap.dtype)
    corr = jnp.einsum("bui,buj->ij", xs * w[:, None, None], xs)
    # A dead channel contributes 0 correlation; +1 on every entry (including its diagonal) as the code.
    return (corr + w.sum()) / b


def group_ratios(corr: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
    """(K,) S_within,k / (S_all,k + 1e-5) (HICCNN eq. 3-4) from a (C, C) similarity and group ids (C,)."""
    g = jax.nn.one_hot(groups, num_groups, dtype=corr.dtype)  # (C, K)
    within = jnp.einsum("ik,ij,jk->k", g, corr, g)
    total = g.T @ corr.sum(1)
    return within / (total + RATIO_EPS)


def group_loss(
    fmap: jax.Array,
    center: jax.Array,
    groups: jax.Array,
    num_groups: int,
    sample_weight: jax.Array | None = None,
) -> jax.Array:
    """Grouping loss L_group = -sum_k S_within,k / S_all,k (HICCNN eq. 2-4, icCNN ``Cluster_loss``).

    Args:
      fmap: (B, h, w, C) post-ReLU map of the target layer (gradients flow into it).
      center: (h, w, C) mean map (the EMA of :func:`update_ema`).
      groups: (C,) int group id of each filter, in [0, num_groups).
      num_groups: K (static).
      sample_weight: optional (B,) weights; icCNN single-category uses 1 - label (only the object class
        counts) while still dividing by the full batch size.

    Returns:
      Scalar in [-K, 0]; -K when every group is perfectly correlated inside and anti-correlated outside.
    """
    return -jnp.sum(group_ratios(mean_correlation(fmap, center, sample_weight), groups, num_groups))


def group_activations(
    fmap: jax.Array, groups: jax.Array, num_groups: int, activation: str = "mean"
) -> jax.Array:
    """(B, K) group activations z_k (HICCNN eq. 6) before normalisation.

    ``"mean"``: eq. 6, the mean over the group's filters and positions. ``"code"``: icCNN
    ``Multiclass_loss``, mean over (C, positions) of mask_num[k] @ x = |A_k| sum_{j in A_k} mean(x_j) / C.
    """
    check_choice("activation", activation, ("mean", "code"))
    g = jax.nn.one_hot(groups, num_groups, dtype=fmap.dtype)
    sums = fmap.mean((1, 2)) @ g  # (B, K): sum over the group of spatial means
    size = g.sum(0)
    if activation == "mean":
        return sums / jnp.maximum(size, 1.0)
    return sums * size / fmap.shape[-1]


def multi_loss(
    fmap: jax.Array,
    labels: jax.Array,
    groups: jax.Array,
    num_groups: int,
    num_classes: int,
    activation: str = "mean",
) -> jax.Array:
    """Multi-category loss L_multi = -sum_c sum_{p,q in I_c} s_pq / sum_{p in I_c, q in I} s_pq (eq. 5-6).

    s_pq = z^(p) . z^(q) with z^(p) the group-activation vector of image p, L2-normalised over the K
    groups (cosine). As the code, each class term is num_c / (den_c + 1e-5) with batch means (1/B^2).
    Classes absent from the batch contribute 0. Needs B > 1 to carry gradient (B = 1 gives -1).

    Args:
      fmap: (B, h, w, C) map. labels: (B,) int classes. groups: (C,) ids. num_groups, num_classes: static.
      activation: ``"mean"`` (eq. 6) or ``"code"`` (icCNN); see :func:`group_activations`.
    """
    z = group_activations(fmap, groups, num_groups, activation)
    z = z / (jnp.linalg.norm(z, axis=1, keepdims=True) + RATIO_EPS)
    s = z @ z.T  # (B, B)
    y = jax.nn.one_hot(labels, num_classes, dtype=fmap.dtype)  # (B, num_classes)
    b2 = jnp.float32(fmap.shape[0] ** 2)
    num = jnp.einsum("pc,pq,qc->c", y, s, y) / b2
    den = y.T @ s.sum(1) / b2
    return -jnp.sum(num / (den + RATIO_EPS))


def block_groups(num_channels: int, num_groups: int) -> jax.Array:
    """Contiguous-block group ids (C,) used before the first clustering."""
    return (jnp.arange(num_channels) * num_groups // num_channels).astype(jnp.int32)
