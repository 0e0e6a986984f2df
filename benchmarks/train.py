"""Train-step speed: steps/s and compile time of a config, and a vmapped sweep vs. the same points in turn.

    python benchmarks/train.py --config quickstart --points 4 --steps 20

Uses random in-memory batches (the data pipeline is not timed). Sequential = one Trainer (one compiled
step) per point, as ``launch.py --sweep`` does for non-numeric sweeps; map / vmap = one Trainer whose
step runs over the stacked states of all points (``jinterp.train.over_points``). Prints times, never asserts.
"""

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jinterp import train  # noqa: E402


def _time(trainer, steps, batch):
    t0 = time.perf_counter()
    state = trainer.init_state(steps)
    jax.block_until_ready(state)
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, _ = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        state, _ = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    return t_init, t_first, (time.perf_counter() - t0) / max(steps - 1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quickstart", help="module in configs/")
    ap.add_argument("--arg", default=None)
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--num_classes", type=int, default=8)
    args = ap.parse_args()
    cfg = importlib.import_module(f"configs.{args.config}").get_config(args.arg)
    cfg.model.num_classes = args.num_classes
    b, s = cfg.train.batch_size, cfg.data.image_size
    rng = np.random.default_rng(0)
    host = {
        "image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
        "label": rng.integers(0, 8, b).astype(np.int32),
    }
    points = [
        {"optimizer.lr": float(lr), "seed": i} for i, lr in enumerate(np.geomspace(1e-3, 1e-2, args.points))
    ]
    print(
        f"{args.config}: {cfg.model.name} {s}px batch {b}, {jax.device_count()} device(s), {args.steps} steps"
    )

    seq = [0.0, 0.0, 0.0]
    for p in points:
        from jinterp import sweep

        trainer = train.Trainer(sweep.apply_overrides(cfg, p))
        batch = train.shard_batch(host, trainer.mesh)
        for i, t in enumerate(_time(trainer, args.steps, batch)):
            seq[i] += t
    seq_total = seq[0] + seq[1] + seq[2] * (args.steps - 1)
    print(
        f"single run: init {seq[0] / len(points):.2f}s, first step (compile) {seq[1] / len(points):.2f}s, "
        f"{1 / (seq[2] / len(points)):.2f} steps/s ({b / (seq[2] / len(points)):.0f} images/s)"
    )

    print(f"sequential, {len(points)} points: {seq_total:.1f}s ({seq[2]:.3f}s per step of all points)")
    for strategy in ("map", "vmap"):
        cfg.train.sweep_strategy = strategy
        trainer = train.Trainer(cfg, points=points)
        batch = train.shard_batch(host, trainer.mesh)
        v_init, v_first, v_step = _time(trainer, args.steps, batch)
        v_total = v_init + v_first + v_step * (args.steps - 1)
        print(
            f"{strategy:4s} sweep, {len(points)} points: {v_total:.1f}s ({v_step:.3f}s per step of all, "
            f"compile {v_first:.2f}s); speedup vs sequential {seq_total / v_total:.2f}x total, "
            f"{seq[2] / v_step:.2f}x per step"
        )


if __name__ == "__main__":
    main()
