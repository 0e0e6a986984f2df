"""The whole job: train (resuming from the workdir's last checkpoint), evaluate, write the summary.

>>> summary = train_and_evaluate(config, workdir)    # what ``launch.py --mode train`` runs
>>> model, variables, step = restore_model(config, workdir)

Data order is a pure function of ``(config.data.seed, step)`` and per-step randomness is
``fold_in(state.rng, step)``, so a resumed run sees exactly what an uninterrupted run would.
"""

import io
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from jinterp.data import feed
from jinterp.train import actions, parallel
from jinterp.train import state as state_lib
from jinterp.train.checkpoint import Checkpoints, restore_variables
from jinterp.train.config import check_workdir, total_steps, validate_config
from jinterp.train.trainer import Trainer


def train_and_evaluate(config, workdir: str, *, points=None, data: feed.Data | None = None, log=None):
    """Train (resuming from ``workdir`` if it holds a checkpoint), evaluate, write ``summary.json``.

    Args:
      config: run config. workdir: output directory (``checkpoints/``, ``metrics.jsonl``, ``summary.json``).
      points: numeric sweep points trained together (see :class:`Trainer`); the summary then has one
        entry per point under ``"points"``.
      data: the data (default ``feed.Data(config.data)`` over ``jinterp.data.load``).
      log: stream for the progress lines (default: ``sys.stderr`` at the time of the call).

    Returns:
      the summary dict written to ``workdir/summary.json``, plus the final ``state``.
    """
    t_start = time.time()
    validate_config(config)
    workdir = check_workdir(workdir)
    parallel.initialize(config)
    log = log or sys.stderr  # bound at call time (a default bound at import outlives its stream)
    log = log if jax.process_index() == 0 else io.StringIO()  # one progress line per run, not per host
    data = data or feed.Data(config.data)
    trainer = Trainer(config, points=points)
    per_epoch = max(data.num_examples("train") // trainer.batch_size, 1)
    trainer.set_steps_per_epoch(per_epoch)
    checkpoints = Checkpoints(workdir, keep=int(config.train.keep_checkpoints), log=log)
    try:
        state, run = _start(trainer, checkpoints, total_steps(config, per_epoch), t_start)
        print(_describe(trainer, run, per_epoch), file=log)
        after_step = _actions(trainer, data, run, checkpoints, workdir, log)
        to_device = lambda b: feed.shard_batch(feed.image_label(b, trainer.batch_keys), trainer.mesh)
        hosts = (jax.process_index(), jax.process_count())
        batches = feed.prefetch(data.train(trainer.batch_size, run.start, *hosts), to_device)
        step = run.start
        while step < run.total:
            if step % per_epoch == 0:
                state = trainer.run_epoch_hooks(state, data, step // per_epoch)
            batch = next(batches)
            run.t_step = time.time()  # the first step's time is its compile time, batch loading excluded
            state, metrics = trainer.train_step(state, batch)
            step += 1
            for action in after_step:
                state = action(step, state, metrics)
    finally:
        checkpoints.close()
    return _finish(trainer, state, data, run, workdir, checkpoints.directory)


def _start(trainer: Trainer, checkpoints: Checkpoints, n_steps: int, t_start: float):
    """The restored state (its schedule length kept if a budget fixed it, else set to ``n_steps``) or a
    fresh one, and the loop's :class:`actions.Run`."""
    state = checkpoints.restore(trainer.abstract_state(n_steps), trainer.meta())
    if state is None:
        state = trainer.init_state(n_steps)
        if trainer.config.train.init_from:
            state = trainer.with_variables(state, restore_variables(trainer.config.train.init_from))
        return state, actions.Run(n_steps, 0, False, t_start)
    stored = int(np.asarray(jax.device_get(state.hparams["total_steps"])).ravel()[0])
    if trainer.config.train.time_budget_s:
        n_steps = stored  # a wall-clock budget fixed the length on the first run
    elif stored != n_steps:
        state = state_lib.with_total_steps(state, n_steps)
    start = int(np.asarray(jax.device_get(state.step)).ravel()[0])
    return state, actions.Run(n_steps, start, True, t_start)


def _describe(trainer: Trainer, run: actions.Run, per_epoch: int) -> str:
    points = f", {len(trainer.points)} vmapped sweep points" if trainer.points else ""
    return (
        f"{f'resuming from step {run.start}' if run.resumed else 'starting'}: {trainer.config.model.name}, "
        f"{run.total} steps ({per_epoch} per epoch), batch {trainer.batch_size} over "
        f"{trainer.mesh.devices.size} devices{points}"
    )


def _actions(trainer: Trainer, data, run: actions.Run, checkpoints: Checkpoints, workdir: str, log) -> list:
    cfg = trainer.config.train
    writer = actions.MetricsWriter(workdir)
    out = [actions.StepBar(run, log), actions.Progress(run, writer, int(cfg.log_every), log)]
    if cfg.time_budget_s and not run.resumed:
        out.append(
            actions.Budget(
                run, cfg.time_budget_s, cfg.time_reserve_s, cfg.calibrate_steps, cfg.log_every, log
            )
        )
    if cfg.eval_every:
        out.append(actions.PeriodicEval(run, trainer, data, cfg.eval_split, int(cfg.eval_every), writer))
    policy, every = cfg.get("nan_policy", "stop"), int(cfg.checkpoint_every)
    out.append(actions.NonFiniteGuard(run, policy, int(cfg.log_every), every, checkpoints, log))
    out.append(actions.Checkpointing(run, checkpoints, every, trainer.meta()))
    return out


def _finish(trainer: Trainer, state, data, run: actions.Run, workdir: str, checkpoint_dir: str) -> dict:
    """Evaluate the final state, write the test line and ``summary.json`` (process 0)."""
    split = trainer.config.train.eval_split
    ev = trainer.evaluate(state, data, split)
    actions.MetricsWriter(workdir).write({"step": run.total, "split": split, **ev})
    summary = {
        "step": run.total,
        "model": trainer.config.model.name,
        "test_accuracy": ev["accuracy"],
        "test_loss": ev["loss"],
        "compile_s": run.compile_s,
        "steps_per_s": run.steps_per_s,
        "wall_s": time.time() - run.t_start,
        "resumed": run.resumed,
        "checkpoint": os.path.join(checkpoint_dir, str(run.total)),
    }
    if trainer.points is not None:
        per_point = zip(trainer.points, np.atleast_1d(ev["accuracy"]), np.atleast_1d(ev["loss"]), strict=True)
        summary["points"] = [
            {**p, "test_accuracy": float(a), "test_loss": float(lo)} for p, a, lo in per_point
        ]
    summary = actions.jsonable(summary)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return {**summary, "state": state}


def restore_model(config: ml_collections.ConfigDict, workdir: str) -> tuple:
    """``(model, variables, step)`` of the latest checkpoint in ``workdir`` (for evaluation/explanation).

    Raises:
      ValueError: no checkpoint in ``workdir``; IncompatibleCheckpointError: written by another model.
    """
    trainer = Trainer(config)
    checkpoints = Checkpoints(workdir, keep=int(config.train.keep_checkpoints))
    try:
        if checkpoints.latest_step() is None:
            raise ValueError(
                f"--workdir: no checkpoint in {checkpoints.directory}; train first (--mode train)"
            )
        state = checkpoints.restore(trainer.abstract_state(), trainer.meta())
    finally:
        checkpoints.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return trainer.model, jax.device_get(variables), int(state.step)


def predict(model, variables: dict, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted class of each image (eval mode), in batches of ``batch_size``."""
    apply = jax.jit(lambda x: model.apply(variables, x)[0].argmax(-1))
    chunks = [np.asarray(apply(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks)
