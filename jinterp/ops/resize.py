"""Bilinear resizing as a pair of small interpolation matrices (one per axis), applied with ``einsum``.

Exact cv2 / torch semantics for both ``align_corners`` conventions and one GEMM per axis on device;
the matrices are built once per (size, size) on the host (cached). The CAM pipeline upsamples with it
(``jinterp.explain.pipeline``), the digits loader builds its images with it (``jinterp.data.loader``).

The metrics' ``jinterp.metrics._common.upsample`` is the same interpolation computed by
``jax.image.resize`` (float32 kernel weights normalised on device); the two agree to ~1e-6 but not
bitwise, and the metrics threshold the upsampled maps, so each keeps its own.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

COMPUTE_DTYPES = ("float64", "float32")


@functools.lru_cache(maxsize=128)
def interp_matrix(
    n_in: int, n_out: int, align_corners: bool = False, compute_dtype: str = "float64"
) -> np.ndarray:
    """(n_out, n_in) float32 linear-interpolation weights along one axis.

    ``align_corners=False``: half-pixel centres, source ``(i + 0.5) * n_in / n_out - 0.5`` clamped
    to ``[0, n_in - 1]`` (cv2 ``INTER_LINEAR``, torch ``align_corners=False``, jax.image 'linear'
    when upsampling). ``align_corners=True``: source ``i * (n_in - 1) / (n_out - 1)`` (torch
    ``nn.UpsamplingBilinear2d``, which PGC's Score-CAM uses for its masks).

    ``compute_dtype``: float rounding of the same weights. ``"float64"``: source ``(i + 0.5) * (n_in /
    n_out) - 0.5`` and both weights in float64, rounded to float32 once (the CAM pipeline, matching
    cv2). ``"float32"``: source ``(i + 0.5) * n_in / n_out - 0.5``, fraction rounded to float32 before
    ``1 - fraction`` (the digits loader's arithmetic, kept so its uint8 images stay bit-identical).
    They differ by at most a few float32 ulps per weight (``tests/test_ops.py``).
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype: expected one of {list(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    if n_in < 1 or n_out < 1:
        raise ValueError(f"n_in, n_out: expected sizes >= 1, got {n_in}, {n_out}")
    dtype = np.dtype(compute_dtype)
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(i)
    elif compute_dtype == "float64":
        src = (i + 0.5) * (n_in / n_out) - 0.5
    else:
        src = (i + 0.5) * n_in / n_out - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(dtype)
    m = np.zeros((n_out, n_in), dtype)
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def upsample(maps: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
    """Bilinear resize of (..., h, w) maps to (..., H, W) (:func:`interp_matrix` along both axes)."""
    h, w = maps.shape[-2:]
    ry = jnp.asarray(interp_matrix(h, size[0], align_corners))
    rx = jnp.asarray(interp_matrix(w, size[1], align_corners))
    return jnp.einsum("Yh,...hw,Xw->...YX", ry, maps, rx, precision=jax.lax.Precision.HIGHEST)
