"""Hyper-parameter sweeps: a ``sweep(add)`` function in the config lists override sets; run them all.

>>> def sweep(add):                                  # in a config file (big_vision style)
...     for lr in (1e-3, 3e-3):
...         for seed in (0, 1):
...             add(**{"optimizer.lr": lr, "seed": seed})
>>> rows = run_sweep(config, sweep, workdir)          # one sub-workdir per point + sweep.csv / sweep.md

When every override is a number that lives in the train state (:func:`jinterp.train.is_vmappable`:
``seed``, ``optimizer.lr``, ``optimizer.weight_decay``, ``optimizer.momentum``, loss weights
``losses.<name>.<weight field>``), all points train together in ONE compiled program: the state gets a
leading axis (``optax.inject_hyperparams`` keeps the optimiser numbers in the state) and the train step
runs over it with ``jax.vmap`` (``config.train.sweep_strategy``: ``auto`` = vmap on accelerators; on
XLA:CPU vmapped convolutions ran 0.45x as fast per step as separate runs, so ``auto`` runs the points one
after another there; measurements in ``jinterp.train.resolve_sweep_strategy``).
Every point sees the same batches (``config.data.seed``); ``seed`` changes initialisation and dropout
only. Other overrides (model, data, schedule shape, batch size) run one after another, each in its own
workdir.

Sweeps at scale: ``shard=(i, n)`` (``launch.py --mode sweep --sweep_shard=i/n``) trains the points
``i, i + n, i + 2n, ...`` only, so n independent jobs (machines, accelerators, queue slots) share a sweep
over one workdir; each writes ``sweep-shard-i-of-n.json`` and the job that completes the set writes
the merged ``sweep.csv`` / ``sweep.md`` in point order (``merge_shards`` redoes it at any time).
"""

import copy
import csv
import inspect
import json
import os
import sys
from collections.abc import Callable

import ml_collections

from jinterp import progress, train
from jinterp.ops import markdown_table


def collect_points(sweep_fn: Callable, arg: str | None = None) -> list[dict]:
    """The override dicts ``sweep_fn(add)`` (or ``sweep_fn(add, arg)`` if it takes two) adds, in order."""
    points = []
    add = lambda **overrides: points.append(dict(overrides))
    takes_arg = len(inspect.signature(sweep_fn).parameters) >= 2
    sweep_fn(add, arg) if takes_arg else sweep_fn(add)
    if not points:
        raise ValueError("sweep: the config's sweep(add) added no points")
    return points


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted-path overrides; unknown keys / wrong types raise ValueError."""
    config = copy.deepcopy(config)
    config.lock()  # an unknown key raises instead of being added
    for path, value in overrides.items():
        try:
            config.update_from_flattened_dict({path: value})
        except (KeyError, AttributeError):
            raise ValueError(f"sweep point: unknown config key {path!r}") from None
        except TypeError as e:
            raise ValueError(f"sweep point: {path}={value!r}: {e}") from None
    config.unlock()
    return config


def _slug(point: dict) -> str:
    text = "_".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "=._-" else "-" for c in text)[:80]


def run_sweep(
    config: ml_collections.ConfigDict,
    sweep_fn: Callable,
    workdir: str,
    *,
    arg: str | None = None,
    vmap: bool = True,
    shard: tuple[int, int] = (0, 1),
    data=None,
    log=sys.stderr,
) -> list[dict]:
    """Train every point of ``sweep_fn``; write ``sweep.csv`` / ``sweep.md`` in ``workdir``.

    Args:
      config: the base config (after command-line overrides). sweep_fn: the config's ``sweep``.
      workdir: root; point ``i`` writes to ``<workdir>/<i>_<overrides>``, a vmapped group trains in
        ``<workdir>/vmapped`` and then writes each point's ``summary.json`` into its own directory.
      arg: the config argument (``configs/x.py:arg``), passed on to ``sweep_fn`` if it takes one.
      vmap: train numeric-only sweeps as one program (``config.train.sweep_strategy`` vmap / map; False or
        ``sequential``: always one after another).
      shard: ``(i, n)``: train only the points whose index is ``i`` modulo ``n`` (see the module doc).
      data: optional ``jinterp.data.feed.Data`` (tests).

    Returns:
      one row per point: its overrides, ``test_accuracy``, ``test_loss``, ``workdir``, ``vmapped``.
    """
    train.parallel.initialize(config)  # before resolve_sweep_strategy asks for the backend
    workdir = train.check_workdir(workdir)
    index, count = check_shard(shard)
    points = collect_points(sweep_fn, arg)
    for p in points:
        apply_overrides(config, p)  # validate every point before training any
    mine = list(range(index, len(points), count))
    dirs = {i: os.path.join(workdir, f"{i:03d}_{_slug(points[i])}") for i in mine}
    numeric = all(train.is_vmappable(k) for p in points for k in p)
    stacked = vmap and numeric and len(mine) > 1 and train.resolve_sweep_strategy(config) != "sequential"
    train_points = _train_stacked if stacked else _train_one_by_one
    rows = train_points(config, points, mine, dirs, workdir, data, log, (index, count))
    with open(os.path.join(workdir, f"sweep-shard-{index}-of-{count}.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return merge_shards(workdir, count) or rows


def check_shard(shard) -> tuple[int, int]:
    """``(i, n)`` from a pair or an ``"i/n"`` string, with ``0 <= i < n``."""
    try:
        index, count = (int(x) for x in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"--sweep_shard: expected i/n with 0 <= i < n, got {shard!r}")
    return index, count


def _train_stacked(config, points, mine, dirs, workdir, data, log, shard) -> list[dict]:
    """The numeric points ``mine`` trained as one program, then one ``summary.json`` per point."""
    print(f"sweep: {len(mine)} numeric points, trained as one program over all points", file=log)
    group = "vmapped" if shard[1] == 1 else f"vmapped-shard-{shard[0]}-of-{shard[1]}"
    own = [points[i] for i in mine]
    summary = train.train_and_evaluate(config, os.path.join(workdir, group), points=own, data=data, log=log)
    rows = []
    for j, i in enumerate(mine):
        os.makedirs(dirs[i], exist_ok=True)
        point_summary = {k: v for k, v in summary.items() if k not in ("state", "points")}
        point_summary.update(summary["points"][j], point_index=i, overrides=points[i])
        with open(os.path.join(dirs[i], "summary.json"), "w") as f:
            json.dump(point_summary, f, indent=2)
        rows.append(_row(i, points[i], point_summary, dirs[i], True))
    return rows


def _train_one_by_one(config, points, mine, dirs, workdir, data, log, shard) -> list[dict]:
    rows = []
    for i in progress.bar(mine, desc="sweep", unit="point", file=log):
        progress.write(f"sweep: point {i + 1}/{len(points)} {points[i]}", log)
        summary = train.train_and_evaluate(apply_overrides(config, points[i]), dirs[i], data=data, log=log)
        rows.append(_row(i, points[i], summary, dirs[i], False))
    return rows


def _row(index: int, point: dict, summary: dict, workdir: str, vmapped: bool) -> dict:
    return {**point, "test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"],
            "workdir": workdir, "vmapped": vmapped, "point": index}  # fmt: skip


def merge_shards(workdir: str, count: int) -> list[dict] | None:
    """All rows of the ``count`` shards in point order, written to ``sweep.csv`` / ``sweep.md``; None
    (nothing written) while a shard's ``sweep-shard-i-of-n.json`` is still missing."""
    paths = [os.path.join(workdir, f"sweep-shard-{i}-of-{count}.json") for i in range(count)]
    if not all(os.path.exists(p) for p in paths):
        return None
    rows = sorted((r for p in paths for r in json.load(open(p))), key=lambda r: r["point"])
    rows = [{k: v for k, v in r.items() if k != "point"} for r in rows]
    write_table(rows, workdir)
    return rows


def write_table(rows: list[dict], workdir: str) -> tuple[str, str]:
    """``sweep.csv`` and ``sweep.md`` (one row per point, columns = union of keys in first-seen order)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path, md_path = os.path.join(workdir, "sweep.csv"), os.path.join(workdir, "sweep.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(columns, [[r.get(c) for c in columns] for r in rows], fmt=".4f", missing="")
    with open(md_path, "w") as f:
        f.write(table + "\n")
    return csv_path, md_path
