"""The explanation-loss fidelity section: the held-out weight choice, its rows, and the tiny run end
to end (both arms from the shared CNN, the rrr arm trained with the penalty, a reused second call)."""

import json
import os

import jax
import numpy as np
import pytest

from configs import fidelity as fidelity_config
from jinterp import fidelity, train
from jinterp.fidelity import explanation_loss as section


def _arm(accuracy, pointing, report=None):
    scores = {"accuracy": accuracy, "pointing_mean": pointing, "relevance_mass_mean": 0.2}
    return {"select": scores, "report": report or scores, "accuracy": accuracy}


def test_the_weight_is_the_best_pointing_that_keeps_held_out_accuracy():
    plain = _arm(0.95, 0.30)
    candidates = {0.1: _arm(0.95, 0.40), 0.3: _arm(0.945, 0.55), 1.0: _arm(0.80, 0.90)}
    assert section.choose_weight(plain, candidates) == 0.3  # 1.0 points best but loses 15 points
    worse = {0.3: _arm(0.7, 0.5), 1.0: _arm(0.6, 0.9)}
    assert section.choose_weight(plain, worse) == 0.3  # none keeps accuracy: the smallest weight


def test_rows_test_pointing_by_welch_and_accuracy_by_non_inferiority():
    report = lambda p, a: {"pointing_mean": p, "relevance_mass_mean": p / 2, "accuracy": a}  # noqa: E731
    plain = [{"report": report(p, 0), "accuracy": a} for p, a in ((0.30, 0.95), (0.31, 0.951), (0.29, 0.949))]
    better = [
        {"report": report(p, 0), "accuracy": a} for p, a in ((0.60, 0.948), (0.62, 0.95), (0.58, 0.947))
    ]
    pointing, mass, accuracy = section.rows(plain, better, 0.3)
    assert pointing.replicated == "yes" and mass.replicated == "yes" and accuracy.replicated == "yes"
    assert "weight 0.3," in pointing.claim
    dropped = [{**r, "accuracy": r["accuracy"] - 0.2} for r in better]
    assert section.rows(plain, dropped, 0.3)[2].replicated == "no"
    assert section.rows(plain, plain, 0.3)[0].replicated == "no"  # no change is not a move


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rrr")
    cfg = fidelity_config.get_config("tiny")
    cfg.fidelity.sections = "explanation_loss"
    log = []
    result = fidelity.run_fidelity(cfg, str(root / "run"), progress=log.append)
    return cfg, root / "run", result, log


@pytest.mark.slow
def test_both_arms_start_from_the_shared_cnn_and_only_rrr_trains_the_penalty(tiny_run):
    cfg, run, result, _ = tiny_run
    s = result["sections"]["explanation_loss"]
    assert [r.paper for r in s.rows] == ["RRR"] * 3 and "held-out" in s.body
    chosen = float(s.rows[0].claim.split("weight ")[1].split(",")[0])
    assert chosen in (0.3, 1.0)
    arm = lambda w: run / "explanation_loss" / f"w{w:g}" / "seed1"  # noqa: E731
    with open(arm(chosen) / "result.json") as f:
        rrr = json.load(f)
    logged = lambda w: [json.loads(line) for line in open(arm(w) / "metrics.jsonl")]  # noqa: E731
    assert not any("loss/rrr" in r for r in logged(0))
    assert all(r["loss/rrr"] > 0 for r in logged(chosen) if r["split"] == "train")
    n, m = int(cfg.evaluate.num_images), int(cfg.fidelity.rrr_select_images)
    test = train.load_split(cfg.data, "test", int(cfg.data.test_size))
    model = train.restore_model(fidelity.pretrain_config(cfg), str(run / "base"))[0]
    right = train.predict(model, train.restore_variables(str(arm(chosen))), test["image"]) == test["label"]
    assert rrr["accuracy"] == pytest.approx(np.r_[right[:n], right[n + m :]].mean())  # held-out ones left out
    assert rrr["select"]["accuracy"] == pytest.approx(right[n : n + m].mean())
    base = train.restore_variables(str(run / "base"))["params"]
    tuned = train.restore_variables(str(arm(0)))["params"]
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
        *(jax.tree.leaves(p) for p in (base, tuned)), strict=True)]  # fmt: skip
    assert 0 < max(moved) < 1.0  # continued from the shared CNN, not from a fresh init
    assert os.path.getsize(run / "explanation_loss" / s.figures[0]) > 1000
    assert n + m <= int(cfg.data.test_size)


@pytest.mark.slow
def test_a_second_call_trains_nothing(tiny_run):
    cfg, run, result, _ = tiny_run
    log = []
    again = fidelity.run_fidelity(cfg, str(run), progress=log.append)
    assert not any("steps" in line and "explanation_loss" in line for line in log)
    assert again["sections"]["explanation_loss"].rows == result["sections"]["explanation_loss"].rows


def test_bad_weights_and_too_few_test_images_are_refused(tiny_fidelity_model, tmp_path):
    cfg, model, variables = tiny_fidelity_model
    data = {"image": np.zeros((8, 32, 32, 3), np.float32), "label": np.zeros(8, np.int32)}
    ctx = fidelity.Context(cfg, str(tmp_path), model, variables, data, lambda split, n: data, str(tmp_path))
    with pytest.raises(ValueError, match="rrr_select_images"):
        section.Images(ctx)
    cfg = cfg.copy_and_resolve_references()
    cfg.fidelity.rrr_weights = "0,1"
    ctx.config = cfg
    with pytest.raises(ValueError, match="rrr_weights"):
        section.run(ctx)
