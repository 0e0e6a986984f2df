"""Inconsistency–diversity curves and SRAS (seed 000, HICCNN, §4.1 and §4.3 eq. 13-15)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.metrics._common import (
    check_leading,
    check_maps,
    check_nonempty,
    check_rank,
    chunked_map,
    chunked_sum,
    masked_mean,
    normalised_entropy,
    upsample,
)

DEFAULT_TAUS = tuple(float(t) for t in np.round(np.linspace(0.1, 0.9, 9), 3))


@partial(jax.jit, static_argnames=("chunk", "assign"))
def _inc_div(maps, part_masks, object_mask, taus, chunk, assign):
    size = part_masks.shape[1:3]
    # Normalising each filter by its data-set maximum puts every filter on one [0, 1] scale, so one
    # tau means the same relative activation level for all filters (seed 000 leaves the scale open).
    scale = jnp.max(maps, axis=(0, 1, 2))
    scale = jnp.where(scale > 0, scale, 1.0)

    def one_chunk(valid, m, parts, obj):
        up = upsample(m / scale, size)
        n, h, w, c = up.shape
        up = up.reshape(n, h * w, c)
        obj = obj.reshape(n, h * w).astype(jnp.float32)
        concepts = jnp.concatenate(
            [parts.reshape(n, h * w, -1).astype(jnp.float32), 1.0 - obj[..., None]], -1
        )
        v = valid.astype(jnp.float32)

        def at(tau):
            fired = (up >= tau).astype(jnp.float32)
            inter = jnp.einsum("npc,npk->nck", fired, concepts)  # (n, C, K+1)
            if assign == "argmax":
                hit = inter.sum(-1, keepdims=True) > 0
                inter = jax.nn.one_hot(jnp.argmax(inter, -1), inter.shape[-1]) * hit
            covered = (jnp.max(up, -1) >= tau).astype(jnp.float32)
            cov = (covered * obj).sum(-1) / jnp.maximum(obj.sum(-1), 1.0)
            return jnp.einsum("n,nck->ck", v, inter), (v * cov).sum()

        return jax.vmap(at)(taus)

    counts, coverage = chunked_sum(one_chunk, (maps, part_masks, object_mask), chunk)
    fires = counts.sum(-1) > 0  # (T, C)
    inconsistency = masked_mean(normalised_entropy(counts), fires, axis=-1)
    return counts, inconsistency, coverage / maps.shape[0], fires


def inconsistency_diversity_curve(
    maps: jax.Array,
    part_masks: jax.Array,
    object_mask: jax.Array,
    taus=DEFAULT_TAUS,
    assign: str = "mass",
    chunk: int = 64,
) -> dict:
    """Inconsistency and diversity of a layer's filters over activation thresholds τ (seed 000 §4.1).

    Each filter is divided by its data-set maximum, upsampled (bilinear) to mask size and binarised at
    ``>= tau``. Concepts are the K parts plus the background (outside ``object_mask``), so a filter
    that fires on background as often as on a part counts as inconsistent.

    * Inconsistency (lower is better): the filter's activation distribution over concepts, pooled over
      the data set, as a normalised entropy (divided by log(K+1)); averaged over filters that fire at
      all at that τ. ``assign="mass"`` (default) counts fired pixels in each concept;
      ``assign="argmax"`` counts images, each assigned to the concept with the most fired pixels
      (icCNN-style per-image assignment).
    * Diversity (higher is better): fraction of object pixels covered by at least one filter,
      averaged over images.

    Args:
      maps: (N, h, w, C) non-negative feature maps.
      part_masks: (N, H, W, K) binary part masks.
      object_mask: (N, H, W) binary object masks (no image may have an empty one).
      taus: activation thresholds in [0, 1] on the per-filter-max scale.
      assign: "mass" or "argmax".
      chunk: images per streamed chunk.

    Returns:
      dict with (T,) ``inconsistency``, ``diversity``, ``taus``, (T, C) ``fires`` and the (T, C, K+1)
      concept ``counts`` (last concept = background).
    """
    n = check_maps("maps", maps, 4, "(N, h, w, C)")[0]
    check_rank("part_masks", part_masks, 4, "(N, H, W, K)")
    check_leading("part_masks", part_masks, (n,), "maps' N")
    check_rank("object_mask", object_mask, 3, "(N, H, W)")
    check_leading("object_mask", object_mask, np.shape(part_masks)[:3], "part_masks' (N, H, W)")
    check_nonempty("object_mask", object_mask, (1, 2))
    if assign not in ("mass", "argmax"):
        raise ValueError(f"assign: unknown value {assign!r}; expected one of ['mass', 'argmax']")
    taus = jnp.asarray(taus, jnp.float32)
    counts, inc, div, fires = _inc_div(
        jnp.asarray(maps, jnp.float32),
        jnp.asarray(part_masks),
        jnp.asarray(object_mask),
        taus,
        int(chunk),
        assign,
    )
    return {"taus": taus, "inconsistency": inc, "diversity": div, "fires": fires, "counts": counts}


@partial(jax.jit, static_argnames=("chunk",))
def _sras(maps, masks, chunk):
    size = masks.shape[1:3]

    def one_chunk(m, k):
        up = upsample(m, size)
        n, h, w, c = up.shape
        up = up.reshape(n, h * w, c)
        inside = jnp.einsum("npc,npk->nkc", up, k.reshape(n, h * w, -1).astype(jnp.float32))
        total = up.sum(1)[:, None, :]
        active = total > 0
        ratio = jnp.where(active, inside / jnp.where(active, total, 1.0), 0.0)
        return masked_mean(ratio, jnp.broadcast_to(active, ratio.shape), axis=-1)

    return chunked_map(one_chunk, (maps, masks), chunk)


def sras(maps: jax.Array, part_masks: jax.Array, chunk: int = 64) -> jax.Array:
    """Standard-Region Activation Score per image and part (seed 000 eq. 13-15).

    ``SRAS = 1/C Σ_c <F_c, M> / ||F_c||_1`` with F bilinearly upsampled to the mask size. Channels with
    zero total activation in an image have no distribution and are left out of that image's mean
    (eq. 15 would divide by zero); an image with no active channel scores 0.

    Args:
      maps: (N, h, w, C) non-negative feature maps, or heatmaps given as (N, H, W) (one channel).
      part_masks: (N, H, W, K) binary masks (or (N, H, W) for a single region).

    Returns:
      (N, K) scores in [0, 1] ((N,) for a single (N, H, W) mask).
    """
    if np.ndim(maps) == 3:
        maps = jnp.asarray(maps)[..., None]
    n = check_maps("maps", maps, 4, "(N, h, w, C) or (N, H, W)")[0]
    single = np.ndim(part_masks) == 3
    if single:
        part_masks = jnp.asarray(part_masks)[..., None]
    check_rank("part_masks", part_masks, 4, "(N, H, W, K) or (N, H, W)")
    check_leading("part_masks", part_masks, (n,), "maps' N")
    if float(jnp.min(maps)) < 0:
        raise ValueError("maps: SRAS expects non-negative maps (post-ReLU features or [0, 1] heatmaps)")
    out = _sras(jnp.asarray(maps, jnp.float32), jnp.asarray(part_masks), int(chunk))
    return out[:, 0] if single else out
