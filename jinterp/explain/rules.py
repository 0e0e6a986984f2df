"""LRP rules and composites as data (zennit's ``rules.py`` / ``composites.py`` conventions).

A rule turns the relevance ``R_z`` at the output ``z = L(a; W) + b`` of a linear rule site into
relevance at its input ``a``. Every rule here is written as zennit's ``BasicHook`` computes it
(input/param modifiers, the stabiliser ``stabilize`` and the reducer), so identical weights give
identical relevance. Rules return the *factor* ``c`` with ``R_a = a * c`` (the modified gradient);
the rules whose relevance is not proportional to the input (flat, w^2, z^B) return ``R_a`` itself
and are therefore only valid at the first layer (``first_only``).

References: Bach et al. 2015 (epsilon, alpha-beta), Montavon et al. 2017 (z+, z^B, w^2),
Montavon et al. 2019 "Layer-wise relevance propagation: an overview" (gamma, composites),
Lapuschkin et al. 2019 (flat), Kohlbrenner et al. 2020 (epsilon-plus-flat composites).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jinterp.checks import check_choice

Linear = Callable[[jax.Array, jax.Array], jax.Array]  # L(a, W): the site's bias-free linear map

# Layer kinds a composite maps to rules (see ``jinterp.explain.lrp`` for how modules get a kind).
KINDS = ("conv", "dense", "sum", "avgpool", "batchnorm", "first")


def stabilize(z: jax.Array, epsilon: float = 1e-6) -> jax.Array:
    """zennit's ``stabilize``: shift by ``epsilon`` away from zero (zeros move to ``+epsilon``)."""
    return z + ((z == 0).astype(z.dtype) + jnp.sign(z)) * epsilon


def _transpose(lin: Linear, a: jax.Array, w: jax.Array, s: jax.Array) -> jax.Array:
    """``L^T(s; W)``: ``lin.transpose(s, W, a.shape)`` if the map has one, else the VJP of ``L(., W)``."""
    if hasattr(lin, "transpose"):
        return lin.transpose(s, w, a.shape)
    return jax.vjp(lambda x: lin(x, w), a)[1](s)[0]


def _pos(x):
    return jnp.maximum(x, 0)


def _neg(x):
    return jnp.minimum(x, 0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Base rule, in two steps so that one forward pass serves many backward passes (CRP):

    * ``prepare(lin, a, w, b, z)`` -> everything the rule needs that does not depend on the
      relevance (modified weights, stabilised denominators), computed once in the forward pass;
      ``z = L(a; W) + b`` is the site's forward output.
    * ``factor(lin, a, prep, r)`` -> the modified gradient ``c`` with ``R_a = a * c``, linear in the
      output relevance ``r`` (usable at any layer); first-layer-only rules override ``relevance``.
    """

    first_only = False

    def for_nonneg_input(self) -> "Rule":
        """This rule for an input known to be >= 0 (a faster equivalent where one exists)."""
        return self

    def relevance(self, lin: Linear, a, prep, r):
        """Input relevance ``R_a``."""
        return a * self.factor(lin, a, prep, r)


def input_relevance(rule: Rule, lin: Linear, a, w, b, r):
    """``R_a`` of one rule site in one call (prepare + relevance), e.g. for checking a rule by hand."""
    return rule.relevance(lin, a, rule.prepare(lin, a, w, b, lin(a, w) + b), r)


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon (Bach 2015; zennit ``Epsilon``, default epsilon 1e-6): R_a = a W^T(R / stab(z))."""

    epsilon: float = 1e-6

    def prepare(self, lin, a, w, b, z):
        return w, stabilize(z, self.epsilon)  # the forward's z: no second evaluation of the layer

    def factor(self, lin, a, prep, r):
        w, den = prep
        return _transpose(lin, a, w, r / den)


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma (Montavon 2019; zennit ``Gamma``): weights and bias ``p + gamma * p^+``."""

    gamma: float = 0.25

    def prepare(self, lin, a, w, b, z):
        wg, bg = w + self.gamma * _pos(w), b + self.gamma * _pos(b)
        return wg, stabilize(lin(a, wg) + bg)

    def factor(self, lin, a, prep, r):
        wg, den = prep
        return _transpose(lin, a, wg, r / den)


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach 2015; zennit ``AlphaBeta``), alpha - beta = 1; alpha=1, beta=0 is z+.

    Positive part ``z_+ = W^+ a^+ + b^+ + W^- a^-``, negative part ``z_- = W^- a^+ + b^- + W^+ a^-``;
    R_a = alpha * (contribution share of z_+) - beta * (share of z_-), as zennit computes it.

    ``input_nonneg=True`` declares the input non-negative (``a^- = 0``): each share then needs one
    linear map and one transpose instead of two of each. ``jinterp.explain.lrp`` sets it on the
    layers whose input a static sign analysis of the traced model proves >= 0 (every layer fed by a
    ReLU or a max-pool of one, see ``jinterp.explain.signs``); the result is the general formula's
    (the factor differs only at inputs ``a = 0``, where ``R_a = a * c = 0`` either way).
    """

    alpha: float = 2.0
    beta: float = 1.0
    input_nonneg: bool = False

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(
                f"rule: alpha_beta needs alpha, beta >= 0 and alpha - beta = 1, got {self.alpha}, {self.beta}"
            )

    def for_nonneg_input(self) -> "AlphaBeta":
        return dataclasses.replace(self, input_nonneg=True)

    def _coefficients(self):
        return (self.alpha, -self.beta) if self.beta else (self.alpha,)

    def prepare(self, lin, a, w, b, z):
        """Per share (z_+, and z_- if beta): weights on a^+, weights on a^-, stabilised denominator."""
        wp, wn = _pos(w), _neg(w)
        shares = [(wp, wn, _pos(b)), (wn, wp, _neg(b))][: len(self._coefficients())]
        ap, an = (a, None) if self.input_nonneg else (_pos(a), _neg(a))
        return [
            (wa, wb, stabilize(lin(ap, wa) + bias + (0.0 if an is None else lin(an, wb))))
            for wa, wb, bias in shares
        ]

    def factor(self, lin, a, prep, r):
        out = 0.0
        for k, (wa, wb, den) in zip(self._coefficients(), prep, strict=True):
            s = r / den
            share = _transpose(lin, a, wa, s)
            if not self.input_nonneg:  # negative inputs contribute through the other sign's weights
                share = jnp.where(a > 0, share, _transpose(lin, a, wb, s))
            out = out + k * share
        return out


def ZPlus() -> AlphaBeta:  # noqa: N802 - a rule "class" like the others
    """LRP-z+ (Montavon 2017; zennit ``ZPlus``), i.e. alpha=1, beta=0 with negative inputs allowed."""
    return AlphaBeta(1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """Flat rule (Lapuschkin 2019; zennit ``Flat``): unit inputs and weights, no bias. First layer only.

    With all-ones weights every output channel spreads alike and every input channel receives alike,
    so the transpose runs once on the channel-summed relevance with a one-channel kernel.
    """

    first_only = True

    def prepare(self, lin, a, w, b, z):
        one_channel = jnp.ones((*w.shape[:-2], 1, 1), w.dtype)  # (kh, kw, 1, 1) or (1, 1) for Dense
        # L(1; 1) counts the in-bounds inputs of each window: the same for every output channel.
        count = a.shape[-1] * lin(jnp.ones_like(a[..., :1]), one_channel)
        return one_channel, stabilize(jnp.broadcast_to(count, z.shape))

    def relevance(self, lin, a, prep, r):
        one_channel, den = prep
        s = (r / den).sum(-1, keepdims=True)
        return jnp.broadcast_to(_transpose(lin, a[..., :1], one_channel, s), a.shape)


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    """w^2 rule (Montavon 2017; zennit ``WSquare``: unit inputs, squared weights and bias); first layer."""

    first_only = True

    def prepare(self, lin, a, w, b, z):
        w2 = w * w
        return w2, stabilize(lin(jnp.ones_like(a), w2) + b * b)

    def relevance(self, lin, a, prep, r):
        w2, den = prep
        return _transpose(lin, a, w2, r / den)


@dataclasses.dataclass(frozen=True)
class ZBox(Rule):
    """z^B rule for inputs in a box [low, high] (Montavon 2017; zennit ``ZBox``). First layer only.

    ``low``/``high`` are scalars or per-channel tuples (broadcast over the last, channel axis).
    """

    low: float | tuple[float, ...] = -1.0
    high: float | tuple[float, ...] = 1.0
    first_only = True

    def prepare(self, lin, a, w, b, z):
        lo = jnp.broadcast_to(jnp.asarray(self.low, a.dtype), a.shape)
        hi = jnp.broadcast_to(jnp.asarray(self.high, a.dtype), a.shape)
        wp, wn = _pos(w), _neg(w)
        # zennit applies the modifiers to the bias too: b - b^+ - b^- = 0.
        return w, wp, wn, lo, hi, stabilize(lin(a, w) - lin(lo, wp) - lin(hi, wn))

    def relevance(self, lin, a, prep, r):
        w, wp, wn, lo, hi, den = prep
        s = r / den
        return a * _transpose(lin, a, w, s) - lo * _transpose(lin, a, wp, s) - hi * _transpose(lin, a, wn, s)


@dataclasses.dataclass(frozen=True)
class Norm(Rule):
    """Norm rule for parameter-free sums and average pools (zennit ``Norm``): epsilon 1e-6 as stabiliser."""

    def prepare(self, lin, a, w, b, z):
        return w, stabilize(z)  # parameter-free sites have b = 0, so z = L(a)

    def factor(self, lin, a, prep, r):
        w, den = prep
        return _transpose(lin, a, w, r / den)


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Identity relevance (zennit ``Pass``): R_a = R_z, for element-wise layers (a and z same shape)."""

    def prepare(self, lin, a, w, b, z):
        return ()

    def factor(self, lin, a, prep, r):
        return jnp.where(a == 0, 0.0, r / jnp.where(a == 0, 1.0, a))


RULES: dict[str, Callable[..., Rule]] = {
    "epsilon": Epsilon,
    "gamma": Gamma,
    "alpha_beta": AlphaBeta,
    "alpha1_beta0": lambda: AlphaBeta(1.0, 0.0),
    "alpha2_beta1": lambda: AlphaBeta(2.0, 1.0),
    "zplus": ZPlus,
    "flat": Flat,
    "wsquare": WSquare,
    "zbox": ZBox,
    "norm": Norm,
    "pass": Pass,
}


def rule(spec: "str | Rule", **options) -> Rule:
    """A rule from its name (see ``RULES``) and options, e.g. ``rule("gamma", gamma=0.5)``."""
    if isinstance(spec, Rule):
        return spec
    check_choice("rule", spec, RULES)
    return RULES[spec](**options)


@dataclasses.dataclass(frozen=True)
class Composite:
    """Layer kind -> rule (zennit's ``LayerMapComposite``; ``first`` is its ``first_map``).

    Kinds: ``conv`` (``ConvBN`` / ``nn.Conv``, BatchNorm folded in), ``dense`` (``nn.Dense``),
    ``sum`` (``Sum``, residual additions), ``avgpool`` (``AvgPool``, ``AdaptiveAvgPool``),
    ``batchnorm`` (a free-standing ``nn.BatchNorm``, DenseNet's pre-activation BN, which cannot be
    folded into a convolution), ``first`` (the first conv/dense layer in call order, if set).
    """

    name: str
    rules: tuple[tuple[str, Rule], ...]

    def get(self, kind: str) -> Rule | None:
        return dict(self.rules).get(kind)

    def replace(self, **kinds: "Rule | str") -> "Composite":
        """A copy with some kinds re-mapped, e.g. ``composite.replace(batchnorm="pass")``."""
        for k in kinds:
            check_choice("kind", k, KINDS)
        new = {**dict(self.rules), **{k: rule(v) for k, v in kinds.items()}}
        return Composite(self.name + "*", tuple(sorted(new.items())))


def _composite(name, **kinds) -> Composite:
    # Parameter-free sums and pools: zennit's LAYER_MAP_BASE (Sum, AvgPool -> Norm). DenseNet's
    # free-standing BN: the epsilon rule of the affine map it computes (no zennit default exists, #165).
    base = {"sum": Norm(), "avgpool": Norm(), "batchnorm": Epsilon()}
    return Composite(name, tuple(sorted({**base, **kinds}.items())))


def epsilon_plus_flat() -> Composite:
    """zennit ``EpsilonPlusFlat``: flat first layer, z+ convs, epsilon dense layers."""
    return _composite("epsilon_plus_flat", conv=ZPlus(), dense=Epsilon(), first=Flat())


def epsilon_plus() -> Composite:
    """zennit ``EpsilonPlus``: z+ convs (first one included), epsilon dense layers."""
    return _composite("epsilon_plus", conv=ZPlus(), dense=Epsilon())


def epsilon_gamma_box(low=-1.0, high=1.0, gamma: float = 0.25) -> Composite:
    """zennit ``EpsilonGammaBox``: z^B first conv in [low, high], gamma=0.25 convs, epsilon dense."""
    return _composite("epsilon_gamma_box", conv=Gamma(gamma), dense=Epsilon(), first=ZBox(low, high))


def epsilon_alpha2_beta1() -> Composite:
    """zennit ``EpsilonAlpha2Beta1``: alpha2-beta1 convs, epsilon dense layers."""
    return _composite("epsilon_alpha2_beta1", conv=AlphaBeta(2.0, 1.0), dense=Epsilon())


def epsilon_alpha2_beta1_flat() -> Composite:
    """zennit ``EpsilonAlpha2Beta1Flat``: as ``epsilon_alpha2_beta1`` with a flat first layer."""
    return _composite("epsilon_alpha2_beta1_flat", conv=AlphaBeta(2.0, 1.0), dense=Epsilon(), first=Flat())


def bounded_deep_taylor(low=-1.0, high=1.0) -> Composite:
    """Deep Taylor with a bounded input (iNNvestigate ``BoundedDeepTaylor``): z+ everywhere, z^B first.

    The base LRP of the CLRP/SGLRP reference code (``uchidalab/softmaxgradient-lrp``).
    """
    return _composite("bounded_deep_taylor", conv=ZPlus(), dense=ZPlus(), first=ZBox(low, high))


def epsilon(eps: float = 1e-6) -> Composite:
    """LRP-epsilon everywhere (epsilon -> 0 is LRP-0, i.e. gradient x input for ReLU networks)."""
    return _composite("epsilon", conv=Epsilon(eps), dense=Epsilon(eps), batchnorm=Epsilon(eps))


COMPOSITES: dict[str, Callable[..., Composite]] = {
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_plus": epsilon_plus,
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_alpha2_beta1_flat": epsilon_alpha2_beta1_flat,
    "bounded_deep_taylor": bounded_deep_taylor,
    "epsilon": epsilon,
}


def composite(spec: "str | Composite | dict", **options) -> Composite:
    """A composite from a name (``COMPOSITES``) with options, a ``{kind: rule}`` dict (kinds it omits
    among ``sum``, ``avgpool``, ``batchnorm`` keep the defaults of every composite), or itself.

    >>> composite("epsilon_gamma_box", low=-2.1, high=2.6)
    >>> composite({"conv": "zplus", "dense": "epsilon", "sum": "norm", "first": "flat"})
    """
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, dict):
        for k in spec:
            check_choice("composite kind", k, KINDS)
        # parameter-free kinds (sum, avgpool) and DenseNet's batchnorm keep the defaults unless given
        return _composite("custom", **{k: rule(v) for k, v in spec.items()})
    check_choice("composite", spec, COMPOSITES)
    return COMPOSITES[spec](**options)
