"""Filter interpretability against part masks or landmarks (seed 002, §III-D, eq. 11-14).

Pipeline (Network Dissection / CSGCNN style, see shared/notes/reference-code.md §2):

1. a per-filter threshold ``T_f`` = the value at the top ``top_quantile`` of all of filter f's
   activations over the data set, computed on the *low-resolution* maps;
2. each map is bilinearly upsampled to the mask size and binarised, ``S_f^I = {A_f >= T_f and A_f > 0}``
   (a zero activation never counts as firing, so a dead filter fires nowhere);
3. ``IoU_{f,k}^I = |S_f^I ∩ S_k^I| / |S_f^I ∪ S_k^I|`` for every filter, image and part, streamed over
   chunks of images so the full-resolution maps never exist for the whole data set at once;
4. filter f is assigned to part k in image I when ``IoU > phi`` and the four metrics follow.

Default ``top_quantile=0.3`` is CSGCNN's evaluation code (``threshold_probability=0.3``), which seed 002
says it used; Network Dissection uses 0.005. ``phi=0.2`` is seed 002's assigning threshold for animal
parts (§IV-A.5).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import check_int, check_number
from jinterp.metrics._common import (
    check_leading,
    check_maps,
    check_masks,
    check_rank,
    chunked_map,
    masked_mean,
    normalised_entropy,
    upsample,
)

DEFAULT_TOP_QUANTILE = 0.3  # CSGCNN activmap.py; Network Dissection: 0.005
DEFAULT_PHI = 0.2  # seed 002 §IV-A.5, animal part data sets (0.04 for Broden)


def _check_fraction(argument, value, low=0.0, high=1.0):
    check_number(argument, value, low, high, open_low=True)


@partial(jax.jit, static_argnames=("top_quantile",))
def _thresholds(maps, top_quantile):
    # Bisection on the value instead of jnp.quantile: XLA:CPU sorts ~50x slower than NumPy, and 32
    # counting passes over the maps pin the threshold to float resolution (2^-32 of the range).
    flat = maps.reshape(-1, maps.shape[-1])
    target = top_quantile * flat.shape[0]

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = (flat >= mid).sum(0) > target
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    _, hi = jax.lax.fori_loop(0, 32, halve, (flat.min(0), flat.max(0)))
    return hi


def filter_thresholds(maps: jax.Array, top_quantile: float = DEFAULT_TOP_QUANTILE) -> jax.Array:
    """Per-filter activation threshold over a data set (Network Dissection's ``T_k``).

    Args:
      maps: (N, h, w, C) feature maps of the whole evaluation set (low resolution).
      top_quantile: fraction of each filter's activations (over all images and positions) that lie
        above the threshold: 0.3 as in CSGCNN's code (default), 0.005 as in Network Dissection.

    Returns:
      (C,) thresholds ``T_f``: the largest value with at most ``top_quantile`` of the activations at or
      above it (to float resolution).
    """
    check_maps("maps", maps, 4, "(N, h, w, C)")
    _check_fraction("top_quantile", top_quantile)
    return _thresholds(jnp.asarray(maps, jnp.float32), float(top_quantile))


@partial(jax.jit, static_argnames=("chunk",))
def _part_iou(maps, masks, thresholds, chunk):
    size = masks.shape[1:3]

    def one_chunk(m, k):
        up = upsample(m, size)
        fired = ((up >= thresholds) & (up > 0)).astype(jnp.float32)
        n, h, w, c = fired.shape
        fired = fired.reshape(n, h * w, c)
        parts = k.reshape(n, h * w, -1).astype(jnp.float32)
        inter = jnp.einsum("npc,npk->nck", fired, parts)
        union = fired.sum(1)[:, :, None] + parts.sum(1)[:, None, :] - inter
        return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)

    return chunked_map(one_chunk, (maps, masks), chunk)


def part_iou(maps: jax.Array, part_masks: jax.Array, thresholds: jax.Array, chunk: int = 64) -> jax.Array:
    """IoU of every filter's binarised, upsampled map with every part mask (seed 002 §III-D).

    Args:
      maps: (N, h, w, C) feature maps.
      part_masks: (N, H, W, K) binary part masks (K parts on the last axis), at image resolution.
      thresholds: (C,) per-filter thresholds (``filter_thresholds``).
      chunk: images per streamed chunk (memory ~ chunk * H * W * C floats).

    Returns:
      (N, C, K) IoU; 0 where both the filter region and the part are empty.
    """
    n, _, _, c = check_maps("maps", maps, 4, "(N, h, w, C)")
    check_rank("part_masks", part_masks, 4, "(N, H, W, K)")
    check_leading("part_masks", part_masks, (n,), "maps' N")
    if np.shape(thresholds) != (c,):
        raise ValueError(f"thresholds: expected shape ({c},) (one per filter), got {np.shape(thresholds)}")
    check_masks("part_masks", part_masks)
    check_maps("thresholds", thresholds, 1, "(C,)")
    chunk = check_int("chunk", chunk, low=1)
    return _part_iou(
        jnp.asarray(maps, jnp.float32), jnp.asarray(part_masks), jnp.asarray(thresholds), int(chunk)
    )


@jax.jit
def metrics_from_assignment(assigned: jax.Array) -> dict:
    """Interp / Stability / Purity / Diversity (seed 002 eq. 11-14) from a filter→part assignment.

    Args:
      assigned: (N, C, K) bool, ``assigned[I, f, k] = IoU^I_{f,k} > phi`` (or, for landmarks,
        ``Sim > threshold``).

    Returns:
      dict with per-filter ``interp`` (C,) (eq. 11, higher is better), ``stability`` (C,) (eq. 12, the
      normalised entropy of the filter's part frequencies, lower is better), ``purity`` (C,) (eq. 13,
      mean over images of the normalised entropy of the parts it is assigned to, lower is better),
      per-image ``diversity`` (N,) (eq. 14, higher is better), ``part`` (C,) the argmax part of eq. 11,
      ``assigned_any`` (C,) whether the filter is ever assigned, and the layer scores ``interp_mean``
      (mean over all filters), ``stability_mean`` / ``purity_mean`` (mean over filters ever assigned;
      an unassigned filter has no part distribution) and ``diversity_mean`` (mean over images).
      Purity averages only over images where the filter is assigned to at least one part (an empty
      indicator vector has no distribution); seed 002 leaves both cases unspecified.
    """
    a = assigned.astype(jnp.float32)
    freq = a.mean(0)  # (C, K)
    interp = freq.max(-1)
    any_f = freq.sum(-1) > 0
    stability = normalised_entropy(freq)
    per_image_any = a.sum(-1) > 0  # (N, C)
    purity = masked_mean(normalised_entropy(a), per_image_any, axis=0)
    diversity = normalised_entropy(a.max(1))  # (N,)
    return {
        "interp": interp,
        "stability": stability,
        "purity": purity,
        "diversity": diversity,
        "part": jnp.argmax(freq, -1),
        "assigned_any": any_f,
        "interp_mean": interp.mean(),
        "stability_mean": masked_mean(stability, any_f),
        "purity_mean": masked_mean(purity, any_f),
        "diversity_mean": diversity.mean(),
    }


def filter_interpretability(
    maps: jax.Array,
    part_masks: jax.Array,
    phi: float = DEFAULT_PHI,
    top_quantile: float = DEFAULT_TOP_QUANTILE,
    thresholds: jax.Array | None = None,
    chunk: int = 64,
) -> dict:
    """Mask-based filter interpretability of one layer (seed 002 eq. 11-14).

    Args:
      maps: (N, h, w, C) feature maps of the evaluation set.
      part_masks: (N, H, W, K) binary part masks.
      phi: assigning threshold on the IoU (seed 002: 0.2 for animal parts, 0.04 for Broden).
      top_quantile: per-filter binarisation quantile when ``thresholds`` is None (CSGCNN 0.3, ND 0.005).
      thresholds: optional (C,) thresholds, e.g. computed on a separate split.
      chunk: images per streamed chunk.

    Returns:
      ``metrics_from_assignment`` of ``iou > phi`` plus ``iou`` (N, C, K) and ``thresholds`` (C,).
    """
    _check_fraction("phi", phi, low=-1e-9)
    if thresholds is None:
        thresholds = filter_thresholds(maps, top_quantile)
    iou = part_iou(maps, part_masks, thresholds, chunk)
    out = metrics_from_assignment(iou > phi)
    return {**out, "iou": iou, "thresholds": thresholds}


@partial(jax.jit, static_argnames=("image_size", "focus"))
def _focus(maps, image_size, focus):
    n, h, w, c = maps.shape
    ys = (jnp.arange(h) + 0.5) * image_size[0] / h
    xs = (jnp.arange(w) + 0.5) * image_size[1] / w
    flat = maps.reshape(n, h * w, c)
    grid = jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), -1).reshape(h * w, 2)
    if focus == "argmax":
        return grid[jnp.argmax(flat, axis=1)]  # (N, C, 2)
    q = jax.nn.softmax(flat, axis=1)  # seed 002 eq. 5
    return jnp.einsum("npc,pd->ncd", q, grid)


def filter_focus(maps: jax.Array, image_size: tuple[int, int], focus: str = "argmax") -> jax.Array:
    """Position of each filter's response in image pixels, (N, C, 2) as (y, x).

    ``focus="argmax"``: centre of the peak cell (ICNN's landmark protocol). ``"softmax"``: the expected
    position under ``q = softmax(A_f)`` (seed 002 eq. 5); flat for small activations, so it drifts to
    the map centre unless activations are large.
    """
    check_maps("maps", maps, 4, "(N, h, w, C)")
    if focus not in ("argmax", "softmax"):
        raise ValueError(f"focus: unknown value {focus!r}; expected one of ['argmax', 'softmax']")
    return _focus(jnp.asarray(maps, jnp.float32), tuple(int(s) for s in image_size), focus)


@jax.jit
def _landmark_curves(pos, landmarks, visible, radii):
    dist = jnp.linalg.norm(pos[:, :, None, :] - landmarks[:, None, :, :], axis=-1)  # (N, C, K)

    def at(r):
        out = metrics_from_assignment((dist <= r) & visible[:, None, :])
        return {k: out[k] for k in ("interp_mean", "stability_mean", "purity_mean", "diversity_mean")}

    return jax.vmap(at)(radii)


def landmark_metric_curves(
    maps: jax.Array,
    landmarks: jax.Array,
    image_size: tuple[int, int],
    visible: jax.Array | None = None,
    radii: jax.Array | None = None,
    focus: str = "argmax",
) -> dict:
    """Landmark-based metric-pair curves with a sliding assigning threshold (seed 002 §III-D).

    The similarity is ``Sim_{f,k}^I = -||focus_f^I - landmark_k^I||``; filter f is assigned to part k
    when the distance is at most r, and r slides over ``radii`` (a fraction of the image diagonal).
    Plot e.g. ``stability_mean`` against ``interp_mean`` (seed 002 Fig. 6).

    Args:
      maps: (N, h, w, C) feature maps.
      landmarks: (N, K, 2) landmark positions (y, x) in image pixels.
      image_size: (H, W) of the images the landmarks refer to.
      visible: optional (N, K) bool, False for landmarks absent from an image (never assigned).
      radii: (R,) assigning radii as fractions of the image diagonal; default 0.02 ... 0.5 (25 steps).
      focus: "argmax" or "softmax", see ``filter_focus``.

    Returns:
      dict of (R,) curves ``interp_mean``, ``stability_mean``, ``purity_mean``, ``diversity_mean`` and
      ``radii``.
    """
    n = check_maps("maps", maps, 4, "(N, h, w, C)")[0]
    shape = check_rank("landmarks", landmarks, 3, "(N, K, 2)")
    if shape[0] != n or shape[2] != 2:
        raise ValueError(f"landmarks: expected shape ({n}, K, 2), got {shape}")
    check_maps("landmarks", landmarks, 3, "(N, K, 2)")
    visible = jnp.ones(shape[:2], bool) if visible is None else jnp.asarray(visible, bool)
    if visible.shape != shape[:2]:
        raise ValueError(f"visible: expected shape {shape[:2]} (as landmarks' (N, K)), got {visible.shape}")
    radii = jnp.linspace(0.02, 0.5, 25) if radii is None else jnp.asarray(radii, jnp.float32)
    diag = float(np.hypot(*image_size))
    pos = filter_focus(maps, image_size, focus)
    curves = _landmark_curves(pos, jnp.asarray(landmarks, jnp.float32), visible, radii * diag)
    return {**curves, "radii": radii}
