"""The measurements of the CLAM section (:mod:`jinterp.fidelity.clam`): relevance maps in jitted
batches, the paper's three scores per map, attribute regions with redundant-attribute removal, and
the example-based explanation figure (seed 003 §3.4, §4.2.2, §4.3, eq. 6, A.5).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import viz
from jinterp.data import PART_NAMES
from jinterp.explain import clam as C
from jinterp.metrics.faithfulness import perturbation_curve
from jinterp.metrics.localization import boxes_to_masks, energy_pointing_game, localization_iou

REDUNDANT_IOU = 0.5  # §4.2.2 "identical or similar image regions": our threshold on the patch IoU


def logits_fn(model, variables):
    """Pure ``images -> logits`` of the frozen CNN (one object per run, so LeRF compiles once)."""
    return lambda x: model.apply(variables, x)[0]


def _batched(fn, arrays, batch: int):
    """``fn`` over equal-length leading slices of ``arrays``, the last one padded (one trace)."""
    n = len(arrays[0])
    outs = []
    for s in range(0, n, batch):
        chunk = [a[s : s + batch] for a in arrays]
        k = len(chunk[0])
        chunk = [np.concatenate([c, np.repeat(c[-1:], batch - k, 0)]) if k < batch else c for c in chunk]
        outs.append(jax.tree.map(lambda x, k=k: np.asarray(x)[:k], fn(*chunk)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def relevance_maps(model, variables, clam: C.Clam, images, targets, batch: int = 50) -> np.ndarray:
    """(N, H, W) signed input relevance of ``clam.base`` refined by ``clam``'s layers, channel-summed."""
    batch = min(batch, len(images))

    def fn(x, y):
        return C.relevance(model, variables, clam, x, y).sum(-1)

    return _batched(fn, [np.asarray(images, np.float32), np.asarray(targets, np.int32)], batch)


def scores(apply_fn, images, maps, data, targets, pixels_per_step: int, steps: int) -> dict:
    """Pointing game (eq. 6) vs box and mask, IoU (A.5) vs mask and box, LeRF (Tab. 2) if
    ``pixels_per_step`` > 0; scalars plus ``per_image`` lists (paired comparisons) and the curves."""
    h, w = maps.shape[1:]
    box_masks = boxes_to_masks(data["bbox"], (h, w))
    pg = energy_pointing_game(maps, boxes=data["bbox"])
    pg_mask = energy_pointing_game(maps, masks=data["object_mask"])
    iou = localization_iou(maps, data["object_mask"])
    iou_box = localization_iou(maps, box_masks)
    out = {
        "pointing_box": float(pg["mean"]),
        "pointing_lower": float(pg["lower"]),
        "pointing_higher": float(pg["higher"]),
        "pointing_mask": float(pg_mask["mean"]),
        "iou_mask": float(iou["mean"]),
        "iou_box": float(iou_box["mean"]),
        "lerf_last": None,
        "lerf_mean": None,
        "per_image": {
            "pointing_box": np.asarray(pg["per_image"]).mean(1).tolist(),
            "iou_mask": np.asarray(iou["per_image"]).tolist(),
        },
        "_pointing": {k: np.asarray(pg[k]) for k in ("energies", "curve", "mean")},
    }
    if pixels_per_step > 0:
        lerf = perturbation_curve(
            apply_fn, images, maps, targets, mode="deletion", order="lerf",
            pixels_per_step=pixels_per_step, n_steps=steps, substrate="constant", batch_size=64,
        )  # fmt: skip
        correct = np.asarray(lerf["correct"])
        out["lerf_last"], out["lerf_mean"] = float(correct[:, -1].mean()), float(correct[:, 1:].mean())
        out["per_image"]["lerf_mean"] = correct[:, 1:].mean(1).tolist()
        out["_lerf"] = {k: np.asarray(lerf[k]) for k in ("fractions", "accuracy_curve", "auc_mean")}
    return out


@functools.partial(jax.jit, static_argnames=("model",))
def _picks(model, variables, clam: C.Clam, images, targets):
    """Per layer: each attribute's best patch origin (B, N, 2) and its mean distance (B, N) (§3.4)."""
    _, out = model.apply(variables, images)
    picks = {}
    for config, params in zip(clam.configs, clam.params, strict=True):
        feats = out[config.layer]
        icp = clam.icp[targets, : config.patch, : config.patch]
        s = jax.vmap(C.patch_scores, in_axes=(None, None, 0, 0))(params, config, feats, icp)  # (B, Q, N)
        origins = jnp.asarray(C.patch_origins(feats.shape[1], feats.shape[2], config.patch))
        picks[config.layer] = (origins[s.argmin(1)], s.min(1))
    return picks


def picks(model, variables, clam, images, targets, batch: int = 50) -> dict:
    batch = min(batch, len(images))
    fn = functools.partial(_picks, model, variables, clam)
    return _batched(fn, [np.asarray(images, np.float32), np.asarray(targets, np.int32)], batch)


def non_redundant(origins: np.ndarray, distances: np.ndarray, patch: int) -> list[int]:
    """Attribute indices kept for one image: best-scoring first, dropping any whose P x P region
    overlaps a kept one with IoU >= :data:`REDUNDANT_IOU` (seed 003 §4.2.2)."""
    kept = []
    for i in np.argsort(distances, kind="stable"):
        inter = [np.prod(np.maximum(patch - np.abs(origins[i] - origins[j]), 0)) for j in kept]
        if all(a / (2 * patch * patch - a) < REDUNDANT_IOU for a in inter):
            kept.append(int(i))
    return kept


def _scale(model, variables, clam, images) -> dict[str, float]:
    _, out = jax.eval_shape(lambda x: model.apply(variables, x), jnp.asarray(images[:1]))
    return {c.layer: images.shape[1] / out[c.layer].shape[1] for c in clam.configs}


def regions(model, variables, clam, images, targets) -> dict[str, list]:
    """Per layer, per image: pixel boxes ``(y0, x0, y1, x1)`` of the non-redundant attribute regions."""
    p = picks(model, variables, clam, images, targets)
    scale = _scale(model, variables, clam, images)
    out = {}
    for c in clam.configs:
        origins, dist = p[c.layer]
        out[c.layer] = [
            [tuple(np.r_[origins[i, a], origins[i, a] + c.patch] * scale[c.layer]) for a in
             non_redundant(origins[i], dist[i], c.patch)]
            for i in range(len(images))
        ]  # fmt: skip
    return out


def attributes(ctx, clam, data, targets) -> dict:
    """Per layer: regions per image, fraction redundant, fraction on the object, top part (Fig. 4)."""
    boxes = regions(ctx.model, ctx.variables, clam, data["image"], targets)
    k = int(clam.icp.shape[0])
    pos = picks(ctx.model, ctx.variables, clam, data["image"], targets)
    neg = picks(ctx.model, ctx.variables, clam, data["image"], (targets + 1) % k)
    h, w = data["image"].shape[1:3]
    out = {}
    for c in clam.configs:
        on, parts = [], []
        for i, image_boxes in enumerate(boxes[c.layer]):
            for y0, x0, y1, x1 in image_boxes:
                cy, cx = min(int((y0 + y1) / 2), h - 1), min(int((x0 + x1) / 2), w - 1)
                on.append(bool(data["object_mask"][i, cy, cx]))
                under = np.flatnonzero(data["part_masks"][i, cy, cx])
                parts.append(PART_NAMES[under[0]] if under.size else "background")
        names, counts = np.unique(parts, return_counts=True)
        n_regions = len(on) / len(targets)
        out[c.layer] = {
            "strength": c.strength,
            "regions": n_regions,
            "redundant": 1.0 - n_regions / c.num_attributes,
            "on_object": float(np.mean(on)),
            "object_cover": float(np.mean(data["object_mask"])),
            "top_part": str(names[np.argmax(counts)]),
            "parts": {str(n): int(v) for n, v in zip(names, counts, strict=True)},
            # FF separation: best-patch distance with the true class's ICP vs a wrong class's
            "d_pos": float(pos[c.layer][1].mean()),
            "d_neg": float(neg[c.layer][1].mean()),
        }
    return out


def examples_figure(ctx, clam, data, heat):
    """Seed 003 Fig. 4 for the first evaluated image: per layer, its regions (over the CLRP+CLAM map)
    and the nearest training images of the same class by attribute profile, with their regions."""
    cc = ctx.config.clam
    bank = ctx.load("train", int(cc.bank_size))
    bank_t = bank["label"].astype(np.int32)
    q_img, q_t = data["image"][:1], data["label"][:1].astype(np.int32)
    q_picks, b_picks = (
        picks(ctx.model, ctx.variables, clam, x, t) for x, t in ((q_img, q_t), (bank["image"], bank_t))
    )
    rows, boxes, captions = [], [], []
    for c in clam.configs:
        q, b = q_picks[c.layer][1][0], b_picks[c.layer][1]
        sim = (b @ q) / np.maximum(np.linalg.norm(b, axis=1) * np.linalg.norm(q), 1e-12)
        sim = np.where(bank_t == q_t[0], sim, -np.inf)
        idx = np.argsort(-sim, kind="stable")[: int(cc.num_examples)]
        idx = idx[np.isfinite(sim[idx])]
        imgs = np.concatenate([q_img, bank["image"][idx]])
        targets = np.concatenate([q_t, bank_t[idx]])
        layer_boxes = regions(ctx.model, ctx.variables, clam, imgs, targets)[c.layer]
        rows.append(imgs)
        boxes.append(layer_boxes)
        captions.append([f"{c.layer}: test, class {q_t[0]}"] + [f"train {i} (cos {sim[i]:.3f})" for i in idx])
    return viz.plot_attribute_examples(rows, boxes, captions, heat=heat)
