"""CLAM (seed 003): loss, ICPs, distances, masks, relevance gating, training, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji
from jinterp.explain import clam as C
from jinterp.explain.clam import fitting, layers
from jinterp.explain.clam.bcl import balanced_contrastive_loss, intrinsic_class_patterns


def test_bcl_matches_eq4_eq5_and_prefers_separated_distances():
    rng = np.random.default_rng(0)
    d_pos = jnp.asarray(rng.uniform(0, 1, (2, 3, 2, 2, 5)))
    d_neg = jnp.asarray(rng.uniform(0, 4, (2, 3, 2, 2, 5)))
    alpha, beta = 0.5, 0.6
    pos = np.asarray(d_pos).mean((1, 2, 3)).max(-1)
    neg = np.asarray(d_neg).mean((1, 2, 3)).mean(-1) / 3
    expected = np.log1p(np.exp(alpha * (beta * pos - (1 - beta) * neg)))
    np.testing.assert_allclose(balanced_contrastive_loss(d_pos, d_neg, alpha, beta), expected, rtol=1e-6)
    good = balanced_contrastive_loss(jnp.zeros_like(d_pos), 100 * jnp.ones_like(d_neg), 1.0, 0.5)
    bad = balanced_contrastive_loss(100 * jnp.ones_like(d_pos), jnp.zeros_like(d_neg), 1.0, 0.5)
    assert np.all(good < 1e-6) and np.all(bad > 40)
    with pytest.raises(ValueError, match="d_pos, d_neg"):
        balanced_contrastive_loss(d_pos, d_neg[:, :2])


def test_intrinsic_class_patterns_are_binary_distinct_and_fixed():
    icp = intrinsic_class_patterns(16, 2, seed=3)
    assert icp.shape == (16, 2, 2) and set(np.unique(icp)) <= {0.0, 1.0}
    assert len({np.asarray(p).tobytes() for p in icp}) == 16  # 2x2 patterns: 16 exist, all used
    np.testing.assert_array_equal(icp, intrinsic_class_patterns(16, 2, seed=3))


def test_window_distances_equal_brute_force():
    rng = np.random.default_rng(1)
    s = rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
    a = rng.uniform(size=(2, 2, 3)).astype(np.float32)
    got = np.asarray(C.window_distances(jnp.asarray(s), jnp.asarray(a)))
    expected = np.zeros((2, 3, 3, 3), np.float32)
    for u in range(3):
        for v in range(3):
            expected[:, u, v] = ((s[:, u : u + 2, v : v + 2] - a) ** 2).sum((1, 2))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_layer_mask_bumps_the_best_patch_of_each_attribute():
    config = C.ClaLayerConfig("conv6", num_attributes=2, patch=3, attr=2, hidden=4, strength=1.3)
    params = C.init_layer(jax.random.key(0), config, channels=5)
    features = jax.random.uniform(jax.random.key(1), (6, 6, 5))
    icp = jnp.ones((3, 3))
    scores = C.patch_scores(params, config, features, icp)
    origins = C.patch_origins(6, 6, 3)
    mask = np.asarray(C.layer_mask(params, config, features, icp))
    assert mask.min() == 1.0 and np.isclose(mask.max(), 1.3)
    for i in range(2):
        y, x = origins[int(jnp.argmin(scores[:, i]))]
        assert np.isclose(mask[y + 1, x + 1], 1.3)  # centre of the chosen 3x3 patch
    outside = np.ones((6, 6), bool)
    for i in range(2):
        y, x = origins[int(jnp.argmin(scores[:, i]))]
        outside[y : y + 3, x : x + 3] = False
    assert np.all(mask[outside] == 1.0)


def test_gate_scales_the_cotangent_only():
    x, m = jnp.arange(4.0), jnp.array([1.0, 2.0, 0.5, 3.0])
    np.testing.assert_array_equal(layers._gate(x, m), x)
    np.testing.assert_allclose(
        jax.grad(lambda v: (layers._gate(v, m) * jnp.arange(1.0, 5.0)).sum())(x), m * jnp.arange(1.0, 5.0)
    )


@pytest.fixture(scope="module")
def tiny():
    model = ji.backbones.create("small_cnn", num_classes=3, widths=(8, 8, 16, 16, 16, 16))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    variables = model.init(jax.random.key(0), images[:1])
    configs = [C.ClaLayerConfig("conv6", 3, 3, 2, 8, 1.3), C.ClaLayerConfig("conv4", 2, 4, 2, 8, 1.2)]
    trained = C.fit(
        model,
        variables,
        images,
        labels,
        configs,
        key=jax.random.key(1),
        epochs=40,
        batch_size=6,
        patience=40,
        base="lrp",
    )
    return model, variables, images, labels, trained


def test_fit_orders_layers_from_the_output_and_separates_positive_from_negative(tiny):
    model, variables, images, labels, trained = tiny
    assert [c.layer for c in trained.configs] == ["conv6", "conv4"]
    # after training, the true class's ICP gives smaller distances than a wrong one on the training patches
    untrained = C.Clam((), (), trained.icp, "lrp")
    composite = ji.explain.rules.composite(C.ALPHA1_BETA0)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    feats, rel = fitting._layer_inputs(model, variables, untrained, x, y, "conv6", composite)
    patches = C.top_patches(feats, rel, trained.configs[0])
    icp = trained.icp[:, :3, :3]
    d_pos = C.paired_distances(trained.params[0], patches, icp[labels]).mean()
    d_neg = C.paired_distances(trained.params[0], patches, icp[(labels + 1) % 3]).mean()
    assert d_pos < d_neg


def test_unit_strength_leaves_the_base_relevance_unchanged(tiny):
    model, variables, images, labels, trained = tiny
    x, y = jnp.asarray(images[:4]), jnp.asarray(labels[:4])
    flat = C.Clam(
        tuple(c.__class__(**{**c.__dict__, "strength": 1.0}) for c in trained.configs),
        trained.params,
        trained.icp,
        "lrp",
    )
    base, _ = C.base_relevance(model, variables, x, y, "lrp")
    np.testing.assert_allclose(C.relevance(model, variables, flat, x, y), base, rtol=1e-5, atol=1e-7)
    assert not np.allclose(C.relevance(model, variables, trained, x, y), base, rtol=1e-3, atol=0)


def test_save_load_registry_and_examples(tiny, tmp_path):
    model, variables, images, labels, trained = tiny
    path = str(tmp_path / "clam")
    C.save(trained, path)
    C.save(trained, path)  # replaces
    loaded = C.load(path)
    assert loaded.configs == trained.configs and loaded.base == trained.base
    jax.tree.map(np.testing.assert_array_equal, loaded, trained)  # same tree, same arrays
    x, y = jnp.asarray(images[:4]), jnp.asarray(labels[:4])
    heat = ji.explain.explain(f'clam(checkpoint="{path}")', model, variables, x, y)
    expected = ji.explain.lrp.to_heatmap(C.relevance(model, variables, trained, x, y))
    np.testing.assert_allclose(heat, expected, atol=1e-6)
    assert heat.shape == (4, 32, 32)
    assert set(np.round(np.asarray(heat.max(axis=(1, 2))), 6)) <= {0.0, 1.0}
    bank = C.attribute_profiles(model, variables, trained, jnp.asarray(images), jnp.asarray(labels))
    nearest = C.nearest_examples({k: v[:3] for k, v in bank.items()}, bank, k=2)
    np.testing.assert_array_equal(nearest["conv6"][:, 0], [0, 1, 2])  # each image is its own nearest


def test_bad_inputs(tiny):
    model, variables, images, labels, _ = tiny
    with pytest.raises(ValueError, match="attr, patch"):
        C.ClaLayerConfig("conv6", patch=2, attr=2)
    with pytest.raises(ValueError, match="base"):
        C.fit(
            model,
            variables,
            images,
            labels,
            [C.ClaLayerConfig("conv6")],
            key=jax.random.key(0),
            base="gradcam",
        )
    with pytest.raises(ValueError, match=r"configs.*'conv9'"):
        C.fit(model, variables, images, labels, [C.ClaLayerConfig("conv9")], key=jax.random.key(0))


def test_missing_empty_or_garbage_checkpoint_names_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config").mkdir()
    (garbage / "config" / "metadata").write_text("{not json")
    junk_file = tmp_path / "clam.npz"
    junk_file.write_bytes(b"\x00junk")
    for path in (tmp_path / "missing", empty, garbage, junk_file):
        with pytest.raises(ValueError, match=f"checkpoint: .*{path.name}"):
            C.load(str(path))
        with pytest.raises(ValueError, match=f"checkpoint: .*{path.name}"):
            ji.explain.get(f'clam(checkpoint="{path}")')
