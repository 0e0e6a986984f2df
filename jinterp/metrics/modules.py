"""Functional modules of a layer's filters (seed 002 §IV-E): module consistency, module–part alignment
(NMI / ARI / AVI) and Taylor-pruning redundancy.

Spectral clustering runs in JAX (``jinterp.ops.clustering``, shared with icCNN grouping and
Cluster-CAM), vmapped over images, so per-image clustering of a whole
data set is one compiled program instead of N scikit-learn calls.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as skm

from jinterp.checks import check_images, check_int, check_sequence, check_targets
from jinterp.metrics._common import check_maps, chunked_map, chunked_sum
from jinterp.ops.clustering import spectral_clustering


def spectral_labels(similarity: jax.Array, n_clusters: int, seed: int = 0) -> jax.Array:
    """Spectral clustering of a (C, C) non-negative similarity matrix -> (C,) labels.

    The shared on-device implementation (:func:`jinterp.ops.clustering.spectral_clustering`, sklearn's
    ``SpectralClustering(affinity='precomputed')``) with a fixed key, so labels are reproducible. Pure
    and jittable; vmap it over a batch of similarity matrices.
    """
    return spectral_clustering(similarity, n_clusters, jax.random.key(seed), n_init=4)


def _cosine(m):
    # (n, h, w, C) -> (n, C, C) cosine similarity of the flattened filter maps (seed 002 §IV-E.1).
    n, h, w, c = m.shape
    a = m.reshape(n, h * w, c)
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return jnp.einsum("npc,npd->ncd", a, a)


@partial(jax.jit, static_argnames=("n_modules", "chunk"))
def _consistency(maps, n_modules, chunk):
    def one_chunk(valid, m):
        labels = jax.vmap(lambda s: spectral_labels(s, n_modules))(_cosine(m))
        same = (labels[:, :, None] == labels[:, None, :]).astype(jnp.float32)
        return jnp.einsum("n,ncd->cd", valid.astype(jnp.float32), same)

    p = chunked_sum(one_chunk, (maps,), chunk) / maps.shape[0]
    std = jnp.sqrt(jnp.maximum(p * (1.0 - p), 0.0))  # std of a 0/1 connectivity across images
    iu = jnp.triu_indices(maps.shape[-1], 1)
    return std[iu].mean(), p


def module_consistency(maps: jax.Array, n_modules: int, chunk: int = 64) -> dict:
    """Module consistency (seed 002 §IV-E.1, Table III; lower is better).

    Per image, filters are represented by their L2-normalised maps, ``sim_ij = A(f_i)·A(f_j)``, and
    spectral clustering into ``n_modules`` groups (the number of semantic parts) gives a 0/1
    connectivity for every filter pair; the score is the standard deviation of each pair's
    connectivity across images, averaged over the upper triangle.

    Args:
      maps: (N, h, w, C) feature maps; n_modules: number of clusters.

    Returns:
      dict with ``consistency`` (scalar) and ``comembership`` (C, C), the fraction of images in which
      two filters share a module.
    """
    c = check_maps("maps", maps, 4, "(N, h, w, C)")[-1]
    if not 2 <= int(n_modules) <= c:
        raise ValueError(f"n_modules: expected an integer in [2, {c}] (number of filters), got {n_modules}")
    score, p = _consistency(jnp.asarray(maps, jnp.float32), int(n_modules), int(chunk))
    return {"consistency": score, "comembership": p}


@partial(jax.jit, static_argnames=("n_modules", "chunk"))
def _modules(maps, n_modules, chunk):
    sim = chunked_sum(
        lambda valid, m: jnp.einsum("n,ncd->cd", valid.astype(jnp.float32), _cosine(m)), (maps,), chunk
    )
    return spectral_labels(sim / maps.shape[0], n_modules)


def filter_modules(maps: jax.Array, n_modules: int, chunk: int = 64) -> jax.Array:
    """Data-set-level modules: spectral clustering of the image-averaged cosine similarity -> (C,) labels."""
    c = check_maps("maps", maps, 4, "(N, h, w, C)")[-1]
    if not 2 <= int(n_modules) <= c:
        raise ValueError(f"n_modules: expected an integer in [2, {c}] (number of filters), got {n_modules}")
    return _modules(jnp.asarray(maps, jnp.float32), int(n_modules), int(chunk))


def adjusted_variation_of_information(labels_a, labels_b) -> float:
    """AVI of Vinh, Epps & Bailey (ICML 2009, seed 002 ref. [67]).

    ``AVI = 2 (I - E[I]) / (H(U) + H(V) - 2 E[I])``: the variation of information ``VI = H(U) + H(V) - 2I``
    corrected for chance, rescaled so 1 is identical partitions and 0 the chance level. It equals the
    adjusted mutual information with arithmetic-mean normalisation (Vinh et al., JMLR 2010, Table 2),
    which is what this computes (scikit-learn's expected-MI under the hypergeometric model).
    """
    return float(skm.adjusted_mutual_info_score(labels_a, labels_b, average_method="arithmetic"))


def module_part_alignment(module_labels, part_labels, assigned=None) -> dict:
    """NMI / ARI / AVI between filter modules and the filters' part assignment (seed 002 Table IV).

    Args:
      module_labels: (C,) module of each filter (``filter_modules``).
      part_labels: (C,) part of each filter, e.g. ``filter_interpretability(...)["part"]``.
      assigned: optional (C,) bool; filters never assigned to a part (``assigned_any`` False) are left
        out, since their argmax part is meaningless.

    Returns:
      dict with ``nmi`` (scikit-learn ``normalized_mutual_info_score``), ``ari``
      (``adjusted_rand_score``), ``avi`` and ``n_filters`` used.
    """
    m = np.asarray(module_labels).reshape(-1)
    p = np.asarray(part_labels).reshape(-1)
    if m.shape != p.shape:
        raise ValueError(f"part_labels: expected shape {m.shape} (as module_labels), got {p.shape}")
    if assigned is not None:
        keep = np.asarray(assigned, bool).reshape(-1)
        if keep.shape != m.shape:
            raise ValueError(f"assigned: expected shape {m.shape} (as module_labels), got {keep.shape}")
        m, p = m[keep], p[keep]
    if m.size < 2:
        raise ValueError(
            f"module_labels: need at least 2 (assigned) filters to compare partitions, got {m.size}"
        )
    return {
        "nmi": float(skm.normalized_mutual_info_score(p, m)),
        "ari": float(skm.adjusted_rand_score(p, m)),
        "avi": adjusted_variation_of_information(p, m),
        "n_filters": int(m.size),
    }


@jax.jit
def _taylor(maps, grads):
    t = jnp.abs((maps * grads).mean((1, 2))).mean(0)  # Molchanov et al. 2017 eq. 8, averaged over images
    return t / jnp.maximum(jnp.linalg.norm(t), 1e-12)  # layer-wise L2 normalisation (their eq. 9)


def taylor_importance(maps: jax.Array, grads: jax.Array) -> jax.Array:
    """First-order Taylor importance of each filter (Molchanov et al. 2017, seed 002 ref. [68]).

    Args:
      maps, grads: (N, h, w, C) activations and the gradients of the target logit w.r.t. them, e.g. from
        ``jinterp.backbones.feature_grads``.

    Returns:
      (C,) importance ``|mean_{h,w}(A ∂y/∂A)|`` averaged over images, L2-normalised over the layer.
    """
    shape = check_maps("maps", maps, 4, "(N, h, w, C)")
    check_maps("grads", grads, 4, "(N, h, w, C)")
    if np.shape(grads) != shape:
        raise ValueError(f"grads: expected shape {shape} (as maps), got {np.shape(grads)}")
    return _taylor(jnp.asarray(maps, jnp.float32), jnp.asarray(grads, jnp.float32))


@partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def _pruning(apply_fn, images, targets, keeps, batch_size):
    def acc(keep):
        logits = chunked_map(lambda x: apply_fn(x, keep), (images,), batch_size)
        return jnp.mean(jnp.argmax(logits, -1) == targets)

    return jax.lax.map(acc, keeps)


def pruning_curve(
    apply_fn,
    images: jax.Array,
    targets: jax.Array,
    importance: jax.Array,
    n_pruned=None,
    batch_size: int = 64,
) -> dict:
    """Accuracy as the least important filters are removed one group at a time (seed 002 Fig. 9).

    Seed 002 measures redundancy this way (Taylor pruning of the interpretable layer) but reports a
    curve, not a single number; ``area`` (mean accuracy over the pruning fractions) summarises it.

    Args:
      apply_fn: pure ``(images, keep) -> logits`` where ``keep`` is a (C,) 0/1 float vector multiplied
        into the layer's channels (e.g. via a Flax ``perturb``-free mask in the model, or
        ``model.apply(..., mutable=...)`` with an intercept). One compilation serves every step.
      images: (N, H, W, 3); targets: (N,) true classes.
      importance: (C,) filter importance (``taylor_importance``); lowest is pruned first.
      n_pruned: numbers of removed filters to evaluate; default 0, C/16, ..., C - 1.

    Returns:
      dict with ``n_pruned`` (S,), ``accuracy`` (S,) and ``area``.
    """
    check_images(images)
    check_targets(targets, np.shape(images)[0])
    c = check_maps("importance", importance, 1, "(C,)")[0]
    check_int("batch_size", batch_size, low=1)
    if n_pruned is None:
        n_pruned = np.unique(np.r_[np.linspace(0, c - 1, 17).astype(int)])
    else:
        n_pruned = np.asarray(
            [check_int("n_pruned", k, 0, c - 1) for k in check_sequence("n_pruned", n_pruned)]
        )
    rank = jnp.argsort(jnp.argsort(jnp.asarray(importance)))
    keeps = (rank[None, :] >= jnp.asarray(n_pruned)[:, None]).astype(jnp.float32)
    acc = _pruning(apply_fn, jnp.asarray(images, jnp.float32), jnp.asarray(targets), keeps, int(batch_size))
    return {"n_pruned": jnp.asarray(n_pruned), "accuracy": acc, "area": acc.mean()}
