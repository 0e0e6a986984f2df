"""Localisation of heatmaps against boxes and masks.

* Energy pointing game (seed 003 §4.3.1, eq. 6, after Iwana et al. 2019), with the mean over energies
  and the "lower" / "higher" split (Table 3).
* Classic pointing game (Zhang et al.; Quantus ``PointingGame``) and relevance mass accuracy
  (Arras et al.; Quantus ``RelevanceMassAccuracy``; Score-CAM's "energy-based pointing game").
* Localisation IoU with the mean + 1·std binarisation (seed 003 §A.5).
* DCNE threshold sweep and mean max-IoU over a set of maps per expert mask (seed 001 §4.2,
  shared/notes/reference-code.md §3).

Heatmaps are (N, H, W), masks (N, H, W) binary (or (N, H, W, K) for several features).
Empty masks raise a ValueError by default; ``empty="ignore"`` drops those images from every mean
and sets their per-image scores to NaN (as Quantus does), with ``valid`` saying which are which.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import (
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_real,
    check_same_shape,
    check_sequence,
)
from jinterp.metrics._common import check_maps, check_masks, check_nonempty, check_rank, masked_mean

DEFAULT_ENERGIES = tuple(float(e) for e in np.round(np.arange(1, 21) * 0.05, 2))  # seed 003: 0.05 ... 1.0
DCNE_THRESHOLDS = (0, 25, 50, 100, 150, 200, 250)  # DCNE score_explanations.py, uint8 scale


def _check_pair(heatmaps, masks, empty, mask_axes=(1, 2)):
    """(N, H, W) finite heatmaps, N >= 1; masks of the same shape, finite, in [0, 1]; ``empty``."""
    shape = check_maps("heatmaps", heatmaps, 3, "(N, H, W)")
    check_same_shape("masks", masks, shape, "heatmaps")
    check_masks("masks", masks)
    check_choice("empty", empty, ("error", "ignore"))
    if empty == "error":
        check_nonempty("masks", masks, mask_axes)
    return shape


def boxes_to_masks(boxes: jax.Array, size: tuple[int, int], box_format: str = "tfds") -> jax.Array:
    """Rasterise boxes to (N, H, W) bool masks (a pixel is inside if its centre is).

    Args:
      boxes: (N, 4) boxes. ``box_format="tfds"``: normalised (ymin, xmin, ymax, xmax) in [0, 1], the
        ``tfds.features.BBoxFeature`` layout; ``"yxyx"``: the same in pixels; ``"xyxy"``: pixel
        (xmin, ymin, xmax, ymax) (torchvision / pytorch-grad-cam).
      size: (H, W).
    """
    check_rank("boxes", boxes, 2, "(N, 4)")
    if np.shape(boxes)[1] != 4:
        raise ValueError(f"boxes: expected shape (N, 4), got {np.shape(boxes)}")
    check_real("boxes", boxes)
    check_finite("boxes", boxes)
    if box_format not in ("tfds", "yxyx", "xyxy"):
        raise ValueError(
            f"box_format: unknown value {box_format!r}; expected one of ['tfds', 'yxyx', 'xyxy']"
        )
    b = jnp.asarray(boxes, jnp.float32)
    h, w = size
    if box_format == "xyxy":
        b = b[:, jnp.array([1, 0, 3, 2])]
    if box_format == "tfds":
        b = b * jnp.array([h, w, h, w], jnp.float32)
    ys = jnp.arange(h) + 0.5
    xs = jnp.arange(w) + 0.5
    iny = (ys[None] >= b[:, 0:1]) & (ys[None] <= b[:, 2:3])
    inx = (xs[None] >= b[:, 1:2]) & (xs[None] <= b[:, 3:4])
    return iny[:, :, None] & inx[:, None, :]


@jax.jit
def _energy_pointing(heat, mask, energies):
    n = heat.shape[0]
    flat = heat.reshape(n, -1)
    m = mask.reshape(n, -1).astype(jnp.float32)
    n_pos = (flat > 0).sum(-1)  # (N,)
    ranked = -jnp.sort(-flat, axis=-1)  # descending

    def at(e):
        # eq. 6: the threshold keeps a fraction E of the positive pixels (ties kept together).
        k = jnp.clip(jnp.ceil(e * n_pos - 1e-6).astype(jnp.int32), 1, flat.shape[-1])
        tau = jnp.take_along_axis(ranked, (k - 1)[:, None], -1)
        sel = ((flat >= tau) & (flat > 0)).astype(jnp.float32)
        hits = (sel * m).sum(-1)
        return jnp.where(n_pos > 0, hits / jnp.maximum(sel.sum(-1), 1.0), 0.0)

    return jax.vmap(at, out_axes=1)(energies)  # (N, E)


def energy_pointing_game(
    heatmaps: jax.Array,
    masks: jax.Array | None = None,
    boxes: jax.Array | None = None,
    energies=DEFAULT_ENERGIES,
    box_format: str = "tfds",
    empty: str = "error",
) -> dict:
    """Pointing game over residual-energy levels (seed 003 §4.3.1 and eq. 6).

    For energy E the threshold τ keeps ``E = #(R >= τ) / #(R > 0)`` of the positive pixels; the kept
    pixels inside the object are hits, the others misses, and the pointing accuracy of an image is
    ``hits / (hits + misses)``. Accuracies are averaged over images (seed 003 does not say whether hits
    are pooled; per-image averaging weights every image equally). A heatmap with no positive pixel
    points nowhere and scores 0.

    Args:
      heatmaps: (N, H, W) relevance / saliency maps.
      masks: (N, H, W) binary object masks; or give ``boxes``.
      boxes: (N, 4) boxes, see ``boxes_to_masks``.
      energies: residual-energy levels, default 0.05, 0.10, ..., 1.0 (seed 003).
      box_format: layout of ``boxes``.
      empty: "error" (default) or "ignore" for images with an empty mask.

    Returns:
      dict with ``energies`` (E,), ``per_image`` (N, E), ``curve`` (E,) mean accuracy per energy,
      ``mean`` (mean over energies, seed 003 Table 1), ``lower`` / ``higher`` (mean over E <= 0.5 and
      E > 0.5, seed 003 Table 3) and ``valid`` (N,).
    """
    if (masks is None) == (boxes is None):
        raise ValueError("masks, boxes: give exactly one of masks (N, H, W) or boxes (N, 4)")
    if boxes is not None:
        check_rank("heatmaps", heatmaps, 3, "(N, H, W)")
        check_same_shape("boxes", boxes, (np.shape(heatmaps)[0], 4), "(N, 4) for the heatmaps' N")
        masks = boxes_to_masks(boxes, np.shape(heatmaps)[1:], box_format)
    _check_pair(heatmaps, masks, empty)
    for e in check_sequence("energies", energies):
        check_number("energies", e, 0.0, 1.0, open_low=True)
    energies = jnp.asarray(energies, jnp.float32)
    valid = jnp.asarray(masks).reshape(np.shape(masks)[0], -1).any(-1)
    per_image = _energy_pointing(jnp.asarray(heatmaps, jnp.float32), jnp.asarray(masks), energies)
    curve = masked_mean(per_image, jnp.broadcast_to(valid[:, None], per_image.shape), axis=0)
    low = energies <= 0.5 + 1e-6
    return {
        "energies": energies,
        "per_image": jnp.where(valid[:, None], per_image, jnp.nan),
        "curve": curve,
        "mean": curve.mean(),
        "lower": masked_mean(curve, low),
        "higher": masked_mean(curve, ~low),
        "valid": valid,
    }


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2 <= radius**2).astype(np.float32)


@partial(jax.jit, static_argnames=("tolerance",))
def _pointing(heat, mask, tolerance):
    n = heat.shape[0]
    m = mask.astype(jnp.float32)
    if tolerance > 0:
        k = jnp.asarray(_disk(tolerance))[:, :, None, None]
        m = jax.lax.conv_general_dilated(
            m[..., None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        m = (m[..., 0] > 0.5).astype(jnp.float32)
    flat = heat.reshape(n, -1)
    at_max = flat == flat.max(-1, keepdims=True)
    return jnp.any(at_max & (m.reshape(n, -1) > 0), -1).astype(jnp.float32)


def pointing_game(heatmaps: jax.Array, masks: jax.Array, tolerance: int = 0, empty: str = "error") -> dict:
    """Classic pointing game: a hit when the maximum of the heatmap lies on the mask.

    Ties count as a hit if any maximal pixel is on the mask (Quantus ``PointingGame``). ``tolerance``
    (pixels) grows the mask by a disk first (Zhang et al. used 15 px at 224 px).

    Returns:
      dict with ``per_image`` (N,) in {0, 1} (NaN for ignored empty masks), ``mean`` and ``valid``.
    """
    _check_pair(heatmaps, masks, empty)
    tolerance = check_int("tolerance", tolerance, low=0, high=max(np.shape(heatmaps)[1:]))
    valid = jnp.asarray(masks).reshape(np.shape(masks)[0], -1).any(-1)
    hit = _pointing(jnp.asarray(heatmaps, jnp.float32), jnp.asarray(masks), int(tolerance))
    return {"per_image": jnp.where(valid, hit, jnp.nan), "mean": masked_mean(hit, valid), "valid": valid}


def relevance_mass(heatmaps: jax.Array, masks: jax.Array, empty: str = "error") -> dict:
    """Relevance mass accuracy ``Σ_{p in mask} R_p / Σ_p R_p`` (Arras et al. 2022; Quantus).

    The same quantity is Score-CAM's "energy-based pointing game" and SRAS (seed 000 eq. 15) of a
    single-channel map. Raw values are summed (no abs), as Quantus does; an all-zero heatmap scores 0.

    Returns:
      dict with ``per_image`` (N,) (NaN for ignored empty masks), ``mean`` and ``valid``.
    """
    _check_pair(heatmaps, masks, empty)
    n = np.shape(heatmaps)[0]
    h = jnp.asarray(heatmaps, jnp.float32).reshape(n, -1)
    m = jnp.asarray(masks).reshape(n, -1)
    valid = m.any(-1)
    total = h.sum(-1)
    score = jnp.where(total != 0, (h * m).sum(-1) / jnp.where(total != 0, total, 1.0), 0.0)
    return {"per_image": jnp.where(valid, score, jnp.nan), "mean": masked_mean(score, valid), "valid": valid}


def _iou(a, b, axes):
    inter = (a & b).sum(axes)
    union = (a | b).sum(axes)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0)


def localization_iou(heatmaps: jax.Array, masks: jax.Array, k_std: float = 1.0, empty: str = "error") -> dict:
    """IoU of the heatmap region above ``mean + k_std * std`` (per image) with the mask (seed 003 §A.5).

    Returns:
      dict with ``per_image`` (N,) (NaN for ignored empty masks), ``mean`` and ``valid``.
    """
    _check_pair(heatmaps, masks, empty)
    k_std = check_number("k_std", k_std)
    h = jnp.asarray(heatmaps, jnp.float32)
    m = jnp.asarray(masks).astype(bool)
    thr = h.mean((1, 2), keepdims=True) + k_std * h.std((1, 2), keepdims=True)
    iou = _iou(h > thr, m, (1, 2))
    valid = m.any((1, 2))
    return {"per_image": jnp.where(valid, iou, jnp.nan), "mean": masked_mean(iou, valid), "valid": valid}


@jax.jit
def _dcne(maps, masks, thresholds):
    # zennit imgify: per-map min-max to [0, 255], cast to uint8 (truncation).
    lo = maps.min((2, 3), keepdims=True)
    hi = maps.max((2, 3), keepdims=True)
    img = jnp.floor((maps - lo) / jnp.where(hi > lo, hi - lo, 1.0) * 255.0)
    m = masks.astype(bool)  # (N, F, H, W)

    def at(t):
        b = img > t  # (N, M, H, W)
        inter = jnp.einsum("nmhw,nfhw->nmf", b.astype(jnp.float32), m.astype(jnp.float32))
        union = b.sum((2, 3))[:, :, None] + m.sum((2, 3))[:, None, :] - inter
        iou = jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)
        return iou.max(1)  # max over maps: (N, F)

    return jax.vmap(at)(thresholds)  # (T, N, F)


def mean_max_iou(maps: jax.Array, masks: jax.Array, thresholds=DCNE_THRESHOLDS) -> dict:
    """Mean max-IoU of a set of maps per expert mask, with DCNE's threshold sweep (seed 001 §4.2).

    Each map is min-max scaled to uint8 (zennit ``imgify``), binarised with ``> t`` for each t; for each
    feature mask the best-matching map's IoU is kept (max over maps), averaged over the images where
    that feature is annotated (DCNE's ``nanmean``), then over features. The reported threshold is the
    one maximising that average (DCNE ``select_threshold``).

    Args:
      maps: (N, M, H, W) M explanation maps per image (e.g. concept maps), any real scale.
      masks: (N, F, H, W) binary feature masks (all-zero = feature not annotated in that image).
      thresholds: uint8-scale thresholds, default DCNE's (0, 25, 50, 100, 150, 200, 250).

    Returns:
      dict with ``thresholds`` (T,), ``per_feature`` (T, F), ``average`` (T,), ``best_threshold``,
      ``best`` (the average at it), ``per_image`` (T, N, F) (NaN where a feature is absent).
    """
    n, _, h, w = check_maps("maps", maps, 4, "(N, M, H, W)")
    shape = check_rank("masks", masks, 4, "(N, F, H, W)")
    if shape[0] != n or shape[2:] != (h, w) or shape[1] == 0:
        raise ValueError(f"masks: expected shape ({n}, F >= 1, {h}, {w}) (as maps' N, H, W), got {shape}")
    check_masks("masks", masks)
    for t in check_sequence("thresholds", thresholds):
        check_number("thresholds", t)
    thresholds = jnp.asarray(thresholds, jnp.float32)
    best = _dcne(jnp.asarray(maps, jnp.float32), jnp.asarray(masks), thresholds)
    present = jnp.asarray(masks).astype(bool).any((2, 3))  # (N, F)
    if not bool(present.any()):
        raise ValueError("masks: every feature mask is empty; nothing to score")
    per_feature = masked_mean(best, jnp.broadcast_to(present, best.shape), axis=1)  # (T, F)
    feat_any = present.any(0)
    average = masked_mean(per_feature, jnp.broadcast_to(feat_any, per_feature.shape), axis=1)
    i = jnp.argmax(average)
    return {
        "thresholds": thresholds,
        "per_feature": per_feature,
        "average": average,
        "best_threshold": thresholds[i],
        "best": average[i],
        "per_image": jnp.where(present[None], best, jnp.nan),
    }
