"""Evaluation report end to end on a tiny model and generated PartsWorld images."""

import json
import os

import jax
import numpy as np
import pytest

import jinterp as ji
from jinterp.metrics import report


@pytest.fixture(scope="module")
def evaluated():
    config = ji.data.make_config(train_size=8, test_size=24, image_size=64)
    raw = ji.data.generate(config, "test")
    data = {**raw, "image": ji.data.normalize_images(raw["image"])}
    model = ji.backbones.create("small_cnn", num_classes=8, widths=(8, 8, 16, 16, 16, 16))
    variables = model.init(jax.random.key(0), data["image"][:1])
    results, artifacts = report.evaluate(
        model,
        variables,
        data,
        layer="conv4",
        methods=("grad_cam", "cluster_cam"),
        num_explained=8,
        n_modules=3,
    )
    return data, results, artifacts


def test_evaluate_reports_consistent_values(evaluated):
    data, results, artifacts = evaluated
    assert results["num_images"] == 24 and results["layer"] == "conv4"
    assert 0.0 <= results["accuracy"] <= 1.0
    f = results["filters"]
    for key in ("interp_mean", "diversity_mean", "module_consistency", "alignment_nmi"):
        assert np.isfinite(f[key]), key
    curve = results["curves"]["inconsistency_diversity"]
    assert len(curve["inconsistency"]) == len(curve["diversity"]) == 9
    assert set(results["explanations"]) == {'grad_cam(layer="conv4")', 'cluster_cam(layer="conv4")'}
    for scores in results["explanations"].values():
        assert 0.0 <= scores["energy_pointing_mean"] <= 1.0
        assert 0.0 <= scores["relevance_mass_mean"] <= 1.0
        assert scores["confidence_average_drop"] >= 0.0
        assert len(scores["energy_pointing_curve"]) == 20
    assert artifacts["responses"].shape[0] == 16 and artifacts["modules"].shape == (16,)
    heat = artifacts["heatmaps"]['grad_cam(layer="conv4")']
    assert heat.shape == (8, 64, 64) and heat.min() >= 0 and heat.max() <= 1


def test_write_report_files(evaluated, tmp_path):
    _, results, artifacts = evaluated
    paths = report.write_report({"cnn": results, "copy": results}, str(tmp_path), {"cnn": artifacts})
    stored = json.load(open(paths["metrics"]))
    assert stored["cnn"]["accuracy"] == results["accuracy"]
    text = open(paths["report"]).read()
    assert "| cnn |" in text and "Interp" in text and "![cnn: heatmaps](cnn_heatmaps.png)" in text
    for name in ("inconsistency_diversity", "cnn_pointing", "cnn_deletion", "cnn_heatmaps", "cnn_tsne"):
        assert os.path.getsize(paths[name]) > 1000, name


def test_missing_keys_and_layers_are_reported(evaluated):
    data, _, _ = evaluated
    model = ji.backbones.create("small_cnn", num_classes=8)
    with pytest.raises(ValueError, match="disc_mask"):
        report.evaluate(model, {}, {k: v for k, v in data.items() if k != "disc_mask"})
    with pytest.raises(ValueError, match="layer"):
        report.evaluate(model, {}, data, layer="conv9")


def test_compare_merges_evaluated_runs(evaluated, tmp_path):
    _, results, _ = evaluated
    for name in ("a", "b"):
        report.write_report({f"small_cnn@{name}": results}, str(tmp_path / name))
    paths = report.main(
        ["--out", str(tmp_path / "all"), *(f"{n}={tmp_path / n / 'metrics.json'}" for n in "ab")]
    )
    text = open(paths["report"]).read()
    assert "| a |" in text and "| b |" in text
    with pytest.raises(ValueError, match="metrics_files"):
        report.compare({"c": str(tmp_path / "missing.json")}, str(tmp_path / "x"))
