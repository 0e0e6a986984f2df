"""Layer-wise relevance propagation as pure JAX: rule sites re-routed with ``nn.intercept_methods``.

Every rule site of a backbone is its own Flax module (``ConvBN``, ``nn.Dense``, ``Sum``, ``AvgPool``,
``AdaptiveAvgPool``, free-standing ``nn.BatchNorm``; see ``jinterp.backbones.layers``). While the
model runs under :func:`lrp_context`, each site's output is passed through a ``jax.custom_vjp``
identity whose backward applies the site's rule (``jinterp.explain.rules``), exactly as zennit's
backward hooks do. ``ConvBN`` folds its BatchNorm into the convolution on the fly (zennit's
``MergeBatchNorm`` canonizer); ``Sum`` gets the Norm rule (zennit's ``ResNetCanonizer``).

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
from jax.ad_checkpoint import checkpoint_name

from jinterp.backbones import check_layers, layer_names, min_size
from jinterp.backbones.base import PERTURBATIONS
from jinterp.backbones.layers import (
    BN_EPSILON,
    AdaptiveAvgPool,
    AvgPool,
    ConvBN,
    MaxPool,
    Sum,
    adaptive_pool_matrix,
)
from jinterp.backbones.taps import strip_perturbations
from jinterp.checks import check_choice, check_images, check_targets
from jinterp.explain import rules as R
from jinterp.explain import signs
from jinterp.explain.registry import register

# Parameter-free modules whose plain gradient is already the right relevance map (module docstring).
GRADIENT_MODULES = (MaxPool, nn.Dropout)


@dataclasses.dataclass(frozen=True)
class Site:
    """A rule site: module path, layer kind, whether it is the first layer / the classifier, and
    whether its input is provably non-negative (``jinterp.explain.signs``)."""

    path: str
    kind: str
    first: bool = False
    top: bool = False
    nonneg_input: bool = False


def _path(module: nn.Module) -> str:
    return "/".join(module.scope.path)


def _own_params(module: nn.Module) -> bool:
    params = module.variables.get("params", {})
    return any(not isinstance(v, dict) for v in params.values())


def _kind(module: nn.Module) -> str | None:
    """Layer kind of a module call, ``None`` for modules the plain gradient handles (containers too)."""
    if isinstance(module.parent, ConvBN):  # its conv and bn are folded at the ConvBN site
        return None
    if isinstance(module, (ConvBN, nn.Conv)):
        return "conv"
    if isinstance(module, nn.Dense):
        return "dense"
    if isinstance(module, Sum):
        return "sum"
    if isinstance(module, (AvgPool, AdaptiveAvgPool)):
        return "avgpool"
    if isinstance(module, nn.BatchNorm):
        return "batchnorm"
    if isinstance(module, GRADIENT_MODULES) or not _own_params(module):
        return None
    raise ValueError(
        f"model: no LRP rule covers layer kind {type(module).__name__!r} (module {_path(module)!r}); "
        f"supported kinds: ConvBN/nn.Conv, nn.Dense, Sum, AvgPool/AdaptiveAvgPool, nn.BatchNorm, "
        f"and parameter-free modules"
    )


@functools.lru_cache(maxsize=64)
def sites(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[Site, ...]:
    """The model's rule sites in call order (traced with shapes only, cached).

    The first conv/dense site is marked ``first`` and the last site, which must produce the logits,
    ``top``. Each site's input is marked with ``checkpoint_name`` and a sign analysis of the traced
    jaxpr decides ``nonneg_input`` (tap perturbations count as the zeros they are in LRP).
    Raises ValueError naming a module that no rule covers.
    """
    calls = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        kind = _kind(module) if context.method_name == "__call__" and module.scope is not None else None
        if kind is None:
            return next_fun(*args, **kwargs)
        path = _path(module)
        if kind != "sum":
            args = (checkpoint_name(args[0], path), *args[1:])
        out = next_fun(*args, **kwargs)
        calls.append((path, kind, jnp.shape(out)))
        return out

    image = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    variables = strip_perturbations(jax.eval_shape(model.init, jax.random.key(0), image))
    logits, maps = jax.eval_shape(model.apply, variables, image)

    def run(variables, perturbations, x):
        with nn.intercept_methods(record):
            return model.apply({**variables, PERTURBATIONS: perturbations}, x)[0]

    nonneg = signs.nonneg_names(run, (False, True, False), variables, maps, image)
    if not calls:
        raise ValueError(f"model: {type(model).__name__} has no LRP rule sites")
    path, kind, shape = calls[-1]
    if shape != logits.shape:
        raise ValueError(
            f"model: the last rule site {path!r} ({kind}) has output shape {shape}, expected the logits "
            f"{logits.shape}; LRP needs the classifier to be a Dense or conv module"
        )
    first = next(i for i, (_, k, _) in enumerate(calls) if k in ("conv", "dense"))
    return tuple(
        Site(p, k, i == first, i == len(calls) - 1, nonneg.get(p, False)) for i, (p, k, _) in enumerate(calls)
    )


def check_composite(model: nn.Module, composite, image_shape=None) -> R.Composite:
    """Resolve ``composite`` and check it has a rule for every layer kind ``model`` uses."""
    comp = R.composite(composite)
    image_shape = image_shape or (1, max(min_size(model), 64), max(min_size(model), 64), 3)
    for site in sites(model, tuple(image_shape)):
        rule = _rule_for(comp, site)
        if rule is None:
            raise ValueError(
                f"composite: {comp.name!r} has no rule for layer kind {site.kind!r} (module {site.path!r}); "
                f"it maps {sorted(dict(comp.rules))}; add one with composite.replace({site.kind}=...)"
            )
        if rule.first_only and not site.first:
            raise ValueError(
                f"composite: rule {type(rule).__name__} is only valid at the first layer, "
                f"but {comp.name!r} maps kind {site.kind!r} (module {site.path!r}) to it"
            )
    return comp


def _rule_for(comp: R.Composite, site: Site) -> R.Rule | None:
    if site.first and comp.get("first") is not None:
        return comp.get("first")
    return comp.get(site.kind)


def _apply_rule(rule: R.Rule, lin, first: bool, top: bool, a, w, b):
    """The site's canonized forward ``z = L(a; W) + b``; backward: the rule maps the output
    cotangent to the input's (nothing else: ``z`` is computed inside the custom VJP, so no plain
    gradient of ``L`` runs beside the rule's).

    The rule's relevance-independent part (``rule.prepare``) runs in the forward pass and is kept as
    a residual, so repeated or vmapped backward passes (CLRP's two, CRP's one per channel) share it.
    """
    param_shapes = [jax.ShapeDtypeStruct(jnp.shape(p), jnp.result_type(p)) for p in (w, b)]

    def forward(a, w, b):
        return lin(a, w) + b

    site = jax.custom_vjp(forward)

    def fwd(a, w, b):
        z = forward(a, w, b)
        return z, (a, z, rule.prepare(lin, a, w, b, z))

    def bwd(res, cz):
        a, z, prep = res
        r = cz if top else z * cz  # relevance at the output
        ca = rule.relevance(lin, a, prep, r) if first else rule.factor(lin, a, prep, r)
        return (ca, *(jnp.zeros(p.shape, p.dtype) for p in param_shapes))

    site.defvjp(fwd, bwd)
    return site(a, w, b)


_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class ConvMap:
    """A ``ConvBN`` site's bias-free convolution ``L(a; W)`` (torch-style symmetric padding).

    ``transpose`` writes ``L^T`` as a plain convolution with the flipped kernel (lhs-dilated for
    strides) instead of the transposed convolution ``jax.vjp`` emits: XLA:CPU runs the latter ~7x
    slower inside loops (CRP's ``lax.map`` over channel chunks), the former at full speed.
    """

    strides: int
    padding: int

    def __call__(self, a, w):
        p = self.padding
        return jax.lax.conv_general_dilated(
            a, w, (self.strides,) * 2, ((p, p), (p, p)), dimension_numbers=_NHWC
        )

    def transpose(self, s, w, input_shape):
        pads = []
        for axis, k in zip((1, 2), w.shape[:2], strict=True):
            low = k - 1 - self.padding
            dilated = (s.shape[axis] - 1) * self.strides + 1
            pads.append((low, input_shape[axis] + k - 1 - dilated - low))
        flipped = jnp.flip(w, (0, 1)).swapaxes(2, 3)
        return jax.lax.conv_general_dilated(
            s, flipped, (1, 1), pads, lhs_dilation=(self.strides,) * 2, dimension_numbers=_NHWC
        )


def _site_params(module: nn.Module, kind: str, a):
    """``(lin, w, b)`` of a site: its output is ``lin(a, w) + b`` (BatchNorm folded for ConvBN)."""
    v = module.variables
    if isinstance(module, ConvBN):
        w = v["params"]["conv"]["kernel"]
        b = v["params"]["conv"].get("bias", jnp.zeros(w.shape[-1], w.dtype))
        if module.use_bn:
            bn, stats = v["params"]["bn"], v["batch_stats"]["bn"]
            scale = bn["scale"] / jnp.sqrt(stats["var"] + BN_EPSILON)
            w, b = w * scale, (b - stats["mean"]) * scale + bn["bias"]
        return ConvMap(module.strides, module.padding), w, b
    if kind == "conv":  # a bare nn.Conv
        w = v["params"]["kernel"]
        b = v["params"].get("bias", jnp.zeros(w.shape[-1], w.dtype))

        def conv(x, k):  # any kernel shape (rules may run it with fewer channels, e.g. Flat)
            return module.clone(parent=None, use_bias=False, features=k.shape[-1]).apply(
                {"params": {"kernel": k}}, x
            )

        return conv, w, b
    if kind == "dense":
        w = v["params"]["kernel"]
        b = v["params"].get("bias", jnp.zeros(w.shape[-1], w.dtype))
        return (lambda x, k: x @ k), w, b
    if kind == "batchnorm":
        stats = v["batch_stats"]
        scale = v["params"].get("scale", 1.0) / jnp.sqrt(stats["var"] + module.epsilon)
        b = v["params"].get("bias", 0.0) - stats["mean"] * scale
        return (lambda x, s: x * s), scale, b
    zero = jnp.zeros((), a[0].dtype if isinstance(a, tuple) else a.dtype)
    if kind == "sum":
        return (lambda xs, _: functools.reduce(jnp.add, xs)), zero, zero
    return _pool(module), zero, zero


def _pool(module: nn.Module):
    """The (linear, parameter-free) pooling map of an ``AvgPool`` / ``AdaptiveAvgPool`` module."""
    if isinstance(module, AvgPool):
        win, st = (module.window,) * 2, (module.strides,) * 2
        return lambda x, _: nn.avg_pool(x, win, st)
    oh, ow = (module.output_size,) * 2 if isinstance(module.output_size, int) else module.output_size

    def pool(x, _):
        mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], oh))
        mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], ow))
        return jnp.einsum("ph,nhwc,qw->npqc", mh, x, mw)

    return pool


def lrp_context(model: nn.Module, composite, image_shape: tuple[int, ...]):
    """Context manager under which ``model.apply`` computes LRP in its backward pass (see module doc)."""
    comp = check_composite(model, composite, image_shape)
    by_path = {s.path: s for s in sites(model, tuple(image_shape))}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or module.scope is None:
            return next_fun(*args, **kwargs)
        site = by_path.get(_path(module))
        if site is None:
            return next_fun(*args, **kwargs)
        a = tuple(args) if site.kind == "sum" else args[0]
        lin, w, b = _site_params(module, site.kind, a)
        # The canonized forward (BatchNorm folded), as zennit's canonizers run it: the rules'
        # denominators see the same z that the layers above were computed from.
        rule = _rule_for(comp, site)
        rule = rule.for_nonneg_input() if site.nonneg_input else rule
        return _apply_rule(rule, lin, site.first, site.top, a, w, b)

    return nn.intercept_methods(interceptor)


def forward(model, variables, images, composite, layers: Sequence[str] = ()):
    """LRP forward pass: ``(logits, maps, backward)``.

    ``backward(R0)`` maps an initial relevance (N, classes) at the logits to
    ``(R_input (N,H,W,3), {layer: R_layer (N,h,w,C)})``; it can be called (or vmapped) many times
    after one forward pass (CLRP/SGLRP use two initialisations).
    """
    variables = strip_perturbations(variables)
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
    return _lrp(model, variables, jnp.asarray(images, jnp.float32), jnp.asarray(targets), comp, layers, init)


def to_heatmap(relevance: jax.Array) -> jax.Array:
    """(N, H, W, 3) signed relevance -> (N, H, W) in [0, 1]: channel sum, positive part / per-image max.

    Positive-part scaling is jinterp's contract for signed maps (negative evidence maps to 0, like a
    CAM's ReLU); use the raw relevance from :func:`lrp_relevance` for signed displays.
    """
    r = jnp.maximum(relevance.sum(-1), 0.0)
    peak = r.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, r / jnp.where(peak > 0, peak, 1.0), 0.0).astype(jnp.float32)


def _composite_from_options(composite, low, high, gamma):
    import inspect

    if composite not in R.COMPOSITES:
        return R.composite(composite)
    params = inspect.signature(R.COMPOSITES[composite]).parameters
    opts = {k: v for k, v in (("low", low), ("high", high), ("gamma", gamma)) if k in params}
    return R.composite(composite, **opts)


def lrp(composite: str = "epsilon_plus_flat", init: str = "logit", low=-1.0, high=1.0, gamma: float = 0.25):
    """Registry factory: LRP heatmaps (positive part of the channel-summed input relevance, see
    :func:`to_heatmap`). ``low``/``high`` (z^B box) and ``gamma`` go to composites that take them."""
    check_choice("init", init, INITS)
    comp = _composite_from_options(composite, low, high, gamma)

    def fn(model, variables, images, targets):
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
    comp = R.composite(composite or "bounded_deep_taylor")
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
        composite: str = "bounded_deep_taylor", variant: str = "reference", low=-1.0, high=1.0, gamma=0.25
    ):
        check_choice("variant", variant, ("reference", "paper"))
        comp = _composite_from_options(composite, low, high, gamma)

        def fn(model, variables, images, targets):
            check_composite(model, comp, tuple(images.shape))
            return to_heatmap(contrastive_relevance(model, variables, images, targets, method, comp, variant))

        return fn

    factory.__name__ = method
    factory.__doc__ = f"Registry factory: {method.upper()} heatmaps (see :func:`contrastive_relevance`)."
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
