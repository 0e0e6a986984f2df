"""Multi-host training on JAX's own distributed runtime, run for real: two local processes with two
fake CPU devices each (gloo collectives, coordinator on 127.0.0.1) train the same tiny config as the
one-process, four-device run of ``tests/test_train.py``; then both hosts are SIGKILLed after a
checkpoint and the job resumes from it. Parameters must agree to 1e-5 every time."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.test_train import full_run  # noqa: F401  (fixture: the 1-process x 4-device reference)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, out, stall_at=None):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = [str(a) for a in (port, workdir, out, *([stall_at] if stall_at is not None else []))]
    cmd = lambda pid: [sys.executable, "-m", "tests.multiprocess_worker", str(pid), *args]
    return [
        subprocess.Popen(
            cmd(pid), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for pid in (0, 1)
    ]


def _finish(procs, timeout=240) -> list[str]:
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        errors.append(err)
    return errors


def _params_close(npz_path, summary, atol=1e-5):
    got = dict(np.load(npz_path))
    want = jax.tree_util.tree_leaves_with_path(jax.device_get(summary["state"].params))
    assert sorted(got) == sorted(jax.tree_util.keystr(p) for p, _ in want)
    worst = max(float(np.abs(got[jax.tree_util.keystr(p)] - np.asarray(x)).max()) for p, x in want)
    assert worst <= atol, worst


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_a_kill(full_run, tmp_path):  # noqa: F811
    reference = full_run[2]
    _finish(_start(tmp_path / "run", tmp_path / "a.npz"))
    _params_close(tmp_path / "a.npz", reference)
    # Both hosts hang on the batch of step 8, after the step-6 checkpoint: SIGKILL them there.
    procs = _start(tmp_path / "killed", tmp_path / "unused.npz", stall_at=7)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoints" / "6").is_dir():
        assert time.time() < deadline and all(p.poll() is None for p in procs), "no step-6 checkpoint"
        time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (tmp_path / "unused.npz").exists()
    err0, _ = _finish(_start(tmp_path / "killed", tmp_path / "b.npz"))
    assert "resuming from step 6" in err0
    _params_close(tmp_path / "b.npz", reference)
