"""CLA-layers (seed 003 §3.1-3.2, 3.4): attribute distances, relevance masks, gated LRP propagation.

A CLA-layer sees P x P sub-features of one tapped layer's map, normalised per position, with the
class's Intrinsic Class Pattern appended as one more channel; an add-on block of two 1x1
convolutions maps them to ``S'``; ``N`` learned attributes are compared with every ``a x a`` window
of ``S'`` by squared L2 distance per channel (eq. 2-3). At explanation time each attribute picks the
patch whose distance is smallest, and a multiplicative bump there scales the relevance arriving at
the layer before it is propagated further down (:func:`relevance`).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import min_size
from jinterp.checks import check_images, check_targets
from jinterp.explain import lrp, rules

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
    logits, _, backward = lrp.forward(model, variables, images, comp, layers)
    if base == "lrp":
        return backward(lrp.logit_init(logits, targets))
    target_init, dual_init = lrp.contrastive_inits(logits, targets, base)
    (a_t, layer_t), (a_d, _) = backward(target_init), backward(dual_init)
    return lrp.rescaled_difference(a_t, a_d), layer_t


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
