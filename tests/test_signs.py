"""Static sign analysis: what it proves non-negative, what it must not, and the LRP sites it marks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name as mark

import jinterp.backbones as B
from jinterp.explain import lrp, rules, signs


def _signs(fun, nonneg_args, *args):
    return signs.nonneg_names(fun, nonneg_args, *args)


def test_relu_pool_concat_pad_are_proved_and_negatives_are_not():
    def f(x, p):
        r = jax.nn.relu(x)
        pooled = nn.max_pool(r[None], (2, 2), (2, 2))[0]
        return (
            mark(r + p, "relu_plus_zero_perturbation"),
            mark(pooled, "maxpool_of_relu"),
            mark(jnp.concatenate([r, jnp.abs(x)], -1), "concat"),
            mark(jnp.pad(r, 1), "padded"),
            mark(r * 2.0 + jnp.exp(x), "scaled_plus_exp"),
            mark(r - 1.0, "shifted_down"),
            mark(x, "raw_input"),
            mark(r * x, "relu_times_raw"),
            mark(jnp.pad(r, 1, constant_values=-1.0), "padded_with_negative"),
            mark(nn.max_pool(x[None], (2, 2), (2, 2))[0], "maxpool_of_raw"),
        )

    x = jnp.ones((4, 4, 2))
    got = _signs(f, (False, True), x, x)
    proved = {"relu_plus_zero_perturbation", "maxpool_of_relu", "concat", "padded", "scaled_plus_exp"}
    assert {k for k, v in got.items() if v} == proved
    assert set(got) - proved == {
        "shifted_down", "raw_input", "relu_times_raw", "padded_with_negative", "maxpool_of_raw"
    }  # fmt: skip


def test_constants_are_judged_by_value():
    pos, neg = np.abs(np.random.default_rng(0).normal(size=(3, 3))), -np.ones((3, 3))
    got = _signs(
        lambda x: (mark(jax.nn.relu(x) @ pos, "pos"), mark(jax.nn.relu(x) @ neg, "neg")),
        (False,),
        jnp.ones((2, 3)),
    )
    assert got == {"pos": True, "neg": False}


@pytest.mark.parametrize(
    "name,general",
    [
        ("vgg16", {"conv1_1"}),
        ("resnet18", {"conv1"}),
        ("small_cnn", {"conv1"}),
    ],
)
def test_backbone_sites_after_relu_are_marked(name, general):
    model = B.create(name, num_classes=4)
    sites = lrp.sites(model, (1, 64, 64, 3))
    convs = {s.path for s in sites if s.kind == "conv"}
    assert {s.path for s in sites if s.kind == "conv" and not s.nonneg_input} == general
    assert len(convs) > len(general)


def test_densenet_convs_take_relu_inputs_but_its_batchnorms_do_not():
    sites = lrp.sites(B.create("densenet121", num_classes=4), (1, 64, 64, 3))
    assert {s.path for s in sites if s.kind == "conv" and not s.nonneg_input} == {"conv0"}
    # BatchNorms read concatenations of raw conv outputs, except the first one (after ReLU + max-pool)
    assert {s.path for s in sites if s.kind == "batchnorm" and s.nonneg_input} == {
        "denseblock1_denselayer1/norm1"
    }


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.AlphaBeta(2.0, 1.0)])
def test_nonneg_fast_path_equals_general_rule_on_nonneg_input(rule):
    rng = np.random.default_rng(0)
    a = jnp.asarray(np.maximum(rng.normal(size=(2, 9, 9, 4)), 0), jnp.float32)  # ReLU output, has zeros
    w, b = (
        jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32),
        jnp.asarray(rng.normal(size=6), jnp.float32),
    )
    lin = lrp.ConvMap(1, 1)
    r = jnp.asarray(rng.normal(size=(2, 9, 9, 6)), jnp.float32)
    general = rules.input_relevance(rule, lin, a, w, b, r)
    fast = rules.input_relevance(rule.for_nonneg_input(), lin, a, w, b, r)
    np.testing.assert_allclose(fast, general, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(general).max()) > 0
