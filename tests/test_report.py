"""Evaluation report end to end on a tiny model and generated PartsWorld images."""

import json
import os

import jax
import numpy as np
import pytest

import jinterp as ji
from jinterp import viz
from jinterp.metrics import METRICS, Metric, report
from jinterp.ops import markdown_table

GRAD_CAM = "grad_cam(layer='conv4')"  # the spec with its layer filled in (explain.with_defaults)


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
    assert set(results["explanations"]) == {GRAD_CAM, "cluster_cam(layer='conv4')"}
    for scores in results["explanations"].values():
        assert 0.0 <= scores["energy_pointing_mean"] <= 1.0
        assert 0.0 <= scores["relevance_mass_mean"] <= 1.0
        assert scores["confidence_average_drop"] >= 0.0
        assert len(scores["energy_pointing_curve"]) == 20
    assert artifacts["responses"].shape[0] == 16 and artifacts["modules"].shape == (16,)
    heat = artifacts["heatmaps"][GRAD_CAM]
    assert heat.shape == (8, 64, 64) and heat.min() >= 0 and heat.max() <= 1


def test_explanation_scores_come_from_the_registry(evaluated):
    """Every default METRICS entry fills ``<prefix>_<key>``, equal to calling the metric directly."""
    data, results, artifacts = evaluated
    scores = results["explanations"][GRAD_CAM]
    keys = {"seconds_per_image"}
    for name in report.EXPLANATION_METRICS:
        prefix = METRICS[name].prefix or name
        keys |= {k for k in scores if k.startswith(prefix + "_")}
    assert keys == set(scores)
    for k in ("energy_pointing_mean", "pointing_mean", "relevance_mass_mean", "iou_mean"):
        assert k in scores
    for k in ("confidence_average_drop", "confidence_increase", "deletion_auc_mean"):
        assert k in scores
    # relevance mass of the stored heatmaps (first 8 = all explained images) against the object
    heat = artifacts["heatmaps"][GRAD_CAM]
    direct = ji.metrics.relevance_mass(heat, data["object_mask"][:8], empty="ignore")
    assert scores["relevance_mass_mean"] == pytest.approx(float(direct["mean"]), rel=1e-5)
    direct = ji.metrics.energy_pointing_game(heat, data["disc_mask"][:8], empty="ignore")
    assert scores["energy_pointing_mean"] == pytest.approx(float(direct["mean"]), rel=1e-5)


def test_metrics_argument_selects_registry_entries(evaluated, monkeypatch):
    data, results, _ = evaluated
    model = ji.backbones.create("small_cnn", num_classes=8, widths=(8, 8, 16, 16, 16, 16))
    variables = model.init(jax.random.key(0), data["image"][:1])
    # one registry line adds a metric: the mean heatmap value, keyed "mean_heat_<key>"
    entry = Metric(lambda h: {"value": h.mean()}, ("heatmaps",), {"value": 1}, "test", prefix="mean_heat")
    monkeypatch.setitem(METRICS, "mean_heat", entry)
    kw = dict(layer="conv4", methods=("grad_cam",), num_explained=8, n_modules=3)
    res, art = report.evaluate(model, variables, data, metrics=("relevance_mass", "mean_heat"), **kw)
    scores = res["explanations"][GRAD_CAM]
    assert set(scores) == {"seconds_per_image", "relevance_mass_mean", "mean_heat_value"}
    assert scores["relevance_mass_mean"] == pytest.approx(
        results["explanations"][GRAD_CAM]["relevance_mass_mean"]
    )
    assert scores["mean_heat_value"] == pytest.approx(float(art["heatmaps"][GRAD_CAM].mean()))
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        report.evaluate(model, variables, data, metrics=("nope",), **kw)
    with pytest.raises(ValueError, match="filter_interpretability"):
        report.evaluate(model, variables, data, metrics=("filter_interpretability",), **kw)


def test_markdown_table_formats_cells():
    text = markdown_table(["a", "b", "c"], [["x", 0.12345, None], ["y", 2, float("nan")]])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| x | 0.123 | – |", "| y | 2 | – |"]
    per_column = markdown_table(["a", "b"], [[np.float32(1.25), 3.0]], fmt=[".1f", lambda v: f"<{v}>"])
    assert per_column.splitlines()[-1] == "| 1.2 | <3.0> |"
    with pytest.raises(ValueError, match="rows"):
        markdown_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="fmt"):
        markdown_table(["a", "b"], [[1, 2]], fmt=[".1f"])


def test_report_tables_only(evaluated, tmp_path):
    """metrics.report writes metrics.json and report.md and draws nothing."""
    _, results, _ = evaluated
    paths = report.write_report({"cnn": results}, str(tmp_path), figures=[("cnn: x", "cnn_x.png")])
    assert set(paths) == {"metrics", "report"}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "report.md"]
    text = open(paths["report"]).read()
    assert text.endswith("![cnn: x](cnn_x.png)\n")
    row = next(line for line in text.splitlines() if line.startswith("| cnn | grad_cam"))
    iou = results["explanations"][GRAD_CAM]["iou_mean"]
    assert f"| {iou:.3f} |" in row


def test_write_report_files(evaluated, tmp_path):
    _, results, artifacts = evaluated
    paths = viz.write_report({"cnn": results, "copy": results}, str(tmp_path), {"cnn": artifacts})
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
    paths = viz.compare({n: str(tmp_path / n / "metrics.json") for n in "ab"}, str(tmp_path / "all"))
    text = open(paths["report"]).read()
    assert "| a |" in text and "| b |" in text
    assert json.load(open(paths["metrics"]))["b"]["accuracy"] == results["accuracy"]
    for name in ("inconsistency_diversity", "a_pointing", "a_deletion", "b_pointing", "b_deletion"):
        assert open(paths[name], "rb").read(4) == b"\x89PNG", name
        assert f"]({name}.png)" in text
    with pytest.raises(ValueError, match="metrics_files"):
        viz.compare({"c": str(tmp_path / "missing.json")}, str(tmp_path / "x"))
