"""The Cluster-CAM fidelity section (seed 004): eq. 22 over β from one clustering, eq. 23 per image,
the bootstrap intervals, the choice of β / Q on held-out images only, the verdicts, and ``run``."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import jinterp as ji
from configs import fidelity as fidelity_config
from jinterp.fidelity import cluster_cam as section
from jinterp.fidelity import cluster_cam_report as report
from jinterp.fidelity.section import REPLICATED, Context


def _images(n, seed):
    return np.asarray(jax.random.normal(jax.random.key(seed), (n, 32, 32, 3)), np.float32)


def test_beta_heatmaps_equal_cluster_cam_at_each_beta(tiny_fidelity_model):
    _, model, variables = tiny_fidelity_model
    x = jnp.asarray(_images(3, 0))
    t = jnp.array([0, 1, 2])
    d = ji.explain.cluster_cam_details(model, variables, x, t, layer="conv6", clusters=3, beta=1.0)
    betas = [0.0, 0.3, 1.0]
    heat = section.beta_heatmaps(d["cluster_maps"], d["base"], d["scissors"], jnp.asarray(betas), (32, 32))
    for j, beta in enumerate(betas):
        ref = ji.explain.cluster_cam_details(model, variables, x, t, layer="conv6", clusters=3, beta=beta)
        np.testing.assert_allclose(heat[j], ref["heatmap"], atol=1e-6)
    assert not np.allclose(heat[0], heat[2])  # β changes the map (base vs −scissors)


def test_eq23_per_image_and_the_papers_example():
    # The paper's example: confidence 0.8 -> 0.6 is a 25 % drop; an increase is a negative signed drop.
    v = report.per_image(np.array([0.8, 0.5]), np.array([0.6, 0.6]))
    np.testing.assert_allclose(v["drop"], [25.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(v["signed"], [25.0, -20.0], atol=1e-4)
    np.testing.assert_array_equal(v["increase"], [0.0, 100.0])


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    small, large = rng.normal(3.0, 1.0, 25), rng.normal(3.0, 1.0, 400)
    c_small, c_large = (
        report.ci(small, report.resamples(25, 500)),
        report.ci(large, report.resamples(400, 500)),
    )
    assert c_small[1] < small.mean() < c_small[2]
    assert c_large[2] - c_large[1] < 0.5 * (c_small[2] - c_small[1])
    assert report.ci(np.full(10, 2.0), report.resamples(10, 50)) == (2.0, 2.0, 2.0)


def _sweep(drops_by_q, n=20):
    """A measured sweep whose per-image drop at (Q, β index j) is ``drops_by_q[Q][j]`` (Y = 1)."""
    return {("kmeans", q): {"y": np.ones((len(d), n)), "o": 1 - np.repeat(np.array(d)[:, None], n, 1)}
            for q, d in drops_by_q.items()}  # fmt: skip


def test_choice_uses_the_selection_split_only():
    m = {"clusters": [2, 6], "betas": [0.5, 1.0],
         "kmeans_select": _sweep({2: [0.4, 0.3], 6: [0.2, 0.5]}),
         "kmeans": _sweep({2: [0.0, 0.0], 6: [0.9, 0.9]})}  # fmt: skip
    assert report.choose(m) == (6, 0.5)


def test_table1_verdicts_follow_the_paired_intervals():
    def methods(cluster_drop):
        rng = np.random.default_rng(0)
        out = {b: {"drop": 30 + rng.normal(0, 1, 50), "increase": np.zeros(50), "n": 50}
               for b in report.PAPER_BASELINES}  # fmt: skip
        for form in ("paper form (k-means, Q=6, β=0.5)", "default (k-means, Q=6, β=1)"):
            out[f"cluster_cam {form}"] = {
                "drop": cluster_drop + rng.normal(0, 1, 50),
                "increase": np.zeros(50),
                "n": 50,
            }
        return out

    def idx_for(n):
        return report.resamples(n, 300)

    assert report.row_table1(methods(20.0), idx_for, "drop").replicated == "yes"
    worse = report.row_table1(methods(40.0), idx_for, "drop")
    assert worse.replicated == "no" and "Ruled out" in worse.note


def test_run_fills_every_field(tiny_fidelity_model, tmp_path):
    cfg, model, variables = tiny_fidelity_model
    cfg = fidelity_config.get_config("tiny")
    cfg.cluster_cam_eval.baselines = "grad_cam,ablation_cam,score_cam"
    cfg.cluster_cam_eval.num_images = 8  # ctx.test has 12 < 8 + 8: selection from train
    images = _images(12, 3)
    load = lambda split, n: {"image": _images(n, 4)}  # noqa: E731
    ctx = Context(
        cfg, str(tmp_path), model, variables, {"image": images}, load, str(tmp_path), lambda s: None
    )
    sec = section.run(ctx)
    assert len(sec.rows) == 6
    for row in sec.rows:
        assert row.paper == "004" and row.replicated in REPLICATED
        assert all(str(getattr(row, f)).strip() for f in ("claim", "paper_value", "ours", "note"))
    assert "Table 1" in sec.body and "spectral_normalized" in sec.body and "train images" in sec.body
    assert sec.figures and all(os.path.getsize(tmp_path / f) > 0 for f in sec.figures)
    assert sec.wall_s > 0
