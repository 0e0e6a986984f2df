"""Mask geometry: tight boxes and part landmarks of boolean masks (PartsWorld and every transform)."""

import numpy as np


def part_landmarks(part_masks: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (N, P, 2) (y, x) in [0, 1]: centroid of each part's visible pixels (pixel centres), or
    ``fallback`` (N, P, 2) for a part with no visible pixel; and the visibility flags (N, P) bool."""
    size_y, size_x = part_masks.shape[1:3]
    count = part_masks.sum((1, 2)).astype(np.float32)
    ys = (np.arange(size_y, dtype=np.float32) + 0.5) / size_y
    xs = (np.arange(size_x, dtype=np.float32) + 0.5) / size_x
    ysum = np.tensordot(part_masks.sum(2, dtype=np.float32), ys, axes=([1], [0]))
    xsum = np.tensordot(part_masks.sum(1, dtype=np.float32), xs, axes=([1], [0]))
    visible = count > 0
    safe = np.maximum(count, 1)
    centroid = np.stack([ysum / safe, xsum / safe], -1)
    return np.where(visible[..., None], centroid, fallback).astype(np.float32), visible


def mask_bbox(mask: np.ndarray) -> np.ndarray:
    """Tight normalised box [ymin, xmin, ymax, xmax] of each (N, H, W) mask; zeros for an empty mask."""
    n, h, w = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    has = rows.any(1)
    y0, y1 = rows.argmax(1), h - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), w - cols[:, ::-1].argmax(1)
    box = np.stack([y0 / h, x0 / w, y1 / h, x1 / w], 1).astype(np.float32)
    return np.where(has[:, None], box, 0).astype(np.float32)
