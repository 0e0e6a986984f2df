"""Does each loss do its mechanical job? Probes of one layer's maps, measured over training.

Before judging a paper's claim (interpretability), check the loss changes what it acts on:

* ``group_contrast`` (icCNN / HICCNN L_group, HICCNN eq. 1-4): the filters are grouped as icCNN
  groups them (spectral clustering of the similarity ``losses.grouping.similarity`` = correlation + 1,
  eq. 1), and the score is mean within-group correlation minus mean between-group correlation. It
  rises when filters form tightly correlated groups; the grouping is recomputed at every probe, so the
  score measures the group structure itself, whatever the loss's stored groups are.
* ``spread`` (sync L_lac, seed 002 eq. 3-5): the root-mean-square distance of a filter's activation
  mass from its centre of mass, in units of the map side (coordinates in [0, 1]), averaged over
  filters and images with any activation. L_lac concentrates each map around its focus: spread falls.
* ``modules`` / ``module_size`` (sync L_sync, eq. 6-9; §III-C): the synchronized modules, connected
  components of the filters' eps-graph of position vectors (``losses.sync.modules``): the number of
  modules with at least two filters and the mean number of filters in them. L_sync pulls filters with
  nearby positions together: fewer singletons, larger modules.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.losses import grouping, sync
from jinterp.ops import clustering

PROBES = ("group_contrast", "spread", "modules", "module_size")


@functools.partial(jax.jit, static_argnames=("num_groups",))
def _group_contrast(maps, num_groups, key):
    n, h, w, c = maps.shape
    sim = grouping.similarity(grouping.update_stats(grouping.init_stats(c, (h, w)), maps))
    labels = clustering.spectral_clustering(sim, num_groups, key)
    corr = sim - 1.0
    same = (labels[:, None] == labels[None, :]) & ~jnp.eye(c, dtype=bool)
    other = labels[:, None] != labels[None, :]
    within = jnp.sum(jnp.where(same, corr, 0.0)) / jnp.maximum(same.sum(), 1)
    between = jnp.sum(jnp.where(other, corr, 0.0)) / jnp.maximum(other.sum(), 1)
    return within - between


@jax.jit
def _spread(maps):
    n, h, w, c = maps.shape
    mass = jnp.maximum(maps.reshape(n, h * w, c), 0.0)
    total = mass.sum(1)  # (n, c)
    p = mass / jnp.where(total > 0, total, 1.0)[:, None, :]
    xy = sync.coordinates(h, w)  # (h*w, 2) in [0, 1]
    centre = jnp.einsum("npc,pd->ncd", p, xy)
    sq = jnp.sum((xy[None, :, None, :] - centre[:, None, :, :]) ** 2, -1)  # (n, h*w, c)
    rms = jnp.sqrt(jnp.einsum("npc,npc->nc", p, sq))
    live = total > 0
    return jnp.sum(jnp.where(live, rms, 0.0)) / jnp.maximum(live.sum(), 1)


def _module_stats(maps, eps: float) -> tuple[int, float]:
    ids = np.asarray(sync.modules(maps, eps))
    sizes = np.bincount(ids)
    multi = sizes[sizes >= 2]
    return int(multi.size), float(multi.mean()) if multi.size else 1.0


def probe(maps, num_groups: int, eps: float = sync.EPS, seed: int = 0) -> dict[str, float]:
    """The :data:`PROBES` of a layer's maps (N, h, w, C) over a fixed set of images."""
    maps = jnp.asarray(maps, jnp.float32)
    if maps.ndim != 4:
        raise ValueError(f"maps: expected (N, h, w, C) feature maps, got shape {maps.shape}")
    if not 1 <= num_groups <= maps.shape[-1]:
        raise ValueError(f"num_groups: expected 1..{maps.shape[-1]} (the channels), got {num_groups}")
    n_modules, size = _module_stats(maps, eps)
    return {
        "group_contrast": float(_group_contrast(maps, num_groups, jax.random.key(seed))),
        "spread": float(_spread(maps)),
        "modules": float(n_modules),
        "module_size": size,
    }
