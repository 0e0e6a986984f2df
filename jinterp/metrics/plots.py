"""Figures for the evaluation report (matplotlib, Agg backend, saved as PNG).

Each function takes the dicts returned by the metrics (or plain arrays), draws one figure, saves it
to ``path`` when given and returns the ``matplotlib.figure.Figure``.
"""

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_inconsistency_diversity(curves: Mapping[str, Mapping], path=None):
    """Inconsistency (x) against diversity (y) per model, one marker per τ (seed 000 Fig. 4).

    Args:
      curves: ``{model_name: inconsistency_diversity_curve(...)}``.
    """
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, c in curves.items():
        inc, div = np.asarray(c["inconsistency"]), np.asarray(c["diversity"])
        ax.plot(inc, div, "o-", ms=3, label=name)
    ax.set_xlabel("inconsistency (lower is better)")
    ax.set_ylabel("diversity (higher is better)")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_pointing_curves(results: Mapping[str, Mapping], path=None):
    """Pointing accuracy against residual energy per explainer (seed 003 Fig. 5/6).

    Args:
      results: ``{method_name: energy_pointing_game(...)}``.
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, r in results.items():
        ax.plot(
            np.asarray(r["energies"]),
            np.asarray(r["curve"]),
            "o-",
            ms=3,
            label=f"{name} ({float(r['mean']):.3f})",
        )
    ax.set_xlabel("residual energy E")
    ax.set_ylabel("pointing accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_perturbation_curves(results: Mapping[str, Mapping], path=None, key: str = "curve"):
    """Deletion / insertion curves per explainer with their AUC in the legend.

    Args:
      results: ``{method_name: perturbation_curve(...)}``; key: "curve" (probability) or
        "accuracy_curve".
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, r in results.items():
        ax.plot(
            np.asarray(r["fractions"]), np.asarray(r[key]), label=f"{name} (AUC {float(r['auc_mean']):.3f})"
        )
    ax.set_xlabel("fraction of pixels perturbed")
    ax.set_ylabel("target probability" if key == "curve" else "accuracy")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_metric_pairs(curves: Mapping[str, Mapping], path=None, x: str = "interp_mean"):
    """Landmark metric-pair curves (seed 002 Fig. 6): Stability, Purity, Diversity against Interp.

    Args:
      curves: ``{model_name: landmark_metric_curves(...)}``.
    """
    ys = ("stability_mean", "purity_mean", "diversity_mean")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for name, c in curves.items():
        for ax, y in zip(axes, ys, strict=True):
            ax.plot(np.asarray(c[x]), np.asarray(c[y]), "o-", ms=3, label=name)
    for ax, y in zip(axes, ys, strict=True):
        ax.set_xlabel(x.removesuffix("_mean"))
        ax.set_ylabel(y.removesuffix("_mean"))
    axes[0].legend(fontsize=8)
    return _finish(fig, path)


def plot_tsne(
    responses, groups, path=None, perplexity: float = 30.0, seed: int = 0, title: str | None = None
):
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
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=g, cmap="tab10", s=14)
    ax.legend(*sc.legend_elements(), fontsize=7, title="group")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def plot_heatmap_grid(
    images, heatmaps: Mapping[str, np.ndarray], path=None, alpha: float = 0.5, max_images: int = 8
):
    """Overlay grid: one row per image, the image then one column per method's heatmap.

    Args:
      images: (N, H, W, 3) images, any range (min-max scaled for display).
      heatmaps: ``{method_name: (N, H, W) heatmaps in [0, 1]}``.
    """
    imgs = np.asarray(images, np.float32)[:max_images]
    lo, hi = imgs.min((1, 2, 3), keepdims=True), imgs.max((1, 2, 3), keepdims=True)
    imgs = (imgs - lo) / np.where(hi > lo, hi - lo, 1.0)
    names = list(heatmaps)
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(imgs[i])
        for j, name in enumerate(names):
            axes[i, j + 1].imshow(imgs[i])
            axes[i, j + 1].imshow(np.asarray(heatmaps[name])[i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if i == 0:
                axes[0, j + 1].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    return _finish(fig, path)
