"""Seed-001 evaluation protocol on PartsWorld: mean max-IoU of concept explanations vs part masks.

Pan et al. (seed 001 §4.2-4.3) score every explanation method by DCNE's protocol
(shared/notes/reference-code.md §3): each explanation is a *set* of maps; each map is min-max scaled
to uint8 and binarised with ``> t`` for t in (0, 25, ..., 250); for every expert feature mask the
best-matching map's IoU is kept (max over maps), averaged over the images where the feature is
annotated (nanmean), then over features; the threshold maximising that average is reported. The
"explanation complexity" is the number of maps per explanation (seed 001 Fig. 3).

Methods compared here, per image with target = label:

* concise concepts (eq. 1-6, :func:`jinterp.explain.concepts.cluster`): the CRP maps of every channel
  of ``layers`` clustered into concepts, one representative map each, with the concept count chosen
  by silhouette (``concise``) or fixed (``concise-k``);
* CRP-k (§4.2): the k most relevant (layer, channel) pairs of ``layers`` (``k = None``: all channels,
  the CRP-300 analogue);
* CAM methods (grad_cam, layer_cam, score_cam, cluster_cam via :func:`jinterp.explain.explain`): one
  map at the last layer, and (§4.2, "we generate attribution maps by conditioning each convolutional
  layer") one map per layer of ``layers``.

Expert features = PartsWorld ``part_masks``. The headline average is over the parts that define the
image's class (``parts_world_classes``: the parts of ``disc_mask``), an absent part (hidden by an
occluder) counting as "not annotated" (DCNE's nanmean); per-part columns cover all six parts.

Speed: the CRP maps of all channels of a layer come from one compiled call per chunk of images
(:func:`jinterp.explain.crp.conditional_heatmaps`), every map is scored once against every part
(:func:`jinterp.metrics.mean_max_iou` with one map per row), and each method is then a max over a
subset of those per-map IoUs (CRP-k: a prefix of the relevance order, so the CRP-k curve is a
cumulative max). Only the clustering runs per image on the host (scipy / sklearn).

On a trained run: ``python launch.py --config configs/quickstart.py --workdir runs/quickstart
--mode concepts`` (restores the checkpoint, calls :func:`run_protocol`, writes
``<workdir>/concepts/{table.md, results.json, iou_vs_complexity.png}``).
"""

import time
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from jinterp.backbones import check_layers
from jinterp.checks import check_images, check_targets
from jinterp.data import PART_NAMES, parts_world_classes
from jinterp.explain import concepts as concepts_mod
from jinterp.explain import crp as crp_mod
from jinterp.explain import explain
from jinterp.metrics.localization import DCNE_THRESHOLDS, mean_max_iou
from jinterp.ops.table import markdown_table
from jinterp.progress import bar as progress_bar

CAM_METHODS = ("grad_cam", "layer_cam", "score_cam", "cluster_cam")
CRP_KS = (1, 2, 5, 10, 20, 50, None)
CONCEPT_COUNTS = (2, 5, 10, 15, 20, 25, 30)


def class_part_table(config) -> np.ndarray:
    """(num_classes, 6) bool: the parts (``PART_NAMES`` order) that define each PartsWorld class."""
    classes = parts_world_classes(config)
    table = np.zeros((len(classes), len(PART_NAMES)), bool)
    for c in classes:
        table[c["label"], [PART_NAMES.index(p) for p in c["parts"]]] = True
    return table


def per_map_iou(maps, masks, thresholds=DCNE_THRESHOLDS) -> np.ndarray:
    """IoU of every map with every feature mask at every threshold, by :func:`mean_max_iou`'s rule.

    Args:
      maps: (N, M, H, W) real maps (each min-max scaled to uint8 before thresholding).
      masks: (N, F, H, W) binary feature masks.

    Returns:
      (T, N, M, F) float IoUs; NaN where the feature mask of that image is empty.
    """
    maps = np.asarray(maps, np.float32)
    masks = np.asarray(masks, bool)
    if maps.ndim != 4:
        raise ValueError(f"maps: expected a rank-4 (N, M, H, W) array, got shape {maps.shape}")
    n, m, h, w = maps.shape
    if masks.ndim != 4 or masks.shape[0] != n or masks.shape[2:] != (h, w):
        raise ValueError(f"masks: expected shape ({n}, F, {h}, {w}) (as maps' N, H, W), got {masks.shape}")
    t, f = len(thresholds), masks.shape[1]
    if not masks.any():  # mean_max_iou refuses all-empty masks; every entry is "not annotated"
        return np.full((t, n, m, f), np.nan, np.float32)
    # One map per row: mean_max_iou's max over maps is then the IoU of that map.
    rep = np.broadcast_to(masks[:, None], (n, m, f, h, w)).reshape(n * m, f, h, w)
    out = mean_max_iou(maps.reshape(n * m, 1, h, w), rep, thresholds)["per_image"]
    return np.asarray(out, np.float32).reshape(t, n, m, f)


def aggregate(best: np.ndarray, present: np.ndarray, thresholds=DCNE_THRESHOLDS) -> dict:
    """DCNE aggregation of per-image best IoUs (the tail of :func:`mean_max_iou`).

    Args:
      best: (T, N, F) max-over-maps IoU per threshold, image and feature.
      present: (N, F) bool, the features that count for each image (annotated and defining).

    Returns:
      dict with ``per_feature`` (T, F) (NaN for a feature present in no image), ``average`` (T,),
      ``best_index``, ``best_threshold``, ``best`` and ``per_feature_best`` (F,) at the best threshold.
    """
    best = np.asarray(best, np.float64)
    present = np.asarray(present, bool)
    if best.ndim != 3 or best.shape[1:] != present.shape:
        raise ValueError(
            f"best: expected shape (T, {present.shape[0]}, {present.shape[1]}), got {best.shape}"
        )
    if not present.any():
        raise ValueError("present: no feature counts in any image; nothing to score")
    valid = present[None] & ~np.isnan(best)
    cnt = valid.sum(1)
    per_feature = np.where(cnt > 0, np.where(valid, best, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)
    average = np.nanmean(np.where(present.any(0)[None], per_feature, np.nan), axis=1)
    i = int(np.nanargmax(average))
    return {
        "per_feature": per_feature,
        "average": average,
        "best_index": i,
        "best_threshold": float(np.asarray(thresholds)[i]),
        "best": float(average[i]),
        "per_feature_best": per_feature[i],
    }


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis to ``size`` by repeating the last entry (fixed shapes: no retrace)."""
    return x if len(x) == size else np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def crp_all_channels(model, variables, images, targets, layers, composite="epsilon_plus_flat", batch_size=64):
    """CRP maps of every channel of ``layers``: (N, n, H, W), relevances (N, n), n (layer, channel).

    Relevances are the unnormalised spatial sums (as :func:`jinterp.explain.concepts.neuron_maps`).
    """
    maps, rels, neurons = [], [], []
    for layer in layers:
        heat, rel, _ = crp_mod.conditional_heatmaps(
            model, variables, images, targets, layer, None, composite, batch_size, False
        )
        maps.append(np.asarray(heat))
        rels.append(np.asarray(rel))
        neurons += [(layer, c) for c in range(rel.shape[1])]
    return np.concatenate(maps, 1), np.concatenate(rels, 1), neurons


def _cam_spec(name: str, layer: str) -> str:
    return f"{name}(layer={layer!r})"


def evaluate_concepts(
    model,
    variables,
    images,
    labels,
    part_masks,
    layers: Sequence[str],
    class_parts: np.ndarray | None = None,
    crp_ks: Sequence[int | None] = CRP_KS,
    concept_counts: Sequence[int] = CONCEPT_COUNTS,
    lam: float = 0.5,
    linkage: str = "ward",
    k_range: tuple[int, int] = (2, 30),
    cam_methods: Sequence[str] = CAM_METHODS,
    composite="epsilon_plus_flat",
    thresholds=DCNE_THRESHOLDS,
    batch_images: int = 8,
    crp_batch: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Mean max-IoU (DCNE) and explanation complexity of concise concepts, CRP-k and CAM methods.

    Args:
      model, variables: a trained jinterp model.
      images: (N, H, W, 3) normalised images; labels: (N,) classes (the explained target).
      part_masks: (N, H, W, P) bool part masks (PartsWorld: P = 6, ``PART_NAMES``).
      layers: layers whose channels CRP explains (e.g. ``("conv4", "conv6")``); the last one is the
        CAM methods' single layer.
      class_parts: (num_classes, P) bool, the parts defining each class (:func:`class_part_table`);
        ``None`` = every part counts for every class.
      crp_ks: k of the CRP-k baselines and curve; ``None`` = all channels of ``layers``.
      concept_counts: fixed concept counts of the concise-concepts curve (clipped to n - 1 neurons).
      lam, linkage, k_range: concise-concepts options (eq. 4, eq. 5, silhouette search range).
      cam_methods: registry names of single-map methods (empty: none).
      composite: LRP composite of CRP.
      thresholds: DCNE uint8 thresholds.
      batch_images: images per compiled call (the last chunk is padded; no retrace).
      crp_batch: channels per vmapped CRP chunk.
      progress: called with a one-line status after each chunk of images (e.g. ``print``).

    Returns:
      dict with ``rows`` {method: {"best", "threshold", "complexity", "per_part" {part: IoU}}} (best =
      mean over defining parts at the best threshold; per_part at that threshold, NaN where a part is
      never present), ``curves`` {"CRP-k": [(complexity, IoU)], "concise-k": [...]}, ``num_images``,
      ``num_neurons``, ``layers``, ``parts`` and ``seconds`` {stage: wall time}.
    """
    images, labels, masks, layers, class_parts = _check_inputs(
        model, images, labels, part_masks, layers, class_parts, crp_ks, batch_images
    )
    n, n_parts = len(images), masks.shape[1]
    parts = PART_NAMES if n_parts == len(PART_NAMES) else tuple(f"part{i}" for i in range(n_parts))
    present = masks.any((2, 3)) & class_parts[labels]  # features that count (DCNE: annotated)
    seconds = {"crp": 0.0, "iou": 0.0, "clustering": 0.0, "cams": 0.0}
    fixed = sorted({int(c) for c in concept_counts})
    runs = [("concise", tuple(k_range))] + [(f"concise-{c}", (c, c)) for c in fixed]
    opts = dict(layers=layers, cam_methods=cam_methods, crp_ks=crp_ks, runs=runs, composite=composite)
    opts.update(crp_batch=crp_batch, thresholds=thresholds, lam=lam, linkage=linkage, seconds=seconds)
    best, complexity = {}, {}  # method -> list of (T, b, P) chunks / of per-image map counts
    for start in progress_bar(range(0, n, batch_images), desc="concepts", unit="batch"):
        stop = min(start + batch_images, n)
        x = _pad(images[start:stop], batch_images)
        y = _pad(labels[start:stop], batch_images).astype(np.int32)
        chunk, n_ch = _chunk_scores(model, variables, x, y, stop - start, masks[start:stop], **opts)
        for name, (scores, sizes) in chunk.items():
            best.setdefault(name, []).append(scores)
            complexity.setdefault(name, []).extend(sizes)
        if progress is not None:
            progress(f"{stop}/{n} images; " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    rows = _rows(best, complexity, present, masks, parts, thresholds)
    curves = {
        "CRP-k": [(rows[_crp_name(k, n_ch)]["complexity"], rows[_crp_name(k, n_ch)]["best"]) for k in crp_ks],
        "concise-k": [(rows[f"concise-{c}"]["complexity"], rows[f"concise-{c}"]["best"]) for c in fixed],
    }
    defining = [p for p, used in zip(parts, class_parts[labels].any(0), strict=True) if used]
    out = {"rows": rows, "curves": curves, "num_images": n, "num_neurons": n_ch, "layers": layers}
    return {**out, "parts": parts, "defining_parts": defining, "seconds": seconds}


def _check_inputs(model, images, labels, part_masks, layers, class_parts, crp_ks, batch_images):
    """Checked arguments of :func:`evaluate_concepts`: images, labels, (N, P, H, W) masks, layers,
    class_parts."""
    images = np.asarray(images, np.float32)
    check_images(images, min_size=int(getattr(model, "min_size", 1)))
    n, h, w, _ = images.shape
    labels = np.asarray(labels)
    check_targets(labels, n, getattr(model, "num_classes", None))
    part_masks = np.asarray(part_masks, bool)
    if part_masks.ndim != 4 or part_masks.shape[:3] != (n, h, w):
        raise ValueError(f"part_masks: expected shape ({n}, {h}, {w}, P), got {part_masks.shape}")
    n_parts = part_masks.shape[-1]
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(check_layers(model, tuple(layers), "layers"))
    if class_parts is None:
        class_parts = np.ones((int(labels.max()) + 1, n_parts), bool)
    class_parts = np.asarray(class_parts, bool)
    if class_parts.ndim != 2 or class_parts.shape[1] != n_parts or class_parts.shape[0] <= labels.max():
        raise ValueError(
            f"class_parts: expected shape (>= {int(labels.max()) + 1} classes, {n_parts}), "
            f"got {class_parts.shape}"
        )
    for k in crp_ks:
        if k is not None and int(k) < 1:
            raise ValueError(f"crp_ks: expected positive ints or None (all channels), got {k}")
    if batch_images < 1:
        raise ValueError(f"batch_images: expected >= 1, got {batch_images}")
    return images, labels, np.moveaxis(part_masks, -1, 1), layers, class_parts


def _chunk_scores(
    model,
    variables,
    x,
    y,
    b,
    masks,
    *,
    layers,
    cam_methods,
    crp_ks,
    runs,
    composite,
    crp_batch,
    thresholds,
    lam,
    linkage,
    seconds,
) -> tuple[dict, int]:
    """One padded chunk of images ``x`` / targets ``y`` (the first ``b`` real, ``masks`` (b, P, H, W)):
    ``({method: ((T, b, P) max-over-maps IoU, [maps per image])}, channels)``; adds to ``seconds``."""
    t0 = time.perf_counter()
    maps, rels, neurons = crp_all_channels(model, variables, x, y, layers, composite, crp_batch)
    maps, rels = maps[:b], rels[:b]
    seconds["crp"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    cams = [
        np.asarray(explain(_cam_spec(name, layer), model, variables, x, y))[:b]
        for name in cam_methods
        for layer in layers
    ]
    seconds["cams"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    all_maps = np.concatenate([maps, np.stack(cams, 1)], 1) if cams else maps
    iou = per_map_iou(all_maps, masks, thresholds)  # (T, b, M, P)
    seconds["iou"] += time.perf_counter() - t0
    n_ch = maps.shape[1]
    crp_iou, cam_iou = iou[:, :, :n_ch], iou[:, :, n_ch:]
    out = {}
    # CRP-k: top-k by relevance, so a cumulative max along the relevance order.
    order = np.argsort(-rels, axis=1, kind="stable")
    cum = np.fmax.accumulate(np.take_along_axis(crp_iou, order[None, :, :, None], axis=2), axis=2)
    for k in crp_ks:
        kk = n_ch if k is None else min(int(k), n_ch)
        out[_crp_name(k, n_ch)] = (cum[:, :, kk - 1], [kk] * b)
    for j, name in enumerate(cam_methods):
        block = cam_iou[:, :, j * len(layers) : (j + 1) * len(layers)]
        out[f"{name}[{layers[-1]}]"] = (block[:, :, -1], [1] * b)
        if len(layers) > 1:
            out[f"{name}[{','.join(layers)}]"] = (np.fmax.reduce(block, axis=2), [len(layers)] * b)
    t0 = time.perf_counter()
    for name, kr in runs:
        out[name] = _concise_scores(maps, rels, neurons, crp_iou, kr, lam, linkage)
    seconds["clustering"] += time.perf_counter() - t0
    return out, n_ch


def _concise_scores(maps, rels, neurons, crp_iou, k_range, lam, linkage) -> tuple[np.ndarray, list[int]]:
    """Concise concepts (eq. 1-6) per image: max IoU over the representatives' maps, concept counts."""
    hi = min(k_range[1], maps.shape[1] - 1)
    rows, sizes = [], []
    for i in range(len(maps)):
        c = concepts_mod.cluster(maps[i], rels[i], neurons, lam, linkage, (min(k_range[0], hi), hi))
        reps = np.array([neurons.index(r) for r in c.representatives])
        rows.append(np.fmax.reduce(crp_iou[:, i, reps], axis=1))  # (T, P)
        sizes.append(len(c))
    return np.stack(rows, 1), sizes


def _rows(best: dict, complexity: dict, present, masks, parts, thresholds) -> dict:
    """Per method: DCNE aggregate of its (T, N, P) chunks, mean complexity, per-part IoU."""
    rows = {}
    for name, chunks in best.items():
        scores = np.concatenate(chunks, 1)
        agg = aggregate(scores, present, thresholds)
        rows[name] = {
            "best": agg["best"],
            "threshold": agg["best_threshold"],
            "complexity": float(np.mean(complexity[name])),
            "per_part": dict(zip(parts, map(float, _per_part(scores, masks, agg)), strict=True)),
        }
    return rows


def _crp_name(k, n_ch: int) -> str:
    return f"CRP-all({n_ch})" if k is None else f"CRP-{int(k)}"


def _per_part(best: np.ndarray, masks: np.ndarray, agg: dict) -> np.ndarray:
    """Per-part mean max-IoU at the method's best threshold over every image showing the part."""
    t = agg["best_index"]
    shown = masks.any((2, 3))  # (N, P)
    vals = np.where(shown, best[t], np.nan)
    with np.errstate(all="ignore"):
        cnt = (~np.isnan(vals)).sum(0)
        return np.where(cnt > 0, np.nansum(vals, 0) / np.maximum(cnt, 1), np.nan)


def format_table(result: dict) -> str:
    """Markdown table: method, mean max-IoU over defining parts, #maps, threshold, per part."""
    parts = result["parts"]
    defining = set(result["defining_parts"])
    head = ["method", "mean max-IoU (defining parts)", "#maps", "thr"]
    head += [f"{p}{'*' if p in defining else ''}" for p in parts]
    rows = [
        [name, r["best"], r["complexity"], r["threshold"], *(r["per_part"][p] for p in parts)]
        for name, r in result["rows"].items()
    ]
    table = markdown_table(head, rows, fmt=[None, ".3f", ".1f", ".0f", *([".3f"] * len(parts))])
    return (
        f"{table}\n\n{result['num_images']} images, CRP over {result['num_neurons']} channels of "
        f"{', '.join(result['layers'])}; * = parts defining the classes (the headline average); per-part "
        "columns at each method's best threshold over the images showing the part."
    )


def run_protocol(
    model,
    variables,
    data: dict,
    pw_config,
    *,
    layers: Sequence[str] = ("conv4", "conv6"),
    cam_methods: Sequence[str] = CAM_METHODS,
    lam: float = 0.5,
    linkage: str = "ward",
    batch_images: int = 8,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The seed-001 protocol on an evaluation split: :func:`evaluate_concepts` with the class table
    of ``pw_config``, plus the model's accuracy on those images and the wall time.

    Args:
      model, variables: the trained network.
      data: ``image`` (N,H,W,3) normalised, ``label`` (N,), ``part_masks`` (N,H,W,6) (a PartsWorld split).
      pw_config: the split's ``PartsWorldConfig`` (``jinterp.data.parts_world_config``).
      layers, cam_methods, lam, linkage, batch_images, progress: as :func:`evaluate_concepts`.

    Returns:
      :func:`evaluate_concepts`'s dict plus ``accuracy`` and ``wall_s``.
    """
    missing = [k for k in ("image", "label", "part_masks") if k not in data]
    if missing:
        raise ValueError(f"data: the protocol needs PartsWorld part masks; missing keys {missing}")
    logits, _ = model.apply(variables, jnp.asarray(data["image"], jnp.float32))
    acc = float((np.asarray(logits).argmax(-1) == np.asarray(data["label"])).mean())
    t0 = time.perf_counter()
    result = evaluate_concepts(
        model,
        variables,
        data["image"],
        data["label"],
        data["part_masks"],
        layers,
        class_part_table(pw_config),
        cam_methods=cam_methods,
        lam=lam,
        linkage=linkage,
        batch_images=batch_images,
        progress=progress,
    )
    return {**result, "accuracy": acc, "wall_s": time.perf_counter() - t0}
