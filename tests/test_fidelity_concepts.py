"""The seed 001 fidelity section: DCNE's class-level neuron selection, the NMF baseline, map readings,
the resampled DCNE aggregate, the choice of setting on held-out images, the verdicts, and ``run``."""

import os
import re

import numpy as np
import pytest
from scipy.optimize import nnls

from configs import fidelity as fidelity_config
from jinterp.fidelity import concepts as section
from jinterp.fidelity import concepts_report as report
from jinterp.fidelity.section import REPLICATED, Context
from jinterp.metrics import concepts_dcne as dcne
from jinterp.metrics import concepts_eval


def test_class_selection_picks_the_planted_top_channels_by_class_mean():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    rel = rng.normal(0, 0.05, (20, 12))
    rel[labels == 0, 3] += 1.2
    rel[labels == 0, 8] += 1.0
    rel[labels == 1, 0] += 1.1
    rel[labels == 1, 9] += 0.9
    rel[0, 5] = 2.5  # one image's outlier: top of that image, but a class mean of only ~0.25
    top = dcne.class_top_neurons(rel, labels, 3, 2)
    np.testing.assert_array_equal(top[:2], [[3, 8], [0, 9]])
    assert 5 not in top[0] and np.argsort(-rel[0])[0] == 5
    # A class without images ranks by the mean over all images; k above n keeps all n.
    np.testing.assert_array_equal(top[2], np.argsort(-rel.mean(0), kind="stable")[:2])
    assert dcne.class_top_neurons(rel, labels, 2, 300).shape == (2, 12)


@pytest.mark.parametrize(
    "args, name",
    [
        ((np.zeros(5), np.zeros(5, int), 2, 1), "relevances"),
        ((np.zeros((5, 3)), np.zeros(4, int), 2, 1), "labels"),
        ((np.zeros((5, 3)), np.full(5, 2), 2, 1), "labels"),
        ((np.zeros((5, 3)), np.zeros(5, int), 2, 0), "k"),
    ],
)
def test_class_selection_bad_inputs_name_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        dcne.class_top_neurons(*args)


def _blobs(centres, size=16, sigma=2.0):
    yy, xx = np.mgrid[:size, :size]
    return np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) for cy, cx in centres])


def test_nmf_baseline_recovers_planted_low_rank_maps():
    h = _blobs([(3, 3), (3, 12), (12, 7)])  # 3 non-negative parts
    w = np.random.default_rng(1).random((40, 3))
    maps = np.einsum("nk,khw->nhw", w, h)
    comps = dcne.nmf_maps(maps, 3)
    assert comps.shape == (3, 16, 16) and comps.min() >= 0
    flat = lambda a: a.reshape(len(a), -1) / np.linalg.norm(a.reshape(len(a), -1), axis=1, keepdims=True)
    cos = flat(h) @ flat(comps).T
    assert cos.max(1).min() > 0.95 and sorted(cos.argmax(1)) == [0, 1, 2]  # one component per part
    # The components span DCNE's uint8 maps: non-negative least squares leaves < 2 % of them.
    x = dcne.imgify(maps).reshape(40, -1).astype(np.float64)
    basis = comps.reshape(3, -1).T
    fit = np.stack([basis @ nnls(basis, row)[0] for row in x])
    assert np.linalg.norm(fit - x) / np.linalg.norm(x) < 0.02
    with pytest.raises(ValueError, match="components"):
        dcne.nmf_maps(maps[:2], 3)
    with pytest.raises(ValueError, match="maps"):
        dcne.nmf_maps(maps[0], 1)
    np.testing.assert_array_equal(dcne.nmf_maps(np.ones((4, 5, 5)), 2), 0.0)  # constant maps: nothing


def test_map_readings_and_imgify():
    m = np.array([[[-2.0, 0.0], [1.0, 2.0]]])
    np.testing.assert_array_equal(dcne.imgify(m), [[[0, 127], [191, 255]]])
    np.testing.assert_array_equal(dcne.read_maps(m, "positive"), [[[0, 0], [1, 2]]])
    np.testing.assert_allclose(dcne.read_maps(m, "minmax"), np.array([[[0, 127], [191, 255]]]) / 255)
    np.testing.assert_array_equal(dcne.read_maps(m, "signed"), m)
    with pytest.raises(ValueError, match="reading"):
        dcne.read_maps(m, "abs")


def test_resampled_aggregate_is_dcnes_rule():
    best = np.array([[0.2, 0.9, 0.5], [0.4, np.nan, 0.1], [0.6, 0.3, 0.7]])
    present = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0]], bool)
    expected = np.mean([np.mean([0.2, 0.4, 0.6]), np.mean([0.9, 0.3])])
    assert dcne.aggregate_at(best, present) == pytest.approx(expected)
    ref = concepts_eval.aggregate(best[None], present)["best"]
    assert dcne.aggregate_at(best, present) == pytest.approx(ref)
    # Image 1 three times: feature 0 alone counts; images 0, 0, 2: duplicates weigh twice.
    boot = dcne.resampled(best, present, np.array([[1, 1, 1], [0, 0, 2]]))
    np.testing.assert_allclose(boot, [0.4, np.mean([(0.2 + 0.2 + 0.6) / 3, (0.9 + 0.9 + 0.3) / 3])])
    with pytest.raises(ValueError, match="present"):
        dcne.resampled(best, present[:2], np.array([[0]]))


def _result(iou, counts):
    """A swept setting whose selection images all score ``iou`` on feature 0 (T = 1)."""
    n = len(counts)
    best = np.zeros((1, n, 7))
    best[0, :, 0] = iou
    return {"best": best, "count": np.asarray(counts)}


def test_choice_is_the_best_held_out_iou_within_the_map_budget():
    present = np.zeros((4, 7), bool)
    present[:, 0] = True
    sweep = {
        "few": _result(0.3, [2, 2, 2, 2]),
        "mid": _result(0.5, [20, 25, 30, 25]),
        "many": _result(0.7, [60, 70, 80, 90]),
        "tie": _result(0.5, [10, 10, 10, 10]),
    }
    assert report.choose(sweep, present, 50) == "tie"  # same IoU as "mid", fewer concepts
    assert report.choose(sweep, present, 100) == "many"
    assert report.choose({"a": sweep["many"], "b": sweep["mid"]}, present, 5) == "b"  # none fits: fewest


def test_candidates_vary_one_factor_from_the_default():
    c = fidelity_config.get_config("tiny").concepts
    grid = section.candidates(c, 40)
    d = section.default_setting(c).capped(40)
    assert all(v[0] == d for v in grid.values())
    for factor, settings in grid.items():
        for s in settings[1:]:
            changed = [
                f
                for f in ("neurons", "lam", "linkage", "k_range", "reading")
                if getattr(s, f) != getattr(d, f)
            ]
            assert changed == [factor]
    assert [s.neurons for s in grid["neurons"]] == [40, 10]
    c.neuron_counts = "2"
    with pytest.raises(ValueError, match="neuron_counts"):
        section.candidates(c, 40)
    with pytest.raises(ValueError, match="k_range"):
        section.parse_range("1,30")


def test_split_agreement_either_way_round_and_undefined_for_one_side():
    labels = np.array([0, 0, 1, 1, 1])
    assert section._agreement(labels, np.array([False, False, True, True, True])) == 1.0
    assert section._agreement(labels, np.array([True, True, False, False, False])) == 1.0
    assert section._agreement(labels, np.array([True, False, False, False, False])) == 0.8
    assert np.isnan(section._agreement(labels, np.ones(5, bool)))


def test_verdicts_follow_the_paired_intervals():
    assert report._verdict([(0.2, 0.1, 0.3), (0.1, 0.05, 0.2)]) == "yes"
    assert report._verdict([(0.2, -0.1, 0.5), (0.1, 0.05, 0.2)]) == "partly"
    assert report._verdict([(-0.2, -0.3, -0.1)]) == "no"


def _data(n, seed):
    """Random images with one rectangle per part; disc_mask = the union of head, tail and wing."""
    rng = np.random.default_rng(seed)
    parts = np.zeros((n, 32, 32, 6), bool)
    for i in range(n):
        for p in range(6):
            y, x = rng.integers(0, 24, 2)
            parts[i, y : y + rng.integers(4, 9), x : x + rng.integers(4, 9), p] = True
    return {
        "image": rng.normal(size=(n, 32, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 3, n).astype(np.int32),
        "part_masks": parts,
        "disc_mask": parts[..., [1, 3, 4]].any(-1),
    }


def test_run_fills_every_field_and_is_deterministic(tiny_fidelity_model, tmp_path):
    cfg, model, variables = tiny_fidelity_model
    load = lambda split, n: _data(n, 4)  # noqa: E731
    secs = []
    for _ in range(2):
        ctx = Context(cfg, str(tmp_path), model, variables, _data(12, 3), load, str(tmp_path), lambda s: None)
        secs.append(section.run(ctx))
    sec = secs[0]
    assert len(sec.rows) == 6
    for row in sec.rows:
        assert row.paper == "001" and row.replicated in REPLICATED
        assert all(str(getattr(row, f)).strip() for f in ("claim", "paper_value", "ours", "note"))
        assert "nan" not in row.ours.lower() and re.search(r"\d\.\d", row.ours)
    assert "Table 1" in sec.body and "Why silhouette picks 2" in sec.body and "NMF-3 (DCNE)" in sec.body
    assert (
        sec.figures == ["concepts_iou_vs_complexity.png"] and os.path.getsize(tmp_path / sec.figures[0]) > 0
    )
    assert [r for r in secs[1].rows] == sec.rows and secs[1].body == sec.body
