"""Concise, hierarchical concept explanations from CRP maps (Pan et al., seed 001 §3.2-3.3).

For one image and target: CRP conditional maps ``y_p`` and relevances ``r_p`` for the channels
(neurons) ``p`` of chosen layers (eq. 1), the weighted distance (eq. 2-4)

    dis(p, q) = lambda * dE(p, q) / max dE  +  (1 - lambda) * |r_p - r_q| / max |r_p - r_q|,

agglomerative clustering of the neurons with that distance (eq. 5: single, complete, average or
Ward linkage), the number of concepts chosen by the best silhouette coefficient in a range, and
one representative map per concept, the member with the highest relevance (eq. 6). Every concept
keeps its (layer, channel) list, so it traces back to neurons (§3.3).

Choices where the paper is silent (documented here):
* maps are scaled to unit max-|.| each before ``dE``: a map's magnitude is its relevance, which
  the second term already measures, so ``dE`` compares where a neuron looks;
* relevances are the unnormalised spatial sums of the layer relevance (as DCNE's
  ``attribute_unreduced``), comparable across layers because LRP conserves relevance;
* Ward runs the Lance-Williams Ward update (scipy ``linkage(method="ward")``) on the weighted
  distance, the reading of §3.2 ("our weighted Euclidean distance can be applied to the Ward
  method"); with ``lambda = 1`` it is exactly Ward on the maps.
"""

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from jinterp.checks import check_choice
from jinterp.explain import crp

LINKAGES = ("ward", "single", "average", "complete")


@dataclasses.dataclass
class Concepts:
    """A concise explanation of one image.

    Attributes:
      maps: (m, H, W) representative CRP map per concept (signed, eq. 6).
      relevances: (m,) relevance of each representative neuron.
      total_relevances: (m,) summed relevance of each concept's neurons.
      representatives: (layer, channel) of each representative.
      neurons: per concept, its (layer, channel) list, most relevant first.
      labels: (n,) concept index of every clustered neuron (order of ``all_neurons``).
      all_neurons: the n clustered (layer, channel) pairs; ``all_maps`` (n, H, W), ``all_relevances`` (n,).
      silhouettes: {number of concepts: silhouette coefficient} over the searched range.
    """

    maps: np.ndarray
    relevances: np.ndarray
    total_relevances: np.ndarray
    representatives: list
    neurons: list
    labels: np.ndarray
    all_neurons: list
    all_maps: np.ndarray
    all_relevances: np.ndarray
    silhouettes: dict

    def __len__(self) -> int:
        return len(self.neurons)


def weighted_distance(maps: np.ndarray, relevances: np.ndarray, lam: float = 0.5) -> np.ndarray:
    """Eq. 2-4: ``lam * dE_norm + (1 - lam) * w_diff_norm`` for (n, ...) maps and (n,) relevances.

    Each term is divided by its maximum (a zero matrix stays zero). Maps are used as given.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam: expected a value in [0, 1], got {lam}")
    x = np.asarray(maps, np.float64).reshape(len(maps), -1)
    sq = (x * x).sum(1)
    de = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    r = np.asarray(relevances, np.float64)
    wd = np.abs(r[:, None] - r[None, :])

    def norm(d):
        peak = d.max()
        return d / peak if peak > 0 else d

    d = lam * norm(de) + (1 - lam) * norm(wd)
    np.fill_diagonal(d, 0.0)
    return (d + d.T) / 2


def _silhouette(d: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(d, labels, metric="precomputed"))


def cluster(
    maps: np.ndarray,
    relevances: np.ndarray,
    neurons: Sequence[tuple[str, int]],
    lam: float = 0.5,
    linkage: str = "ward",
    k_range: tuple[int, int] = (2, 30),
) -> Concepts:
    """Weighted hierarchical clustering of neuron maps into concepts (eq. 2-6).

    Args:
      maps: (n, H, W) CRP maps; scaled to unit max-|.| each before the distance (module doc).
      relevances: (n,) neuron relevances.
      neurons: n (layer, channel) pairs.
      lam: weight of the map distance (eq. 4); 1 = plain Euclidean clustering of the maps.
      linkage: one of ``LINKAGES``.
      k_range: inclusive range of concept counts searched for the best silhouette.

    Returns:
      :class:`Concepts`.
    """
    check_choice("linkage", linkage, LINKAGES)
    maps = np.asarray(maps, np.float32)
    rel = np.asarray(relevances, np.float64)
    n = len(maps)
    if rel.shape != (n,) or len(neurons) != n:
        raise ValueError(
            f"relevances, neurons: expected {n} entries each (one per map), got {rel.shape}, {len(neurons)}"
        )
    lo, hi = int(k_range[0]), min(int(k_range[1]), n - 1)
    if lo < 2 or hi < lo:
        raise ValueError(f"k_range: expected 2 <= low <= high <= n - 1 = {n - 1}, got {tuple(k_range)}")
    peak = np.abs(maps).reshape(n, -1).max(1)
    unit = maps / np.where(peak > 0, peak, 1.0)[:, None, None]
    d = weighted_distance(unit, rel, lam)
    tree = hierarchy.linkage(squareform(d, checks=False), method=linkage)
    silhouettes, best = {}, None
    for k in range(lo, hi + 1):
        labels = hierarchy.fcluster(tree, k, criterion="maxclust") - 1
        if len(np.unique(labels)) < 2:
            continue
        silhouettes[k] = _silhouette(d, labels)
        if best is None or silhouettes[k] > silhouettes[best[0]]:
            best = (k, labels)
    if best is None:
        raise ValueError("maps: all neurons fall into one cluster; nothing to choose between")
    labels = np.unique(best[1], return_inverse=True)[1]
    groups = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    groups = [g[np.argsort(-rel[g], kind="stable")] for g in groups]
    order = np.argsort([-rel[g].sum() for g in groups], kind="stable")  # most relevant concept first
    groups = [groups[i] for i in order]
    remap = np.empty_like(labels)
    for new, g in enumerate(groups):
        remap[g] = new
    reps = np.array([g[0] for g in groups])  # eq. 6: argmax relevance within the concept
    return Concepts(
        maps=maps[reps],
        relevances=rel[reps],
        total_relevances=np.array([rel[g].sum() for g in groups]),
        representatives=[tuple(neurons[i]) for i in reps],
        neurons=[[tuple(neurons[i]) for i in g] for g in groups],
        labels=remap,
        all_neurons=[tuple(p) for p in neurons],
        all_maps=maps,
        all_relevances=rel,
        silhouettes=silhouettes,
    )


def neuron_maps(
    model,
    variables,
    image,
    target: int,
    layers: Sequence[str],
    top_k: int | None = None,
    composite="epsilon_plus_flat",
    batch_size: int = 32,
):
    """CRP maps (n, H, W) and relevances (n,) of the channels of ``layers`` for one image.

    ``top_k``: keep only the k most relevant (layer, channel) pairs over all layers together
    (DCNE's global top-k neuron selection); ``None`` keeps every channel.
    """
    image = jnp.asarray(image, jnp.float32)[None] if np.ndim(image) == 3 else jnp.asarray(image, jnp.float32)
    if image.shape[0] != 1:
        raise ValueError(f"image: expected one (H, W, 3) image, got shape {image.shape}")
    targets = jnp.asarray([int(target)])
    if isinstance(layers, str):
        layers = (layers,)
    scores = []
    for layer in layers:
        _, _, rel = crp.conditional_heatmaps(
            model, variables, image, targets, layer, [0], composite, 1, False
        )
        scores += [(float(r), layer, c) for c, r in enumerate(np.asarray(rel[0]))]
    keep = sorted(scores, key=lambda s: -s[0])[:top_k] if top_k else scores
    maps, rels, neurons = [], [], []
    for layer in layers:
        chans = [c for _, lay, c in keep if lay == layer]
        if not chans:
            continue
        heat, rel, _ = crp.conditional_heatmaps(
            model, variables, image, targets, layer, chans, composite, batch_size, False
        )
        maps.append(np.asarray(heat[0]))
        rels.append(np.asarray(rel[0]))
        neurons += [(layer, int(c)) for c in chans]
    return np.concatenate(maps), np.concatenate(rels), neurons


def concise_concepts(
    model,
    variables,
    image,
    target: int,
    layers: Sequence[str],
    lam: float = 0.5,
    linkage: str = "ward",
    k_range: tuple[int, int] = (2, 30),
    top_k: int | None = None,
    composite="epsilon_plus_flat",
    batch_size: int = 32,
) -> Concepts:
    """The concise explanation of seed 001: CRP maps of ``layers`` clustered into concepts (eq. 1-6)."""
    maps, rel, neurons = neuron_maps(model, variables, image, target, layers, top_k, composite, batch_size)
    return cluster(maps, rel, neurons, lam, linkage, k_range)


def crp_top_k(model, variables, image, target: int, layers: Sequence[str], k: int = 10, **kwargs) -> Concepts:
    """Baseline CRP-k (seed 001 §4.2: CRP-10, CRP-300): the k most relevant neurons, one concept each."""
    maps, rel, neurons = neuron_maps(model, variables, image, target, layers, top_k=k, **kwargs)
    order = np.argsort(-rel, kind="stable")
    return Concepts(
        maps=maps[order],
        relevances=rel[order],
        total_relevances=rel[order],
        representatives=[neurons[i] for i in order],
        neurons=[[neurons[i]] for i in order],
        labels=np.argsort(order),
        all_neurons=neurons,
        all_maps=maps,
        all_relevances=rel,
        silhouettes={},
    )
