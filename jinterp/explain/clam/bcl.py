"""CLAM training objective: Intrinsic Class Patterns and the balanced contrastive loss.

Seed 003 (CLAM) §3.3, eq. (1), (4), (5), built on SymBa (Lee & Song 2023). The CLA-layers are
trained with the Forward-Forward recipe: a positive pass (sub-features + the true class's ICP)
should give small attribute distances, a negative pass (sub-features + a wrong class's ICP) large
ones.
"""

import jax
import jax.numpy as jnp
import numpy as np


def intrinsic_class_patterns(num_classes: int, size: int, seed: int = 0) -> jax.Array:
    """One fixed binary (P, P) pattern per class, (num_classes, P, P) float32.

    SymBa's ICP carries the label through the layer-wise normalisation; its exact generation is
    not published (reference-code notes §4), so we draw i.i.d. Bernoulli(0.5) pixels from a fixed
    seed, without replacement, so that every class has a distinct pattern.
    """
    pixels = size * size
    if num_classes < 2 or size < 1 or (pixels < 63 and num_classes > 2**pixels):
        raise ValueError(
            f"num_classes, size: expected num_classes >= 2 distinct {size}x{size} binary patterns, "
            f"got {num_classes} classes for size {size}"
        )
    rng = np.random.default_rng(seed)
    if pixels < 63:  # draw distinct integers, read their bits
        codes = rng.choice(2**pixels, size=num_classes, replace=False).astype(np.int64)
        patterns = (codes[:, None] >> np.arange(pixels)) & 1
    else:  # 2^63+ patterns: a collision has probability ~ K^2 / 2^64
        patterns = rng.integers(0, 2, size=(num_classes, pixels))
    return jnp.asarray(patterns.reshape(num_classes, size, size), jnp.float32)


def balanced_contrastive_loss(
    d_pos: jax.Array, d_neg: jax.Array, alpha: float = 0.05, beta: float = 0.5
) -> jax.Array:
    """Per-example BCL of seed 003 eq. (4)-(5): ``softplus(alpha * Delta)``.

    Our reading of eq. (4): distances are kept per channel, ``D[b, i, w, h, c]`` for attribute
    ``i`` at window offset ``(w, h)``; the positive term is the maximum over channels of the mean
    over attributes and offsets ("the maximum value is extracted since the objective is
    minimisation"), the negative term the mean over channels of the same average further divided
    by the attribute count ``N`` (the ``1 / (W H N^2)`` of eq. 4).

    Args:
      d_pos: (B, N, w, h, C) distances of the positive pass.
      d_neg: (B, N, w, h, C) distances of the negative pass.
      alpha: scale inside the softplus (seed 003 A.1: 0.01-0.1).
      beta: balance of the positive term (seed 003 A.1: 0.5-0.6).

    Returns:
      (B,) losses; ``-> 0`` as positive distances ``-> 0`` and negative ones ``-> inf`` (eq. 5).
    """
    if d_pos.shape != d_neg.shape or d_pos.ndim != 5:
        raise ValueError(
            f"d_pos, d_neg: expected equal (B, N, w, h, C) shapes, got {d_pos.shape}, {d_neg.shape}"
        )
    n = d_pos.shape[1]
    positive = d_pos.mean(axis=(1, 2, 3)).max(axis=-1)
    negative = d_neg.mean(axis=(1, 2, 3)).mean(axis=-1) / n
    delta = beta * positive - (1.0 - beta) * negative
    return jax.nn.softplus(alpha * delta)
