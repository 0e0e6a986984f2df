"""Figures: overlays, grids, curves (matplotlib, saved as PNG)."""

import os
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from jinterp.data import PART_NAMES, denormalize_images

# One distinct, saturated colour per PartsWorld part (body, head, beak, tail, wing, legs).
PART_COLORS = np.array(
    [[0.12, 0.47, 0.71], [1.0, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.40, 0.74],
     [0.09, 0.75, 0.81]],
    np.float32,
)  # fmt: skip


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
    fig = plot_examples(batch, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path
