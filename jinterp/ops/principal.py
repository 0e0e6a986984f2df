"""First principal component of a batch of centred matrices from matmuls only (Eigen-CAM's projection).

``projection(x)`` is ``x @ v1`` for each (P, C) matrix of ``x``, ``v1`` its first right singular
vector. The direction comes from the top eigenvector of the smaller Gram matrix (``x xᵀ``, P×P, or
``xᵀ x``, C×C) found by repeated squaring, ``M <- M² / tr(M²)``: after ``squarings`` steps the other
eigenvalues are down by ``(λ2/λ1)^(2^squarings)``, then two power steps polish the float32 rounding
(measured 2e-7 relative to float64 LAPACK on VGG16 / ResNet / DenseNet maps). On the 2-core CPU a
float32 ``jnp.linalg.svd`` (LAPACK ``gesdd``) of 8 VGG16 ``conv5_3`` maps at 224 px (196 × 512) took
2.7 s, mostly OpenBLAS threads contending with XLA's (80 ms single-threaded); these matmuls take
48 ms (loaded machine, same run) and run the same way on accelerators.

A singular vector's sign is arbitrary. :func:`sign_as_gesdd` gives the one LAPACK's ``gesdd``
gives at leading order when its first step is an LQ factorisation (C ≥ 11/6 P, ``MNTHR`` in
``dgesdd``; every default CAM layer of the backbones at 32-224 px): the bidiagonalisation of ``L``
starts from ``L[:, 0] ∝ -x x[0]ᵀ``, so ``u1[0] < 0``, i.e. the projection is negative at the first
position. Against float64 ``gesdd`` (numpy, what pytorch-grad-cam calls), on seeded VGG16 / ResNet18
maps (13 layer / size pairs, 64-160 px, 6 images each) it agreed 78 of 78 times, as float32
``jnp.linalg.svd`` did; on untrained small_cnn maps, where ``gesdd``'s later rotations decide (and
differ between float32 and float64), 35 of 54 against ``jnp.linalg.svd``'s 36 of 54.
"""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def _unit(v):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), jnp.finfo(v.dtype).tiny)


def _trace_scaled(m):
    tr = jnp.trace(m, axis1=-2, axis2=-1)[..., None, None]
    return m / jnp.where(tr > 0, tr, 1.0)


def top_eigenvector(gram: jax.Array, squarings: int = 16, polish: int = 2) -> jax.Array:
    """Unit top eigenvector (sign arbitrary) of each symmetric PSD (..., K, K) ``gram`` (0 where it is 0)."""

    def square(m, _):
        return _trace_scaled(jnp.matmul(m, m, precision=HIGHEST)), None

    m, _ = jax.lax.scan(square, _trace_scaled(gram), None, length=squarings)
    i = jnp.argmax(jnp.diagonal(m, axis1=-2, axis2=-1), axis=-1)
    u = _unit(jnp.take_along_axis(m, i[..., None, None], axis=-1)[..., 0])
    for _ in range(polish):
        u = _unit(jnp.einsum("...pq,...q->...p", gram, u, precision=HIGHEST))
    return u


def projection(x: jax.Array) -> jax.Array:
    """``x @ v1`` (N, P) for (N, P, C) ``x``, ``v1`` the first right singular vector (sign arbitrary)."""
    if x.shape[1] <= x.shape[2]:
        u = top_eigenvector(jnp.einsum("npc,nqc->npq", x, x, precision=HIGHEST))
        v = jnp.einsum("npc,np->nc", x, u, precision=HIGHEST)
    else:
        v = top_eigenvector(jnp.einsum("npc,npd->ncd", x, x, precision=HIGHEST))
    return jnp.einsum("npc,nc->np", x, _unit(v), precision=HIGHEST)


def sign_as_gesdd(p: jax.Array) -> jax.Array:
    """(N, P) projections with ``gesdd``'s leading-order sign (module doc): ``p[:, 0] <= 0``."""
    return jnp.where(p[:, :1] > 0, -p, p)
