"""Shared helpers of the metrics: shape checks, bilinear upsampling, normalised entropy, chunking.

Every metric validates at its boundary: ranks and shapes, N >= 1 and no empty axis, real dtypes, no
NaN / inf in maps, heatmaps and masks (:func:`check_maps`, :func:`check_masks`), option types and
ranges (``jinterp.checks``).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import check_finite, check_real, is_concrete


def check_rank(argument: str, value, rank: int, layout: str) -> tuple[int, ...]:
    """Raise unless ``value`` has ``rank`` axes; returns its shape."""
    shape = tuple(np.shape(value))
    if len(shape) != rank:
        raise ValueError(f"{argument}: expected a rank-{rank} {layout} array, got shape {shape}")
    return shape


def check_leading(argument: str, value, expected: tuple[int, ...], expected_name: str) -> None:
    """Raise unless the leading axes of ``value`` equal ``expected`` (e.g. (N, H, W) of the masks)."""
    got = tuple(np.shape(value))[: len(expected)]
    if got != tuple(expected):
        raise ValueError(
            f"{argument}: expected leading shape {tuple(expected)} (as {expected_name}), "
            f"got {np.shape(value)}"
        )


def check_nonempty(argument: str, masks, axes: tuple[int, ...]) -> None:
    """Raise if a concrete mask is empty over ``axes`` (e.g. an image whose object mask has no pixel)."""
    if not is_concrete(masks):
        return
    area = np.asarray(masks).astype(bool).sum(axis=axes)
    if np.any(area == 0):
        where = np.argwhere(area == 0)[:5].tolist()
        raise ValueError(
            f"{argument}: {int((area == 0).sum())} empty mask(s) (no positive pixel), "
            f"first at index {where}; "
            "drop those images or pass empty='ignore'"
        )


def check_maps(argument: str, value, rank: int, layout: str) -> tuple[int, ...]:
    """Rank check, real dtype, no empty axis (N >= 1) and no NaN / inf, for feature maps and heatmaps."""
    check_real(argument, value)
    shape = check_rank(argument, value, rank, layout)
    if 0 in shape:
        raise ValueError(f"{argument}: expected a non-empty {layout} array (N >= 1), got shape {shape}")
    check_finite(argument, value)
    return shape


def check_masks(argument: str, masks) -> None:
    """Masks are bool or real numbers in [0, 1] (binary, or soft), with no NaN / inf."""
    dtype = np.dtype(getattr(masks, "dtype", None) or np.asarray(masks).dtype)
    if dtype == np.bool_:
        return
    check_real(argument, masks)
    check_finite(argument, masks)
    if is_concrete(masks) and np.size(masks):
        m = jnp.asarray(masks)
        lo, hi = float(m.min()), float(m.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{argument}: expected values in [0, 1] (binary masks), got min {lo} max {hi}")


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (N, h, w, C) maps to (N, H, W, C).

    ``jax.image.resize`` uses half-pixel centres, i.e. torch's ``interpolate(mode="bilinear",
    align_corners=False)`` used by Network Dissection / CSGCNN when upsampling. The same interpolation
    as :func:`jinterp.ops.resize.upsample` (the CAM pipeline's), but not bitwise: jax.image normalises
    float32 kernel weights on device (differences up to ~1e-6 at e.g. 7 -> 224), and the metrics
    threshold these maps, so they keep this implementation.
    """
    n, h, w, c = maps.shape
    if (h, w) == tuple(size):
        return maps
    return jax.image.resize(maps, (n, *size, c), method="bilinear", antialias=False)


def normalised_entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    """Entropy of ``p / sum(p)`` divided by log(K) (K = size of ``axis``), in [0, 1].

    Seed 002 §III-D: "values fed into the entropy function are normalized via dividing by their
    summed value ... entropy values are normalized to [0, 1] via dividing by ... the entropy of the
    uniform distribution". An all-zero vector has entropy 0 (callers mask it out where it matters).
    """
    k = p.shape[axis]
    total = p.sum(axis=axis, keepdims=True)
    q = p / jnp.where(total > 0, total, 1.0)
    h = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0), axis=axis)
    return h / jnp.log(k) if k > 1 else jnp.zeros_like(h)


def masked_mean(x: jax.Array, valid: jax.Array, axis=None) -> jax.Array:
    """Mean of ``x`` over entries where ``valid``; NaN-free (0 when nothing is valid)."""
    valid = valid.astype(x.dtype)
    num = jnp.sum(jnp.where(valid > 0, x, 0.0) * valid, axis=axis)
    den = jnp.sum(valid, axis=axis)
    return num / jnp.maximum(den, 1.0)


def chunked_sum(fn, arrays: tuple, chunk: int):
    """Sum ``fn(*chunk_arrays)`` over leading-axis chunks of ``arrays`` with ``lax.map``.

    The data set is padded to a multiple of ``chunk``; ``fn`` receives a ``valid`` (chunk,) bool
    vector as its first argument so padded rows contribute nothing. Bounds memory: only one chunk of
    full-resolution maps exists at a time.
    """
    n = arrays[0].shape[0]
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    valid = jnp.arange(n + pad) < n
    padded = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
    split = [a.reshape(-1, chunk, *a.shape[1:]) for a in (valid, *padded)]
    parts = jax.lax.map(lambda xs: fn(*xs), split)
    return jax.tree.map(lambda x: x.sum(0), parts)


def chunked_map(fn, arrays: tuple, chunk: int):
    """Apply ``fn`` to leading-axis chunks of ``arrays`` with ``lax.map``; concatenates the results."""
    n = arrays[0].shape[0]
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    padded = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
    split = [a.reshape(-1, chunk, *a.shape[1:]) for a in padded]
    out = jax.lax.map(lambda xs: fn(*xs), split)
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:n], out)
