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
        mean = {k: np.mean([m[k] for m in host], axis=0) for k in host[0]}
        self.pending = []
        elapsed = time.time() - run.t_loop
        rate = (
            (step - run.step_at_loop) / elapsed if elapsed > 0 and step > run.step_at_loop else float("nan")
        )
        run.steps_per_s = rate
        self.writer.write({"step": step, "split": "train", "steps_per_s": rate, **mean})
        eta = format_duration((run.total - step) / rate) if rate == rate and rate > 0 else "?"
        print(
            f"step {step}/{run.total} loss {np.mean(mean['loss']):.4f} acc {np.mean(mean['accuracy']):.3f} "
            f"{rate:.2f} steps/s ETA {eta}",
            file=self.log,
            flush=True,
        )


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
