"""Input-space attributions: gradient (saliency), Guided Backprop, DeconvNet, gradient x input (linear
approximation), Integrated Gradients, SmoothGrad, Excitation Backprop.

Each registered method has a *raw* attribution, signed, (N, H, W, 3) at the input (or (N, h, w, C) at a
tapped layer for the ``layer`` options), returned by :func:`attributions`; its heatmap reduces the
channels per pixel (``reduce``), keeps the positive part, upsamples bilinearly when the attribution is at
a layer, and divides by each image's maximum: [0, 1], 0 meaning "no attribution" (an all-zero map stays
zero, never NaN). The score is the target logit (Captum ``target=t``, PGC ``ClassifierOutputTarget``);
each image's score depends on that image only, so one backward pass of the summed scores gives every
image's gradient, with per-image targets.

Channel reductions (``reduce``), as the papers and peer libraries visualise attributions:

* ``"max_abs"``: ``max_c |a_c|``, the class saliency map of Simonyan et al. 2014 §3.1; TorchRay's default
  for gradient, Guided Backprop and DeconvNet. Default of the gradient-magnitude methods.
* ``"sum_abs"``: ``sum_c |a_c|``, the grayscale view of the SmoothGrad paper's code (PAIR saliency
  ``VisualizeImageGrayscale``) and of Captum's ``visualize_image_attr(sign="absolute_value")``.
* ``"sum"``: ``sum_c a_c`` (positive part): the pixel's share of the score for the signed methods (for
  Integrated Gradients the shares add up to ``F(x) - F(baseline)``, completeness), as jinterp's LRP
  heatmaps (:func:`jinterp.explain.lrp.to_heatmap`) and TorchRay's linear-approximation and
  excitation-backprop saliency. Default of gradient x input, Integrated Gradients, Excitation Backprop.

Guided Backprop and DeconvNet change the backward pass of every ReLU. The backbones apply ReLUs as
``nn.relu`` calls inside modules (no ReLU module to intercept), so :func:`swap_relus` traces the score
to a jaxpr and re-evaluates it with each ``jax.nn.relu`` call (``flax.linen.relu`` is the same function)
replaced by a ``jax.custom_vjp`` ReLU whose backward is the method's rule: pure, jittable, no hooks,
for any Flax model that uses ``jax.nn.relu`` outside control flow (``lax.scan`` / ``cond`` bodies are
left as they are; a model with no such call raises ValueError).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jinterp.backbones import feature_grads, target_logit
from jinterp.backbones.taps import strip_perturbations
from jinterp.checks import check_bool, check_choice, check_int, check_number
from jinterp.explain import lrp, pipeline, rules
from jinterp.explain.registry import format_spec, method, register
from jinterp.ops.resize import upsample

# ------------------------------------------------------------------------------------- ReLU rules


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward passes ``1[x > 0] * relu(g)`` (Guided Backprop, Springenberg et al. 2015,
    Fig. 1: only positive signal through units that were active); Captum ``GuidedBackprop``."""
    return jnp.maximum(x, 0)


guided_relu.defvjp(
    lambda x: (jnp.maximum(x, 0), x), lambda x, g: (jnp.where(x > 0, jnp.maximum(g, 0), 0).astype(g.dtype),)
)


@jax.custom_vjp
def deconv_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward is ``relu(g)``, independent of the forward input (DeconvNet, Zeiler & Fergus
    2014, as Springenberg et al. 2015 Fig. 1 write it); Captum ``Deconvolution``."""
    return jnp.maximum(x, 0)


deconv_relu.defvjp(lambda x: (jnp.maximum(x, 0), None), lambda _, g: (jnp.maximum(g, 0),))

RELU_BACKWARD: dict[str, Callable | None] = {"plain": None, "guided": guided_relu, "deconvnet": deconv_relu}


def _is_relu(eqn) -> bool:
    """``jax.nn.relu``'s jaxpr: a ``custom_jvp_call`` around one ``jit`` named ``relu``."""
    if eqn.primitive.name != "custom_jvp_call" or len(eqn.invars) != 1:
        return False
    inner = eqn.params["call_jaxpr"].jaxpr.eqns
    return (
        len(inner) == 1
        and inner[0].primitive.name in ("jit", "pjit")
        and inner[0].params.get("name") == "relu"
    )


def _eval_swapped(jaxpr, consts, args, relu, count: list) -> list:
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if _is_relu(eqn):
            count.append(1)
            outs = [relu(invals[0])]
        elif eqn.primitive.name in ("jit", "pjit", "closed_call"):  # inline: relus inside are swapped too
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            outs = _eval_swapped(inner.jaxpr, inner.consts, invals, relu, count)
        else:
            with eqn.ctx.manager:  # as jax's own eval_jaxpr
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def swap_relus(fn: Callable, relu: Callable) -> Callable:
    """``fn`` with every ``jax.nn.relu`` call replaced by ``relu`` (e.g. :func:`guided_relu`).

    ``fn`` is traced to a jaxpr on each call's (abstract) arguments and re-evaluated equation by
    equation; everything else binds its own primitive, so the result is traceable, differentiable and
    jittable like ``fn``. Raises ValueError if ``fn`` calls no ``jax.nn.relu``.
    """

    def swapped(*args):
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        count = []
        out = _eval_swapped(closed.jaxpr, closed.consts, jax.tree.leaves(args), relu, count)
        if not count:
            raise ValueError(
                "model: no jax.nn.relu / flax.linen.relu call found outside control flow; Guided Backprop "
                "and DeconvNet modify the ReLUs' backward pass"
            )
        return jax.tree.unflatten(jax.tree.structure(shapes), out)

    return swapped


# -------------------------------------------------------------------------------------- gradients


def input_gradients(model, variables: dict, images: jax.Array, targets: jax.Array, relu: str = "plain"):
    """``d logit_t / d x`` per image, (N, H, W, 3); ``relu="guided"`` / ``"deconvnet"`` apply those
    methods' ReLU backward rules (:data:`RELU_BACKWARD`, :func:`swap_relus`)."""
    check_choice("relu", relu, RELU_BACKWARD)

    def total(v, x, t):
        logits, _ = model.apply(v, x)
        return target_logit(logits, t).sum()

    if relu != "plain":
        total = swap_relus(total, RELU_BACKWARD[relu])
    return jax.grad(total, argnums=1)(strip_perturbations(variables), images, targets)


def weighted_sum(fn: Callable, xs: jax.Array, weights: jax.Array, batch: int) -> jax.Array:
    """``sum_i weights[i] * fn(xs[i])`` with ``batch`` evaluations of ``fn`` at a time (``vmap``) in a
    ``lax.scan``: memory of ``batch`` passes, not of all of them. The tail is padded with weight 0."""
    n = xs.shape[0]
    b = min(batch, n)
    chunks = -(-n // b)
    pad = chunks * b - n
    xs = jnp.concatenate([xs, jnp.repeat(xs[-1:], pad, axis=0)]).reshape(chunks, b, *xs.shape[1:])
    weights = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)]).reshape(chunks, b)

    def step(total, chunk):
        x, w = chunk
        values = jax.vmap(fn)(x)
        return total + jnp.tensordot(w, values, axes=1), None

    init = jax.eval_shape(fn, xs[0, 0])
    total, _ = jax.lax.scan(step, jnp.zeros(init.shape, init.dtype), (xs, weights))
    return total


QUADRATURES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle", "riemann_right")


def quadrature(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` on [0, 1] of Captum's ``approximation_parameters(method)``, exactly: Gauss-
    Legendre nodes and weights rescaled from [-1, 1]; Riemann sums with step 1/steps (the trapezoid
    rule halves the end weights, so they add up to (steps - 1) / steps, as in Captum)."""
    check_choice("method", method, QUADRATURES)
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + x), 0.5 * w
    if steps < 2:
        raise ValueError(f"steps: Riemann sums need at least 2 steps, got {steps}")
    w = np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        w[0] /= 2
        w[-1] /= 2
        return np.linspace(0, 1, steps), w
    start = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (np.arange(steps) + start) / steps, w


def integrated_gradients_attribution(
    model, variables, images, targets, *, steps=50, method="gausslegendre", baseline=0.0, batch=8
):
    """Integrated Gradients (Sundararajan et al. 2017, §3):
    ``(x - x') * int_0^1 dF(x' + a (x - x')) / dx da``, the integral by :func:`quadrature`; ``x'`` is
    the constant image ``baseline``. (N, H, W, 3)."""
    alphas, weights = (jnp.asarray(a, jnp.float32) for a in quadrature(steps, method))
    x0 = jnp.full_like(images, baseline)
    delta = images - x0
    total = weighted_sum(
        lambda a: input_gradients(model, variables, x0 + a * delta, targets), alphas, weights, batch
    )
    return delta * total


def gaussian_noise(images: jax.Array, noise: float, seed: int) -> Callable[[jax.Array], jax.Array]:
    """SmoothGrad's noise: ``s -> (N, H, W, 3)`` draws ``N(0, sigma_i^2)`` with ``sigma_i = noise *
    (max x_i - min x_i)`` per image (Smilkov et al. 2017: the noise level is relative to the input's
    range); image i of sample s from ``fold_in(fold_in(key(seed), s), i)``, so an image's noise does not
    depend on the batch it is in."""
    sigma = noise * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    key = jax.random.key(seed)

    def draw(s):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, s), i))(
            jnp.arange(images.shape[0])
        )
        eps = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], images.dtype))(keys)
        return sigma[:, None, None, None] * eps

    return draw


def smoothgrad_attribution(model, variables, images, targets, noise_fn, *, samples=50, batch=8):
    """SmoothGrad (Smilkov et al. 2017): ``1/n sum_s dF(x + eps_s) / dx`` with ``eps_s = noise_fn(s)``
    (see :func:`gaussian_noise`); the signed mean gradient, (N, H, W, 3). Captum's
    ``NoiseTunnel(Saliency(m)).attribute(x, nt_type="smoothgrad", abs=False)`` on the same noise."""
    weights = jnp.full(samples, 1.0 / samples, jnp.float32)
    grad = lambda s: input_gradients(model, variables, images + noise_fn(s), targets)
    return weighted_sum(grad, jnp.arange(samples), weights, batch)


# ----------------------------------------------------------------------------- excitation backprop


@dataclasses.dataclass(frozen=True)
class Excitation(rules.Rule):
    """Excitation Backprop's rule (Zhang et al. 2016, marginal winning probability): a unit passes its
    winning probability to its inputs in proportion to their excitatory contributions,
    ``P(a_j) = sum_i a_j w+_ji / (sum_k a_k w+_ki + eps) P(a_i)``; bias ignored; ``eps = 1e-20`` (the
    authors' Caffe code, TorchRay). Applied to the first layer's real-valued input as TorchRay does."""

    epsilon: float = 1e-20

    def prepare(self, lin, a, w, b, z):
        wp = jnp.maximum(w, 0)
        return wp, lin(a, wp) + self.epsilon

    def factor(self, lin, a, prep, r):
        wp, den = prep
        s = r / den
        if hasattr(lin, "transpose"):
            return lin.transpose(s, wp, a.shape)
        return jax.vjp(lambda x: lin(x, wp), a)[1](s)[0]


EXCITATION = rules.composite(
    {
        "conv": Excitation(),
        "dense": Excitation(),
        "sum": Excitation(),
        "avgpool": Excitation(),
        "batchnorm": "pass",
    }
)


def excitation_relevance(model, variables, images, targets, layer: str | None = None) -> jax.Array:
    """Marginal winning probabilities (Zhang et al. 2016) at the input (N, H, W, 3), or at ``layer``
    (N, h, w, C), from a one-hot top-down signal at each image's target logit.

    Runs on the LRP machinery (:func:`jinterp.explain.lrp.forward` with the :data:`EXCITATION`
    composite): :class:`Excitation` at convolutions and dense layers, proportional splits at residual
    sums and average pools, winner-takes-all at max pools (their gradient), free-standing BatchNorm passed
    through. A ``ConvBN``'s BatchNorm is folded into its convolution (the rule sees the affine map the
    layer computes); TorchRay instead passes the signal through BatchNorm unchanged, which gives the
    same result whenever every BN scale ``gamma / sqrt(var + eps)`` is positive.
    """
    layers = () if layer is None else (layer,)
    logits, _, backward = lrp.forward(model, variables, images, EXCITATION, layers)
    r_in, r_layers = backward(lrp.onehot_init(logits, targets))
    return r_in if layer is None else r_layers[layer]


# ------------------------------------------------------------------------ heatmaps and the registry


REDUCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "max_abs": lambda a: jnp.abs(a).max(-1),
    "sum_abs": lambda a: jnp.abs(a).sum(-1),
    "sum": lambda a: a.sum(-1),
}


def to_heatmap(raw: jax.Array, size: tuple[int, int], reduce: str) -> jax.Array:
    """(N, h, w, C) attribution -> (N, H, W) in [0, 1]: ``reduce`` over channels, positive part,
    bilinear upsampling to ``size`` if needed, divided by each image's maximum (module docstring)."""
    check_choice("reduce", reduce, REDUCTIONS)
    r = jnp.maximum(REDUCTIONS[reduce](raw.astype(jnp.promote_types(raw.dtype, jnp.float32))), 0.0)
    if r.shape[1:3] != tuple(size):
        r = jnp.maximum(upsample(r, tuple(size)), 0.0)
    peak = r.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, r / jnp.where(peak > 0, peak, 1.0), 0.0)


def _explainer(raw_fn: Callable, reduce: str, layer: str | None = None):
    """The registered ``fn(model, variables, images, targets)``; ``fn.raw`` is the raw attribution."""
    check_choice("reduce", reduce, REDUCTIONS)
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"layer: expected one layer name or None, got {layer!r}")

    def raw(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        if layer is not None:
            pipeline.resolve_layers(model, layer)
        return raw_fn(model, variables, images, targets)

    def fn(model, variables, images, targets):
        return to_heatmap(raw(model, variables, images, targets), images.shape[1:3], reduce)

    fn.raw = raw
    return fn


@register("saliency", needs_gradients=True, forward_passes=1, backward_passes=1,
          doc="Gradient saliency (Simonyan 2014 §3.1): max_c |d logit / d x|")  # fmt: skip
def saliency(abs: bool = True, reduce: str = "max_abs"):  # noqa: A002  (Captum's name)
    """Gradient of the target logit w.r.t. the input (Simonyan et al. 2014); the heatmap is the class
    saliency map ``max_c |g_c|`` (§3.1). Raw: ``|g|`` (``abs=True``) or ``g``, as Captum
    ``Saliency(model).attribute(x, target=t, abs=abs)``."""
    signed = not check_bool("abs", abs)

    def raw(model, variables, images, targets):
        g = input_gradients(model, variables, images, targets)
        return g if signed else jnp.abs(g)

    return _explainer(raw, reduce)


@register("guided_backprop", needs_gradients=True, forward_passes=1, backward_passes=1,
          doc="Guided Backprop (Springenberg 2015): ReLU backward 1[x>0] relu(g)")  # fmt: skip
def guided_backprop(reduce: str = "max_abs"):
    """Guided Backprop: the input gradient with every ReLU's backward replaced by :func:`guided_relu`
    (via :func:`swap_relus`). Raw: Captum ``GuidedBackprop(model).attribute(x, target=t)``; heatmap
    ``max_c |.|`` (TorchRay's default)."""
    return _explainer(lambda m, v, x, t: input_gradients(m, v, x, t, relu="guided"), reduce)


@register("deconvnet", needs_gradients=True, forward_passes=1, backward_passes=1,
          doc="DeconvNet (Zeiler & Fergus 2014): ReLU backward relu(g)")  # fmt: skip
def deconvnet(reduce: str = "max_abs"):
    """DeconvNet: the input gradient with every ReLU's backward replaced by :func:`deconv_relu`.
    Raw: Captum ``Deconvolution(model).attribute(x, target=t)``; heatmap ``max_c |.|`` (TorchRay)."""
    return _explainer(lambda m, v, x, t: input_gradients(m, v, x, t, relu="deconvnet"), reduce)


@register("gradient_x_input", needs_gradients=True, forward_passes=1, backward_passes=1,
          doc="Gradient x input / linear approximation (Shrikumar 2016; Kindermans 2016)")  # fmt: skip
def gradient_x_input(layer: str | None = None, reduce: str = "sum"):
    """The first-order Taylor (linear) approximation of the target logit: ``x * dF/dx`` (Shrikumar et
    al. 2016, Kindermans et al. 2016); exact for a linear model (attributions sum to ``F(x) - F(0)``).
    Raw: Captum ``InputXGradient``. With ``layer``, TorchRay's ``linear_approx`` at that layer:
    ``A * dF/dA`` (N, h, w, C), heatmap upsampled (the "L.A." baseline of CLAM's Table 1)."""

    def raw(model, variables, images, targets):
        if layer is None:
            return images * input_gradients(model, variables, images, targets)
        _, maps, grads = feature_grads(model, variables, images, targets, layer)
        return maps[layer] * grads[layer]

    return _explainer(raw, reduce, layer)


@register("integrated_gradients", needs_gradients=True, forward_passes=lambda steps: steps,
          backward_passes=lambda steps: steps, doc="Integrated Gradients (Sundararajan 2017)")  # fmt: skip
def integrated_gradients(
    steps: int = 50, method: str = "gausslegendre", baseline: float = 0.0, batch: int = 8, reduce: str = "sum"
):
    """Integrated Gradients, :func:`integrated_gradients_attribution`. Defaults are Captum's
    ``IntegratedGradients.attribute`` (``n_steps=50``, ``method="gausslegendre"``, zero baseline), whose
    raw attributions it reproduces; ``batch`` path points per pass (Captum ``internal_batch_size``)."""
    check_choice("method", method, QUADRATURES)
    check_int("steps", steps, low=1 if method == "gausslegendre" else 2)  # Captum's minimum counts
    check_int("batch", batch, low=1)
    check_number("baseline", baseline)

    def raw(model, variables, images, targets):
        return integrated_gradients_attribution(
            model, variables, images, targets, steps=steps, method=method, baseline=baseline, batch=batch
        )

    return _explainer(raw, reduce)


@register("smoothgrad", needs_gradients=True, forward_passes=lambda samples: samples,
          backward_passes=lambda samples: samples, doc="SmoothGrad (Smilkov 2017)")  # fmt: skip
def smoothgrad(
    samples: int = 50, noise: float = 0.15, seed: int = 0, batch: int = 8, reduce: str = "max_abs"
):
    """SmoothGrad, :func:`smoothgrad_attribution` with :func:`gaussian_noise`: the mean gradient over
    ``samples`` noisy copies, noise std = ``noise`` x each image's value range. Defaults from Smilkov
    et al. 2017: n = 50 (little gain beyond) and a 10-20 % noise level (15 %, also PAIR saliency's
    ``stdev_spread``); heatmap ``max_c |.|`` of the mean gradient (Simonyan's saliency map of it)."""
    check_int("samples", samples, low=1)
    check_int("batch", batch, low=1)
    check_int("seed", seed, low=0)
    check_number("noise", noise, 0.0)

    def raw(model, variables, images, targets):
        noise_fn = gaussian_noise(images, noise, seed)
        return smoothgrad_attribution(
            model, variables, images, targets, noise_fn, samples=samples, batch=batch
        )

    return _explainer(raw, reduce)


@register("excitation_backprop", needs_gradients=True, forward_passes=1, backward_passes=1,
          doc="Excitation Backprop (Zhang 2016), marginal winning probability")  # fmt: skip
def excitation_backprop(layer: str | None = None, reduce: str = "sum"):
    """Excitation Backprop, :func:`excitation_relevance`: marginal winning probabilities at the input
    (``layer=None``, TorchRay's default ``saliency_layer``) or at ``layer``, summed over channels
    (TorchRay's ``gradient_to_excitation_backprop_saliency``) and upsampled. Zhang et al. read the map
    at an intermediate layer (TorchRay's VGG16 example: ``pool2``; here e.g. ``conv3_3``)."""
    return _explainer(lambda m, v, x, t: excitation_relevance(m, v, x, t, layer), reduce, layer)


@functools.lru_cache(maxsize=64)
def _raw_jitted(spec: str):
    m, options = method(spec)
    fn = m.factory(**options)
    if not hasattr(fn, "raw"):
        raise ValueError(f"spec: {m.name!r} has no raw attribution; methods with one: {sorted(RAW_METHODS)}")
    return jax.jit(fn.raw, static_argnums=0)


def attributions(spec: str, model, variables: dict, images: jax.Array, targets: jax.Array) -> jax.Array:
    """The raw, signed attribution of a method of this module, jitted and cached per spec.

    ``attributions('integrated_gradients(steps=32)', model, variables, images, targets)`` -> (N, H, W, 3)
    (or (N, h, w, C) for ``layer=`` options), the array the heatmap of ``explain(spec, ...)`` reduces.
    """
    m, options = method(spec)
    pipeline.check_inputs(model, images, targets)
    fn = _raw_jitted(format_spec(m.name, options))
    return fn(model, variables, jnp.asarray(images, jnp.float32), jnp.asarray(targets))


RAW_METHODS = (
    "saliency", "guided_backprop", "deconvnet", "gradient_x_input", "integrated_gradients", "smoothgrad",
    "excitation_backprop",
)  # fmt: skip
