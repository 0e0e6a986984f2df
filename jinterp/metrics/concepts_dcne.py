"""DCNE's parts of the seed-001 protocol that :mod:`jinterp.metrics.concepts_eval` lacks.

Pan et al. (seed 001 §4.2) evaluate "by the same metrics as DCNE" (Kondapaneni et al. 2024); what their
code does (shared/notes/reference-code.md §3, ``nkondapa/DiscoveringConciseNetworkExplanations``):

* **class-level neuron selection** (``select_neurons.py``, method ``'average'``): the channel relevances
  of one CRP pass per image, conditioned on its label and recorded at every conv layer, are averaged
  over the images of each class; all layers are pooled and the global top-k (layer, channel) pairs
  kept (k = 300). The same set serves every image of the class, and CRP-k is its first k entries
  (``generate_explanations.py --copy_from_topk 300``). :func:`class_top_neurons`.
* **stored maps**: every conditional map is saved with zennit's ``imgify`` (per-map min-max to uint8;
  negative relevance ends in low values, not at 0). :func:`imgify`, and the readings of a map the
  concept clustering may use (:data:`MAP_READINGS`, :func:`read_maps`).
* **the NMF baseline** (``reduction.py``, ``cpu_nmf``): per image, sklearn ``NMF(n_components)`` with
  its defaults on the (k, H·W) matrix of the selected neurons' uint8 maps; each row of
  ``components_`` is one explanation map. :func:`nmf_maps`.
* **intervals**: the DCNE aggregate (mean over images where a feature is annotated, then over
  features) recomputed on bootstrap resamples of the images. :func:`aggregate_at`, :func:`resampled`.
"""

import warnings

import numpy as np

from jinterp.checks import check_choice, check_int
from jinterp.explain import crp as crp_mod

MAP_READINGS = ("signed", "positive", "minmax")


def class_top_neurons(relevances, labels, num_classes: int, k: int) -> np.ndarray:
    """Per class, the k neurons with the highest class-mean relevance, most relevant first.

    DCNE ``select_topk_neurons_across_subset(mode='average')``: mean over the class's images, then the
    global top-k over all layers pooled (ties: the lower index first).

    Args:
      relevances: (N, n) channel relevances of N images over n pooled (layer, channel) neurons.
      labels: (N,) class of each image.
      num_classes: rows of the result.
      k: neurons per class; more than n keeps all n (DCNE's top-300 on a network with fewer channels).

    Returns:
      (num_classes, min(k, n)) int indices into the n neurons. A class without images ranks by the
      mean over all images (stated, not silent: DCNE never meets this case).
    """
    r = np.asarray(relevances, np.float64)
    if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] == 0:
        raise ValueError(f"relevances: expected a non-empty (N, n) array, got shape {r.shape}")
    y = np.asarray(labels)
    if y.shape != (r.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected ({r.shape[0]},) integer classes, got {y.dtype} {y.shape}")
    check_int("num_classes", num_classes, low=1)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels: expected classes in [0, {num_classes}), got {y.min()}..{y.max()}")
    check_int("k", k, low=1)
    overall = r.mean(0)
    means = np.stack([r[y == c].mean(0) if (y == c).any() else overall for c in range(num_classes)])
    return np.argsort(-means, axis=1, kind="stable")[:, : min(int(k), r.shape[1])]


def imgify(maps) -> np.ndarray:
    """zennit ``imgify(symmetric=False)`` per map: ``floor(255 (m - min) / (max - min))`` as uint8 over
    the last two axes; a constant map is all 0 (as :func:`jinterp.metrics.localization.mean_max_iou`)."""
    m = np.asarray(maps, np.float32)
    if m.ndim < 2:
        raise ValueError(f"maps: expected (..., H, W) maps, got shape {m.shape}")
    lo = m.min((-2, -1), keepdims=True)
    span = m.max((-2, -1), keepdims=True) - lo
    return np.floor((m - lo) / np.where(span > 0, span, 1.0) * 255.0).astype(np.uint8)


def read_maps(maps, reading: str) -> np.ndarray:
    """The maps the concept distance (eq. 2) compares, under one reading of "attribution map y_p".

    The paper does not say whether y_p is signed. ``"signed"``: the CRP map as is (jinterp's default,
    :func:`jinterp.explain.concepts.cluster`); ``"positive"``: its positive part (relevance *for* the
    class); ``"minmax"``: DCNE's stored uint8 map scaled to [0, 1] (:func:`imgify` / 255).
    """
    check_choice("reading", reading, MAP_READINGS)
    m = np.asarray(maps, np.float32)
    if reading == "positive":
        return np.maximum(m, 0.0)
    if reading == "minmax":
        return imgify(m).astype(np.float32) / 255.0
    return m


def nmf_maps(maps, components: int, seed: int = 0) -> np.ndarray:
    """DCNE's concise explanation: NMF of one image's neuron maps into ``components`` maps.

    ``sklearn.decomposition.NMF(n_components=components)`` with its defaults (init ``'nndsvda'``,
    solver ``'cd'``, 200 iterations; DCNE passes no seed, ``seed`` only fixes sklearn's random state,
    which the deterministic nndsvda init does not use) on the (k, H·W) matrix of the :func:`imgify`'d
    maps; convergence warnings are silenced, as in DCNE's runs.

    Args:
      maps: (k, H, W) real maps of the selected neurons.
      components: number of NMF components, at most k.

    Returns:
      (components, H, W) non-negative maps (``components_`` reshaped); zeros when every map is constant.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    m = np.asarray(maps)
    if m.ndim != 3 or m.shape[0] == 0:
        raise ValueError(f"maps: expected a non-empty (k, H, W) stack, got shape {m.shape}")
    check_int("components", components, low=1)
    if components > m.shape[0]:
        raise ValueError(f"components: expected at most the {m.shape[0]} maps, got {components}")
    k, h, w = m.shape
    x = imgify(m).reshape(k, h * w).astype(np.float32)
    if not x.any():
        return np.zeros((components, h, w), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = NMF(n_components=int(components), random_state=seed).fit(x)
    return model.components_.reshape(components, h, w).astype(np.float32)


def relevance_table(model, variables, images, labels, layers, batch: int = 32) -> np.ndarray:
    """(N, n) unnormalised channel relevances (spatial sums, DCNE ``attribute_unreduced``) of every
    channel of ``layers`` pooled in order, from one CRP pass per image and layer conditioned on the
    label; images go in chunks of ``batch`` (the last padded, so one compiled shape)."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    check_int("batch", batch, low=1)
    out = []
    for start in range(0, len(images), batch):
        idx = np.arange(start, start + batch).clip(max=len(images) - 1)
        row = [
            np.asarray(
                crp_mod.conditional_heatmaps(
                    model, variables, images[idx], labels[idx], layer, [0], abs_norm=False
                )[2]
            )
            for layer in layers
        ]
        out.append(np.concatenate(row, 1)[: min(batch, len(images) - start)])
    return np.concatenate(out)


def aggregate_at(best, present) -> float:
    """DCNE's aggregate at one threshold: per feature the mean of ``best`` over the images where it is
    ``present`` (nanmean), then the mean over the features present in some image.

    Args:
      best: (N, F) max-over-maps IoU per image and feature (NaN allowed where not present).
      present: (N, F) bool.
    """
    return float(resampled(best, present, np.arange(np.shape(best)[0])[None])[0])


def resampled(best, present, idx) -> np.ndarray:
    """:func:`aggregate_at` on each row of image indices ``idx`` (B, N') (bootstrap resamples): (B,)."""
    b = np.asarray(best, np.float64)
    p = np.asarray(present, bool)
    if b.ndim != 2 or p.shape != b.shape:
        raise ValueError(f"present: expected the shape of best {b.shape}, got {p.shape}")
    if not p.any():
        raise ValueError("present: no feature counts in any image; nothing to score")
    valid = p & ~np.isnan(b)
    vals = np.where(valid, b, 0.0)
    sums, counts = vals[idx].sum(1), valid[idx].sum(1)  # (B, F)
    per_feature = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_feature, axis=1)
