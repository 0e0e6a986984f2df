"""CLAM: class-wise layer-wise attribute layers that refine LRP relevance (seed 003).

A CLA-layer is attached to one tapped layer ``l`` of a frozen classifier (§3.1-3.2). It sees
P x P sub-features of that layer's map, normalised per position, with the class's Intrinsic Class
Pattern appended as one more channel; an add-on block of two 1x1 convolutions maps them to
``S'``; ``N`` learned attributes (``a x a x D'``, ``a < P``) are compared with every ``a x a``
window of ``S'`` by squared L2 distance per channel (eq. 2-3). Training (§3.3, eq. 1-5) takes,
for each image, the ``N`` patches where the explainer's relevance at ``l`` is highest, and pushes
distances down for the true class's ICP and up for a wrong class's ICP (balanced contrastive
loss, :mod:`jinterp.losses.clam`). Layers are trained one after another from the output side,
each on relevance already refined by the layers above it.

At explanation time (§3.4) each attribute picks the patch of the test map whose distance is
smallest; a P x P multiplicative mask (``strength`` at the centre, decaying to 1 at the border)
is placed there and the relevance arriving at ``l`` is multiplied by it before being propagated
further down. The distance profiles of the chosen patches also retrieve the training images
nearest to the explanation (example-based explanation, Fig. 4).

Our readings where the paper is silent are stated where they apply: normalisation before the
ICP is appended, a sigmoid closing the add-on block (as ProtoPNet's), masks of several
attributes combined by maximum (overlapping picks are "redundant", §4.2.2), and patch selection
by the minimum mean distance over windows, channels and attributes' own windows.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.backbones import check_layers, layer_names, min_size
from jinterp.checks import check_images, check_targets
from jinterp.explain import lrp as lrp_lib
from jinterp.explain import rules
from jinterp.explain.registry import register
from jinterp.losses.clam import balanced_contrastive_loss, intrinsic_class_patterns

# Seed 003 §4.3: every LRP variant it reports uses LRP-alpha-beta with alpha=1, beta=0.
ALPHA1_BETA0 = {
    "conv": "alpha1_beta0",
    "dense": "alpha1_beta0",
    "sum": "norm",
    "avgpool": "norm",
    "batchnorm": "epsilon",
}
BASES = ("lrp", "clrp", "sglrp")


@dataclasses.dataclass(frozen=True)
class ClaLayerConfig:
    """Hyper-parameters of one CLA-layer (seed 003 §3.2 and A.1).

    Attributes:
      layer: tapped layer of the classifier (``layer_names(model)``).
      num_attributes: ``N`` (``nb_attrs``).
      patch: sub-feature side ``P`` (``sz_patches``).
      attr: attribute side ``A < P`` (``sz_attrs``).
      hidden: channels ``D'`` of the add-on block.
      strength: mask value at the patch centre (A.1: 1.1-1.15 far from the output, 1.2-1.4 near it).
      alpha, beta: balanced contrastive loss (A.1: alpha 0.01-0.1, beta 0.5-0.6).
    """

    layer: str
    num_attributes: int = 4
    patch: int = 3
    attr: int = 2
    hidden: int = 32
    strength: float = 1.2
    alpha: float = 0.05
    beta: float = 0.5

    def __post_init__(self):
        if not 0 < self.attr < self.patch:
            raise ValueError(
                f"attr, patch: expected 0 < attr < patch (seed 003 §3.2), got {self.attr}, {self.patch}"
            )
        if self.num_attributes < 1 or self.hidden < 1 or self.strength < 1.0:
            raise ValueError(
                f"num_attributes, hidden, strength: expected >= 1, >= 1, >= 1.0, got "
                f"{self.num_attributes}, {self.hidden}, {self.strength}"
            )


@dataclasses.dataclass(frozen=True)
class Clam:
    """A trained CLAM: per-layer configs (output side first), parameters and ICPs.

    ``params[i]`` belongs to ``configs[i]``: ``{"w1", "b1", "w2", "b2", "attributes"}``.
    """

    configs: tuple[ClaLayerConfig, ...]
    params: tuple[dict, ...]
    icp: jax.Array  # (num_classes, P_max, P_max)
    base: str = "clrp"


jax.tree_util.register_dataclass(Clam, data_fields=["params", "icp"], meta_fields=["configs", "base"])


def init_layer(key: jax.Array, config: ClaLayerConfig, channels: int) -> dict:
    """Random add-on block (two 1x1 convolutions) and attributes in [0, 1) (ProtoPNet's init)."""
    k1, k2, k3 = jax.random.split(key, 3)
    d_in, d = channels + 1, config.hidden
    return {
        "w1": jax.random.normal(k1, (d_in, d)) * jnp.sqrt(2.0 / d_in),
        "b1": jnp.zeros(d),
        "w2": jax.random.normal(k2, (d, d)) * jnp.sqrt(1.0 / d),
        "b2": jnp.zeros(d),
        "attributes": jax.random.uniform(k3, (config.num_attributes, config.attr, config.attr, d)),
    }


def normalize(features: jax.Array) -> jax.Array:
    """Unit L2 norm per position over channels (§3.2: only relative magnitudes reach the layer)."""
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / jnp.maximum(norm, 1e-6)


def patch_origins(height: int, width: int, patch: int) -> np.ndarray:
    """(Q, 2) top-left corners of every P x P patch (stride 1, inside the map)."""
    ys, xs = np.meshgrid(np.arange(height - patch + 1), np.arange(width - patch + 1), indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], -1)


def extract_patches(features: jax.Array, origins: jax.Array, patch: int) -> jax.Array:
    """(h, w, C) map, (Q, 2) origins -> (Q, P, P, C) patches."""
    return jax.vmap(
        lambda o: jax.lax.dynamic_slice(features, (o[0], o[1], 0), (patch, patch, features.shape[-1]))
    )(origins)


def project(params: dict, patches: jax.Array, icp: jax.Array) -> jax.Array:
    """Eq. (2): ``S' = AoL(||S|| (+) C)``: normalised patches with the ICP channel -> add-on block."""
    icp = jnp.broadcast_to(icp[..., None], patches.shape[:-1] + (1,))
    s = jnp.concatenate([normalize(patches), icp], axis=-1)
    h = jax.nn.relu(s @ params["w1"] + params["b1"])
    return jax.nn.sigmoid(h @ params["w2"] + params["b2"])


def window_distances(projected: jax.Array, attribute: jax.Array) -> jax.Array:
    """Eq. (3): squared L2 distance per channel between one attribute and every A x A window.

    ``projected`` (..., P, P, D'), ``attribute`` (A, A, D') -> (..., P-A+1, P-A+1, D').
    """
    a, p = attribute.shape[0], projected.shape[-2]
    k = p - a + 1
    total = 0.0
    for du in range(a):  # A x A offsets: a static handful
        for dv in range(a):
            window = projected[..., du : du + k, dv : dv + k, :]
            total = total + (window - attribute[du, dv]) ** 2
    return total


def paired_distances(params: dict, patches: jax.Array, icp: jax.Array) -> jax.Array:
    """Distances of attribute i to patch i: patches (B, N, P, P, C), icp (B, P, P) -> (B, N, k, k, D')."""
    projected = project(params, patches, icp[:, None])
    return jax.vmap(window_distances, in_axes=(1, 0), out_axes=1)(projected, params["attributes"])


def patch_scores(params: dict, config: ClaLayerConfig, features: jax.Array, icp: jax.Array) -> jax.Array:
    """Mean distance of every attribute to every patch of one map (§3.4): (h, w, C) -> (Q, N)."""
    origins = patch_origins(features.shape[0], features.shape[1], config.patch)
    projected = project(params, extract_patches(features, jnp.asarray(origins), config.patch), icp)
    per_attr = jax.vmap(window_distances, in_axes=(None, 0))(
        projected, params["attributes"]
    )  # (N, Q, k, k, D')
    return per_attr.mean(axis=(2, 3, 4)).T


def _bump(config: ClaLayerConfig) -> jnp.ndarray:
    """P x P mask: ``strength`` at the centre, decaying linearly towards 1 beyond the border (A.1)."""
    p = config.patch
    tri = 1.0 - np.abs(np.arange(p) - (p - 1) / 2) / ((p + 1) / 2)
    return 1.0 + (config.strength - 1.0) * jnp.asarray(np.outer(tri, tri), jnp.float32)


def layer_mask(params: dict, config: ClaLayerConfig, features: jax.Array, icp: jax.Array) -> jax.Array:
    """(h, w) multiplicative relevance mask of one image: each attribute's best patch gets a bump.

    Overlapping picks are redundant (§4.2.2), so masks combine by maximum, not product.
    """
    h, w = features.shape[:2]
    origins = jnp.asarray(patch_origins(h, w, config.patch))
    best = origins[jnp.argmin(patch_scores(params, config, features, icp), axis=0)]  # (N, 2)
    bump = _bump(config)

    def place(origin):
        return jax.lax.dynamic_update_slice(jnp.ones((h, w), jnp.float32), bump, (origin[0], origin[1]))

    return jax.vmap(place)(best).max(axis=0)


@jax.custom_vjp
def _gate(x, mask):
    return x


def _gate_fwd(x, mask):
    return x, mask


def _gate_bwd(mask, cotangent):
    # Relevance is activation x cotangent, so scaling the cotangent scales the relevance.
    return cotangent * mask, jnp.zeros_like(mask)


_gate.defvjp(_gate_fwd, _gate_bwd)


def _gating(clam: Clam, targets: jax.Array):
    """Interceptor multiplying the relevance arriving at each CLA layer by its mask (§3.4)."""
    active = {c.layer: (c, p) for c, p in zip(clam.configs, clam.params, strict=True)}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "tap" and args[0] in active:
            name, x, out = args
            config, params = active[name]
            icp = clam.icp[targets, : config.patch, : config.patch]
            mask = jax.vmap(layer_mask, in_axes=(None, None, 0, 0))(
                params, config, jax.lax.stop_gradient(x), icp
            )
            return next_fun(name, _gate(x, mask[..., None]), out, **kwargs)
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def base_relevance(model, variables, images, targets, base="clrp", composite=ALPHA1_BETA0, layers=()):
    """Signed input relevance of the base explainer and relevance at ``layers`` (uses the active gates).

    ``lrp``: logit initialisation; ``clrp`` / ``sglrp``: the reference two-pass variant
    (``jinterp.explain.lrp.contrastive_relevance``), whose layer relevance is the target pass's.
    """
    comp = rules.composite(composite)
    logits, _, backward = lrp_lib.forward(model, variables, images, comp, layers)
    if base == "lrp":
        return backward(lrp_lib.logit_init(logits, targets))
    target_init, dual_init = lrp_lib.contrastive_inits(logits, targets, base)
    (a_t, layer_t), (a_d, _) = backward(target_init), backward(dual_init)
    return lrp_lib.rescaled_difference(a_t, a_d), layer_t


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
    for epoch in range(epochs):
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


@functools.partial(jax.jit, static_argnames=("model", "composite"))
def _explain(model, variables, clam, images, targets, composite):
    with _gating(clam, targets):
        r_input, _ = base_relevance(model, variables, images, targets, clam.base, composite)
    return r_input


def relevance(model, variables, clam: Clam, images, targets, composite=ALPHA1_BETA0) -> jax.Array:
    """Signed input relevance of the base explainer refined by every CLA-layer: (N, H, W, 3)."""
    check_images(images, min_size=min_size(model))
    check_targets(targets, np.shape(images)[0], getattr(model, "num_classes", None))
    return _explain(
        model,
        variables,
        clam,
        jnp.asarray(images, jnp.float32),
        jnp.asarray(targets),
        rules.composite(composite),
    )


@functools.partial(jax.jit, static_argnames=("model",))
def attribute_profiles(model, variables, clam: Clam, images, targets) -> dict[str, jax.Array]:
    """Per layer, (N, num_attributes) minimal mean distances of each attribute for each image.

    Images whose profiles are close share the regions the attributes pick; :func:`nearest_examples`
    uses them to retrieve training images for an explanation (§3.4, Fig. 4).
    """
    _, out = model.apply(variables, images)
    profiles = {}
    for config, params in zip(clam.configs, clam.params, strict=True):
        icp = clam.icp[targets, : config.patch, : config.patch]
        scores = jax.vmap(patch_scores, in_axes=(None, None, 0, 0))(params, config, out[config.layer], icp)
        profiles[config.layer] = scores.min(axis=1)
    return profiles


def nearest_examples(query: dict, bank: dict, k: int = 5) -> dict[str, jax.Array]:
    """Indices (N, k) of the bank images whose attribute profiles are most similar (cosine) per layer."""
    result = {}
    for layer, q in query.items():
        qn = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
        b = bank[layer]
        bn = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        result[layer] = jax.lax.top_k(qn @ bn.T, k)[1]
    return result


def save(clam: Clam, path: str) -> None:
    """Write a trained CLAM to ``path`` (.npz with a JSON header; no pickle)."""
    arrays = {"icp": np.asarray(clam.icp)}
    for i, params in enumerate(clam.params):
        arrays.update({f"layer{i}/{k}": np.asarray(v) for k, v in params.items()})
    meta = {"base": clam.base, "configs": [dataclasses.asdict(c) for c in clam.configs]}
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def load(path: str) -> Clam:
    """Read a CLAM written by :func:`save`."""
    if not os.path.exists(path):
        raise ValueError(
            f"checkpoint: no CLAM file at {path!r}; train one with jinterp.explain.clam.fit and save()"
        )
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
        configs = tuple(ClaLayerConfig(**c) for c in meta["configs"])
        params = tuple(
            {k.split("/", 1)[1]: jnp.asarray(data[k]) for k in data.files if k.startswith(f"layer{i}/")}
            for i in range(len(configs))
        )
        return Clam(configs, params, jnp.asarray(data["icp"]), meta["base"])


def clam(checkpoint: str, composite=ALPHA1_BETA0):
    """Registry factory: CLAM-refined relevance heatmaps from a CLAM saved with :func:`save`.

    The heatmap is the positive part of the channel-summed input relevance scaled per image to
    [0, 1] (``jinterp.explain.lrp.to_heatmap``).
    """
    trained = load(checkpoint)
    # spec options arrive hashable: a {kind: rule} dict as a tuple of pairs
    comp = rules.composite(dict(composite) if isinstance(composite, tuple) else composite)

    def fn(model, variables, images, targets):
        return lrp_lib.to_heatmap(_explain(model, variables, trained, images, targets, comp))

    return fn


register(
    "clam", clam, needs_gradients=True, forward_passes=1,
    backward_passes=lambda checkpoint: 1 if load(checkpoint).base == "lrp" else 2,
    doc="CLAM (seed 003): LRP / CLRP / SGLRP relevance refined by trained class-wise layer-wise attributes",
)  # fmt: skip
