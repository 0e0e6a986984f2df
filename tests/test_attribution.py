"""Input-space attributions against independent references.

Peer parity on identical weights (torch twins imported with ``from_torch``), mixed targets in one batch,
max |difference| relative to the reference's max |value|: Captum 0.9.0 (``Saliency``, ``GuidedBackprop``,
``Deconvolution``, ``InputXGradient``, ``IntegratedGradients``, ``NoiseTunnel`` on the same noise) and
TorchRay 1.0 (``excitation_backprop``, ``linear_approx``); analytic cases on tiny Flax models (the ReLU
rules, a linear model, hand-derived marginal winning probabilities).
"""

import tests.torch_refs as torch_refs  # noqa: I001  (installs the torchvision stand-in first)

import dataclasses
import functools
from typing import ClassVar

import chex

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torchray.attribution.excitation_backprop import excitation_backprop, update_resnet
from torchray.attribution.linear_approx import linear_approx

import jinterp as ji
from jinterp.backbones.base import tap
from jinterp.backbones.layers import ConvBN, global_avg_pool
from jinterp.explain import attribution

TOL = 1e-4
CAPTUM = {
    "saliency": Saliency,
    "guided_backprop": GuidedBackprop,
    "deconvnet": Deconvolution,
    "gradient_x_input": InputXGradient,
    "integrated_gradients": IntegratedGradients,
}
NEW = ("saliency", "guided_backprop", "deconvnet", "gradient_x_input", "integrated_gradients", "smoothgrad",
       "excitation_backprop")  # fmt: skip


def _twin(name, size=32):
    kwargs = {"head": "gap"} if name == "vgg16" else {}  # VGG16's 400 MB fc6 costs more than the rest
    tm = torch_refs.build(name, num_classes=10, seed=0, **kwargs)
    model = ji.backbones.create(name, num_classes=10, **kwargs)
    variables = ji.backbones.from_torch(model, tm.state_dict())
    x = np.random.default_rng(1).normal(size=(3, size, size, 3)).astype(np.float32)
    return tm, model, variables, x, np.array([1, 7, 4])


_cached_twin = functools.lru_cache(maxsize=None)(_twin)
SLOW = pytest.mark.slow
PARITY = [
    *[("small_cnn", m) for m in sorted(CAPTUM)],
    ("resnet18", "guided_backprop"),
    *[pytest.param("resnet18", m, marks=SLOW) for m in sorted(set(CAPTUM) - {"guided_backprop"})],
    # VGG16 without Integrated Gradients: near the zero baseline its maps are nearly constant and max-pool
    # near-ties route the gradient to different cells in XLA and torch (path points alpha < 0.003 differ
    # by 2-5 %, the integral by 1e-3).
    *[pytest.param("vgg16", m, marks=SLOW) for m in sorted(set(CAPTUM) - {"integrated_gradients"})],
]  # fmt: skip


def _rel(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(("name", "method"), PARITY)
def test_raw_attributions_match_captum(name, method):
    """Integrated Gradients with 8 Gauss-Legendre steps on both sides (nodes and weights for any count:
    :func:`test_quadrature_is_captums`)."""
    tm, model, variables, x, t = _cached_twin(name)
    kwargs = {"n_steps": 8} if method == "integrated_gradients" else {}
    xt = torch_refs.to_nchw(x).requires_grad_(True)
    ref = _nhwc(CAPTUM[method](tm).attribute(xt, target=torch.tensor(t), **kwargs))
    ours = attribution.attributions(
        "integrated_gradients(steps=8)" if kwargs else method, model, variables, x, t
    )
    assert ours.shape == x.shape
    assert _rel(ours, ref) < TOL


def test_smoothgrad_matches_captum_noise_tunnel():
    """Captum's NoiseTunnel draws ``torch.normal(0, std)`` of shape (N * samples, C, H, W) (image-major);
    the same draw, re-made from the same torch seed, is fed to jinterp's estimator."""
    tm, model, variables, x, t = _cached_twin("small_cnn")
    n, samples, std = len(x), 4, 0.5
    torch.manual_seed(3)
    ref = NoiseTunnel(Saliency(tm)).attribute(
        torch_refs.to_nchw(x).requires_grad_(True), nt_type="smoothgrad", nt_samples=samples, stdevs=std,
        target=torch.tensor(t), abs=False,
    )  # fmt: skip
    torch.manual_seed(3)
    noise = torch.normal(0, torch.tensor(std).repeat((n * samples, *x.shape[1:][::-1])))
    noise = jnp.asarray(noise.numpy().reshape(n, samples, 3, *x.shape[1:3]).transpose(1, 0, 3, 4, 2))
    fn = jax.jit(
        attribution.smoothgrad_attribution, static_argnums=(0, 4), static_argnames=("samples", "batch")
    )
    ours = fn(model, variables, jnp.asarray(x), jnp.asarray(t), lambda s: noise[s], samples=samples, batch=3)
    assert _rel(ours, _nhwc(ref)) < TOL
    plain = attribution.attributions("saliency(abs=False)", model, variables, x, t)
    assert _rel(plain, _nhwc(ref)) > 0.1  # the noise matters


def test_smoothgrad_noise_is_relative_to_each_images_range():
    images = jnp.stack([jnp.zeros((16, 16, 3)), jnp.linspace(-2.0, 2.0, 16 * 16 * 3).reshape(16, 16, 3)])
    eps = np.asarray(
        jax.jit(lambda x: jax.vmap(attribution.gaussian_noise(x, 0.15, 0))(jnp.arange(8)))(images)
    )
    assert np.allclose(eps[:, 0], 0.0)  # a constant image has range 0
    assert abs(eps[:, 1].std() - 0.15 * 4.0) < 0.03
    assert not np.allclose(eps[0], eps[1])  # samples differ
    first = jax.jit(lambda x: attribution.gaussian_noise(x, 0.15, 0)(0)[0])
    assert np.allclose(first(images[1:]), first(images[::-1]))  # the same in a batch of 1 or 2


def test_linear_approximation_at_a_layer_matches_torchray():
    """TorchRay's ``linear_approx`` (one image per call: its target is shared by the batch) at small_cnn's
    ``conv4`` (the twin's ``features.11``)."""
    tm, model, variables, x, t = _cached_twin("small_cnn")
    ours = attribution.attributions('gradient_x_input(layer="conv4")', model, variables, x, t)
    xt = torch_refs.to_nchw(x)
    ref = [linear_approx(tm, xt[i : i + 1], int(t[i]), saliency_layer="features.11") for i in range(len(x))]
    assert ours.shape == (3, 8, 8, 64)
    assert _rel(np.asarray(ours).sum(-1), torch.cat(ref).detach().numpy()[:, 0]) < TOL


@SLOW
@pytest.mark.parametrize(("name", "layer", "torch_layer"), [
    ("resnet18", "conv1", "relu"), ("resnet18", "layer2", "layer2"), ("vgg16", None, ""),
    ("vgg16", "conv3_3", "features.15"),
])  # fmt: skip
def test_excitation_backprop_matches_torchray(name, layer, torch_layer):
    """TorchRay's ``excitation_backprop`` (the authors' Caffe rules), channel-summed MWP at the layer.

    ResNet18 is compared from its stem up: at the input, the first convolution's denominators
    ``W+ x`` of a real-valued image can be near 0, and the float rounding of BatchNorm folded (jinterp)
    or passed through (TorchRay) is amplified there (4e-4 at one pixel on this seed)."""
    tm, model, variables, x, t = _twin(name)  # not cached: update_resnet patches the torch model
    if name.startswith("resnet"):
        update_resnet(tm)  # TorchRay's proportional rule at the residual sums
    spec = "excitation_backprop" if layer is None else f'excitation_backprop(layer="{layer}")'
    ours = np.asarray(attribution.attributions(spec, model, variables, x, t))
    ref = excitation_backprop(tm, torch_refs.to_nchw(x), torch.tensor(t), saliency_layer=torch_layer)
    assert _rel(ours.sum(-1), ref.detach().numpy()[:, 0]) < TOL
    assert np.allclose(ours.sum((1, 2, 3)), 1.0, atol=1e-5)  # winning probabilities are conserved


# ---------------------------------------------------------------------------------- analytic cases


class _Tiny(nn.Module):
    """x -> 1x1 ConvBN(4) -> ReLU (tap "h") -> GAP -> Dense(2)."""

    min_size: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        h = tap(self, "h", nn.relu(ConvBN(4, 1, 1, 0, name="conv")(x)), out)
        return nn.Dense(2, name="fc")(global_avg_pool(h)), out


class _Mlp(nn.Module):
    """flatten -> Dense(hidden) -> ReLU -> Dense(2); ``hidden=0``: one Dense layer (a linear model)."""

    hidden: int = 5
    min_size: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape(x.shape[0], -1)
        if self.hidden:
            h = nn.relu(nn.Dense(self.hidden, name="fc1")(h))
        return nn.Dense(2, name="fc2")(h), {}


def _init(model, x, seed=0):
    return model.init(jax.random.key(seed), jnp.asarray(x))


def test_relu_rules_analytic():
    """y = W2^T relu(W1^T x): gradient W1 (1[z>0] w2), Guided Backprop W1 (1[z>0] relu(w2)), DeconvNet
    W1 relu(w2), on a model that applies ``nn.relu`` itself (any Flax model, not only backbones)."""
    x = np.random.default_rng(0).normal(size=(2, 2, 2, 3)).astype(np.float32)
    t = np.array([0, 1])
    model = _Mlp()
    v = _init(model, x)
    w1, w2 = (np.asarray(v["params"][k]["kernel"]) for k in ("fc1", "fc2"))
    z = x.reshape(2, -1) @ w1 + np.asarray(v["params"]["fc1"]["bias"])
    on, top = (z > 0).astype(np.float32), w2[:, t].T  # (N, 5)
    expected = {"plain": on * top, "guided": on * np.maximum(top, 0), "deconvnet": np.maximum(top, 0)}
    grads = jax.jit(attribution.input_gradients, static_argnums=(0, 4))
    for relu, hidden_grad in expected.items():
        ours = np.asarray(grads(model, v, x, t, relu)).reshape(2, -1)
        assert np.allclose(ours, hidden_grad @ w1.T, atol=1e-6), relu
    assert on.min() == 0 and (top < 0).any()  # both rules' cases occur


def test_swap_relus_needs_a_relu():
    model = _Mlp(hidden=0)
    x = np.ones((1, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="relu"):
        attribution.input_gradients(model, _init(model, x), x, np.array([0]), relu="guided")


@pytest.mark.parametrize("spec", ["gradient_x_input", "integrated_gradients(steps=7)",
                                  "integrated_gradients(steps=3, baseline=0.5)"])  # fmt: skip
def test_linear_model_is_explained_exactly(spec):
    """For F(x) = w^T x + b, gradient x input and Integrated Gradients are ``(x - x') * w`` exactly."""
    x = np.random.default_rng(1).normal(size=(3, 2, 2, 3)).astype(np.float32)
    t = np.array([1, 0, 1])
    model = _Mlp(hidden=0)
    v = _init(model, x)
    w = np.asarray(v["params"]["fc2"]["kernel"])[:, t].T.reshape(x.shape)
    baseline = 0.5 if "baseline" in spec else 0.0
    assert np.allclose(attribution.attributions(spec, model, v, x, t), (x - baseline) * w, atol=1e-6)


def test_quadrature_is_captums():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for method in attribution.QUADRATURES:
        step_sizes, alphas = approximation_parameters(method)
        a, w = attribution.quadrature(9, method)
        assert np.allclose(a, alphas(9), atol=1e-7) and np.allclose(w, step_sizes(9), atol=1e-7), method


def _share(part, total):
    return np.divide(part, total, out=np.zeros_like(part), where=total > 0)


def test_excitation_backprop_analytic():
    """Marginal winning probabilities (Zhang et al. 2016) derived by hand on x -> conv1x1 -> ReLU ->
    GAP -> Dense: the Dense layer splits P = 1 by ``g_k w+_kt``, the average pool by ``a_pk``, the
    convolution by ``x_pc v+_ck`` (biases ignored, positive inputs)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0.1, 1.0, size=(2, 3, 3, 3)).astype(np.float32)
    t = np.array([1, 0])
    model = _Tiny()
    v = _init(model, x)
    p = v["params"]
    kv, bv = np.asarray(p["conv"]["conv"]["kernel"])[0, 0], np.asarray(p["conv"]["conv"]["bias"])
    kw = np.asarray(p["fc"]["kernel"])
    a = np.maximum(x @ kv + bv, 0)  # (N, 3, 3, 4)
    g = a.mean((1, 2))
    pg = g * np.maximum(kw[:, t].T, 0)
    pg = _share(pg, pg.sum(1, keepdims=True))  # (N, 4)
    pa = _share(a, a.sum((1, 2), keepdims=True)) * pg[:, None, None, :]
    contrib = x[..., :, None] * np.maximum(kv, 0)  # (N, 3, 3, c, k)
    px = (_share(contrib, contrib.sum(3, keepdims=True)) * pa[..., None, :]).sum(-1)
    assert (a == 0).any() and (kw < 0).any() and (kv < 0).any()  # ReLU and sign cases occur
    ours_h = attribution.attributions('excitation_backprop(layer="h")', model, v, x, t)
    assert np.allclose(ours_h, pa, atol=1e-6)
    assert np.allclose(attribution.attributions("excitation_backprop", model, v, x, t), px, atol=1e-6)


# ------------------------------------------------------------------------------- registry contract


def _spec(name):
    # integrated_gradients(steps=8) is compiled once for this file (the parity test uses it too)
    return {
        "integrated_gradients": "integrated_gradients(steps=8)",
        "smoothgrad": "smoothgrad(samples=2)",
    }.get(name, name)


@pytest.mark.parametrize("name", [n if n != "smoothgrad" else pytest.param(n, marks=SLOW) for n in NEW])
def test_registered_heatmaps(name):
    """Each method is registered, jitted through ``explain``, (N, H, W) in [0, 1] with per-image max 1,
    the reduction of its raw attribution, and batched with per-image targets (a permuted batch gives the
    permuted heatmaps)."""
    _, model, variables, x, t = _cached_twin("small_cnn")
    spec = _spec(name)
    heat = np.asarray(ji.explain.explain(spec, model, variables, x, t))
    assert heat.shape == (3, 32, 32) and heat.min() >= 0 and np.allclose(heat.max((1, 2)), 1.0)
    _, options = ji.explain.method(spec)
    raw = attribution.attributions(spec, model, variables, x, t)
    assert np.allclose(heat, attribution.to_heatmap(raw, (32, 32), options["reduce"]), atol=1e-6)
    if name != "smoothgrad":  # its noise depends on the image's position in the batch
        permuted = np.asarray(ji.explain.explain(spec, model, variables, x[::-1], t[::-1]))
        assert np.allclose(permuted[::-1], heat, atol=1e-5)
    assert ji.explain.METHODS[name].needs_gradients


@pytest.mark.parametrize("name", ["guided_backprop", pytest.param("excitation_backprop", marks=SLOW),
                                  pytest.param("fullgrad", marks=SLOW)])  # fmt: skip
def test_jitted_once(name, monkeypatch):
    """The traced-jaxpr ReLU swap, the LRP rule sites and FullGrad's interceptor trace once per shape:
    a second call with other values does not retrace (``chex.assert_max_traces``, as for the CAMs)."""
    m = ji.explain.METHODS[name]
    chex.clear_trace_counter()  # counts are kept per code object, which these methods' functions share

    @functools.wraps(m.factory)
    def factory(**options):
        return chex.assert_max_traces(m.factory(**options), n=1)

    counted = f"{name}_counted"
    monkeypatch.setitem(ji.explain.METHODS, counted, dataclasses.replace(m, name=counted, factory=factory))
    _, model, variables, x, t = _cached_twin("small_cnn")
    ji.explain.explain(counted, model, variables, x, t)
    ji.explain.explain(counted, model, variables, x + 1.0, t[::-1])


def test_passes_metadata():
    assert ji.explain.METHODS["integrated_gradients"].passes(64, steps=32) == (32, 32)
    assert ji.explain.METHODS["smoothgrad"].passes(64) == (50, 50)
    assert ji.explain.METHODS["guided_backprop"].passes(64) == (1, 1)


def test_bad_options_raise():
    bad = [
        'saliency(reduce="mean")', "integrated_gradients(steps=0)", 'integrated_gradients(method="x")',
        "smoothgrad(noise=-1.0)", "smoothgrad(samples=0)", "excitation_backprop(layer=('a', 'b'))",
    ]  # fmt: skip
    for spec in bad:
        with pytest.raises(ValueError):
            ji.explain.get(spec)
