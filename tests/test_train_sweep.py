"""Sweeps: a vmapped numeric sweep equals the same points trained one after another; tables written."""

import csv
import json

import jax
import numpy as np
import pytest

from jinterp import sweep, train
from tests.test_train import MemoryData, _assert_trees_close, tiny_config


def _sweep(add):
    add(**{"optimizer.lr": 1e-2, "seed": 0})
    add(**{"optimizer.lr": 3e-3, "seed": 1, "optimizer.weight_decay": 0.0})


@pytest.mark.slow
def test_numeric_sweep_in_one_program_equals_sequential_runs(tmp_path):
    """vmap and lax.map sweeps both reproduce the points trained one after another."""
    overrides = {"train.steps": 5, "train.checkpoint_every": 0, "train.log_every": 5}
    cfg = tiny_config(**overrides, **{"train.sweep_strategy": "vmap"})
    src = MemoryData()
    rows = sweep.run_sweep(cfg, _sweep, str(tmp_path / "m"), data=src.data(cfg.data))
    assert all(r["vmapped"] for r in rows) and len(rows) == 2
    points = sweep.collect_points(_sweep)
    stacked = train.train_and_evaluate(
        cfg, str(tmp_path / "m" / "vmapped"), points=points, data=src.data(cfg.data)
    )
    assert stacked["resumed"] and stacked["state"].params["fc"]["kernel"].shape[0] == 2  # finished checkpoint
    cfg_v = tiny_config(**overrides, **{"train.sweep_strategy": "map"})
    vmapped = train.train_and_evaluate(cfg_v, str(tmp_path / "v"), points=points, data=src.data(cfg.data))
    _assert_trees_close(
        jax.device_get(stacked["state"].params), jax.device_get(vmapped["state"].params), 1e-5
    )
    # The second point (other lr, weight decay and seed) trained on its own.
    one = train.train_and_evaluate(
        apply := sweep.apply_overrides(cfg, points[1]), str(tmp_path / "one"), data=src.data(apply.data)
    )
    second = jax.tree.map(lambda x: np.asarray(x)[1], jax.device_get(stacked["state"].params))
    _assert_trees_close(second, jax.device_get(one["state"].params), 1e-5)
    assert rows[1]["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1e-6)
    assert json.load(open(f"{rows[1]['workdir']}/summary.json"))["overrides"] == points[1]
    table = list(csv.DictReader(open(tmp_path / "m" / "sweep.csv")))
    assert [float(r["optimizer.lr"]) for r in table] == [1e-2, 3e-3]
    md = open(tmp_path / "m" / "sweep.md").read().splitlines()
    assert md[0].startswith("| optimizer.lr | seed |") and len(md) == 4


@pytest.mark.slow
def test_non_numeric_sweep_runs_sequentially(tmp_path):
    cfg = tiny_config(**{"train.steps": 2, "train.checkpoint_every": 0, "train.log_every": 2})

    def grid(add):
        add(**{"schedule.name": "constant"})
        add(**{"schedule.name": "warmup_cosine"})

    rows = sweep.run_sweep(cfg, grid, str(tmp_path), data=MemoryData().data(cfg.data))
    assert [r["vmapped"] for r in rows] == [False, False]
    assert [json.load(open(f"{r['workdir']}/summary.json"))["step"] for r in rows] == [2, 2]


def test_auto_strategy_runs_numeric_sweeps_sequentially_on_cpu():
    assert jax.default_backend() == "cpu"
    assert train.resolve_sweep_strategy(tiny_config()) == "sequential"
    assert train.resolve_sweep_strategy(tiny_config(**{"train.sweep_strategy": "vmap"})) == "vmap"


def test_sweep_rejects_unknown_keys_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'optimizer.learning_rate'"):
        sweep.run_sweep(tiny_config(), lambda add: add(**{"optimizer.learning_rate": 1.0}), str(tmp_path))
    assert not (tmp_path / "sweep.csv").exists()
    assert train.is_vmappable("losses.hiccnn.hier_weight") and not train.is_vmappable("losses.hiccnn.layer")


def test_sweep_shards_train_their_points_and_merge_into_one_table(tmp_path):
    """Two independent jobs (shards 0/2 and 1/2) over one workdir give the table of the whole sweep."""
    cfg = tiny_config(**{"train.steps": 2, "train.checkpoint_every": 0, "train.log_every": 2})

    def grid(add):
        for lr in (1e-2, 3e-3, 1e-3):
            add(**{"optimizer.lr": lr})

    first = sweep.run_sweep(cfg, grid, str(tmp_path), shard="1/2", data=MemoryData().data(cfg.data))
    assert [r["optimizer.lr"] for r in first] == [3e-3] and not (tmp_path / "sweep.md").exists()
    rows = sweep.run_sweep(cfg, grid, str(tmp_path), shard=(0, 2), data=MemoryData().data(cfg.data))
    assert [r["optimizer.lr"] for r in rows] == [1e-2, 3e-3, 1e-3]
    assert [r["workdir"].rsplit("/", 1)[1][:3] for r in rows] == ["000", "001", "002"]
    assert len(open(tmp_path / "sweep.md").read().splitlines()) == 2 + 3
    for bad in ("2/2", "1", (0, 0), "a/b"):
        with pytest.raises(ValueError, match="--sweep_shard: expected i/n"):
            sweep.run_sweep(cfg, grid, str(tmp_path), shard=bad)
