"""Every figure: image grids, part overlays, heatmaps, curves and the evaluation report's figures.

Each ``plot_*`` function returns a ``matplotlib.figure.Figure`` built with the Figure API, never
attached to pyplot: no backend is switched (a notebook's inline backend is untouched) and nothing has
to be closed. :func:`save_figure` writes a figure as PNG. The evaluation report in one call is
:func:`write_report` (tables and ``metrics.json`` from :mod:`jinterp.metrics.report`, figures from
:func:`report_figures`); :func:`compare` does the same over several evaluated runs.
"""

import os
import textwrap
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from jinterp.data import PART_NAMES, denormalize_images
from jinterp.metrics import report

# One distinct, saturated colour per PartsWorld part (body, head, beak, tail, wing, legs).
PART_COLORS = np.array(
    [[0.12, 0.47, 0.71], [1.0, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.40, 0.74],
     [0.09, 0.75, 0.81]],
    np.float32,
)  # fmt: skip


def save_figure(fig: Figure, path, dpi: int = 120) -> str:
    """Save ``fig`` as a PNG (white background) at ``path``, creating its folder; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="tight")


def display01(images) -> np.ndarray:
    """Images for display in [0, 1]: uint8 divided by 255, anything else min-max scaled per image
    (so normalised or unbounded inputs show their full contrast; a constant image shows as 0).

    Args:
      images: (N, H, W, C) or (N, H, W), any dtype and range.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255
    images = images.astype(np.float32)
    axes = tuple(range(1, images.ndim))
    lo, hi = images.min(axes, keepdims=True), images.max(axes, keepdims=True)
    return (images - lo) / np.where(hi > lo, hi - lo, 1.0)


def plot_image_grid(images, titles=None, title_colors=None, ncols: int = 8, panel: float = 1.6) -> Figure:
    """A grid of images, row by row, each with an optional (coloured) title.

    Args:
      images: (N, H, W, 3), (N, H, W, 1) or (N, H, W) (grey), uint8 or any float range: shown by
        :func:`display01` (per-image min-max scaling for floats).
      titles: N captions (None or "" for none); title_colors: N matplotlib colours (None: default).
      ncols: images per row (at most N); panel: inches per image (plus 0.2 in per row for the title).

    Returns:
      A ``Figure`` whose first N axes hold the images in order (callers may draw on them, e.g. overlays).
    """
    images = display01(images)
    n = len(images)
    if n == 0 or images.ndim not in (3, 4):
        raise ValueError(f"images: expected a non-empty (N, H, W[, C]) array, got shape {images.shape}")
    for arg, value in (("titles", titles), ("title_colors", title_colors)):
        if value is not None and len(value) != n:
            raise ValueError(f"{arg}: expected {n} entries (one per image), got {len(value)}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    fig = _figure(panel * ncols, (panel + 0.2) * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], **({"cmap": "gray", "vmin": 0, "vmax": 1} if images.ndim == 3 else {}))
        if titles is not None and titles[i]:
            color = None if title_colors is None else title_colors[i]
            ax.set_title(str(titles[i]), fontsize=7, **({} if color is None else {"color": color}))
    return fig


def _images01(batch: dict, normalize) -> np.ndarray:
    images = np.asarray(batch["image"])
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255
    return denormalize_images(images, normalize) if normalize is not None else np.clip(images, 0, 1)


def part_overlay(
    image: np.ndarray, part_masks: np.ndarray, alpha: float = 0.6, dim: float = 0.45
) -> np.ndarray:
    """RGB in [0, 1]: the image dimmed to grey, each part painted in its ``PART_COLORS`` colour.

    Args:
      image: (H, W, 3) float in [0, 1].
      part_masks: (H, W, P) bool (disjoint parts).
      alpha: opacity of the part colours.
      dim: brightness of the greyed image under the colours (so colours read well on any background).
    """
    grey = np.repeat(image.mean(-1, keepdims=True), 3, -1) * dim + image * (1 - dim) * 0.35
    colors = PART_COLORS[: part_masks.shape[-1]]
    paint = part_masks.astype(np.float32) @ colors
    covered = part_masks.any(-1, keepdims=True)
    return np.where(covered, (1 - alpha) * grey + alpha * paint, grey)


def plot_examples(
    batch: dict,
    *,
    class_names=None,
    part_names=PART_NAMES,
    num: int = 16,
    ncols: int = 8,
    normalize=None,
    landmarks: bool = True,
    panel: float = 1.7,
) -> Figure:
    """A grid of examples: each one as the image (top) and its part masks overlaid (bottom), with the
    class caption, the outline of ``disc_mask`` (white) and the part landmarks (dots).

    Args:
      batch: dict with ``image`` (N,H,W,3) uint8 or float, ``label`` (N,), optional ``part_masks``
        (N,H,W,P), ``disc_mask`` (N,H,W), ``object_mask``, ``landmarks`` (N,P,2), ``part_visible``.
      class_names: label -> caption (list); default the label number.
      part_names: names of the part channels, for the legend.
      num, ncols: examples shown and examples per row.
      normalize: how float images were normalised (``jinterp.data.normalize_images``), to undo it;
        None: float images are taken to be in [0, 1].
      landmarks: draw the landmarks of visible parts.
      panel: inches per image panel.

    Returns:
      A matplotlib ``Figure`` (not attached to pyplot).
    """
    images = _images01(batch, normalize)
    n = min(num, len(images))
    if n == 0:
        raise ValueError("batch: expected at least one example, got 0")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    masks = batch.get("part_masks")
    if masks is None and "object_mask" in batch:
        masks = np.asarray(batch["object_mask"])[..., None]
    rows_per = 1 if masks is None else 2
    fig = Figure(figsize=(ncols * panel, nrows * (rows_per * panel + 0.35) + 0.6))
    height = fig.get_figheight()
    outer = fig.add_gridspec(nrows, 1, left=0.01, right=0.99, top=1 - 0.35 / height, bottom=0.45 / height,
                             hspace=0.3 / panel)  # fmt: skip
    cells = [outer[r].subgridspec(rows_per, ncols, wspace=0.04, hspace=0.04) for r in range(nrows)]
    size = images.shape[1:3]
    for i in range(n):
        r, c = divmod(i, ncols)
        label = int(np.asarray(batch["label"])[i])
        caption = class_names[label] if class_names is not None else f"class {label}"
        ax = fig.add_subplot(cells[r][0, c])
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(textwrap.fill(f"{label}: {caption}", 24, break_on_hyphens=False), fontsize=7, pad=2)
        ax.set_axis_off()
        if masks is None:
            continue
        ax = fig.add_subplot(cells[r][1, c])
        ax.imshow(part_overlay(images[i], np.asarray(masks[i])), interpolation="nearest")
        if "disc_mask" in batch and np.any(batch["disc_mask"][i]):
            ax.contour(
                np.asarray(batch["disc_mask"][i], np.float32), levels=[0.5], colors="white", linewidths=0.9
            )
        if landmarks and "landmarks" in batch:
            lm = np.asarray(batch["landmarks"][i])
            vis = (
                np.asarray(batch["part_visible"][i], bool)
                if "part_visible" in batch
                else np.ones(len(lm), bool)
            )
            y, x = lm[vis, 0] * size[0] - 0.5, lm[vis, 1] * size[1] - 0.5
            ax.scatter(x, y, s=9, c=PART_COLORS[: len(lm)][vis], edgecolors="black", linewidths=0.5)
        ax.set_xlim(-0.5, size[1] - 0.5)
        ax.set_ylim(size[0] - 0.5, -0.5)
        ax.set_axis_off()
    if masks is not None and masks.shape[-1] > 1:
        handles = [Patch(color=PART_COLORS[k], label=part_names[k]) for k in range(masks.shape[-1])]
        if "disc_mask" in batch:
            handles.append(Patch(facecolor="none", edgecolor="black", label="disc_mask (white outline)"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def save_examples_grid(batch: dict, path: str, *, dpi: int = 110, **kwargs) -> str:
    """Render ``plot_examples(batch, **kwargs)`` and save it as a PNG at ``path``; returns the path."""
    return save_figure(plot_examples(batch, **kwargs), path, dpi=dpi)


def _overlay(ax, heat, alpha: float) -> None:
    ax.imshow(np.asarray(heat), cmap="jet", alpha=alpha, vmin=0, vmax=1)


def plot_heatmap_grid(
    images, heatmaps: Mapping[str, np.ndarray], alpha: float = 0.5, max_images: int = 8
) -> Figure:
    """Overlay grid: one row per image, the image then one column per method's heatmap.

    Args:
      images: (N, H, W, 3) images, any range (min-max scaled for display).
      heatmaps: ``{method_name: (N, H, W) heatmaps in [0, 1]}``.
    """
    imgs = np.asarray(images, np.float32)[:max_images]
    names = list(heatmaps)
    n, cols = imgs.shape[0], len(names) + 1
    titles = [""] + names + [""] * (cols * (n - 1))  # method names above the first row
    fig = plot_image_grid(np.repeat(imgs, cols, axis=0), titles=titles, ncols=cols, panel=1.6)
    for i in range(n):
        for j, name in enumerate(names):
            _overlay(fig.axes[i * cols + j + 1], np.asarray(heatmaps[name])[i], alpha)
    return fig


def plot_concepts(concepts, image, columns: int = 5, max_concepts: int = 25) -> Figure:
    """A grid: the image, then each concept's representative map (positive part) over it.

    Args:
      concepts: a ``jinterp.explain.concepts.Concepts`` (concise concepts, seed 001 eq. 1-6).
      image: (H, W, 3) the explained image, any range.
    """
    m = min(len(concepts), max_concepts)
    titles = ["image"]
    for i in range(m):
        layer, ch = concepts.representatives[i]
        titles.append(f"{layer}:{ch} (+{len(concepts.neurons[i]) - 1})\nR={concepts.relevances[i]:.3g}")
    images = np.repeat(np.asarray(image, np.float32)[None], m + 1, axis=0)
    fig = plot_image_grid(images, titles=titles, ncols=columns, panel=2.2)
    for i in range(m):
        heat = np.maximum(concepts.maps[i], 0)
        _overlay(fig.axes[i + 1], heat / heat.max() if heat.max() > 0 else heat, 0.5)
    return fig


def plot_iou_vs_complexity(result: dict) -> Figure:
    """IoU vs number of maps per explanation (seed 001 Fig. 3): CRP-k, concise-k, the other methods.

    Args:
      result: ``jinterp.metrics.concepts_eval.evaluate_concepts(...)``.
    """
    fig = _figure(6.4, 4.4)
    ax = fig.subplots()
    for name, marker in (("CRP-k", "o"), ("concise-k", "s")):
        xs, ys = zip(*result["curves"][name], strict=True)
        ax.plot(xs, ys, marker=marker, label=name)
    for name, r in result["rows"].items():
        if name.startswith(("CRP-", "concise-")):
            continue
        mk = "*" if name == "concise" else "^"
        ax.scatter([r["complexity"]], [r["best"]], marker=mk, s=90 if mk == "*" else 40, label=name, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("explanation complexity (maps per explanation)")
    ax.set_ylabel("mean max-IoU, defining parts")
    ax.set_title(f"seed-001 protocol, {result['num_images']} PartsWorld test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def _curves(lines, xlabel: str, ylabel: str, size=(4.5, 3.5), style: str = "o-", ylim=None) -> Figure:
    """One axes of labelled curves: ``lines`` is a list of ``(label, x, y)``."""
    fig = _figure(*size)
    ax = fig.subplots()
    for label, x, y in lines:
        ax.plot(np.asarray(x), np.asarray(y), style, ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    return fig


def plot_inconsistency_diversity(curves: Mapping[str, Mapping]) -> Figure:
    """Inconsistency (x) against diversity (y) per model, one marker per τ (seed 000 Fig. 4).

    Args:
      curves: ``{model_name: inconsistency_diversity_curve(...)}``.
    """
    lines = [(name, c["inconsistency"], c["diversity"]) for name, c in curves.items()]
    return _curves(lines, "inconsistency (lower is better)", "diversity (higher is better)", size=(4.5, 4))


def plot_probes(probes: Mapping[str, list], labels: Mapping[str, str]) -> Figure:
    """Mechanical probes over training, one panel per probe, one line per model (mean over seeds).

    Args:
      probes: ``{model: [per seed: [{"step": s, probe: value, ...} per checkpoint]]}``.
      labels: ``{probe key: axis label}``, one panel each.
    """
    fig = _figure(3.2 * len(labels), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(labels)))
    for ax, (key, label) in zip(axes, labels.items(), strict=True):
        for name, runs in probes.items():
            steps = [p["step"] for p in runs[0]]
            mean = np.mean([[p[key] for p in run] for run in runs], 0)
            ax.plot(steps, mean, "o-", ms=3, label=name)
        ax.set_xlabel("fine-tuning step")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_pointing_curves(results: Mapping[str, Mapping]) -> Figure:
    """Pointing accuracy against residual energy per explainer (seed 003 Fig. 5/6).

    Args:
      results: ``{method_name: energy_pointing_game(...)}``.
    """
    lines = [(f"{name} ({float(r['mean']):.3f})", r["energies"], r["curve"]) for name, r in results.items()]
    return _curves(lines, "residual energy E", "pointing accuracy", ylim=(0, 1.02))


def plot_perturbation_curves(results: Mapping[str, Mapping], key: str = "curve") -> Figure:
    """Deletion / insertion curves per explainer with their AUC in the legend.

    Args:
      results: ``{method_name: perturbation_curve(...)}``; key: "curve" (probability) or
        "accuracy_curve".
    """
    lines = [(f"{n} (AUC {float(r['auc_mean']):.3f})", r["fractions"], r[key]) for n, r in results.items()]
    ylabel = "target probability" if key == "curve" else "accuracy"
    return _curves(lines, "fraction of pixels perturbed", ylabel, style="-")


def plot_attribute_examples(rows: list, boxes: list, captions: list, heat=None) -> Figure:
    """Example-based explanation (seed 003 Fig. 4): per CLA-layer row, the input then training images,
    each with the boxes of its non-redundant attribute regions; ``heat`` overlays a relevance map on
    the first panel of each row.

    Args:
      rows: per layer, (K, H, W, 3) images (input first); boxes: per layer, K lists of pixel
        ``(y0, x0, y1, x1)``; captions: per layer, K titles.
    """
    k = max(len(r) for r in rows)
    pad = [np.concatenate([r, np.zeros((k - len(r),) + r.shape[1:], r.dtype)]) for r in rows]
    titles = [t for c in captions for t in list(c) + [""] * (k - len(c))]
    fig = plot_image_grid(np.concatenate(pad), titles=titles, ncols=k, panel=1.6)
    for i, per_image in enumerate(boxes):
        if heat is not None:
            _overlay(fig.axes[i * k], heat, 0.45)
        for j, image_boxes in enumerate(per_image):
            for y0, x0, y1, x1 in image_boxes:
                fig.axes[i * k + j].add_patch(
                    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2)
                )
    return fig


def plot_metric_pairs(curves: Mapping[str, Mapping], x: str = "interp_mean") -> Figure:
    """Landmark metric-pair curves (seed 002 Fig. 6): Stability, Purity, Diversity against Interp.

    Args:
      curves: ``{model_name: landmark_metric_curves(...)}``.
    """
    ys = ("stability_mean", "purity_mean", "diversity_mean")
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, 3)
    for name, c in curves.items():
        for ax, y in zip(axes, ys, strict=True):
            ax.plot(np.asarray(c[x]), np.asarray(c[y]), "o-", ms=3, label=name)
    for ax, y in zip(axes, ys, strict=True):
        ax.set_xlabel(x.removesuffix("_mean"))
        ax.set_ylabel(y.removesuffix("_mean"))
    axes[0].legend(fontsize=8)
    return fig


def plot_tsne(responses, groups, perplexity: float = 30.0, seed: int = 0, title: str | None = None) -> Figure:
    """t-SNE of filter responses coloured by filter group (seed 000 §4.2, Fig. 5).

    Args:
      responses: (C, D) one row per filter (e.g. its maps over test images, flattened), or
        (N, h, w, C) feature maps, which are turned into that matrix.
      groups: (C,) group / module of each filter.
      perplexity: t-SNE perplexity, clipped below the number of filters.
    """
    from sklearn.manifold import TSNE

    r = np.asarray(responses, np.float64)
    if r.ndim == 4:
        r = np.moveaxis(r, -1, 0).reshape(r.shape[-1], -1)
    g = np.asarray(groups)
    if r.ndim != 2 or g.shape != (r.shape[0],):
        raise ValueError(
            f"groups: expected shape ({r.shape[0]},) (one per filter of responses), got {g.shape}"
        )
    perp = float(min(perplexity, max(2.0, (r.shape[0] - 1) / 3)))
    emb = TSNE(2, perplexity=perp, random_state=seed, init="pca").fit_transform(r)
    fig = _figure(4.5, 4)
    ax = fig.subplots()
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=g, cmap="tab10", s=14)
    ax.legend(*sc.legend_elements(), fontsize=7, title="group")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


def _method_curves(scores: dict, prefix: str, x: str) -> dict:
    return {
        "energies" if x == "energies" else "fractions": scores[f"{prefix}_{x}"],
        "curve": scores[f"{prefix}_curve"],
        "mean": scores.get(f"{prefix}_mean"),
        "auc_mean": scores.get(f"{prefix}_auc_mean"),
    }


def report_figures(
    results_by_model: Mapping[str, dict],
    outdir: str,
    artifacts_by_model: Mapping | None = None,
    dpi: int = 120,
) -> list[tuple[str, str]]:
    """Draw and save the evaluation report's figures into ``outdir``.

    Figures: inconsistency-diversity curves of all models; per model, energy-pointing and deletion
    curves of every method, a heatmap grid and a t-SNE of filter responses coloured by module (the
    last two need that model's ``artifacts``, the second value of ``metrics.report.evaluate``).

    Returns:
      ``[(title, file name in outdir)]`` in report order, for ``metrics.report.write_report(figures=)``.
    """
    figures = []

    def save(title: str, file: str, fig: Figure) -> None:
        save_figure(fig, os.path.join(outdir, file), dpi=dpi)
        figures.append((title, file))

    curves = {name: r["curves"]["inconsistency_diversity"] for name, r in results_by_model.items()}
    save("inconsistency-diversity", "inconsistency_diversity.png", plot_inconsistency_diversity(curves))
    for name, r in results_by_model.items():
        ex = r["explanations"]
        if ex:
            pointing = {m: _method_curves(s, "energy_pointing", "energies") for m, s in ex.items()}
            deletion = {m: _method_curves(s, "deletion", "fractions") for m, s in ex.items()}
            save(f"{name}: pointing", f"{name}_pointing.png", plot_pointing_curves(pointing))
            save(f"{name}: deletion", f"{name}_deletion.png", plot_perturbation_curves(deletion))
        art = (artifacts_by_model or {}).get(name)
        if art is not None:
            if art["heatmaps"]:
                fig = plot_heatmap_grid(art["images"], art["heatmaps"])
                save(f"{name}: heatmaps", f"{name}_heatmaps.png", fig)
            fig = plot_tsne(art["responses"], art["modules"], title=name)
            save(f"{name}: t-SNE of filters by module", f"{name}_tsne.png", fig)
    return figures


def write_report(
    results_by_model: Mapping[str, dict], outdir: str, artifacts_by_model: Mapping | None = None
) -> dict:
    """Write ``metrics.json``, ``report.md`` and the figures of one or several evaluated models.

    The tables come from :func:`jinterp.metrics.report.write_report`, the figures from
    :func:`report_figures`.

    Returns:
      ``{"metrics": path, "report": path, <figure file stem>: path, ...}``.
    """
    figures = report_figures(results_by_model, outdir, artifacts_by_model)
    paths = report.write_report(dict(results_by_model), outdir, figures=figures)
    paths.update({file.removesuffix(".png"): os.path.join(outdir, file) for _, file in figures})
    return paths


def compare(metrics_files: Mapping[str, str], outdir: str) -> dict:
    """One report over several evaluated runs (``launch.py --mode evaluate`` wrote each ``metrics.json``).

    Args:
      metrics_files: ``{display name: path to an evaluation/metrics.json}``; each file holds one model.
      outdir: where the combined ``metrics.json``, ``report.md`` and figures go.
    """
    return write_report(report.load_runs(dict(metrics_files)), outdir)


def plot_sweep_panels(panels, ylabel: str) -> Figure:
    """Side-by-side panels of labelled curves: ``panels`` = ``[(title, xlabel, [(label, x, y), ...])]``."""
    fig = _figure(3.6 * len(panels), 3.1)
    for ax, (title, xlabel, lines) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
        for label, x, y in lines:
            ax.plot(np.asarray(x), np.asarray(y), "o-", ms=3, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=6)
    return fig
