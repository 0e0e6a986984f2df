"""LRP: zennit parity on identical weights, rules vs NumPy re-derivations, conservation, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp.backbones as B
from jinterp.backbones.layers import ConvBN
from jinterp.explain import explain, lrp, rules

torch = pytest.importorskip("torch")
import tests.torch_refs as torch_refs  # noqa: E402  (installs the torchvision stand-in)


def _zennit_lrp(tm, x, targets, canonizer):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    xt = torch_refs.to_nchw(x).requires_grad_()
    with Gradient(tm, EpsilonPlusFlat(canonizers=[canonizer()])) as attr:
        out = tm(xt)
        init = torch.zeros_like(out)
        init[range(len(targets)), targets] = out[range(len(targets)), targets]
        _, rel = attr(xt, init.detach())
    return rel.detach().numpy().transpose(0, 2, 3, 1)


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "canonizer", "size"), [("vgg16", "VGGCanonizer", 32), ("resnet18", "ResNetCanonizer", 64)]
)
def test_epsilon_plus_flat_matches_zennit(name, canonizer, size):
    import zennit.torchvision

    tm = torch_refs.build(name, num_classes=10, seed=0)
    model, v = B.create(name, num_classes=10), B.from_torch(name, tm.state_dict())
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    t = np.array([3, 7])
    ours = lrp.lrp_relevance(model, v, x, t).input
    assert _rel_err(ours, _zennit_lrp(tm, x, t, getattr(zennit.torchvision, canonizer))) < 1e-4


# --- rules vs independent NumPy (float64) re-derivations on a tiny dense layer ----------------------


def _np_rules(a, w, b, r):
    """Per-rule input relevance written out sum by sum (zennit conventions, stabiliser 1e-6)."""

    def stab(z, e=1e-6):
        return z + ((z == 0) + np.sign(z)) * e

    out = {}
    z = a @ w + b
    out["epsilon"] = a * ((r / stab(z, 0.1)) @ w.T)
    wg, bg = w + 0.25 * np.maximum(w, 0), b + 0.25 * np.maximum(b, 0)
    out["gamma"] = a * ((r / stab(a @ wg + bg)) @ wg.T)
    ap, an, wp, wn = np.maximum(a, 0), np.minimum(a, 0), np.maximum(w, 0), np.minimum(w, 0)

    def share(wa, wb, bias):
        s = r / stab(ap @ wa + bias + an @ wb)
        return ap * (s @ wa.T) + an * (s @ wb.T)

    out["zplus"] = share(wp, wn, np.maximum(b, 0))
    out["alpha2_beta1"] = 2 * share(wp, wn, np.maximum(b, 0)) - share(wn, wp, np.minimum(b, 0))
    out["flat"] = (r / stab(np.ones_like(a) @ np.ones_like(w))) @ np.ones_like(w).T
    out["wsquare"] = (r / stab(np.ones_like(a) @ (w * w) + b * b)) @ (w * w).T
    lo, hi = -np.ones_like(a), 2 * np.ones_like(a)
    s = r / stab(a @ w - lo @ wp - hi @ wn)
    out["zbox"] = a * (s @ w.T) - lo * (s @ wp.T) - hi * (s @ wn.T)
    return out


@pytest.mark.parametrize("name", ["epsilon", "gamma", "zplus", "alpha2_beta1", "flat", "wsquare", "zbox"])
def test_rules_match_numpy(name):
    rng = np.random.default_rng(1)
    a, w, b, r = rng.normal(size=(3, 6)), rng.normal(size=(6, 4)), rng.normal(size=4), rng.normal(size=(3, 4))
    rule = {
        "epsilon": rules.Epsilon(0.1),
        "gamma": rules.Gamma(0.25),
        "zplus": rules.ZPlus(),
        "alpha2_beta1": rules.AlphaBeta(2, 1),
        "flat": rules.Flat(),
        "wsquare": rules.WSquare(),
        "zbox": rules.ZBox(-1.0, 2.0),
    }[name]
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    ours = rules.input_relevance(rule, lambda x, k: x @ k, f32(a), f32(w), f32(b), f32(r))
    np.testing.assert_allclose(ours, _np_rules(a, w, b, r)[name], rtol=2e-4, atol=2e-5)


# --- conservation and LRP-0 = gradient x input -------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    model = B.create("small_cnn", num_classes=5, widths=(8, 8, 16), strides=(2, 1, 2))
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    return model, model.init(jax.random.key(0), jnp.asarray(x)), x, np.array([0, 2, 4])


def test_lrp0_is_gradient_times_input_at_every_layer(small):
    model, v, x, t = small
    layers = B.layer_names(model)
    res = lrp.lrp_relevance(model, v, x, t, composite="epsilon", layers=layers)
    comp = rules.epsilon(0.0)
    res0 = lrp.lrp_relevance(model, v, x, t, composite=comp, layers=layers)
    _, maps, grads = B.feature_grads(model, v, x, t, layers)
    for layer in layers:
        want = np.asarray(maps[layer] * grads[layer])
        # pools and sums keep the Norm rule's 1e-6 stabiliser (zennit), hence not exactly 0
        assert _rel_err(res0.layers[layer], want) < 1e-4
        assert _rel_err(res.layers[layer], want) < 5e-3  # epsilon=1e-6 moves near-zero z only


@pytest.mark.parametrize("composite", ["epsilon", "zplus_flat"])
def test_relevance_is_conserved_per_layer(small, composite):
    # Fresh init: BN folds to a bias-free conv and the Dense bias is 0, so no relevance is absorbed.
    model, v, x, t = small
    comp = (
        rules.epsilon(0.0)
        if composite == "epsilon"
        else {"conv": "zplus", "dense": rules.Epsilon(0.0), "first": "flat"}
    )
    layers = B.layer_names(model)
    res = lrp.lrp_relevance(model, v, x, t, composite=comp, layers=layers)
    logit = np.asarray(res.logits)[np.arange(3), t]
    for layer in layers:
        np.testing.assert_allclose(np.asarray(res.layers[layer]).sum((1, 2, 3)), logit, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(res.input).sum((1, 2, 3)), logit, rtol=1e-4)


def test_batch_mixes_targets_and_is_differentiable(small):
    model, v, x, t = small
    full = lrp.lrp_relevance(model, v, x, t).input
    one = lrp.lrp_relevance(model, v, x[1:2], t[1:2]).input
    np.testing.assert_allclose(full[1:2], one, rtol=1e-5, atol=1e-7)
    comp = rules.composite("epsilon_plus_flat")
    g = jax.grad(lambda im: lrp._lrp(model, v, im, jnp.asarray(t), comp, (), "logit").input.sum())(
        jnp.asarray(x)
    )
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_registry_heatmaps_and_contrastive(small):
    model, v, x, _ = small
    t = np.asarray(model.apply(v, x)[0]).argmax(-1)  # positive target logits: non-empty positive part
    for spec in ("lrp", 'lrp(composite="epsilon_gamma_box", low=-4.0, high=4.0)', "clrp", "sglrp"):
        h = np.asarray(explain(spec, model, v, x, t))
        assert h.shape == (3, 32, 32) and h.min() >= 0 and np.allclose(h.max((1, 2)), 1.0)
    ref = np.asarray(lrp.contrastive_relevance(model, v, jnp.asarray(x), jnp.asarray(t), "clrp"))
    # dual rescaled to A_t: sums cancel to float32 round-off (an unscaled dual leaves O(1) of it)
    np.testing.assert_allclose(ref.sum((1, 2, 3)), 0.0, atol=1e-5 * np.abs(ref).sum())
    # The paper variant is one signed pass, i.e. (by linearity) target pass minus unscaled dual pass.
    comp = rules.composite("bounded_deep_taylor")
    logits, _, backward = lrp.forward(model, v, jnp.asarray(x), comp)
    a_t, a_d = (backward(r)[0] for r in lrp.contrastive_inits(logits, jnp.asarray(t), "sglrp"))
    paper = lrp.contrastive_relevance(model, v, jnp.asarray(x), jnp.asarray(t), "sglrp", variant="paper")
    np.testing.assert_allclose(paper, a_t - a_d, rtol=1e-4, atol=1e-6 * float(np.abs(a_t).max()))


# --- bad input ----------------------------------------------------------------------------------------


def test_unknown_names_are_listed(small):
    model, v, x, t = small
    with pytest.raises(ValueError, match="epsilon_plus_flat"):
        lrp.lrp_relevance(model, v, x, t, composite="nope")
    with pytest.raises(ValueError, match="zplus"):
        rules.rule("nope")
    with pytest.raises(ValueError, match="conv1"):
        lrp.lrp_relevance(model, v, x, t, layers=("conv9",))
    with pytest.raises(ValueError, match="only valid at the first layer"):
        lrp.lrp_relevance(model, v, x, t, composite={"conv": "flat", "dense": "epsilon"})
    with pytest.raises(ValueError, match="no rule for layer kind 'dense'"):
        lrp.lrp_relevance(model, v, x, t, composite={"conv": "zplus"})


def test_uncovered_layer_kind_is_named():
    class WithLayerNorm(nn.Module):
        num_classes: int = 3

        @nn.compact
        def __call__(self, x):
            x = nn.relu(ConvBN(4, name="conv")(x))
            x = nn.LayerNorm(name="ln")(x)
            return nn.Dense(self.num_classes, name="fc")(x.mean((1, 2))), {"conv": x}

    model = WithLayerNorm()
    x = jnp.ones((1, 32, 32, 3))
    v = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="LayerNorm.*'ln'"):
        lrp.lrp_relevance(model, v, x, jnp.array([0]))


def test_densenet_batchnorm_needs_a_rule():
    model = B.create("densenet121", num_classes=3)
    # a Composite built without a batchnorm rule (dicts get the default epsilon rule for it)
    comp = rules.Composite(
        "no_bn", (("avgpool", rules.Norm()), ("conv", rules.ZPlus()), ("dense", rules.Epsilon()))
    )
    with pytest.raises(ValueError, match="'batchnorm'"):
        lrp.check_composite(model, comp, (1, 32, 32, 3))


@pytest.mark.parametrize(
    "kernel,stride,pad,size",
    [
        (3, 1, 1, 9),
        (3, 2, 1, 9),
        (3, 2, 1, 8),
        (1, 2, 0, 7),
        (7, 2, 3, 11),
        (3, 1, 1, 2),
        (3, 2, 1, 2),
        (3, 1, 1, 1),
    ],
)
def test_conv_transpose_is_the_vjp(kernel, stride, pad, size):
    """Also on maps smaller than the kernel, where both directions run as patch matmuls."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 5)), jnp.float32)
    lin = lrp.ConvMap(stride, pad)
    s = jnp.asarray(rng.normal(size=lin(a, w).shape), jnp.float32)
    want = jax.vjp(lambda x: lin(x, w), a)[1](s)[0]
    np.testing.assert_allclose(lin.transpose(s, w, a.shape), want, rtol=1e-5, atol=1e-5)


def test_bare_flax_convs_equal_convbn_sites():
    # A model written with plain nn.Conv gets the same rules (incl. the first-layer Flat rule, which
    # runs its transpose with a one-channel kernel) as the jinterp ConvBN twin with the same weights.
    def net(conv):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(conv(4, 1, "conv1")(x))
                x = nn.relu(conv(6, 2, "conv2")(x))
                return nn.Dense(3, name="fc")(x.mean((1, 2))), {"conv2": x}

        return Net()

    bare = net(lambda f, s, name: nn.Conv(f, (3, 3), strides=s, padding=((1, 1), (1, 1)), name=name))
    ours = net(lambda f, s, name: ConvBN(f, strides=s, name=name))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 33, 3)), jnp.float32)
    v = bare.init(jax.random.key(0), x)
    p = v["params"]
    v_ours = {"params": {"conv1": {"conv": p["conv1"]}, "conv2": {"conv": p["conv2"]}, "fc": p["fc"]}}
    t = jnp.array([0, 2])
    for comp in ("epsilon_plus_flat", "epsilon_gamma_box"):
        want = lrp.lrp_relevance(ours, v_ours, x, t, composite=comp).input
        got = lrp.lrp_relevance(bare, v, x, t, composite=comp).input
        assert float(jnp.abs(want).max()) > 0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))
