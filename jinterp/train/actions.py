"""Periodic actions of the training loop: each is ``action(step, state, metrics) -> state``, run after
every step, acting when its period comes round (logging, the wall-clock budget, evaluation, checkpoints).

``Run`` is the loop's bookkeeping the actions share: the schedule length (a budget may shorten it), the
step the run started at, whether it resumed, and the timing of the first (compiling) step.
"""

import dataclasses
import json
import os
import time

import jax
import numpy as np

from jinterp import progress
from jinterp.train import state as state_lib


@dataclasses.dataclass
class Run:
    total: int  # schedule length: the loop ends there
    start: int  # step the run (re)started at
    resumed: bool
    t_start: float  # wall clock at process start (a budget counts from there)
    compile_s: float | None = None
    steps_per_s: float | None = None
    t_loop: float | None = None  # wall clock after the first (compiling) step
    t_step: float = 0.0  # wall clock when the current step was dispatched
    step_at_loop: int = 0


def jsonable(x):
    """Numbers and arrays of a (nested) dict as plain JSON values."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray | np.generic | jax.Array):
        arr = np.asarray(x)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return x


class MetricsWriter:
    """Appends JSON lines to ``<workdir>/metrics.jsonl`` (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(jsonable(record)) + "\n")


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Times the first step (compile), then every ``every`` steps and at the end: the mean of the train
    metrics to ``metrics.jsonl`` and one progress line (loss, accuracy, steps/s, ETA) to ``log``."""

    def __init__(self, run: Run, writer: MetricsWriter, every: int, log):
        self.run, self.writer, self.every, self.log = run, writer, every, log
        self.pending = []

    def __call__(self, step: int, state, metrics):
        run = self.run
        self.pending.append(metrics)
        if run.compile_s is None:
            jax.block_until_ready(state.step)
            run.t_loop = time.time()
            run.compile_s, run.step_at_loop = run.t_loop - run.t_step, step
        if step % self.every == 0 or step == run.total:
            self._report(step)
        return state

    def _report(self, step: int) -> None:
        run, host = self.run, jax.device_get(self.pending)
        mean = {k: _finite_mean([m[k] for m in host]) for k in host[0]}
        self.pending = []
        elapsed = time.time() - run.t_loop
        rate = (
            (step - run.step_at_loop) / elapsed if elapsed > 0 and step > run.step_at_loop else float("nan")
        )
        run.steps_per_s = rate
        self.writer.write({"step": step, "split": "train", "steps_per_s": rate, **mean})
        eta = format_duration((run.total - step) / rate) if rate == rate and rate > 0 else "?"
        progress.write(
            f"step {step}/{run.total} loss {np.mean(mean['loss']):.4f} acc {np.mean(mean['accuracy']):.3f} "
            f"{rate:.2f} steps/s ETA {eta}",
            self.log,
        )


class StepBar:
    """A bar over the run's steps (:mod:`jinterp.progress`: drawn only when ``log`` is a terminal);
    follows the total when a time budget shortens the run."""

    def __init__(self, run: Run, log):
        self.run = run
        self.bar = progress.bar(total=run.total, desc="train", unit="step", initial=run.start, file=log)

    def __call__(self, step: int, state, metrics):
        if self.bar.total != self.run.total:
            self.bar.total = self.run.total
        self.bar.update(1)
        if step >= self.run.total:
            self.bar.close()
        return state


def _finite_mean(values) -> np.ndarray:
    """Mean over steps of the finite values (skipped non-finite steps left out; NaN if none is finite)."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    return np.where(ok.any(0), np.where(ok, v, 0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)


class Budget:
    """Wall-clock budget: after ``calibrate`` timed steps fix the schedule length to what fits in
    ``budget - reserve`` seconds from process start, and shorten it again at every ``every``-th step if the
    machine got slower (only ever shorter: the cosine end moves closer). Off for resumed runs, whose
    length the first run fixed."""

    def __init__(self, run: Run, budget: float, reserve: float, calibrate: int, every: int, log):
        self.run, self.budget, self.reserve = run, budget, reserve
        self.calibrate, self.every, self.log = calibrate, every, log

    def __call__(self, step: int, state, metrics):
        run = self.run
        timed = step - run.step_at_loop
        if run.t_loop is None or timed < self.calibrate or (timed > self.calibrate and step % self.every):
            return state
        jax.block_until_ready(state.step)
        rate = timed / (time.time() - run.t_loop)
        affordable = step + int(rate * (run.t_start + self.budget - self.reserve - time.time()))
        affordable = max(affordable, step + 1)
        if affordable >= run.total:
            return state
        run.total = affordable
        print(
            f"time budget {self.budget:.0f}s at {rate:.2f} steps/s: training {run.total} steps", file=self.log
        )
        return state_lib.with_total_steps(state, run.total)


class PeriodicEval:
    """Accuracy and loss on ``split`` every ``every`` steps (not at the end: the loop evaluates there)."""

    def __init__(self, run: Run, trainer, data, split: str, every: int, writer: MetricsWriter):
        self.run, self.trainer, self.data, self.split = run, trainer, data, split
        self.every, self.writer = every, writer

    def __call__(self, step: int, state, metrics):
        if step % self.every == 0 and step < self.run.total:
            self.writer.write(
                {"step": step, "split": self.split, **self.trainer.evaluate(state, self.data, self.split)}
            )
        return state


class Checkpointing:
    """Save every ``every`` steps (0: only at the end) and at the last step."""

    def __init__(self, run: Run, checkpoints, every: int, meta: dict):
        self.run, self.checkpoints, self.every, self.meta = run, checkpoints, every, meta

    def __call__(self, step: int, state, metrics):
        if (self.every and step % self.every == 0) or step == self.run.total:
            self.checkpoints.save(step, state, self.meta)
        return state


class NonFiniteLossError(ValueError):
    """Training stopped at a step whose loss, gradients or update were NaN / inf."""


class NonFiniteGuard:
    """Watches ``metrics["nonfinite"]`` (the step function skips such an update, see
    :func:`jinterp.train.step.make_train_step`) without a sync per step: the flags are read at the steps
    where the loop syncs anyway (every ``log_every``-th, every checkpoint step, the last), and before the
    checkpoint of that step is written, so a non-finite state is never saved.

    ``policy="stop"``: raise :class:`NonFiniteLossError` with one line naming the first such step, its
    loss terms and the last good checkpoint (kept). ``"skip"``: go on without those batches (one line
    says which were skipped); stop as for "stop" only if every step since the last check was skipped
    (the run diverged: no batch gives a finite update any more).
    """

    def __init__(self, run: Run, policy: str, every: int, checkpoint_every: int, checkpoints, log):
        self.run, self.policy, self.every, self.checkpoint_every = run, policy, every, checkpoint_every
        self.checkpoints, self.log = checkpoints, log
        self.pending = []  # (step, metrics) since the last check, still on device

    def __call__(self, step: int, state, metrics):
        self.pending.append((step, metrics))
        due = step % self.every == 0 or step == self.run.total
        if due or (self.checkpoint_every and step % self.checkpoint_every == 0):
            self._check()
        return state

    def _check(self) -> None:
        pending, self.pending = self.pending, []
        flags = jax.device_get([m["nonfinite"] for _, m in pending])
        bad = [i for i, f in enumerate(flags) if np.any(np.asarray(f) > 0)]
        if not bad:
            return
        steps = [pending[i][0] for i in bad]
        if self.policy == "skip" and len(bad) < len(pending):
            print(
                f"train: skipped {len(bad)} batch(es) with a non-finite loss, at steps {steps}", file=self.log
            )
            return
        step, metrics = pending[bad[0]]
        terms = ", ".join(f"{k}={_short(v)}" for k, v in jax.device_get(metrics).items() if k != "nonfinite")
        latest = self.checkpoints.latest_step()
        kept = f"{self.checkpoints.directory}/{latest} (kept)" if latest is not None else "none saved yet"
        why = "" if self.policy == "stop" else f"; every step from {pending[0][0]} to {pending[-1][0]} was"
        raise NonFiniteLossError(
            f"train: non-finite loss at step {step}{why} ({terms}); stopped (train.nan_policy="
            f"{self.policy!r}); last good checkpoint: {kept}"
        )


def _short(value) -> str:
    arr = np.asarray(value)
    return f"{arr.item():.4g}" if arr.size == 1 else np.array2string(arr, precision=4, separator=",")
