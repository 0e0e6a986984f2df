"""Figures (jinterp.viz): every figure is drawn without switching matplotlib's backend, the image grid
shows what it was given, the report figures carry the metrics' curves, and no library file uses pyplot."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import data, viz
from jinterp import metrics as jm
from jinterp.explain.concepts import Concepts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _inputs():
    """Tiny metric outputs of the shapes the figures take (real metric functions on 8 px maps)."""
    maps = np.zeros((4, 4, 4, 6), np.float32)
    maps[:, 0, 0, :3] = 1.0
    maps[:, 3, 3, 3:] = 1.0
    parts = np.zeros((4, 8, 8, 2), bool)
    parts[:, :4, :4, 0] = True
    parts[:, 4:, 4:, 1] = True
    heat = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    obj = parts.any(-1)
    imgs = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
    return {
        "maps": maps,
        "heat": heat,
        "images": imgs,
        "idc": jm.inconsistency_diversity_curve(maps, parts, obj, taus=(0.3, 0.6)),
        "pointing": jm.energy_pointing_game(heat, obj),
        "deletion": jm.perturbation_curve(
            lambda x: x.mean((1, 2)), imgs, heat, targets=np.zeros(4, np.int32)
        ),
        "landmarks": jm.landmark_metric_curves(
            maps, np.full((4, 2, 2), 4.0, np.float32), (8, 8), radii=jnp.array([0.1, 0.5])
        ),
    }


def _concepts():
    maps = np.random.default_rng(2).normal(size=(3, 8, 8)).astype(np.float32)
    maps[0, 2, 2] = 5.0  # positive maximum: the overlay is scaled to 1 there
    return Concepts(
        maps=maps,
        relevances=np.array([3.0, 2.0, 1.0]),
        total_relevances=np.array([4.0, 2.0, 1.0]),
        representatives=[("conv1", 0), ("conv2", 3), ("conv2", 1)],
        neurons=[[("conv1", 0), ("conv1", 2)], [("conv2", 3)], [("conv2", 1)]],
        labels=np.array([0, 0, 1, 2]),
        all_neurons=[("conv1", 0), ("conv1", 2), ("conv2", 3), ("conv2", 1)],
        all_maps=np.concatenate([maps, maps[:1]]),
        all_relevances=np.array([3.0, 1.0, 2.0, 1.0]),
        silhouettes={3: 0.5},
    )


def _results(inputs) -> dict:
    """One model's ``report.evaluate`` results, as stored in metrics.json (scalars and short curves)."""
    curve = {k: np.asarray(v).tolist() for k, v in inputs["idc"].items() if np.ndim(v) == 1}
    p, d = inputs["pointing"], inputs["deletion"]
    scores = {
        "energy_pointing_energies": np.asarray(p["energies"]).tolist(),
        "energy_pointing_curve": np.asarray(p["curve"]).tolist(),
        "energy_pointing_mean": float(p["mean"]),
        "deletion_fractions": np.asarray(d["fractions"]).tolist(),
        "deletion_curve": np.asarray(d["curve"]).tolist(),
        "deletion_auc_mean": float(d["auc_mean"]),
    }
    return {
        "accuracy": 0.5,
        "num_images": 4,
        "layer": "conv4",
        "filters": {"interp_mean": 0.25},
        "curves": {"inconsistency_diversity": curve},
        "explanations": {"grad_cam(layer='conv4')": scores},
    }


def draw_everything(outdir) -> dict:
    """Every ``viz.plot_*`` figure plus the saving helpers; returns ``{function name: result}``."""
    inputs = _inputs()
    batch, names = data.example_batch(image_size=32, num=4)
    result = {
        "rows": {
            "concise": {"complexity": 3.0, "best": 0.4},
            "grad_cam[conv2]": {"complexity": 1.0, "best": 0.2},
        },
        "curves": {"CRP-k": [(1, 0.1), (5, 0.3)], "concise-k": [(2, 0.2), (4, 0.35)]},
        "num_images": 4,
    }
    art = {
        "images": inputs["images"],
        "heatmaps": {"grad_cam(layer='conv4')": inputs["heat"]},
        "responses": inputs["maps"],
        "modules": np.array([0, 0, 0, 1, 1, 1]),
    }
    out = {
        "plot_examples": viz.plot_examples(batch, class_names=names, num=4),
        "plot_image_grid": viz.plot_image_grid(
            inputs["images"], titles=list("abcd"), title_colors=["red"] * 4
        ),
        "plot_heatmap_grid": viz.plot_heatmap_grid(
            inputs["images"], {"m": inputs["heat"], "n": inputs["heat"]}
        ),
        "plot_concepts": viz.plot_concepts(_concepts(), inputs["images"][0]),
        "plot_iou_vs_complexity": viz.plot_iou_vs_complexity(result),
        "plot_inconsistency_diversity": viz.plot_inconsistency_diversity(
            {"a": inputs["idc"], "b": inputs["idc"]}
        ),
        "plot_pointing_curves": viz.plot_pointing_curves({"m": inputs["pointing"]}),
        "plot_perturbation_curves": viz.plot_perturbation_curves({"m": inputs["deletion"]}),
        "plot_metric_pairs": viz.plot_metric_pairs({"m": inputs["landmarks"]}),
        "plot_tsne": viz.plot_tsne(inputs["maps"], [0, 0, 0, 1, 1, 1]),
        "plot_probes": viz.plot_probes(
            {"cnn": [[{"step": 0, "spread": 0.3}, {"step": 100, "spread": 0.2}]]}, {"spread": "spread"}
        ),
        "plot_attribute_examples": viz.plot_attribute_examples(
            [inputs["images"][:2]], [[[(1, 1, 5, 5)], []]], [["input", "train"]], heat=inputs["heat"][0]
        ),
        "plot_sweep_panels": viz.plot_sweep_panels([("beta", "β", [("drop", [0, 1], [2.0, 1.0])])], "drop"),
    }
    out["save_examples_grid"] = viz.save_examples_grid(batch, os.path.join(outdir, "grid.png"), num=4)
    out["save_figure"] = viz.save_figure(out["plot_image_grid"], os.path.join(outdir, "sub", "g.png"))
    out["write_report"] = viz.write_report(
        {"cnn": _results(inputs)}, os.path.join(outdir, "report"), {"cnn": art}
    )
    return out


_CHECK_BACKEND = """
import sys, tempfile
import matplotlib
matplotlib.rcParams["backend"] = "svg"
import jinterp, jinterp.viz, jinterp.metrics
from tests.test_viz import draw_everything
drawn = draw_everything(tempfile.mkdtemp())
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, sorted(drawn))
"""


def test_drawing_every_figure_keeps_the_backend():
    """A notebook's backend survives importing jinterp and drawing every figure; pyplot stays unloaded."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(XLA_FLAGS="", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", _CHECK_BACKEND], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    backend, pyplot_loaded, drawn = r.stdout.strip().splitlines()[-1].split(" ", 2)
    assert backend == "svg" and pyplot_loaded == "False"
    plots = {name for name in dir(viz) if name.startswith("plot_")}
    assert plots <= set(eval(drawn)), plots - set(eval(drawn))  # every figure function was drawn


def test_no_library_file_switches_the_backend_or_imports_pyplot():
    pattern = re.compile(r"matplotlib\.use\(|import\s+matplotlib\.pyplot|from\s+matplotlib\s+import\s+pyplot")
    offenders = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((ROOT / "jinterp").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_image_grid_scales_each_image_and_sets_titles():
    rng = np.random.default_rng(0)
    images = (
        rng.normal(size=(3, 5, 6, 3)).astype(np.float32) * np.array([1.0, 50.0, 1e-3])[:, None, None, None]
    )
    images[1] += 7.0
    fig = viz.plot_image_grid(images, titles=["a", "b", None], title_colors=["green", "red", None], ncols=2)
    assert len(fig.axes) == 4 and not fig.axes[3].get_images()  # 2 x 2 grid, last panel empty
    for i in range(3):
        shown = np.asarray(fig.axes[i].get_images()[0].get_array())
        assert shown.min() == 0.0 and shown.max() == pytest.approx(1.0)
        lo, hi = images[i].min(), images[i].max()
        np.testing.assert_allclose(shown, (images[i] - lo) / (hi - lo), atol=1e-6)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", ""]
    assert fig.axes[0].title.get_color() == "green" and fig.axes[1].title.get_color() == "red"
    assert fig.get_size_inches() == pytest.approx((2 * 1.6, 2 * 1.8))
    # uint8 is shown as is (/ 255), grey images with a grey colormap; a constant image does not divide by 0
    u8 = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    fig = viz.plot_image_grid(u8)
    np.testing.assert_allclose(fig.axes[1].get_images()[0].get_array(), u8[1, ..., 0] / 255)
    assert fig.axes[0].get_images()[0].get_cmap().name == "gray"
    np.testing.assert_array_equal(viz.display01(np.full((1, 2, 2, 3), 3.0)), 0.0)
    with pytest.raises(ValueError, match="titles"):
        viz.plot_image_grid(images, titles=["a"])
    with pytest.raises(ValueError, match="images"):
        viz.plot_image_grid(np.zeros((0, 4, 4, 3)))


def test_heatmap_grid_overlays_each_method():
    inputs = _inputs()
    heat = inputs["heat"]
    fig = viz.plot_heatmap_grid(inputs["images"], {"m": heat, "n": 1 - heat}, max_images=2)
    assert len(fig.axes) == 6 and [ax.get_title() for ax in fig.axes[:3]] == ["", "m", "n"]
    assert len(fig.axes[0].get_images()) == 1  # the image alone, then image + heatmap
    np.testing.assert_allclose(fig.axes[4].get_images()[1].get_array(), heat[1])
    np.testing.assert_allclose(fig.axes[5].get_images()[1].get_array(), 1 - heat[1])
    shown = np.asarray(fig.axes[3].get_images()[0].get_array())
    assert shown.min() == 0.0 and shown.max() == pytest.approx(1.0)


def test_curves_carry_the_metric_values():
    inputs = _inputs()
    ax = viz.plot_pointing_curves({"m": inputs["pointing"]}).axes[0]
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(y, inputs["pointing"]["curve"])
    assert ax.get_legend().get_texts()[0].get_text() == f"m ({float(inputs['pointing']['mean']):.3f})"
    ax = viz.plot_perturbation_curves({"m": inputs["deletion"]}).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_data()[1], inputs["deletion"]["curve"])
    ax = viz.plot_inconsistency_diversity({"a": inputs["idc"]}).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_data()[0], inputs["idc"]["inconsistency"])
    assert len(viz.plot_metric_pairs({"m": inputs["landmarks"]}).axes) == 3
    with pytest.raises(ValueError, match="groups"):
        viz.plot_tsne(inputs["maps"], [0, 1])


def test_concepts_figure_titles_and_overlays():
    c = _concepts()
    fig = viz.plot_concepts(c, np.zeros((8, 8, 3)), columns=2)
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "image",
        "conv1:0 (+1)\nR=3",
        "conv2:3 (+0)\nR=2",
        "conv2:1 (+0)\nR=1",
    ]
    overlay = np.asarray(fig.axes[1].get_images()[1].get_array())
    np.testing.assert_allclose(overlay, np.maximum(c.maps[0], 0) / 5.0)


def test_report_figures_and_files(tmp_path):
    inputs = _inputs()
    results = {"cnn": _results(inputs), "hic": _results(inputs)}
    figures = viz.report_figures(results, str(tmp_path))
    assert figures == [
        ("inconsistency-diversity", "inconsistency_diversity.png"),
        ("cnn: pointing", "cnn_pointing.png"),
        ("cnn: deletion", "cnn_deletion.png"),
        ("hic: pointing", "hic_pointing.png"),
        ("hic: deletion", "hic_deletion.png"),
    ]
    for _, file in figures:
        assert (tmp_path / file).read_bytes()[:4] == b"\x89PNG"
    paths = viz.write_report(results, str(tmp_path / "r"))
    text = open(paths["report"]).read()
    assert "| cnn | grad_cam(layer='conv4') |" in text and "![hic: deletion](hic_deletion.png)" in text
    assert json.load(open(paths["metrics"]))["hic"]["accuracy"] == 0.5
    assert set(paths) == {"metrics", "report"} | {f.removesuffix(".png") for _, f in figures}


def test_example_batch_is_sorted_and_named(tmp_path):
    batch, names = data.example_batch("parts_world/64px_8cls", image_size=32, num=6, seed=3)
    assert batch["image"].shape == (6, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert np.all(np.diff(batch["label"]) >= 0) and len(names) == 8
    cfg = data.make_config(image_size=32, num_classes=8, train_size=1, test_size=6, seed=3)
    raw = data.generate(cfg, "test")
    order = np.argsort(raw["label"], kind="stable")
    np.testing.assert_array_equal(batch["image"], raw["image"][order])
    assert names == [c["name"] for c in data.parts_world_classes(cfg)]
    binary, bnames = data.example_batch("parts_world_binary", image_size=32, num=2)
    assert set(binary["label"].tolist()) <= {0, 1} and len(bnames) == 2
    path = viz.save_examples_grid(batch, str(tmp_path / "d" / "data.png"), class_names=names, num=6)
    assert os.path.getsize(path) > 1000
    with pytest.raises(ValueError, match="num"):
        data.example_batch(num=0)
