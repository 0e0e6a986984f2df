"""Seed 004 (Cluster-CAM, Feng et al. 2024): Tables 1-2 and the ablations re-run on the shared CNN.

Protocol. The explained class is the model's prediction on the clean image (the paper's "predicted
class"); every CAM explains ``config.evaluate.layer``. Confidence drop and increase number (eq. 23) are
those of :func:`jinterp.metrics.faithfulness.confidence_change`: the softmax probability of that class
on the image (Y) and on the explanation image ``X ∘ H`` (O), H the [0, 1] heatmap at input size,
multiplied into the (normalised) input the model takes, so the masked-out baseline is the data-set
mean colour (torch-cam's convention). Both readings of eq. 23 are reported: ``relu(Y - O) / Y`` (the
Grad-CAM++ "average drop" the paper cites, clipped at 0) and ``(Y - O) / Y`` as printed; the increase
number is the percentage of images with ``O > Y``. 95 % intervals are percentile bootstraps over
images (``cluster_cam_eval.bootstrap`` resamples, seed 0); differences between methods are paired
(the same resampled images).

Cluster-CAM is computed once per (clustering, Q) and image (:func:`jinterp.explain.cluster_cam_details`:
cluster maps, cognition-base and -scissors); the heatmap of every β of the sweep is then eq. 22 on those
maps (:func:`beta_heatmaps`), so the β sweep costs one forward pass per image and β. The paper's form
is β = 0.5 (base − scissors, equal weights; the paper gives no β for Table 1), Q = 6 (its Table 2);
jinterp's default is β = 1 (the base map alone). β and Q are *chosen* on a selection split (test images
after the reported ones, or train images when the test set is too small) and *reported* on the others.

Spectral clustering is the paper's §3.1 as written (``method='spectral'``: SSIM graph, eq. 12
adjacency, L = D − A, K eigenvectors separate from Q), swept over Q at fixed K and over K at Q = 6,
beside jinterp's earlier normalised variant (``'spectral_normalized'``). Table 2: wall time per image of
each jitted explainer (after compilation, averaged over the chunks after the first; a shared CPU, so
ratios matter more than seconds) and the forward / backward passes the registry states.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jinterp import explain, viz
from jinterp.explain import pipeline
from jinterp.fidelity import cluster_cam_report as report
from jinterp.fidelity.section import Context, Section
from jinterp.metrics.faithfulness import confidence_change

PAPER_FORM = 0.5  # β of the paper's eq. 22 with base and scissors equally weighted
DEFAULT_Q = 6  # the paper's Table 2


def parse_list(text: str, kind=float) -> list:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]`` (``kind`` applied to each comma-separated item)."""
    return [kind(v) for v in str(text).split(",") if v.strip()]


@functools.partial(jax.jit, static_argnames=("size",))
def beta_heatmaps(cluster_maps, base, scissors, betas, size):
    """Eq. 22 for every β: ``H = β F~_base − (1 − β) F~_scissors``, then the shared pipeline (ReLU,
    upsample, min-max), as :func:`jinterp.explain.cluster_cam_details` does for one β.

    Args:
      cluster_maps: (N, Q, h, w) representative maps F~ (eq. 18); base, scissors: (N,) cluster indices.
      betas: (B,) balance factors.
      size: (H, W) input size (static).

    Returns:
      (B, N, H, W) heatmaps in [0, 1].
    """
    pick = jax.vmap(lambda m, q: m[q])
    b, s = pick(cluster_maps, base), pick(cluster_maps, scissors)
    return jax.vmap(lambda beta: pipeline.finish([beta * b - (1 - beta) * s], size))(betas)


def _chunks(n: int, batch: int) -> list[np.ndarray]:
    """Index chunks of exactly ``batch`` (the last one padded by repeating its final index), so every
    call has one shape and compiles once."""
    out = []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n))
        out.append(np.concatenate([idx, np.full(batch - idx.size, idx[-1])]) if idx.size < batch else idx)
    return out


def _timed_chunks(fn, n: int, batch: int):
    """``fn(idx)`` over the chunks; returns ``(results trimmed to n, seconds per image)``, the time from
    the chunks after the first (which compiles), or from a repeat of the first when there is one chunk."""
    outs, times = [], []
    for idx in _chunks(n, batch):
        t0 = time.perf_counter()
        outs.append(jax.block_until_ready(fn(idx)))
        times.append(time.perf_counter() - t0)
    if len(times) == 1:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(_chunks(n, batch)[0]))
        times.append(time.perf_counter() - t0)
    per_image = float(np.mean(times[1:])) / batch
    merged = jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a])[:n], *outs)
    return merged, per_image


class Evaluator:
    """Targets, confidence on explanation images and explanations for one split (numpy ``images``)."""

    def __init__(self, model, variables, images: np.ndarray, layer: str, batch: int):
        self.model, self.variables, self.layer, self.batch = model, variables, layer, batch
        self.images = jnp.asarray(images, jnp.float32)
        self.apply_fn = lambda x: model.apply(variables, x)[0]  # one object: one compiled metric
        logits = np.concatenate(
            [np.asarray(self.apply_fn(self.images[i])) for i in _chunks(len(images), batch)]
        )
        self.targets = jnp.asarray(logits[: len(images)].argmax(-1), jnp.int32)
        self.n = len(images)

    def confidence(self, heat: np.ndarray, n: int | None = None) -> dict[str, np.ndarray]:
        """Per-image ``Y`` and ``O`` of eq. 23 for heatmaps (..., n, H, W) of the first ``n`` images."""
        heat = np.asarray(heat)
        n = heat.shape[-3] if n is None else n
        lead = heat.shape[:-3]
        reps = int(np.prod(lead)) if lead else 1
        images = jnp.tile(self.images[:n], (reps, 1, 1, 1))
        targets = jnp.tile(self.targets[:n], reps)
        r = confidence_change(self.apply_fn, images, heat.reshape(-1, *heat.shape[-2:]), targets, 64)
        return {
            "y": np.asarray(r["p_image"]).reshape(*lead, n),
            "o": np.asarray(r["p_explanation"]).reshape(*lead, n),
        }

    def explain(self, spec: str):
        """Heatmaps (N, H, W) of a registry method on this split and its seconds per image."""
        spec = explain.with_defaults(spec, layer=self.layer)
        return _timed_chunks(
            lambda idx: explain.explain(
                spec, self.model, self.variables, self.images[idx], self.targets[idx]
            ),
            self.n,
            self.batch,
        )

    def cluster(self, betas, n: int | None = None, **options):
        """Cluster-CAM on the first ``n`` images: β-heatmaps (B, n, H, W), the details' base /
        scissors / scores, and seconds per image of :func:`jinterp.explain.cluster_cam_details`."""
        n = self.n if n is None else n
        size = tuple(self.images.shape[1:3])
        opts = {"layer": self.layer, "batch": 64, **options}

        def details(idx):
            d = explain.cluster_cam_details(
                self.model, self.variables, self.images[idx], self.targets[idx], **opts
            )
            return {k: d[k] for k in ("cluster_maps", "base", "scissors", "scores", "heatmap")}

        d, per_image = _timed_chunks(details, n, self.batch)
        heat = np.concatenate(
            [
                np.asarray(
                    beta_heatmaps(
                        d["cluster_maps"][i], d["base"][i], d["scissors"][i], jnp.asarray(betas), size
                    )
                )
                for i in _chunks(n, self.batch)
            ],
            axis=1,
        )[:, :n]
        return heat, d, per_image


def _selection_images(ctx: Context, n_report: int, n_select: int) -> tuple[np.ndarray, str]:
    """Held-out test images after the reported ones, else the first train images."""
    test = ctx.test["image"]
    if len(test) >= n_report + n_select:
        return test[n_report : n_report + n_select], f"test images {n_report}..{n_report + n_select - 1}"
    return ctx.load("train", n_select)["image"], f"the first {n_select} train images"


def _baselines(ev: Evaluator, specs, progress) -> dict:
    out = {}
    for spec in specs:
        progress(f"cluster_cam: {spec} on {ev.n} images")
        heat, per_image = ev.explain(spec)
        out[spec] = {"heat": heat, "time": per_image, **ev.confidence(heat)}
    return out


def _cluster_sweep(ev: Evaluator, grid, betas, n, progress, label) -> dict:
    """``{setting: {"heat" (B, n, H, W), "y", "o" (B, n), "time"}}`` over option dicts ``grid``."""
    out = {}
    for key, options in grid.items():
        progress(f"cluster_cam: {label} {key} on {n} images")
        heat, _, per_image = ev.cluster(betas, n, **options)
        out[key] = {"heat": heat, "time": per_image, **ev.confidence(heat)}
    return out


def _measure(ctx: Context, e) -> dict:
    model, variables, layer = ctx.model, ctx.variables, ctx.config.evaluate.layer
    n_report = min(int(e.num_images), len(ctx.test["image"]))
    select, select_name = _selection_images(ctx, n_report, int(e.select_images))
    batch = min(int(e.batch), n_report)
    rep = Evaluator(model, variables, ctx.test["image"][:n_report], layer, batch)
    sel = Evaluator(model, variables, select, layer, min(batch, len(select)))
    # The paper's form (β = 0.5, Q = 6) and the default (β = 1) are always measured.
    betas = sorted(set(parse_list(e.betas)) | {PAPER_FORM, 1.0})
    qs = sorted(set(parse_list(e.clusters, int)) | {DEFAULT_Q})
    k_fixed = int(e.spectral_k)
    ks = sorted(set(parse_list(e.eigenvectors, int)) | {k_fixed})
    n_spec = min(int(e.spectral_images), n_report)
    kmeans_grid = {("kmeans", q): {"clusters": q} for q in qs}
    spec_grid = {
        ("spectral", q, k_fixed): {"clusters": q, "method": "spectral", "eigenvectors": k_fixed} for q in qs
    }
    spec_grid.update(
        {
            ("spectral", DEFAULT_Q, k): {"clusters": DEFAULT_Q, "method": "spectral", "eigenvectors": k}
            for k in ks
        }
    )
    spec_grid[("spectral_normalized", DEFAULT_Q)] = {"clusters": DEFAULT_Q, "method": "spectral_normalized"}
    p = ctx.progress
    return {
        "layer": layer,
        "betas": betas,
        "clusters": qs,
        "eigenvectors": ks,
        "spectral_k": k_fixed,
        "n_report": n_report,
        "n_select": len(select),
        "n_spectral": n_spec,
        "select_name": select_name,
        "baselines": _baselines(rep, parse_list(e.baselines, str), p),
        "kmeans": _cluster_sweep(rep, kmeans_grid, betas, n_report, p, "report"),
        "kmeans_select": _cluster_sweep(sel, kmeans_grid, betas, len(select), p, "selection"),
        "spectral": _cluster_sweep(rep, spec_grid, betas, n_spec, p, "report"),
        "images": np.asarray(rep.images[:8]),
        "channels": _channels(ctx, rep),
    }


def _channels(ctx: Context, ev: Evaluator) -> int:
    _, out = ctx.model.apply(ctx.variables, ev.images[:1])
    return int(out[ctx.config.evaluate.layer].shape[-1])


def _figures(ctx: Context, m: dict, baseline_names) -> list[str]:
    """The β × Q sweep, the spectral sweeps and example heatmaps, drawn by :mod:`jinterp.viz`."""
    import os

    names = []
    panels = report.sweep_panels(m)
    path = os.path.join(ctx.workdir, "cluster_cam_sweeps.png")
    viz.save_figure(viz.plot_sweep_panels(panels, "average drop % (lower is better)"), path)
    names.append(os.path.basename(path))
    q6 = m["kmeans"][("kmeans", DEFAULT_Q)]
    heat = {n: m["baselines"][n]["heat"][:6] for n in baseline_names}
    b = m["betas"]
    for label, beta in (("Cluster β=0.5", PAPER_FORM), ("Cluster β=1", 1.0)):
        if beta in b:
            heat[label] = q6["heat"][b.index(beta), :6]
    path = os.path.join(ctx.workdir, "cluster_cam_heatmaps.png")
    viz.save_figure(viz.plot_heatmap_grid(m["images"][:6], heat, max_images=6), path)
    names.append(os.path.basename(path))
    return names


def run(ctx: Context) -> Section:
    """The seed 004 section: Table 1 (confidence drop / increase), Table 2 (time, passes), β / Q /
    clustering ablations, the choice of β on held-out images; see the module docstring."""
    t0 = time.perf_counter()
    e = ctx.config.cluster_cam_eval
    m = _measure(ctx, e)
    m["bootstrap"] = int(e.bootstrap)
    ctx.progress("cluster_cam: tables")
    rows, body = report.build(m)
    figures = _figures(ctx, m, list(m["baselines"]))
    return Section(
        title="Cluster-CAM (seed 004, Feng et al. 2024)",
        rows=rows,
        body=body,
        figures=figures,
        wall_s=time.perf_counter() - t0,
    )
