"""Seed-001 protocol (jinterp.metrics.concepts_eval): per-map IoU, DCNE aggregation, end to end."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp import backbones as B
from jinterp import data as D
from jinterp import viz
from jinterp.explain import concepts as K
from jinterp.explain import explain
from jinterp.metrics import concepts_eval as E
from jinterp.metrics import mean_max_iou


def test_per_map_iou_analytic():
    masks = np.zeros((1, 2, 8, 8), bool)
    masks[0, 0, :4] = True  # top half
    masks[0, 1, :, :2] = True  # left quarter
    maps = np.zeros((1, 3, 8, 8), np.float32)
    maps[0, 0] = masks[0, 0]  # exactly part 0
    maps[0, 1, :2] = 1.0  # a quarter, inside part 0
    maps[0, 2] = 0.5  # constant: imgify gives 0 everywhere, nothing passes "> t"
    iou = E.per_map_iou(maps, masks, thresholds=(0, 100))
    assert iou.shape == (2, 1, 3, 2)
    np.testing.assert_allclose(iou[:, 0, 0, 0], 1.0)
    np.testing.assert_allclose(iou[:, 0, 0, 1], 8 / (32 + 16 - 8))  # overlap 4 rows x 2 cols
    np.testing.assert_allclose(iou[:, 0, 1, 0], 16 / 32)
    np.testing.assert_allclose(iou[:, 0, 2], 0.0)
    masks[0, 1] = False  # absent part -> NaN ("not annotated")
    assert np.isnan(E.per_map_iou(maps, masks, (0,))[0, 0, :, 1]).all()
    assert np.isnan(E.per_map_iou(maps, np.zeros_like(masks), (0,))).all()


def test_max_over_maps_and_aggregate_match_mean_max_iou():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 4, 12, 12)).astype(np.float32)
    masks = rng.random((5, 3, 12, 12)) < 0.3
    masks[1, 2] = False
    masks[3, 0] = False
    ref = mean_max_iou(maps, masks)
    iou = E.per_map_iou(maps, masks)
    best = np.fmax.reduce(iou, axis=2)
    np.testing.assert_allclose(best, np.asarray(ref["per_image"]), atol=1e-6)
    agg = E.aggregate(best, masks.any((2, 3)))
    np.testing.assert_allclose(agg["average"], np.asarray(ref["average"]), atol=1e-6)
    np.testing.assert_allclose(agg["per_feature"], np.asarray(ref["per_feature"]), atol=1e-6)
    assert agg["best"] == pytest.approx(float(ref["best"]), abs=1e-6)
    assert agg["best_threshold"] == float(ref["best_threshold"])
    # Restricting the features that count: feature 1 only.
    present = np.zeros((5, 3), bool)
    present[:, 1] = masks[:, 1].any((1, 2))
    agg1 = E.aggregate(best, present)
    col = np.where(present[:, 1][None], best[:, :, 1], 0.0).sum(1) / present[:, 1].sum()
    np.testing.assert_allclose(agg1["average"], col)
    with pytest.raises(ValueError, match="present"):
        E.aggregate(best, np.zeros((5, 3), bool))
    with pytest.raises(ValueError, match="best"):
        E.aggregate(best[:, :4], present)


@functools.cache
def _setup():
    cfg = D.make_config(image_size=32, train_size=8, test_size=8)
    d = D.generate(cfg, "test")
    x = D.normalize_images(d["image"])
    model = B.create("small_cnn", num_classes=8, widths=(4, 6), strides=(2, 2))
    v = model.init(jax.random.key(0), jnp.asarray(x[:1]))
    return cfg, d, x, model, v


PROGRESS = []


def _run(**kw):
    cfg, d, x, model, v = _setup()
    args = dict(
        progress=PROGRESS.append,
        crp_ks=(1, 2, 5, 10, None),
        concept_counts=(2, 4),
        k_range=(2, 5),
        cam_methods=("grad_cam",),
    )
    args.update(kw)
    return E.evaluate_concepts(
        model, v, x, d["label"], d["part_masks"], ("conv1", "conv2"), E.class_part_table(cfg),
        batch_images=3, **args,
    )  # fmt: skip


@functools.cache
def _result():
    return _run()


def test_class_part_table():
    table = E.class_part_table(D.make_config(num_classes=8, train_size=8, test_size=8))
    assert table.shape == (8, 6)
    # 8 classes = head x tail x wing levels (2, 2, 2): those three parts define every class.
    np.testing.assert_array_equal(table, np.broadcast_to([0, 1, 0, 1, 1, 0], (8, 6)).astype(bool))


def test_evaluate_concepts_structure_and_orderings():
    r = _result()
    assert [m.split(";")[0] for m in PROGRESS] == ["3/8 images", "6/8 images", "8/8 images"]  # padded chunk
    assert r["num_images"] == 8 and r["num_neurons"] == 10 and r["defining_parts"] == ["head", "tail", "wing"]
    rows = r["rows"]
    assert set(rows) == {
        "CRP-1", "CRP-2", "CRP-5", "CRP-10", "CRP-all(10)", "grad_cam[conv2]", "grad_cam[conv1,conv2]",
        "concise", "concise-2", "concise-4",
    }  # fmt: skip
    crp = [rows[n] for n in ("CRP-1", "CRP-2", "CRP-5", "CRP-10", "CRP-all(10)")]
    assert [c["complexity"] for c in crp] == [1, 2, 5, 10, 10]
    ious = [c["best"] for c in crp]
    assert all(b >= a - 1e-12 for a, b in zip(ious, ious[1:], strict=False))  # top-k sets are nested
    assert ious[-1] == pytest.approx(ious[-2])  # k = 10 = all channels
    for name in ("concise", "concise-2", "concise-4"):  # representatives are a subset of all channels
        assert rows[name]["best"] <= rows["CRP-all(10)"]["best"] + 1e-12
    assert rows["concise-2"]["complexity"] == 2 and rows["concise-4"]["complexity"] == 4
    assert 2 <= rows["concise"]["complexity"] <= 5
    assert rows["grad_cam[conv1,conv2]"]["best"] >= rows["grad_cam[conv2]"]["best"] - 1e-12
    assert [c for c, _ in r["curves"]["CRP-k"]] == [1, 2, 5, 10, 10]
    for row in rows.values():
        assert 0.0 <= row["best"] <= 1.0 and row["threshold"] in E.DCNE_THRESHOLDS
        assert set(row["per_part"]) == set(D.PART_NAMES)


def _defining_masks():
    cfg, d, _, _, _ = _setup()
    masks = np.moveaxis(d["part_masks"], -1, 1).copy()
    masks &= E.class_part_table(cfg)[d["label"]][:, :, None, None]  # non-defining parts: not annotated
    return masks


def test_crp10_and_cam_rows_match_independent_paths():
    """CRP-10 from per-image ``crp_top_k`` (another code path) and Grad-CAM from ``explain``, each
    scored by ``mean_max_iou`` directly, equal the protocol's rows."""
    cfg, d, x, model, v = _setup()
    masks = _defining_masks()
    top = [K.crp_top_k(model, v, x[i], int(d["label"][i]), ["conv1", "conv2"], k=5).maps for i in range(8)]
    ref = mean_max_iou(np.stack(top), masks)
    r = _result()["rows"]
    assert r["CRP-5"]["best"] == pytest.approx(float(ref["best"]), abs=2e-3)
    cam = explain('grad_cam(layer="conv2")', model, v, x, d["label"].astype(np.int32))
    ref = mean_max_iou(np.asarray(cam)[:, None], masks)
    assert r["grad_cam[conv2]"]["best"] == pytest.approx(float(ref["best"]), abs=1e-6)
    assert r["grad_cam[conv2]"]["threshold"] == float(ref["best_threshold"])


def test_oracle_maps_score_one():
    """Maps equal to the part masks (the perfect explanation) score IoU 1 on every part."""
    _, d, _, _, _ = _setup()
    masks = np.moveaxis(d["part_masks"], -1, 1)
    iou = E.per_map_iou(masks.astype(np.float32), masks, (0,))
    shown = masks.any((2, 3))
    diag = np.einsum("tnpp->tnp", iou)
    np.testing.assert_allclose(diag[0][shown], 1.0)
    agg = E.aggregate(np.fmax.reduce(iou, axis=2), shown, (0,))
    assert agg["best"] == pytest.approx(1.0)


def test_table_and_plot(tmp_path):
    r = _result()
    table = E.format_table(r)
    assert table.startswith("| method | mean max-IoU") and "| CRP-10 |" in table and "head*" in table
    row = r["rows"]["concise"]
    cells = [f"{row['best']:.3f}", f"{row['complexity']:.1f}", f"{row['threshold']:.0f}"]
    cells += ["–" if np.isnan(row["per_part"][p]) else f"{row['per_part'][p]:.3f}" for p in r["parts"]]
    assert "| concise | " + " | ".join(cells) + " |" in table.splitlines()
    fig = viz.plot_iou_vs_complexity(r)
    ax = fig.axes[0]
    crp_x, crp_y = ax.lines[0].get_data()  # the CRP-k curve, in crp_ks order
    np.testing.assert_allclose(crp_x, [c for c, _ in r["curves"]["CRP-k"]])
    np.testing.assert_allclose(crp_y, [b for _, b in r["curves"]["CRP-k"]])
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["CRP-k", "concise-k"] and {"concise", "grad_cam[conv2]"} <= set(labels)
    assert "CRP-5" not in labels and ax.get_xscale() == "log"
    path = viz.save_figure(fig, tmp_path / "sub" / "curve.png", dpi=110)
    assert (tmp_path / "sub" / "curve.png").read_bytes()[:4] == b"\x89PNG" and path.endswith(".png")


def test_run_protocol_adds_accuracy_to_evaluate_concepts():
    cfg, d, x, model, v = _setup()
    data = {"image": x, "label": d["label"], "part_masks": d["part_masks"]}
    kw = dict(layers=("conv2",), cam_methods=(), batch_images=8)
    r = E.run_protocol(model, v, data, cfg, **kw)
    ref = E.evaluate_concepts(
        model,
        v,
        x,
        d["label"],
        d["part_masks"],
        ("conv2",),
        E.class_part_table(cfg),
        cam_methods=(),
        batch_images=8,
    )
    assert {k: row["best"] for k, row in r["rows"].items()} == {
        k: row["best"] for k, row in ref["rows"].items()
    }
    logits, _ = model.apply(v, jnp.asarray(x))
    assert r["accuracy"] == pytest.approx(float((np.asarray(logits).argmax(-1) == d["label"]).mean()))
    assert r["wall_s"] > 0
    with pytest.raises(ValueError, match="part_masks"):
        E.run_protocol(model, v, {"image": x, "label": d["label"]}, cfg, **kw)


def test_errors():
    cfg, d, x, model, v = _setup()
    run = functools.partial(E.evaluate_concepts, model, v, x, d["label"])
    with pytest.raises(ValueError, match="part_masks"):
        run(d["part_masks"][:, :16], ("conv2",))
    with pytest.raises(ValueError, match="class_parts"):
        run(d["part_masks"], ("conv2",), np.ones((8, 5), bool))
    with pytest.raises(ValueError, match="crp_ks"):
        run(d["part_masks"], ("conv2",), crp_ks=(0,))
    with pytest.raises(ValueError, match="layers"):
        run(d["part_masks"], ("conv9",))
    with pytest.raises(ValueError, match="masks"):
        E.per_map_iou(np.zeros((2, 3, 8, 8)), np.zeros((2, 1, 8, 4), bool))
