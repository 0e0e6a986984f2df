"""Separable Gaussian blurs of (N, H, W, C) images, one kernel builder, two border conventions.

* :func:`gaussian_blur_reflect`: kornia's ``gaussian_blur2d`` (reflect border, any kernel size),
  Group-CAM's blurred baseline (``jinterp.explain.masking``).
* :func:`gaussian_blur_edge`: edge-replicating border, odd sizes, RISE's insertion substrate
  (``jinterp.metrics.faithfulness``).

Both normalise the kernel to sum 1, so constants are preserved; they differ only at the border.
"""

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_kernel(size: int, sigma) -> np.ndarray | jax.Array:
    """(size,) normalised 1-D Gaussian; an even size is centred between two taps (kornia).

    A Python number ``sigma`` gives float64 NumPy weights (built once, at trace time); a jax value
    (e.g. ``sigma`` as a jit argument) gives float32 weights computed on device.
    """
    concrete = isinstance(sigma, (int, float, np.number))
    if size < 1 or (concrete and not sigma > 0):
        raise ValueError(f"size, sigma: expected size >= 1 and sigma > 0, got {size}, {sigma}")
    xp = np if concrete else jnp
    x = np.arange(size, dtype=np.float64) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    g = xp.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur_reflect(images: jax.Array, kernel: int, sigma: float) -> jax.Array:
    """kornia ``gaussian_blur2d`` (separable, normalised kernel, reflect border) on (N, H, W, C)."""
    g = jnp.asarray(gaussian_kernel(kernel, sigma), images.dtype)
    lo, hi = (kernel - 1) // 2, kernel // 2
    padded = jnp.pad(images, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    rows = sum(g[i] * padded[:, i : i + h] for i in range(kernel))
    return sum(g[i] * rows[:, :, i : i + w] for i in range(kernel))


def gaussian_blur_edge(images: jax.Array, sigma: float = 5.0, size: int = 11) -> jax.Array:
    """Separable Gaussian blur of (N, H, W, C) images, edge padding (RISE's substrate: 11 px, σ=5).

    ``sigma`` may be traced (a jit argument); ``size`` is static.
    """
    r = size // 2  # an even size gets size + 1 taps
    k = jnp.asarray(gaussian_kernel(2 * r + 1, sigma), jnp.float32)
    c = images.shape[-1]
    pad = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    dn = ("NHWC", "HWIO", "NHWC")
    ky = jnp.tile(k[:, None, None, None], (1, 1, 1, c))
    kx = jnp.tile(k[None, :, None, None], (1, 1, 1, c))
    out = jax.lax.conv_general_dilated(pad, ky, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
    return jax.lax.conv_general_dilated(out, kx, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
