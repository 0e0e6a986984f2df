"""Layer-wise relevance propagation as pure JAX: rule sites re-routed with ``nn.intercept_methods``.

Every rule site of a backbone is its own Flax module (``ConvBN``, ``nn.Dense``, ``Sum``, ``AvgPool``,
``AdaptiveAvgPool``, free-standing ``nn.BatchNorm``; see ``jinterp.backbones.layers``). While the
model runs under :func:`lrp_context`, each site's output is passed through a ``jax.custom_vjp``
identity whose backward applies the site's rule (``jinterp.explain.rules``), exactly as zennit's
backward hooks do. ``ConvBN`` folds its BatchNorm into the convolution on the fly (zennit's
``MergeBatchNorm`` canonizer); ``Sum`` gets the Norm rule (zennit's ``ResNetCanonizer``). The sites
and that context live in :mod:`jinterp.explain.lrp_sites` (re-exported here); this module is the
propagation: forward/backward, initial relevances, heatmaps, CLRP / SGLRP and the registry factories.

What the backward pass carries: the cotangent ``c`` of a tensor ``a`` is the *modified gradient*,
``R_a = a * c`` (for ReLU networks this is what zennit's relevance divided by the activation is).
Consequences, all deliberate:

* ReLU, max-pool (winner takes all), reshape, concatenation (DenseNet) and global mean pooling need
  no rule: their ordinary VJP is the right one (for a mean this *is* the Norm rule of zennit's
  ``AdaptiveAvgPool2d``, up to its 1e-6 stabiliser).
* the top site (the classifier) reads its incoming cotangent as relevance (the initial relevance),
  and the first conv/dense layer returns input relevance, so ``R_input`` is the cotangent at the
  image and first-layer rules that are not input-proportional (flat, w^2, z^B) fit in.
* relevance at any tapped layer is ``map * d/d perturbation`` (``jinterp.backbones.tap``), so
  every named layer's relevance comes out of the same backward pass, and CRP can mask it per channel.

Everything is a pure function of ``variables`` and ``images``: jittable, batched with per-image
targets, and differentiable (reverse over reverse) through the rules.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import check_layers, layer_names, min_size
from jinterp.backbones.base import PERTURBATIONS
from jinterp.backbones.taps import strip_perturbations
from jinterp.checks import check_choice, check_images, check_number, check_targets
from jinterp.explain import pipeline, rules
from jinterp.explain.lrp_sites import GRADIENT_MODULES, ConvMap, Site, check_composite, lrp_context, sites
from jinterp.explain.registry import register


def rule_variables(variables: dict, images: jax.Array) -> dict:
    """The variables an LRP pass runs on: no ``perturbations`` collection, floating leaves in the
    images' dtype. ``lrp_relevance`` / CRP take float32 images (``pipeline.float_dtype``), so a
    bfloat16 model is explained with its weights in float32 (the ε / z+ rules' divisions lose most
    of their digits in bfloat16); a fully bfloat16 call through the registry stays bfloat16."""
    return pipeline.cast_floating(strip_perturbations(variables), jnp.result_type(images))


def forward(model, variables, images, composite, layers: Sequence[str] = ()):
    """LRP forward pass: ``(logits, maps, backward)``.

    ``backward(R0)`` maps an initial relevance (N, classes) at the logits to
    ``(R_input (N,H,W,3), {layer: R_layer (N,h,w,C)})``; it can be called (or vmapped) many times
    after one forward pass (CLRP/SGLRP use two initialisations).
    """
    variables = rule_variables(variables, images)
    layers = tuple(layers)
    with lrp_context(model, composite, images.shape):
        _, shapes = jax.eval_shape(lambda: model.apply(variables, images))
    zeros = {l: jnp.zeros(shapes[l].shape, shapes[l].dtype) for l in layers}

    def run(x, pert):
        with lrp_context(model, composite, images.shape):
            logits, out = model.apply({**variables, PERTURBATIONS: pert}, x)
        return logits, {l: out[l] for l in layers}

    logits, vjp, maps = jax.vjp(run, images, zeros, has_aux=True)

    def backward(r0):
        r_in, c = vjp(r0)
        return r_in, {l: maps[l] * c[l] for l in layers}

    return logits, maps, backward


def logit_init(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """zennit-crp's initial relevance: the target logit at the target, 0 elsewhere."""
    return jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype) * logits


def onehot_init(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """zennit's ``Gradient(..)(x, one_hot)``: relevance 1 at the target."""
    return jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)


INITS = {"logit": logit_init, "onehot": onehot_init}


@dataclasses.dataclass(frozen=True)
class Relevance:
    """LRP output: ``logits`` (N, K), signed ``input`` relevance (N,H,W,3), ``layers`` {name: (N,h,w,C)}."""

    logits: jax.Array
    input: jax.Array
    layers: dict


jax.tree_util.register_dataclass(Relevance, data_fields=["logits", "input", "layers"], meta_fields=[])


@functools.partial(jax.jit, static_argnames=("model", "composite", "layers", "init"))
def _lrp(model, variables, images, targets, composite, layers, init):
    logits, _, backward = forward(model, variables, images, composite, layers)
    r_in, r_layers = backward(INITS[init](logits, targets))
    return Relevance(logits, r_in, r_layers)


def _check(model, images, targets, layers):
    check_images(images, min_size=min_size(model))
    check_targets(targets, np.shape(images)[0], getattr(model, "num_classes", None))
    return check_layers(model, layers) if layers else ()


def lrp_relevance(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    targets: jax.Array,
    composite="epsilon_plus_flat",
    layers: Sequence[str] | str = (),
    init: str = "logit",
) -> Relevance:
    """Signed LRP relevance at the input and at named layers, one jitted call for the batch.

    Args:
      model: a Flax module returning ``(logits, out)`` built from jinterp rule-site modules.
      variables: its variables (BatchNorm statistics are folded, eval mode).
      images: (N, H, W, 3) float32.
      targets: (N,) int class per image.
      composite: a name from ``rules.COMPOSITES``, a ``rules.Composite`` or a ``{kind: rule}`` dict.
        With ``"epsilon_plus_flat"`` and identical weights this reproduces zennit's
        ``EpsilonPlusFlat`` (with ``ResNetCanonizer``/``VGGCanonizer``).
      layers: tapped layers whose relevance is also returned (``layer_names(model)``).
      init: initial relevance, ``"logit"`` (target logit, zennit-crp) or ``"onehot"`` (zennit's one-hot).

    Returns:
      :class:`Relevance` with ``input`` (N,H,W,3) and ``layers[name]`` (N,h,w,C).
    """
    layers = _check(model, images, targets, layers)
    check_choice("init", init, INITS)
    comp = check_composite(model, composite, tuple(np.shape(images)))
    images = jnp.asarray(images, pipeline.float_dtype(images))
    return _lrp(model, variables, images, jnp.asarray(targets), comp, layers, init)


def to_heatmap(relevance: jax.Array) -> jax.Array:
    """(N, H, W, 3) signed relevance -> (N, H, W) in [0, 1]: channel sum, positive part / per-image max.

    Positive-part scaling is jinterp's contract for signed maps (negative evidence maps to 0, like a
    CAM's ReLU); use the raw relevance from :func:`lrp_relevance` for signed displays.
    """
    r = jnp.maximum(relevance.sum(-1), 0.0)
    peak = r.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, r / jnp.where(peak > 0, peak, 1.0), 0.0).astype(pipeline.float_dtype(r))


Composite = str | dict | rules.Composite  # a rules.COMPOSITES name, a {kind: rule} dict, or a Composite


def _composite_from_options(composite, low, high, gamma):
    """The composite of a factory's options; validated: a known name / dict / Composite, ``low`` and
    ``high`` finite with ``low < high``, ``gamma`` finite and >= 0."""
    import inspect

    check_number("low", low)
    check_number("high", high, low=low, open_low=True)
    check_number("gamma", gamma, low=0.0)
    if not isinstance(composite, str) or composite not in rules.COMPOSITES:
        return rules.composite(composite)
    params = inspect.signature(rules.COMPOSITES[composite]).parameters
    opts = {k: v for k, v in (("low", low), ("high", high), ("gamma", gamma)) if k in params}
    return rules.composite(composite, **opts)


def lrp(
    composite: Composite = "epsilon_plus_flat",
    init: str = "logit",
    low: float = -1.0,
    high: float = 1.0,
    gamma: float = 0.25,
):
    """Registry factory: LRP heatmaps (positive part of the channel-summed input relevance, see
    :func:`to_heatmap`). ``low``/``high`` (z^B box) and ``gamma`` go to composites that take them.

    The returned ``fn`` checks what is static (images real (N, H, W, 3) >= ``min_size``, targets (N,)
    integers; their values too when called on concrete arrays); :func:`jinterp.explain.explain`
    always checks values (NaN / inf images, target range) before the jitted call.
    """
    check_choice("init", init, INITS)
    comp = _composite_from_options(composite, low, high, gamma)

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        check_composite(model, comp, tuple(images.shape))
        logits, _, backward = forward(model, variables, images, comp)
        return to_heatmap(backward(INITS[init](logits, targets))[0])

    return fn


# --- CLRP / SGLRP ---------------------------------------------------------------------------------


def contrastive_inits(logits, targets, method: str):
    """(target, dual) initial relevances of the reference code (uchidalab/softmaxgradient-lrp)."""
    n_cls = logits.shape[-1]
    onehot = jax.nn.one_hot(targets, n_cls, dtype=logits.dtype)
    if method == "clrp":
        zt = jnp.sum(onehot * logits, -1, keepdims=True)
        return onehot * zt, (1 - onehot) * zt / (n_cls - 1)
    y = jax.nn.softmax(logits, -1)
    yt = jnp.sum(onehot * y, -1, keepdims=True)
    return onehot * (yt * (1 - yt) + 1e-8), (1 - onehot) * yt * y


def _signed_init(logits, targets, method: str):
    """Single signed initial relevance of the papers (Gu 2018 CLRP; Iwana 2019 SGLRP eq. 5)."""
    target, dual = contrastive_inits(logits, targets, method)
    if method == "sglrp":
        target = target - 1e-8 * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    return target - dual


def contrastive_relevance(
    model, variables, images, targets, method="sglrp", composite=None, variant="reference"
):
    """Signed CLRP / SGLRP input relevance (N, H, W, 3).

    ``variant="reference"`` (default) follows ``uchidalab/softmaxgradient-lrp``: two backward passes
    (target and dual initial relevance) after one forward pass, combined per image as
    ``A_t - A_dual * sum(A_t) / sum(A_dual)`` (the dual rescaled to the target's total).
    CLRP (Gu et al. 2018): target ``z_t`` at t; dual ``z_t / (C - 1)`` at every other class.
    SGLRP (Iwana et al. 2019): target ``y_t (1 - y_t) + 1e-8``; dual ``y_t y_n`` (softmax ``y``).
    ``variant="paper"``: one pass with the papers' signed initial relevance (target minus dual, no
    rescaling; SGLRP eq. 5 is the softmax gradient ``dy_t/dz``). Default composite:
    ``bounded_deep_taylor`` (z+ with z^B input box [-1, 1]), the reference code's base LRP.
    """
    check_choice("method", method, ("clrp", "sglrp"))
    check_choice("variant", variant, ("reference", "paper"))
    comp = rules.composite(composite or "bounded_deep_taylor")
    logits, _, backward = forward(model, variables, images, comp)
    if variant == "paper":
        return backward(_signed_init(logits, targets, method))[0]
    inits = jnp.stack(contrastive_inits(logits, targets, method))
    a_t, a_d = jax.vmap(lambda r: backward(r)[0])(inits)
    return rescaled_difference(a_t, a_d)


def rescaled_difference(a_target: jax.Array, a_dual: jax.Array) -> jax.Array:
    """``A_t - A_dual * sum(A_t) / sum(A_dual)`` per image (the reference CLRP/SGLRP combination)."""
    axes = tuple(range(1, a_target.ndim))
    st, sd = a_target.sum(axes, keepdims=True), a_dual.sum(axes, keepdims=True)
    return a_target - a_dual * jnp.where(sd != 0, st / jnp.where(sd != 0, sd, 1.0), 0.0)


def _contrastive(method):
    def factory(
        composite: Composite = "bounded_deep_taylor",
        variant: str = "reference",
        low: float = -1.0,
        high: float = 1.0,
        gamma: float = 0.25,
    ):
        check_choice("variant", variant, ("reference", "paper"))
        comp = _composite_from_options(composite, low, high, gamma)

        def fn(model, variables, images, targets):
            pipeline.check_inputs(model, images, targets)
            check_composite(model, comp, tuple(images.shape))
            return to_heatmap(contrastive_relevance(model, variables, images, targets, method, comp, variant))

        return fn

    factory.__name__ = method
    factory.__doc__ = (
        f"Registry factory: {method.upper()} heatmaps (see :func:`contrastive_relevance`); inputs checked "
        "as :func:`lrp`'s."
    )
    return factory


clrp = _contrastive("clrp")
sglrp = _contrastive("sglrp")

register(
    "lrp", lrp, needs_gradients=True, forward_passes=1, backward_passes=1,
    doc="LRP with zennit composites (Bach 2015; Montavon 2019), positive-part heatmap",
)  # fmt: skip
register(
    "clrp", clrp, needs_gradients=True, forward_passes=1,
    backward_passes=lambda variant: 2 if variant == "reference" else 1,
    doc="Contrastive LRP (Gu 2018), reference two-pass rescaled variant by default",
)  # fmt: skip
register(
    "sglrp", sglrp, needs_gradients=True, forward_passes=1,
    backward_passes=lambda variant: 2 if variant == "reference" else 1,
    doc="Softmax-gradient LRP (Iwana 2019), reference two-pass rescaled variant by default",
)  # fmt: skip

__all__ = [
    "GRADIENT_MODULES",
    "ConvMap",
    "Relevance",
    "Site",
    "check_composite",
    "clrp",
    "contrastive_inits",
    "contrastive_relevance",
    "rescaled_difference",
    "forward",
    "layer_names",
    "logit_init",
    "lrp",
    "lrp_context",
    "lrp_relevance",
    "onehot_init",
    "sglrp",
    "sites",
    "to_heatmap",
]
