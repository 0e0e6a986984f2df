"""jinterp's XLA:CPU defaults: applied at import before jax's backend exists, never over the user's."""

import os
import subprocess
import sys

import pytest

from jinterp import xla_cpu

PROBE = "import os, jax, jinterp; jax.numpy.ones(1).block_until_ready(); print(os.environ.get('XLA_FLAGS'))"


def _run(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JINTERP_KEEP_XLA_FLAGS")}
    return subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code], env={**clean, **env},
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, xla_cpu.YNN_FLAG),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
         f"--xla_force_host_platform_device_count=2 {xla_cpu.YNN_FLAG}"),
        ({"XLA_FLAGS": f"{xla_cpu.YNN_FLAG}+dot"}, f"{xla_cpu.YNN_FLAG}+dot"),
        ({"JINTERP_KEEP_XLA_FLAGS": "1"}, "None"),
    ],
)  # fmt: skip
def test_flag_is_appended_unless_the_user_chose(env, expected):
    result = _run(PROBE, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_other_flags_survive():
    # (XLA aborts on an unknown flag, so the probes above passing also shows this XLA knows ours)
    code = "import jinterp, jax; print(len(jax.devices()))"
    result = _run(code, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_backend_created_first_warns_and_leaves_flags():
    late = "import jax; jax.numpy.ones(1).block_until_ready(); import jinterp"
    result = _run(late)
    assert result.returncode != 0 and "backend was created before jinterp" in result.stderr
    quiet = _run(late, JINTERP_KEEP_XLA_FLAGS="1")
    assert quiet.returncode == 0, quiet.stderr
