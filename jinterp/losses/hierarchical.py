"""HICCNN hierarchical loss: deep-group regions mask the shallow layer, which is grouped inside them.

Paper: "HICCNN: A Hierarchical Approach to Enhancing Interpretability in CNNs" §3.2-3.3, eq. 8-12,
Algorithm 1 (shared/seeds/000_*). No author code exists (reference-code.md §1 "HICCNN"); the paper
leaves most steps open, so this is our reading, step by step:

1. Regions (Alg. 1 l. 7-8): for each deep group A_k, the mean map of its filters is bilinearly
   upsampled to the shallow size, min-max normalised per image, and thresholded at ``threshold``
   (default 0.5, our choice: the paper only says "exceeding a threshold"). Masks carry no gradient:
   the paper builds them from "the deep feature maps of the previous training round".
2. Eq. 8: M_s^k = M_k * F_s, one masked shallow map per deep region.
3. Eq. 9, refining the deep grouping (``refine_deep=True``): F_refined = M_channel(C_deep, F_s), "the
   masking operation applied to the deep-layer feature map using the shallow features as guidance".
   Our reading: the guidance of rough deep group k is its masked shallow activity g_k = M_k *
   mean_c(F_s) (eq. 8 averaged over shallow channels), brought to the deep resolution; every deep
   filter j is scored by how much more of its activation mass lies under g_k than under a uniform map
   (lift_jk = (sum_x F_j g_k / sum_x F_j) / mean_x g_k, averaged over the data) and re-assigned to
   argmax_k lift_jk. A filter whose mass sits in its own group's region stays; one the correlation
   clustering misplaced moves to the region it actually fires in (:func:`refine_groups`).
4. Clustering inside regions (§3.2: "the shallow feature maps are then clustered within these
   regions"): between epochs, like icCNN's grouping, under the (refined) deep regions. For every region
   k the similarity of eq. 1 is accumulated over the masked shallow maps M_s^k and its shallow filters
   are spectrally clustered into ``num_subgroups`` clusters A_k1..A_kG -> ids (K, C_s). Doing it
   between epochs keeps the per-batch cost to one masked correlation per region. Algorithm 1 order:
   the deep layer is re-clustered first and the shallow statistics are gathered under the new regions
   (a second pass over the data), so subgroup row k always belongs to deep group k.
5. Eq. 10-12: every (region k, cluster g) is a cluster of eq. 10 with the icCNN ratio
   S_within/S_all (eq. 3-4, per-image Pearson+1 of M_s^k, EMA-centred as in icCNN) and weight
   F_normed,kg / sum F_normed, where F_kg is the mean activation per filter of cluster g inside region k
   over the batch. Eq. 11 and 12 both multiply by F_normed; we apply the normalised weight once (eq. 12)
   and treat it as a constant (stop-gradient) so the loss cannot shrink by moving activation between
   regions. The sign follows eq. 2 (the ratio is maximised): L_hier = -sum_kg w_kg S_within,kg/S_all,kg
   lies in [-1, 0].

Layer pairs (shallow, deep) per backbone are HICCNN §4 (``LAYER_PAIRS``).
"""

import jax
import jax.numpy as jnp

from jinterp.losses import grouping
from jinterp.ops import clustering

# HICCNN §4: "conv4-2 and conv5-2 layer in VGG-13 and ResNet-18, conv4-3 and conv5-3 layer in VGG-16,
# the third dense block and final dense block in DenseNet-121". ResNet conv4-2/conv5-2 are the last
# blocks of layer3/layer4 (= the stage outputs); DenseNet's final block is read after norm5+ReLU
# ("features", the icCNN target). VGG-11/19 and ResNet-34/50 follow the same rule (last conv of
# blocks 4 and 5); small_cnn uses the last layers of its 16 px and 8 px stages (at 64 px input).
_VGG_PAIRS = {
    11: ("conv4_2", "conv5_2"),
    13: ("conv4_2", "conv5_2"),
    16: ("conv4_3", "conv5_3"),
    19: ("conv4_4", "conv5_4"),
}
LAYER_PAIRS = {
    **{f"vgg{d}{bn}": pair for d, pair in _VGG_PAIRS.items() for bn in ("", "_bn")},
    **{f"resnet{d}": ("layer3", "layer4") for d in (18, 34, 50)},
    "densenet121": ("denseblock3", "features"),
    "small_cnn": ("conv4", "conv6"),
}


def region_masks(
    deep: jax.Array, groups: jax.Array, num_groups: int, size: tuple[int, int], threshold: float = 0.5
) -> jax.Array:
    """Binary region masks (B, K, h_s, w_s) of the deep groups at the shallow resolution (steps 1 above).

    Args:
      deep: (B, h_d, w_d, C_d) deep map. groups: (C_d,) deep group ids. num_groups: K (static).
      size: (h_s, w_s) shallow map size. threshold: on the per-image min-max normalised group map.
    """
    deep = jax.lax.stop_gradient(deep)
    g = jax.nn.one_hot(groups, num_groups, dtype=deep.dtype)
    gmap = deep @ (g / jnp.maximum(g.sum(0), 1.0))  # (B, h_d, w_d, K) group mean maps
    b = deep.shape[0]
    up = jax.image.resize(
        gmap, (b, *size, num_groups), "bilinear"
    )  # half-pixel centres (align_corners=False)
    lo = up.min((1, 2), keepdims=True)
    hi = up.max((1, 2), keepdims=True)
    norm = (up - lo) / jnp.where(
        hi > lo, hi - lo, 1.0
    )  # a constant (e.g. dead) group map gives an empty region
    return jnp.moveaxis((norm >= threshold) & (hi > lo), -1, 1).astype(deep.dtype)


def masked_maps(masks: jax.Array, shallow: jax.Array) -> jax.Array:
    """Eq. 8, M_s = M x F_s: (K, B, h_s, w_s, C_s) masked shallow maps, one per deep region."""
    return jnp.moveaxis(masks, 1, 0)[..., None] * shallow[None]


def init_stats(num_groups: int, num_channels: int, spatial_shape: tuple[int, int]) -> dict:
    """Per-region eq. 1 statistics of the masked shallow maps (leading axis K)."""
    one = grouping.init_stats(num_channels, spatial_shape)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_groups, *a.shape)), one)


def update_stats(
    stats: dict,
    deep: jax.Array,
    shallow: jax.Array,
    groups: jax.Array,
    num_groups: int,
    threshold: float = 0.5,
) -> dict:
    """Add a batch to the per-region statistics, with regions from the current deep ``groups`` (jittable)."""
    masked = masked_maps(region_masks(deep, groups, num_groups, shallow.shape[1:3], threshold), shallow)
    return jax.vmap(grouping.update_stats)(stats, masked)


def init_guidance(num_filters: int, num_groups: int) -> dict:
    """Empty eq. 9 statistics: summed lift (C_d, K) of every deep filter under every region's guidance."""
    return {"lift": jnp.zeros((num_filters, num_groups), jnp.float32), "count": jnp.zeros((), jnp.float32)}


def update_guidance(
    stats: dict,
    deep: jax.Array,
    shallow: jax.Array,
    groups: jax.Array,
    num_groups: int,
    threshold: float = 0.5,
    eps: float = 1e-8,
) -> dict:
    """Add a batch to the eq. 9 statistics (reading in the module docstring, step 3; jittable)."""
    deep = jnp.maximum(jnp.asarray(deep, jnp.float32), 0.0)
    shallow = jnp.asarray(shallow, jnp.float32)
    masks = region_masks(deep, groups, num_groups, shallow.shape[1:3], threshold)  # (B, K, h_s, w_s)
    guide = masks * shallow.mean(-1)[:, None]  # eq. 8 averaged over the shallow channels
    b, h, w, _ = deep.shape
    guide = jax.image.resize(guide, (b, num_groups, h, w), "linear")  # to the deep resolution
    share = jnp.einsum("bhwc,bkhw->bck", deep, guide) / (deep.sum((1, 2))[..., None] + eps)
    lift = share / (guide.mean((2, 3))[:, None, :] + eps)  # (B, C_d, K); 0 where a region is empty
    return {"lift": stats["lift"] + lift.sum(0), "count": stats["count"] + b}


def refine_groups(stats: dict, groups: jax.Array) -> jax.Array:
    """Eq. 9: each deep filter moves to the region with the highest mean lift (ties and filters that
    never fired keep their rough group) -> (C_d,) ids."""
    lift = stats["lift"] / jnp.maximum(stats["count"], 1.0)
    own = jnp.take_along_axis(lift, groups[:, None], axis=1)[:, 0]
    best = jnp.argmax(lift, axis=1)
    return jnp.where(jnp.max(lift, axis=1) > own, best, groups).astype(groups.dtype)


def recluster(
    stats: dict, num_subgroups: int, key: jax.Array, iters: int = 100, n_init: int = 10
) -> jax.Array:
    """Step 4: spectral clustering of the shallow filters inside every region -> ids (K, C_s)."""
    sims = jax.vmap(grouping.similarity)(stats)
    keys = jax.random.split(key, sims.shape[0])
    return jax.vmap(lambda s, k: clustering.spectral_clustering(s, num_subgroups, k, iters, n_init))(
        sims, keys
    )


def hier_loss(
    deep: jax.Array,
    shallow: jax.Array,
    groups: jax.Array,
    num_groups: int,
    subgroups: jax.Array,
    num_subgroups: int,
    center: jax.Array,
    threshold: float = 0.5,
    sample_weight: jax.Array | None = None,
) -> jax.Array:
    """Hierarchical loss L_hier (HICCNN eq. 8-12; reading in the module docstring).

    Args:
      deep: (B, h_d, w_d, C_d) deep map (no gradient flows through the masks).
      shallow: (B, h_s, w_s, C_s) shallow map (gradients flow into it).
      groups: (C_d,) deep group ids; num_groups: K (static).
      subgroups: (K, C_s) shallow cluster ids inside each region; num_subgroups: G (static).
      center: (K, h_s, w_s, C_s) EMA mean of the masked shallow maps (see :func:`update_center`).
      threshold: region threshold. sample_weight: optional (B,) as in ``grouping.group_loss``.

    Returns:
      Scalar in [-1, 0].
    """
    masked = masked_maps(region_masks(deep, groups, num_groups, shallow.shape[1:3], threshold), shallow)

    def per_region(m, c, sub):
        ratios = grouping.group_ratios(grouping.mean_correlation(m, c, sample_weight), sub, num_subgroups)
        onehot = jax.nn.one_hot(sub, num_subgroups, dtype=m.dtype)
        w = jnp.ones((m.shape[0],), m.dtype) if sample_weight is None else sample_weight
        per_filter = jnp.einsum("b,bhwc->c", w, m)  # activation mass of each filter in this region
        act = (per_filter @ onehot) / jnp.maximum(onehot.sum(0), 1.0)  # mean per filter of each cluster
        return ratios, act

    ratios, act = jax.vmap(per_region)(masked, center, subgroups)  # (K, G) each
    # Eq. 12 assumes post-ReLU maps; pre-activation taps (DenseNet's dense blocks) can have negative or
    # cancelling mass, so weights use the positive part and fall back to uniform when it is all zero.
    act = jnp.maximum(jax.lax.stop_gradient(act), 0.0)
    total = act.sum()
    weights = jnp.where(total > 0, act / jnp.where(total > 0, total, 1.0), 1.0 / act.size)
    return -jnp.sum(weights * ratios)


def update_center(
    center: jax.Array,
    count: jax.Array,
    deep: jax.Array,
    shallow: jax.Array,
    groups: jax.Array,
    num_groups: int,
    threshold: float = 0.5,
    decay: float = 0.95,
):
    """icCNN-style EMA (``grouping.update_ema``) of every region's masked shallow map; -> (center, count)."""
    masked = masked_maps(region_masks(deep, groups, num_groups, shallow.shape[1:3], threshold), shallow)
    new = jax.vmap(lambda c, m: grouping.update_ema(c, count, m, decay)[0])(center, masked)
    return new, count + 1
