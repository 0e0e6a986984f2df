"""The fidelity runner and its training-side section: verdicts, probes on constructed maps, the
inconsistency read-out, checkpoint restores by step, and the runner end to end (tiny, resumable)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fidelity as fidelity_config
from jinterp import fidelity, train
from jinterp.fidelity import mechanics, runner, training
from jinterp.fidelity import training_report as report
from jinterp.fidelity.section import Row

# ------------------------------------------------------------------------------------------ verdicts


def test_verdict_needs_the_difference_to_clear_two_standard_errors():
    a, b = np.array([1.0, 1.1, 0.9]), np.array([0.0, 0.1, -0.1])
    yes, d, se2 = report.verdict(a, b, higher_better=True)
    np.testing.assert_allclose(d, 1.0)
    np.testing.assert_allclose(se2, 2 * np.sqrt(0.01 / 3 + 0.01 / 3))
    assert yes == "yes" and report.verdict(a, b, higher_better=False)[0] == "no"
    assert report.verdict(b + 0.1, b, higher_better=True)[0] == "no"  # 0.1 < 2 s.e. = 0.163


def test_non_inferiority_accepts_a_small_loss_and_rejects_a_large_one():
    base = np.array([0.990, 0.992, 0.991])
    assert report.verdict(base - 0.002, base, True, margin=0.01)[0] == "yes"
    assert report.verdict(base - 0.02, base, True, margin=0.01)[0] == "no"
    assert report.verdict(base - 0.002, base, True)[0] == "no"  # not *better* without a margin


def test_diversity_claim_fails_when_its_premise_does():
    row = Row("002", "sync recovers the Diversity LAC alone loses", "", "", "yes", "")
    fails = {"cnn": [0.3, 0.31, 0.29], "lac": [0.46, 0.47, 0.45]}  # LAC raised diversity
    holds = {"cnn": [0.8, 0.81, 0.79], "lac": [0.46, 0.47, 0.45]}
    assert report._diversity_premise(row, fails).replicated == "no"
    assert "does not lower" in report._diversity_premise(row, fails).note
    assert report._diversity_premise(row, holds).replicated == "yes"


def test_inconsistency_is_read_at_the_given_diversity():
    curve = {"diversity": [0.8, 0.2, 0.5, np.nan], "inconsistency": [0.6, 0.9, 0.75, 0.1]}
    np.testing.assert_allclose(report.inconsistency_at(curve, 0.35), 0.825)  # linear between 0.2 and 0.5


# ------------------------------------------------------------------------------ probes, constructed


def _blob_maps(n, size, centres, width):
    """(n, size, size, C) Gaussian blobs, one per channel, at ``centres`` (C, 2) in [0, 1]."""
    yy, xx = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
    c = np.asarray(centres)
    maps = np.exp(-((yy[..., None] - c[:, 0]) ** 2 + (xx[..., None] - c[:, 1]) ** 2) / (2 * width**2))
    return np.broadcast_to(maps, (n, size, size, len(c))).astype(np.float32)


def test_spread_falls_for_compact_maps():
    centres = np.random.default_rng(0).uniform(0.3, 0.7, (8, 2))
    compact = mechanics.probe(_blob_maps(2, 16, centres, 0.05), num_groups=2)["spread"]
    wide = mechanics.probe(_blob_maps(2, 16, centres, 0.3), num_groups=2)["spread"]
    flat = mechanics.probe(np.ones((2, 16, 16, 8), np.float32), num_groups=2)["spread"]
    np.testing.assert_allclose(flat, np.sqrt(2 * np.var(np.linspace(0, 1, 16))), rtol=1e-4)  # uniform
    assert compact < 0.5 * wide < flat


def test_group_contrast_rises_when_channels_form_correlated_groups():
    rng = np.random.default_rng(1)
    sources = rng.normal(size=(32, 8, 8, 2))
    grouped = np.repeat(sources, 4, -1) + 0.1 * rng.normal(size=(32, 8, 8, 8))  # 2 groups of 4
    independent = rng.normal(size=(32, 8, 8, 8))
    g = mechanics.probe(grouped.astype(np.float32), num_groups=2)["group_contrast"]
    i = mechanics.probe(independent.astype(np.float32), num_groups=2)["group_contrast"]
    assert g > 0.9 and abs(i) < 0.2, (g, i)


def test_modules_count_filters_that_share_a_position():
    centres = [[0.2, 0.2]] * 3 + [[0.8, 0.8]] * 2 + [[0.2, 0.8]]  # modules of 3 and 2, one singleton
    p = mechanics.probe(20 * _blob_maps(2, 16, centres, 0.05), num_groups=2)  # softmax positions (eq. 5)
    assert (p["modules"], p["module_size"]) == (2.0, 2.5)


def test_probe_rejects_bad_input():
    with pytest.raises(ValueError, match="maps"):
        mechanics.probe(np.zeros((4, 4, 3)), num_groups=2)
    with pytest.raises(ValueError, match="num_groups"):
        mechanics.probe(np.zeros((1, 4, 4, 3)), num_groups=5)
    with pytest.raises(ValueError, match="variants"):
        training.variant_losses(fidelity_config.get_config("tiny"), "resnet")
    cfg = fidelity_config.get_config("tiny")
    cfg.fidelity.sections = "training,posters"
    with pytest.raises(ValueError, match="sections"):
        runner.sections_of(cfg)


# ------------------------------------------------------------------------------- the runner, tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    cfg = fidelity_config.get_config("tiny")
    cfg.fidelity.sections = "training"
    cfg.fidelity.variants = "cnn,hiccnn"
    cfg.fidelity.report_dir = str(root / "docs")
    log = []
    result = fidelity.run_fidelity(cfg, str(root / "run"), command="python launch.py ...", progress=log.append)
    return cfg, root, result, log


@pytest.mark.slow
def test_runner_writes_a_report_with_paper_numbers_and_publishes_figures(tiny_run):
    cfg, root, result, _ = tiny_run
    text = open(result["report"]).read()
    assert result["report"] == os.path.join(cfg.fidelity.report_dir, "fidelity.md")
    assert "python launch.py ..." in text and "centred=True" in text
    assert "77.21 / 77.32 / 78.01" in text  # HICCNN Table 1 beside ours
    rows = result["sections"]["training"].rows
    assert {r.replicated for r in rows} <= {"yes", "no", "partly"}
    assert any(r.claim.startswith("mechanics:") for r in rows)
    for fig in result["sections"]["training"].figures:
        assert os.path.getsize(os.path.join(cfg.fidelity.report_dir, "fidelity", "training", fig)) > 1000
        assert f"(fidelity/training/{fig})" in text


@pytest.mark.slow
def test_every_variant_starts_from_the_shared_cnn_and_probes_each_checkpoint(tiny_run):
    cfg, root, _, _ = tiny_run
    run = root / "run"
    base = train.restore_variables(str(run / "base"))
    steps = train.checkpoint_steps(str(run / "training" / "hiccnn" / "seed0"))
    with open(run / "training" / "hiccnn" / "seed0" / "result.json") as f:
        probes = json.load(f)["probes"]
    assert steps[-2:] == [2, 4] and [p["step"] for p in probes] == [0, *steps]
    first = mechanics.probe(
        train.restore_model(fidelity.pretrain_config(cfg), str(run / "base"))[0].apply(
            base, jnp.asarray(train.load_split(cfg.data, "test", 32)["image"])
        )[1][cfg.evaluate.layer],
        int(cfg.fidelity.num_groups),
    )
    np.testing.assert_allclose(probes[0]["spread"], first["spread"], rtol=1e-4)  # step 0 = the shared CNN
    tuned = train.restore_variables(str(run / "training" / "hiccnn" / "seed0"), step=4)
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), tuned["params"], base["params"])
    assert max(jax.tree.leaves(diff)) > 0  # fine-tuning moved the weights
    with pytest.raises(ValueError, match="step"):
        train.restore_variables(str(run / "training" / "hiccnn" / "seed0"), step=3)


@pytest.mark.slow
def test_a_second_call_reuses_every_finished_piece(tiny_run):
    cfg, root, result, _ = tiny_run
    log = []
    again = fidelity.run_fidelity(cfg, str(root / "run"), progress=log.append)
    assert any("done before" in line for line in log)
    assert not any("fine-tuning" in line or "training the shared" in line for line in log)
    assert [r.ours for r in again["sections"]["training"].rows] == [
        r.ours for r in result["sections"]["training"].rows
    ]
