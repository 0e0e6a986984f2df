"""JAX's persistent compilation cache, enabled by ``import jinterp`` (``jinterp.compilation_cache``)."""

import json
import os
import subprocess
import sys

# Prints the cache settings jax ends up with and how many compilations the persistent cache served.
PROBE = """
import json, jax, jinterp
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
jax.jit(lambda x: jax.numpy.tanh(x) @ x.T)(jax.numpy.ones((8, 8))).block_until_ready()
c = jax.config
print(json.dumps({"dir": c.jax_compilation_cache_dir, "min_s": c.jax_persistent_cache_min_compile_time_secs,
                  "min_bytes": c.jax_persistent_cache_min_entry_size_bytes,
                  "hits": hits.count("/jax/compilation_cache/cache_hits")}))
"""
JAX_FIRST = "import jax\n" + PROBE


def _run(code, **env):
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JINTERP_", "JAX_COMPILATION", "JAX_PERSISTENT"))
    }
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code], env={**clean, **env},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    first = _run(PROBE, JINTERP_CACHE_DIR=str(tmp_path))
    assert first["dir"] == str(tmp_path / "xla") and first["min_s"] == 0 and first["min_bytes"] == -1
    assert first["hits"] == 0 and len(os.listdir(tmp_path / "xla")) > 0
    assert _run(PROBE, JINTERP_CACHE_DIR=str(tmp_path))["hits"] > 0


def test_set_after_jax_was_imported(tmp_path):
    _run(JAX_FIRST, JINTERP_CACHE_DIR=str(tmp_path))
    assert _run(JAX_FIRST, JINTERP_CACHE_DIR=str(tmp_path))["hits"] > 0


def test_opt_out_and_the_users_directory_win(tmp_path):
    off = _run(PROBE, JINTERP_CACHE_DIR=str(tmp_path), JINTERP_COMPILATION_CACHE="0")
    assert off["dir"] is None and not (tmp_path / "xla").exists()
    mine = _run(PROBE, JINTERP_CACHE_DIR=str(tmp_path / "a"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "b"))
    assert mine["dir"] == str(tmp_path / "b") and not (tmp_path / "a").exists()


def test_unwritable_directory_leaves_the_cache_off_without_warnings(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _run(PROBE, JINTERP_CACHE_DIR=str(blocker))["dir"] is None  # -W error: no warning either


def test_a_child_process_applies_its_own_settings(tmp_path):
    """``import jinterp`` (before jax) sets jax's variables; a child inheriting them still follows
    its own JINTERP_CACHE_DIR / opt-out (pytest-xdist workers get their directory this way)."""
    spawn = (
        "import os, subprocess, sys, jinterp\n"
        "env = {**os.environ, **dict(a.split('=', 1) for a in sys.argv[1:])}\n"
        "print(subprocess.run([sys.executable, '-c', sys.stdin.read()], env=env, capture_output=True,"
        " text=True, check=True).stdout)"
    )  # fmt: skip

    def child(**env):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("JINTERP_", "JAX_"))}
        args = [f"{k}={v}" for k, v in env.items()]
        result = subprocess.run(
            [sys.executable, "-c", spawn, *args], input=PROBE, capture_output=True, text=True, check=True,
            env={**clean, "JINTERP_CACHE_DIR": str(tmp_path / "parent")},
        )  # fmt: skip
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert child(JINTERP_CACHE_DIR=str(tmp_path / "child"))["dir"] == str(tmp_path / "child" / "xla")
    assert child(JINTERP_COMPILATION_CACHE="0")["dir"] is None
