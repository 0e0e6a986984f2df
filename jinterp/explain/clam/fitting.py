"""Fitting CLA-layers (seed 003 §3.3, eq. 1-5, A.1): top-relevance patches, BCL, optax Adam per layer.

Layers are trained one after another from the output side, each on the relevance already refined by
the layers above it. For each image the ``N`` patches where the base explainer's relevance at the
layer is highest (eq. 1) are pushed towards small attribute distances with the true class's ICP and
large ones with a wrong class's ICP (balanced contrastive loss, :mod:`.bcl`).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.backbones import check_layers, layer_names, min_size
from jinterp.checks import check_images, check_targets
from jinterp.explain import rules
from jinterp.explain.clam.bcl import balanced_contrastive_loss, intrinsic_class_patterns
from jinterp.explain.clam.layers import (
    ALPHA1_BETA0,
    BASES,
    ClaLayerConfig,
    Clam,
    _gating,
    base_relevance,
    extract_patches,
    init_layer,
    paired_distances,
)
from jinterp.progress import bar as progress_bar


@functools.partial(jax.jit, static_argnames=("model", "layer", "composite"))
def _layer_inputs(model, variables, trained, images, targets, layer, composite):
    """Features at ``layer`` and the relevance arriving there, refined by the ``trained`` layers."""
    with _gating(trained, targets):
        _, relevance = base_relevance(model, variables, images, targets, trained.base, composite, (layer,))
    _, out = model.apply(variables, images)
    return out[layer], relevance[layer]


def top_patches(features: jax.Array, relevance: jax.Array, config: ClaLayerConfig) -> jax.Array:
    """Eq. (1): the N patches of highest average relevance (channel max, P x P average pool).

    features, relevance (B, h, w, C) -> (B, N, P, P, C).
    """
    p = config.patch
    r2d = relevance.max(axis=-1, keepdims=True)
    pooled = nn.avg_pool(r2d, (p, p), (1, 1))[..., 0]  # (B, h-P+1, w-P+1)
    _, idx = jax.lax.top_k(pooled.reshape(pooled.shape[0], -1), config.num_attributes)
    origins = jnp.stack([idx // pooled.shape[2], idx % pooled.shape[2]], -1)
    return jax.vmap(extract_patches, in_axes=(0, 0, None))(features, origins, p)


def _loss(params, config, patches, icp_pos, icp_neg):
    d_pos = paired_distances(params, patches, icp_pos)
    d_neg = paired_distances(params, patches, icp_neg)
    return balanced_contrastive_loss(d_pos, d_neg, config.alpha, config.beta).mean(), d_pos.mean()


def fit(
    model: nn.Module,
    variables: dict,
    images: np.ndarray,
    labels: np.ndarray,
    configs: Sequence[ClaLayerConfig],
    *,
    key: jax.Array,
    base: str = "clrp",
    composite=ALPHA1_BETA0,
    epochs: int = 100,
    batch_size: int = 32,
    patience: int = 5,
    relevance_batch: int = 32,
    log=None,
) -> Clam:
    """Train CLA-layers one after another, output side first (seed 003 §3.3, A.1).

    Each layer: relevance at its tap (refined by the layers already trained), top-N patches per
    image (eq. 1), Adam with lr ``0.01 * A / 2`` decayed by 0.95 per epoch, at most ``epochs``
    epochs, early stopping when the mean positive distance has not improved for ``patience``.

    Args:
      model, variables: the frozen classifier.
      images, labels: training set (N, H, W, 3) normalised, (N,) int.
      configs: one per CLA-layer, in any order (sorted here by depth, output side first).
      key: PRNG key (initialisation, negative classes, shuffling).
      base: explainer whose relevance selects the patches: ``lrp``, ``clrp`` or ``sglrp``.
      composite: LRP composite (default alpha1-beta0 everywhere, as in seed 003 §4.3).
      log: optional ``log(layer, epoch, loss, positive_distance)`` callback.
    """
    num_classes = int(model.num_classes)
    check_images(images, min_size=min_size(model))
    check_targets(labels, len(images), num_classes, "labels")
    if base not in BASES:
        raise ValueError(f"base: unknown value {base!r}; expected one of {list(BASES)}")
    order = {name: i for i, name in enumerate(layer_names(model))}
    check_layers(model, [c.layer for c in configs], "configs")
    configs = tuple(sorted(configs, key=lambda c: -order[c.layer]))
    composite = rules.composite(composite)
    p_max = max(c.patch for c in configs)
    trained = Clam((), (), intrinsic_class_patterns(num_classes, p_max), base)
    labels = np.asarray(labels, np.int32)
    for i, config in enumerate(configs):
        chunks = []
        for s in range(0, len(images), relevance_batch):
            x, y = jnp.asarray(images[s : s + relevance_batch]), jnp.asarray(labels[s : s + relevance_batch])
            feats, rel = _layer_inputs(model, variables, trained, x, y, config.layer, composite)
            chunks.append(top_patches(feats, rel, config))
        patches = jnp.concatenate(chunks)
        key, init_key = jax.random.split(key)
        params = init_layer(init_key, config, patches.shape[-1])
        params, _ = _train_layer(
            params, config, patches, labels, trained.icp, key, epochs, batch_size, patience, log
        )
        trained = Clam(configs[: i + 1], trained.params + (params,), trained.icp, base)
    return trained


def _train_layer(params, config, patches, labels, icp_all, key, epochs, batch_size, patience, log):
    n = patches.shape[0]
    k = icp_all.shape[0]
    steps = max(n // batch_size, 1)
    schedule = optax.exponential_decay(0.01 * config.attr / 2, steps, 0.95, staircase=True)
    opt = optax.adam(schedule)
    opt_state = opt.init(params)
    icp = icp_all[:, : config.patch, : config.patch]

    @jax.jit
    def step(params, opt_state, idx, offsets):
        y = jnp.asarray(labels)[idx]
        (loss, d_pos), grads = jax.value_and_grad(_loss, has_aux=True)(
            params, config, patches[idx], icp[y], icp[(y + offsets) % k]
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, d_pos

    best, best_params, waited = np.inf, params, 0
    for epoch in progress_bar(range(epochs), desc=f"CLAM {config.layer}", unit="epoch"):
        key, perm_key, neg_key = jax.random.split(key, 3)
        perm = jax.random.permutation(perm_key, n)[: steps * batch_size].reshape(steps, -1)
        offsets = jax.random.randint(neg_key, perm.shape, 1, k)  # wrong class = y + offset mod K
        losses, dists = [], []
        for s in range(steps):
            params, opt_state, loss, d_pos = step(params, opt_state, perm[s], offsets[s])
            losses.append(loss)
            dists.append(d_pos)
        d = float(jnp.mean(jnp.stack(dists)))
        if log is not None:
            log(config.layer, epoch, float(jnp.mean(jnp.stack(losses))), d)
        if d < best - 1e-6:
            best, best_params, waited = d, params, 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best_params, best
