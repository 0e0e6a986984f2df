"""icCNN grouping / multi-category losses, the LOSSES registry, spec strings and loss weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from sklearn.metrics import adjusted_rand_score

from jinterp import losses
from jinterp.losses import grouping


def planted_maps(key, b, h, w, groups, noise=0.05):
    """Post-ReLU maps whose channels copy one random pattern per group (positive scale) plus noise."""
    groups = np.asarray(groups)
    k1, k2, k3 = jax.random.split(key, 3)
    base = jax.random.uniform(k1, (b, h, w, groups.max() + 1))
    scale = jax.random.uniform(k2, (len(groups),), minval=0.5, maxval=1.5)
    x = base[..., groups] * scale + noise * jax.random.uniform(k3, (b, h, w, len(groups)))
    return jax.nn.relu(x)


def two_group_case():
    """B=2, 2x2 maps, channels {0,1} and {2,3}: after centring by the batch mean, within-group
    channels are identical and across-group channels orthogonal -> corr = 1 inside, 0 across."""
    x = np.zeros((2, 2, 2, 4), np.float32)
    x[0, 0, 0, :2] = x[1, 0, 1, :2] = 1.0  # f: image 0 at (0,0), image 1 at (0,1)
    x[0, 1, 0, 2:] = x[1, 1, 1, 2:] = 1.0  # g: image 0 at (1,0), image 1 at (1,1)
    return jnp.asarray(x), jnp.array([0, 0, 1, 1])


# ------------------------------------------------------------------------------------------ eq. 1


def numpy_similarity(maps):
    """icCNN offline_spectral_cluster, re-derived in float64 on the whole set at once."""
    n, h, w, c = maps.shape
    f = maps.reshape(n, h * w, c).astype(np.float64)
    f = f - f.mean(0)
    cov = np.einsum("nui,nuj->ij", f, f) / n
    d = np.sqrt(np.diag(cov))
    return cov / (d[:, None] * d[None] + 1e-5) + 1


def test_similarity_streamed_equals_numpy():
    maps = np.array(planted_maps(jax.random.key(0), 12, 3, 4, [0, 0, 1, 1, 2, 2]))
    maps[..., 5] += 3.0  # a large offset: the streaming update must not lose precision to it
    stats = grouping.init_stats(6, (3, 4))
    update = jax.jit(grouping.update_stats)
    for chunk in np.split(maps, [5, 7]):  # unequal batches
        stats = update(stats, chunk)
    np.testing.assert_allclose(grouping.similarity(stats), numpy_similarity(maps), atol=2e-5)
    assert float(stats["count"]) == 12


def test_similarity_dead_channel_is_one():
    maps = np.array(planted_maps(jax.random.key(1), 4, 2, 2, [0, 0, 1]))
    maps[..., 1] = 0.0
    s = grouping.similarity(grouping.update_stats(grouping.init_stats(3, (2, 2)), maps))
    np.testing.assert_allclose(s[1], [1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------ eq. 2-4


def test_group_loss_analytic():
    x, groups = two_group_case()
    center = x.mean(0)  # = the EMA after its first update
    # Per image: S_within,k = 4 entries * (1 + 1) = 8, S_all,k = 8 + 4 entries * (0 + 1) = 12.
    np.testing.assert_allclose(grouping.group_loss(x, center, groups, 2), -2 * 8 / (12 + 1e-5), rtol=1e-6)
    # Through the registry: the first call's EMA equals the batch mean.
    spec = losses.ICCNN(layer="f", num_groups=2)
    state = {**spec.init({"f": x.shape}), "groups": groups}
    value, state, logs = spec({"f": x}, jnp.zeros(2, jnp.int32), state)
    np.testing.assert_allclose(logs["iccnn/group"], -16 / (12 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(state["ema"], center)
    assert int(state["count"]) == 1


def test_group_loss_anticorrelated_reaches_minus_k():
    x = np.zeros((2, 1, 2, 4), np.float32)
    x[0, 0, 0, :2] = x[1, 0, 1, :2] = 1.0
    x[0, 0, 1, 2:] = x[1, 0, 0, 2:] = 1.0  # across groups the centred maps are negated: corr = -1, s = 0
    x = jnp.asarray(x)
    np.testing.assert_allclose(grouping.group_loss(x, x.mean(0), jnp.array([0, 0, 1, 1]), 2), -2.0, rtol=1e-5)


def test_group_loss_lower_for_correlated_groups():
    groups = np.repeat(np.arange(4), 4)
    corr = planted_maps(jax.random.key(2), 8, 6, 6, groups)
    rand = jax.nn.relu(jax.random.uniform(jax.random.key(3), corr.shape))
    lc = grouping.group_loss(corr, corr.mean(0), groups, 4)
    lr = grouping.group_loss(rand, rand.mean(0), groups, 4)
    # Perfect within-group correlation, none across: per group (16*2) / (16*2 + 48*1) = 0.4; random maps
    # have ~0 off-diagonal correlation: (4*2 + 12) / (4*2 + 60) = 0.29.
    np.testing.assert_allclose(lc, -1.6, atol=0.03)
    np.testing.assert_allclose(lr, -4 * 20 / 68, atol=0.05)


def test_group_loss_positive_class_weighting():
    x, groups = two_group_case()
    center = x.mean(0)
    full = grouping.group_loss(x, center, groups, 2)
    # Only image 0 counts; the code still divides by B, a common factor of num and den.
    half = grouping.group_loss(x, center, groups, 2, sample_weight=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(half, -2 * 4 / (6 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(full, half, rtol=1e-5)


def test_group_loss_dead_channel_finite_and_neutral():
    x, groups = two_group_case()
    x = x.at[..., 3].set(0.0)  # dead channel in group 1
    center = x.mean(0)
    value, grad = jax.value_and_grad(grouping.group_loss)(x, center, groups, 2)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # The dead channel 3 gets correlation 0 with everything (s = 1, its diagonal included).
    # Group 0: within 4 * 2 = 8, rows 0-1 sum to 2 * (2 + 2 + 1 + 1) = 12.
    # Group 1: within s22 + s23 + s32 + s33 = 2 + 1 + 1 + 1 = 5, rows 2-3 sum to 5 + 4 = 9.
    expected = -(8 / (12 + 1e-5) + 5 / (9 + 1e-5))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_group_loss_check_grads():
    with jax.enable_x64(True):
        x = planted_maps(jax.random.key(4), 3, 3, 3, [0, 0, 1, 1, 1], noise=0.3).astype(jnp.float64) + 0.1
        center = x.mean(0) * 0.9
        f = lambda x: grouping.group_loss(x, center, jnp.array([0, 0, 1, 1, 1]), 2)
        check_grads(f, (x,), order=1, modes=("rev",), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ eq. 5-6


def test_multi_loss_analytic():
    # Class 0 images fire only group 0 filters, class 1 only group 1: z_p = (1 + p) e_y, s_pq = 0 across
    # classes; within class s_pq = c_p c_q with c_p = (1 + p) / (1 + p + 1e-5) (the code's norm + 1e-5).
    labels = np.array([0, 0, 1, 0, 1])
    x = np.zeros((5, 2, 2, 4), np.float32)
    for p, y in enumerate(labels):
        x[p, ..., 2 * y : 2 * y + 2] = 1.0 + p
    c = (1.0 + np.arange(5)) / (1.0 + np.arange(5) + 1e-5)
    expected = 0.0
    for y in (0, 1):  # num_c = den_c = (sum_{p in I_c} c_p)^2 / B^2; class 2 is absent and adds 0
        num = c[labels == y].sum() ** 2 / 25
        expected -= num / (num + 1e-5)
    got = grouping.multi_loss(jnp.asarray(x), jnp.asarray(labels), jnp.array([0, 0, 1, 1]), 2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got, -2.0, atol=1e-3)


def test_multi_loss_identical_images_is_minus_one():
    # All images share z: s = 1 everywhere, num_c / den_c = n_c / B, summed over classes = 1.
    x = jnp.tile(jax.random.uniform(jax.random.key(5), (1, 2, 2, 6)), (6, 1, 1, 1))
    labels = jnp.array([0, 1, 1, 2, 2, 2])
    got = grouping.multi_loss(x, labels, jnp.array([0, 0, 1, 1, 2, 2]), 3, 3)
    np.testing.assert_allclose(got, -1.0, atol=1e-4)


@pytest.mark.slow
def test_multi_loss_code_activation_and_grads():
    x = planted_maps(jax.random.key(6), 6, 3, 3, [0, 0, 0, 1, 2])
    labels = jnp.array([0, 1, 0, 1, 2, 2])
    groups = jnp.array([0, 0, 0, 1, 2])
    z_code = grouping.group_activations(x, groups, 3, "code")
    z_mean = grouping.group_activations(x, groups, 3, "mean")
    np.testing.assert_allclose(z_code, z_mean * jnp.array([9.0, 1.0, 1.0]) / 5, rtol=1e-5)  # |A_k|^2 / C
    g = jax.grad(grouping.multi_loss)(x, labels, groups, 3, 3)
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    with jax.enable_x64(True):
        f = lambda x: grouping.multi_loss(x, labels, groups, 3, 3)
        check_grads(f, (x.astype(jnp.float64) + 0.1,), order=1, modes=("rev",), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ registry


def test_iccnn_recluster_recovers_planted_groups():
    # 32 channels, K = 5: the same spectral_clustering compilation as the sklearn test.
    truth = np.repeat(np.arange(5), [10, 3, 8, 6, 5])[
        np.asarray(jax.random.permutation(jax.random.key(7), 32))
    ]
    shapes = {"conv": (1, 4, 4, 32)}
    spec = losses.get("iccnn(layer='conv', num_groups=5)")
    state = spec.init(shapes)
    assert spec.reclusters_at(0) and not spec.reclusters_at(1) and not spec.reclusters_at(200)
    stats = spec.init_stats(shapes)
    update = jax.jit(spec.update_stats)
    for i in range(3):
        out = {"conv": planted_maps(jax.random.key(20 + i), 8, 4, 4, truth)}
        stats = update(stats, out, jnp.zeros(8, jnp.int32), state)
    state = spec.recluster(state, stats, jax.random.key(0))
    assert adjusted_rand_score(truth, np.asarray(state["groups"])) == 1.0


def test_registry_get_for_backbone_and_errors():
    assert set(losses.LOSSES) == {"iccnn", "hiccnn", "sync", "rrr"}
    assert losses.get("sync") == losses.Sync()
    spec = losses.for_backbone("hiccnn", "vgg16")
    assert (spec.shallow_layer, spec.layer, spec.weight, spec.hier_weight) == (
        "conv4_3",
        "conv5_3",
        0.1,
        0.01,
    )
    assert losses.for_backbone("iccnn", "resnet18").weight == 1.0
    multi = losses.for_backbone("hiccnn", "densenet121", multi=True, num_classes=6)
    assert (multi.weight, multi.multi_weight, multi.layers) == (0.1, 0.1, ("denseblock3", "features"))
    assert losses.for_backbone("sync", "resnet18").lac_weight == pytest.approx(0.1)
    assert losses.for_backbone("sync", "vgg16", eps=0.05).eps == 0.05
    with pytest.raises(ValueError, match="spec"):
        losses.get("nope(layer='x')")
    with pytest.raises(ValueError, match=r"unknown option 'num_group' for 'iccnn'.*'num_groups'"):
        losses.get("iccnn(num_group=3)")
    with pytest.raises(ValueError, match="literal"):
        losses.get("sync(eps=__import__('os'))")
    with pytest.raises(ValueError, match="keyword"):
        losses.get("sync('conv5_3')")
    with pytest.raises(ValueError, match="num_classes"):
        losses.ICCNN(multi_weight=0.1)
    with pytest.raises(ValueError, match="conv5_3"):
        losses.ICCNN().init({"conv4": (1, 4, 4, 8)})
    with pytest.raises(ValueError, match="num_groups"):
        losses.ICCNN(layer="c", num_groups=9).init({"c": (1, 4, 4, 8)})


def test_layer_pairs_exist_in_backbones():
    from jinterp import backbones

    for name in ("vgg13", "vgg16", "resnet18", "densenet121", "small_cnn"):
        names = backbones.layer_names(backbones.create(name, num_classes=2))
        assert set(losses.LAYER_PAIRS[name]) <= set(names), (name, names)


def test_apply_all_specs_no_retrace_finite_grads():
    shapes = {"c4": (1, 8, 8, 12), "c6": (1, 4, 4, 10)}
    specs = (
        losses.HICCNN(
            layer="c6", shallow_layer="c4", num_groups=3, num_subgroups=2, multi_weight=0.1, num_classes=3
        ),
        losses.Sync(layer="c6"),
    )
    states = {s.name: s.init(shapes) for s in specs}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(out, labels, states):
        def f(out):
            value, new, logs = losses.apply(specs, out, labels, states)
            return value, (new, logs)

        return jax.value_and_grad(f, has_aux=True)(out)

    labels = jnp.array([0, 1, 2, 0])
    for i in range(2):
        k1, k2 = jax.random.split(jax.random.key(i))
        out = {
            "c4": jax.nn.relu(jax.random.normal(k1, (4, 8, 8, 12))),
            "c6": jax.nn.relu(jax.random.normal(k2, (4, 4, 4, 10))),
        }
        out["c6"] = out["c6"].at[..., 0].set(0.0)  # dead channels in both layers
        out["c4"] = out["c4"].at[..., 1].set(0.0)
        (value, (states, logs)), grads = step(out, labels, states)
        assert np.isfinite(value)
        terms = {"hiccnn/group", "hiccnn/multi", "hiccnn/hier", "sync/lac", "sync/sync"}
        assert set(logs) == terms | {"loss/hiccnn", "loss/sync"}
        np.testing.assert_allclose(logs["loss/hiccnn"] + logs["loss/sync"], value, rtol=1e-6)
        expected = (
            logs["hiccnn/group"]
            + 0.1 * logs["hiccnn/multi"]
            + 0.01 * logs["hiccnn/hier"]
            + 0.2 * logs["sync/lac"]
            + 0.1 * logs["sync/sync"]
        )
        np.testing.assert_allclose(value, expected, rtol=1e-5)
        assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert int(states["hiccnn"]["count"]) == 2


def test_hier_loss_stays_bounded_on_pre_activation_maps():
    """DenseNet's dense-block taps are not post-ReLU: cancelling mass must not blow up eq. 12's weights."""
    from jinterp.losses import hierarchical

    key = jax.random.key(0)
    deep = jax.nn.relu(jax.random.normal(key, (4, 2, 2, 8)))
    shallow = jax.random.normal(jax.random.key(1), (4, 4, 4, 6))
    shallow = shallow - shallow.mean(axis=(0, 1, 2))  # activation mass of every filter cancels
    groups = jnp.arange(8) % 2
    subgroups = jnp.stack([jnp.arange(6) % 3] * 2)
    center = jnp.zeros((2, 4, 4, 6))
    value = hierarchical.hier_loss(deep, shallow, groups, 2, subgroups, 3, center)
    assert -1.0 - 1e-5 <= float(value) <= 1e-6
    grad = jax.grad(lambda s: hierarchical.hier_loss(deep, s, groups, 2, subgroups, 3, center))(shallow)
    assert bool(jnp.all(jnp.isfinite(grad)))


def _two_specs():
    rng = np.random.default_rng(0)
    out = {
        "conv2": jnp.asarray(rng.random((6, 4, 4, 8)), jnp.float32),
        "conv1": jnp.asarray(rng.random((6, 8, 8, 4)), jnp.float32),
    }
    labels = jnp.asarray([0, 1, 0, 1, 1, 0])
    shapes = {k: (1, *v.shape[1:]) for k, v in out.items()}
    specs = (
        losses.HICCNN(
            layer="conv2",
            shallow_layer="conv1",
            num_groups=2,
            num_subgroups=2,
            weight=0.3,
            multi_weight=0.2,
            num_classes=2,
            hier_weight=0.05,
        ),
        losses.Sync(layer="conv2", lac_weight=0.2, sync_weight=0.1),
    )
    return specs, out, labels, {spec.name: spec.init(shapes) for spec in specs}


def test_loss_weights_reproduce_each_spec_value():
    """Re-weighting a spec's unweighted logs by its own weight fields gives exactly its value."""
    specs, out, labels, states = _two_specs()
    weights = losses.loss_weights(specs)
    assert weights == pytest.approx(
        {
            "hiccnn.weight": 0.3,
            "hiccnn.multi_weight": 0.2,
            "hiccnn.hier_weight": 0.05,
            "sync.lac_weight": 0.2,
            "sync.sync_weight": 0.1,
        }
    )
    for spec in specs:
        value, _, logs = jax.jit(spec.__call__)(out, labels, states[spec.name])
        weighted = jax.jit(losses.weighted_loss, static_argnums=0)(spec, logs, weights)
        assert float(weighted) == pytest.approx(float(value), rel=1e-5)


def test_apply_with_weights_replaces_the_specs_own_weighting():
    specs, out, labels, states = _two_specs()
    apply = jax.jit(losses.apply, static_argnums=0)
    total, _, logs = apply(specs, out, labels, states)
    same, _, same_logs = apply(specs, out, labels, states, losses.loss_weights(specs))
    np.testing.assert_allclose(same, total, rtol=1e-5)
    assert set(same_logs) == set(logs)
    # other numbers (e.g. one sweep point): the sum of each weight times its unweighted term
    weights = {k: jnp.float32(i + 1) for i, k in enumerate(losses.loss_weights(specs))}
    total, _, logs = apply(specs, out, labels, states, weights)
    expected = {
        "hiccnn": logs["hiccnn/group"] + 2 * logs["hiccnn/multi"] + 3 * logs["hiccnn/hier"],
        "sync": 4 * logs["sync/lac"] + 5 * logs["sync/sync"],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(logs[f"loss/{name}"], value, rtol=1e-5)
    np.testing.assert_allclose(total, expected["hiccnn"] + expected["sync"], rtol=1e-5)
    with pytest.raises(KeyError, match="sync.sync_weight"):
        losses.apply(
            specs, out, labels, states, {k: v for k, v in weights.items() if k != "sync.sync_weight"}
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('iccnn(num_groups="3")', "option 'num_groups' of 'iccnn': expected int"),
        ("hiccnn(hier_weight='x')", "option 'hier_weight' of 'hiccnn': expected float"),
        ("sync(layer=5)", "option 'layer' of 'sync': expected str"),
        ("iccnn(num_group=3)", "unknown option 'num_group'"),
    ],
)
def test_loss_spec_options_are_type_checked(spec, message):
    with pytest.raises(ValueError, match=message):
        losses.get(spec)
