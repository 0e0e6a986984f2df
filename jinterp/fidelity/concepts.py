"""Seed 001 (concise hierarchical concepts, Pan et al.): Table 1 and Fig. 3 re-run by DCNE's protocol.

Protocol (shared/notes/reference-code.md §3; :mod:`jinterp.metrics.concepts_dcne`). Every channel of
``config.concepts.layers`` is a neuron. One CRP pass per image conditioned on its label gives every
neuron's relevance (unnormalised spatial sum); the class means over ``relevance_images`` *training*
images rank the neurons of each class, all layers pooled, and the first ``num_neurons`` (DCNE: 300;
all of them when the network has fewer) form the set used for every image of that class. Per image,
the CRP conditional map of each selected neuron (eq. 1) goes into the weighted distance (eq. 2-4),
agglomerative clustering (eq. 5) and the silhouette-chosen concept count, one representative map per
concept (eq. 6; :func:`jinterp.explain.concepts.cluster`).

Scoring is DCNE's (:mod:`jinterp.metrics.concepts_eval`): every map min-max scaled to uint8 and
binarised at ``> t``, t in (0, 25, ..., 250); per feature the best map's IoU; mean over the images
where the feature counts, then over features; the threshold maximising that average is each method's.
The features are the parts that define the image's class (PartsWorld: head, tail, wing) and, apart,
``disc_mask``. Compared: concise (silhouette count), concise-k (fixed counts, the Fig. 3 curve),
CRP-k (the first k of the class's ranking, DCNE's CRP-10 / CRP-300), DCNE's NMF of the selected maps,
and the CAMs of Table 1 with one map per listed layer ("we generate attribution maps by conditioning
each convolutional layer", §4.2; DCNE runs pytorch-grad-cam with ``individual_layer_cams``), FullGrad
with one map. Targets: the label, as DCNE.

Why silhouette picks 2 concepts: the count is measured on ``select_images`` held-out training images
(after the relevance ones) under the default setting and under each candidate varied alone (number of
neurons, λ, linkage, searched range, reading of the map); then the per-factor winners are combined.
The setting reported as "chosen" is the one with the best mean max-IoU on those images among the ones
with at most ``max_maps`` concepts on average; the test images only report.
"""

import dataclasses
import os
import time

import numpy as np

from jinterp import explain, viz
from jinterp.data import feed
from jinterp.explain import concepts as concepts_mod
from jinterp.fidelity import concepts_report as report
from jinterp.fidelity.section import Context, Section
from jinterp.metrics import concepts_dcne as dcne
from jinterp.metrics import concepts_eval

CRP_KS = (1, 2, 5, 10, 20, 50, 100, 300)  # DCNE's CRP-k sweep (run_base_crp.sh) and the small end


def items(text: str, kind=str) -> list:
    """``"a,b"`` -> ``[kind("a"), kind("b")]``."""
    return [kind(t.strip()) for t in str(text).split(",") if t.strip()]


def parse_range(text: str) -> tuple[int, int]:
    """``"2,30"`` or ``"2-30"`` -> ``(2, 30)`` (the inclusive silhouette search range)."""
    parts = [int(p) for p in str(text).replace("-", ",").split(",") if p.strip()]
    if len(parts) != 2 or not 2 <= parts[0] <= parts[1]:
        raise ValueError(f"k_range: expected 'low,high' with 2 <= low <= high, got {text!r}")
    return parts[0], parts[1]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration of the concise explanation (eq. 2-6 plus DCNE's neuron selection)."""

    neurons: int
    lam: float
    linkage: str
    k_range: tuple[int, int]
    reading: str

    def label(self) -> str:
        lo, hi = self.k_range
        return f"top-{self.neurons}, λ={self.lam:g}, {self.linkage}, k∈[{lo},{hi}], {self.reading} maps"

    def capped(self, n: int) -> "Setting":
        """The setting on a network with ``n`` neurons (top-k above n keeps all n, DCNE's rule)."""
        return dataclasses.replace(self, neurons=min(self.neurons, n))


def default_setting(c) -> Setting:
    return Setting(
        int(c.num_neurons), float(c.lam), str(c.linkage), parse_range(c.k_range), str(c.map_reading)
    )


def candidates(c, n: int) -> dict[str, list[Setting]]:
    """Per factor, the default setting with that factor varied alone (capped to ``n`` neurons)."""
    d = default_setting(c).capped(n)
    rep = dataclasses.replace
    grid = {
        "neurons": [rep(d, neurons=min(k, n)) for k in items(c.neuron_counts, int)],
        "lam": [rep(d, lam=v) for v in items(c.lams, float)],
        "linkage": [rep(d, linkage=v) for v in items(c.linkages)],
        "k_range": [rep(d, k_range=parse_range(v)) for v in items(c.k_ranges)],
        "reading": [rep(d, reading=v) for v in items(c.map_readings)],
    }
    if min(s.neurons for s in grid["neurons"] + [d]) < 3:
        raise ValueError(f"concepts.neuron_counts: expected >= 3 neurons each, got {c.neuron_counts!r}")
    return {f: list(dict.fromkeys([d, *v])) for f, v in grid.items()}


def features(data: dict, class_parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 7, H, W) masks (6 parts then ``disc_mask``) and (N, 7) which count: a part when it is shown
    and defines the image's class (DCNE: annotated), ``disc_mask`` when not empty."""
    parts = np.moveaxis(np.asarray(data["part_masks"], bool), -1, 1)
    masks = np.concatenate([parts, np.asarray(data["disc_mask"], bool)[:, None]], 1)
    shown = masks.any((2, 3))
    defining = np.concatenate([class_parts[np.asarray(data["label"])], np.ones((len(masks), 1), bool)], 1)
    return masks, shown & defining


class Pass:
    """CRP maps, relevances and per-map IoUs of one split, chunk by chunk (one compiled shape)."""

    def __init__(self, ctx: Context, data: dict, layers, order: np.ndarray, batch: int, class_parts):
        self.ctx, self.data, self.layers, self.order, self.batch = ctx, data, layers, order, batch
        self.n = len(data["image"])
        self.masks, self.present = features(data, class_parts)

    def chunks(self):
        """Yield ``(images idx, padded x, padded y, maps (b, n, H, W), rels (b, n), iou (T, b, n, 7))``."""
        x_all = np.asarray(self.data["image"], np.float32)
        y_all = np.asarray(self.data["label"], np.int32)
        for start in range(0, self.n, self.batch):
            real = np.arange(start, min(start + self.batch, self.n))
            pad = np.arange(start, start + self.batch).clip(max=self.n - 1)
            x, y = x_all[pad], y_all[pad]
            maps, rels, self.neurons = concepts_eval.crp_all_channels(
                self.ctx.model, self.ctx.variables, x, y, self.layers
            )
            maps, rels = maps[: len(real)], rels[: len(real)]
            yield real, x, y, maps, rels, concepts_eval.per_map_iou(maps, self.masks[real])

    def concise(self, maps, rels, iou, i: int, label: int, s: Setting):
        """One image's concise explanation under ``s``: (max IoU over representatives (T, 7), concept
        count, silhouettes {k: s}, agreement of a 2-concept split with the sign of the relevance and with
        "last layer or not" (NaN otherwise), share of the selected neurons with negative relevance)."""
        sel = self.order[label][: s.neurons]
        hi = min(s.k_range[1], len(sel) - 1)
        c = concepts_mod.cluster(
            dcne.read_maps(maps[sel], s.reading),
            rels[sel],
            [self.neurons[j] for j in sel],
            s.lam,
            s.linkage,
            (min(s.k_range[0], hi), hi),
        )
        index = {nb: j for j, nb in enumerate(self.neurons)}
        reps = [index[r] for r in c.representatives]
        deep = np.array([self.neurons[j][0] == self.layers[-1] for j in sel])
        split = (
            [_agreement(c.labels, rels[sel] >= 0), _agreement(c.labels, deep)]
            if len(c) == 2
            else [np.nan] * 2
        )
        return np.fmax.reduce(iou[:, i, reps], axis=1), len(c), c.silhouettes, *split, np.mean(rels[sel] < 0)


def _agreement(labels: np.ndarray, side: np.ndarray) -> float:
    """How well a 2-cluster labelling matches a boolean partition (1: exactly, either way round); NaN
    when the partition has one side only (every split would "agree" by its larger cluster's share)."""
    if side.all() or not side.any():
        return np.nan
    agree = float(np.mean((labels == 0) == side))
    return max(agree, 1 - agree)


SWEPT = ("best", "count", "silhouettes", "sign", "layer", "neg")


def _sweep(p: Pass, settings: list[Setting], progress) -> dict:
    """``{setting: {"best" (T, N, 7), "count", "sign", "layer", "neg" (N,), "silhouettes" [dict]}}`` on ``p``
    (:meth:`Pass.concise`'s outputs per image)."""
    out = {s: {key: [] for key in SWEPT} for s in settings}
    for real, _, y, maps, rels, iou in p.chunks():
        for i in range(len(real)):
            for s in settings:
                for key, v in zip(SWEPT, p.concise(maps[i], rels[i], iou, i, y[i], s), strict=True):
                    out[s][key].append(v)
        progress(f"concepts: selection {real[-1] + 1}/{p.n} images, {len(settings)} settings")
    return {
        s: {**r, "best": np.stack(r["best"], 1), **{k: np.array(r[k]) for k in SWEPT[3:] + ("count",)}}
        for s, r in out.items()
    }


def _cam_maps(ctx: Context, x, y, layers, cams) -> dict[str, np.ndarray]:
    """Per CAM of Table 1, its (B, L, H, W) maps: one per listed layer (FullGrad: one map)."""
    out = {}
    for name in cams:
        specs = [name] if name == "fullgrad" else [f"{name}(layer={lay!r})" for lay in layers]
        out[name] = np.stack(
            [np.asarray(explain.explain(s, ctx.model, ctx.variables, x, y)) for s in specs], 1
        )
    return out


def _add(store: dict, name: str, best: np.ndarray, maps: int) -> None:
    entry = store.setdefault(name, {"best": [], "maps": []})
    entry["best"].append(best)
    entry["maps"].append(maps)


def _report_image(p: Pass, store, maps, rels, iou, i, label, chosen: dict, fixed, ks, n_ch) -> None:
    """Every CRP-derived method of one reported image into ``store`` (name -> per-image bests, maps)."""
    cum = np.fmax.accumulate(iou[:, i, p.order[label]], axis=1)  # CRP-k: a prefix of the class ranking
    for k in ks:
        _add(store, report.crp_name(k, n_ch), cum[:, k - 1], k)
    for key, s in chosen.items():
        best, count = p.concise(maps, rels, iou, i, label, s)[:2]
        _add(store, f"concise ({key})", best, count)
        _add(store, f"CRP at the {key} concise count", cum[:, count - 1], count)
    for k in fixed:
        s = dataclasses.replace(chosen["chosen"], k_range=(k, k))
        _add(store, f"concise-{k}", p.concise(maps, rels, iou, i, label, s)[0], k)


def _report(p: Pass, chosen: dict, c, progress) -> dict:
    """Every method of Table 1 on the reported split: name -> {"best" (T, N, 7), "maps" (N,)}."""
    store, cams = {}, items(c.paper_cams)
    n_nmf = int(c.nmf_components)
    for real, x, y, maps, rels, iou in p.chunks():
        n_ch = maps.shape[1]
        ks = sorted({min(k, n_ch) for k in CRP_KS})
        fixed = [k for k in concepts_eval.CONCEPT_COUNTS if k < chosen["chosen"].neurons]
        for i in range(len(real)):
            _report_image(p, store, maps[i], rels[i], iou, i, y[i], chosen, fixed, ks, n_ch)
        sel = [p.order[y[i]][: chosen["default"].neurons] for i in range(len(real))]
        nmf = np.stack([dcne.nmf_maps(maps[i][s], n_nmf) for i, s in enumerate(sel)])
        nmf_best = np.fmax.reduce(concepts_eval.per_map_iou(nmf, p.masks[real]), axis=2)
        for i in range(len(real)):
            _add(store, f"NMF-{n_nmf} (DCNE)", nmf_best[:, i], n_nmf)
        for name, m in _cam_maps(p.ctx, x, y, p.layers, cams).items():
            cam_iou = concepts_eval.per_map_iou(m[: len(real)], p.masks[real])
            for i in range(len(real)):
                if name == "fullgrad":
                    _add(store, "fullgrad", cam_iou[:, i, 0], 1)
                    continue
                _add(store, f"{name} (per layer)", np.fmax.reduce(cam_iou[:, i], axis=1), len(p.layers))
                _add(store, f"{name} [{p.layers[-1]}]", cam_iou[:, i, -1], 1)
        progress(f"concepts: reported {real[-1] + 1}/{p.n} test images")
    return {k: {"best": np.stack(v["best"], 1), "maps": np.array(v["maps"])} for k, v in store.items()}


def _choose(ctx, sel_pass: Pass, grid: dict, c) -> tuple[dict, Setting, Setting]:
    """The selection sweep: one-factor candidates, then the per-factor winners combined."""
    settings = list(dict.fromkeys(s for v in grid.values() for s in v))
    sweep = _sweep(sel_pass, settings, ctx.progress)
    present, max_maps = sel_pass.present, float(c.max_maps)
    combo = report.combine(grid, sweep, present, max_maps)
    if combo not in sweep:
        ctx.progress(f"concepts: selection, the combined setting {combo.label()}")
        sweep.update(_sweep(sel_pass, [combo], ctx.progress))
    return sweep, combo, report.choose(sweep, present, max_maps)


def _measure(ctx: Context) -> dict:
    c = ctx.config.concepts
    layers = tuple(items(c.layers))
    if not str(ctx.config.data.name).startswith("parts_world"):
        raise ValueError(
            f"config.data.name: the seed 001 section needs PartsWorld masks, got {ctx.config.data.name!r}"
        )
    class_parts = concepts_eval.class_part_table(feed.parts_world_config_of(ctx.config.data))
    n_report = min(int(c.num_images), len(ctx.test["image"]))
    test = {k: np.asarray(v)[:n_report] for k, v in ctx.test.items()}
    n_rel, n_sel = int(c.relevance_images), int(c.select_images)
    train = ctx.load("train", n_rel + n_sel)
    rel_data = {k: np.asarray(v)[:n_rel] for k, v in train.items()}
    sel_data = {k: np.asarray(v)[n_rel : n_rel + n_sel] for k, v in train.items()}
    if len(sel_data["image"]) == 0:
        raise ValueError(f"concepts.select_images: no train images left after the {n_rel} relevance ones")
    ctx.progress(f"concepts: class-mean relevances on {len(rel_data['image'])} train images")
    rel = dcne.relevance_table(ctx.model, ctx.variables, rel_data["image"], rel_data["label"], layers)
    n_classes = max(int(ctx.config.data.num_classes), int(np.max(test["label"])) + 1)
    order = dcne.class_top_neurons(rel, np.asarray(rel_data["label"]).astype(int), n_classes, rel.shape[1])
    batch = int(c.batch_images)
    grid = candidates(c, rel.shape[1])
    sel_pass = Pass(ctx, sel_data, layers, order, batch, class_parts)
    sweep, combo, chosen = _choose(ctx, sel_pass, grid, c)
    default = grid["neurons"][0]
    rep_pass = Pass(ctx, test, layers, order, batch, class_parts)
    methods = _report(rep_pass, {"default": default, "chosen": chosen}, c, ctx.progress)
    return {
        "layers": layers,
        "n_neurons": rel.shape[1],
        "n_report": n_report,
        "n_relevance": n_rel,
        "n_select": len(sel_data["image"]),
        "grid": grid,
        "sweep": sweep,
        "combo": combo,
        "default": default,
        "chosen": chosen,
        "methods": methods,
        "present": rep_pass.present,
        "select_present": sel_pass.present,
        "bootstrap": int(c.bootstrap),
        "max_maps": float(c.max_maps),
        "nmf": int(c.nmf_components),
        "model": f"{ctx.config.model.name} at {ctx.config.data.image_size} px",
    }


def run(ctx: Context) -> Section:
    """The seed 001 section: the concept-count study, Table 1 and Fig. 3 (module docstring)."""
    t0 = time.perf_counter()
    m = _measure(ctx)
    ctx.progress("concepts: tables")
    rows, body, curve = report.build(m)
    path = os.path.join(ctx.workdir, "concepts_iou_vs_complexity.png")
    viz.save_figure(viz.plot_iou_vs_complexity(curve), path)
    return Section(
        title="Concise hierarchical concepts (seed 001, Pan et al.)",
        rows=rows,
        body=body,
        figures=[os.path.basename(path)],
        wall_s=time.perf_counter() - t0,
    )
