"""LRP rule sites: which Flax modules get a rule, their canonized forward, and the rule-applying context.

Every rule site of a backbone is its own Flax module (``ConvBN``, ``nn.Dense``, ``Sum``, ``AvgPool``,
``AdaptiveAvgPool``, free-standing ``nn.BatchNorm``; see ``jinterp.backbones.layers``). :func:`sites`
finds them (traced with shapes only); under :func:`lrp_context` each site's output goes through a
``jax.custom_vjp`` identity whose backward applies the site's rule (``jinterp.explain.rules``), exactly
as zennit's backward hooks do. ``ConvBN`` folds its BatchNorm into the convolution on the fly (zennit's
``MergeBatchNorm`` canonizer); ``Sum`` gets the Norm rule (zennit's ``ResNetCanonizer``). The
propagation built on it is :mod:`jinterp.explain.lrp`.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jinterp.backbones import conv, min_size
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
from jinterp.explain import rules, signs

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


def check_composite(model: nn.Module, composite, image_shape=None) -> rules.Composite:
    """Resolve ``composite`` and check it has a rule for every layer kind ``model`` uses."""
    comp = rules.composite(composite)
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


def _rule_for(comp: rules.Composite, site: Site) -> rules.Rule | None:
    if site.first and comp.get("first") is not None:
        return comp.get("first")
    return comp.get(site.kind)


def _apply_rule(rule: rules.Rule, lin, first: bool, top: bool, a, w, b):
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
    slower inside loops (CRP's ``lax.map`` over channel chunks), the former at full speed. Both go
    through :func:`jinterp.backbones.conv.conv_general_dilated`, a matmul on maps smaller than the
    kernel, as ``ConvBN``'s own forward does.
    """

    strides: int
    padding: int

    def __call__(self, a, w):
        p = self.padding
        return conv.conv_general_dilated(a, w, (self.strides,) * 2, ((p, p), (p, p)), dimension_numbers=_NHWC)

    def transpose(self, s, w, input_shape):
        pads = []
        for axis, k in zip((1, 2), w.shape[:2], strict=True):
            low = k - 1 - self.padding
            dilated = (s.shape[axis] - 1) * self.strides + 1
            pads.append((low, input_shape[axis] + k - 1 - dilated - low))
        flipped = jnp.flip(w, (0, 1)).swapaxes(2, 3)
        return conv.conv_general_dilated(
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

        def bare_conv(x, k):  # any kernel shape (rules may run it with fewer channels, e.g. Flat)
            return module.clone(parent=None, use_bias=False, features=k.shape[-1]).apply(
                {"params": {"kernel": k}}, x
            )

        return bare_conv, w, b
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
