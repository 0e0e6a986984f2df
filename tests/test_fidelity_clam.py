"""The CLAM fidelity section (seed 003): fitting lowers the BCL, unit masks leave relevance unchanged,
redundant regions are dropped, and ``run`` fills every headline field and reuses its fitted CLAM."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji
from configs import fidelity as fidelity_config
from jinterp.explain import clam as C
from jinterp.explain.clam import fitting
from jinterp.fidelity import clam as section
from jinterp.fidelity import clam_eval
from jinterp.fidelity.section import Context


def test_fitting_lowers_the_bcl_and_separates_classes_on_a_constructed_case():
    rng = np.random.default_rng(0)
    config = C.ClaLayerConfig("conv6", num_attributes=2, patch=3, attr=2, hidden=8, alpha=1.0)
    labels = rng.integers(0, 3, 64)
    patches = jnp.asarray(rng.normal(size=(64, 2, 3, 3, 5)), jnp.float32)
    icp = C.intrinsic_class_patterns(3, 3)
    params = C.init_layer(jax.random.key(0), config, 5)
    losses = []
    trained, _ = fitting._train_layer(
        params, config, patches, labels, icp, jax.random.key(1), 30, 16, 30,
        lambda layer, epoch, loss, d: losses.append(loss),
    )  # fmt: skip
    assert losses[-1] < losses[0] - 0.05
    before = C.paired_distances(params, patches, icp[labels]).mean()
    d_pos = C.paired_distances(trained, patches, icp[labels]).mean()
    d_neg = C.paired_distances(trained, patches, icp[(labels + 1) % 3]).mean()
    assert d_pos < 0.5 * before and d_pos < d_neg
    # eq. 4-5: the loss rises with positive distances and falls with negative ones
    g_pos, g_neg = jax.grad(lambda p, n: C.balanced_contrastive_loss(p, n).sum(), (0, 1))(
        jnp.ones((1, 2, 2, 2, 3)), jnp.ones((1, 2, 2, 2, 3))
    )
    assert np.all(np.asarray(g_pos).max(-1) > 0) and np.all(np.asarray(g_neg) < 0)


def test_non_redundant_keeps_the_best_of_overlapping_regions():
    origins = np.array([[0, 0], [0, 1], [5, 5], [0, 0]])
    distances = np.array([0.3, 0.1, 0.2, 0.4])
    # [0, 1] (best) and [0, 0] overlap by 6/12 = IoU 0.5 -> redundant; [5, 5] is apart
    assert clam_eval.non_redundant(origins, distances, 3) == [1, 2]
    assert clam_eval.non_redundant(origins, distances, 1) == [1, 2, 0]


def test_layer_configs_order_strength_and_bad_names():
    cfg = fidelity_config.get_config()
    model = ji.backbones.create("small_cnn", num_classes=8, **cfg.model.kwargs)
    cfg.clam.layers = "conv2,conv6,conv4"
    configs = section.layer_configs(cfg.clam, model)
    assert [c.layer for c in configs] == ["conv6", "conv4", "conv2"]
    np.testing.assert_allclose([c.strength for c in configs], [1.3, 1.225, 1.15])
    cfg.clam.layers = "conv9"
    with pytest.raises(ValueError, match="config.clam.layers"):
        section.layer_configs(cfg.clam, model)


def _fake_split(model, variables, n, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    labels = np.asarray(model.apply(variables, images)[0].argmax(-1), np.int32)  # all "correct"
    obj = np.zeros((n, 32, 32), bool)
    obj[:, 8:24, 6:26] = True
    parts = np.zeros((n, 32, 32, 6), bool)
    parts[:, 8:24, 6:26, 0] = True
    bbox = np.tile(np.array([[0.25, 0.1875, 0.75, 0.8125]], np.float32), (n, 1))
    return {"image": images, "label": labels, "object_mask": obj, "part_masks": parts, "bbox": bbox}


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory):
    cfg = fidelity_config.get_config("tiny")
    model = ji.backbones.create("small_cnn", num_classes=3, **cfg.model.kwargs)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    cfg.clam.num_images, cfg.clam.bank_size = 8, 12
    lines = []

    def make():
        return Context(
            cfg, str(tmp_path_factory.getbasetemp() / "clam"), model, variables,
            _fake_split(model, variables, 10, 1), lambda split, n: _fake_split(model, variables, n, 2),
            "/nonexistent/base", lines.append,
        )  # fmt: skip

    os.makedirs(make().workdir, exist_ok=True)
    return make, lines


def test_unit_strength_refinement_equals_the_base_relevance(tiny_ctx):
    make, _ = tiny_ctx
    ctx = make()
    configs = section.layer_configs(ctx.config.clam, ctx.model)
    clam, _ = section.fit_or_load(ctx, configs)
    x, y = ctx.test["image"][:4], ctx.test["label"][:4]
    for base in section.BASES:
        plain = clam_eval.relevance_maps(ctx.model, ctx.variables, C.Clam((), (), clam.icp, base), x, y)
        ones = section._strength(dataclasses.replace(clam, base=base), 1.0)
        np.testing.assert_allclose(
            clam_eval.relevance_maps(ctx.model, ctx.variables, ones, x, y), plain, rtol=1e-5, atol=1e-7
        )
        strong = section._strength(dataclasses.replace(clam, base=base), 3.0)
        assert not np.allclose(
            clam_eval.relevance_maps(ctx.model, ctx.variables, strong, x, y), plain, rtol=1e-3
        )


def test_run_fills_every_field_and_a_rerun_reuses_the_fitted_clam(tiny_ctx, monkeypatch):
    make, lines = tiny_ctx
    first = section.run(make())
    assert len(first.rows) == 4
    for row in first.rows:
        assert row.paper == "003" and row.replicated in ("yes", "no", "partly")
        assert all(str(getattr(row, f)).strip() for f in ("claim", "paper_value", "ours", "note"))
    for fig in first.figures:
        assert os.path.getsize(os.path.join(make().workdir, fig)) > 1000
    assert "LeRF" in first.body and "clrp+clam" in first.body
    monkeypatch.setattr(section.C, "fit", lambda *a, **k: pytest.fail("refitted instead of reusing"))
    second = section.run(make())
    assert any("reusing" in line for line in lines)
    assert [r.ours for r in second.rows] == [r.ours for r in first.rows]
