"""Issue 19, command line: every failure is one ``error: ...`` line and exit status 2 (``--debug`` adds the
traceback); damaged checkpoints are skipped for the newest clean one, without asyncio noise.

``launch.execute`` (what ``launch.main`` runs once the flags are parsed) runs in this process on sklearn's
digits at 16 px; two subprocesses check the flag layer itself. The file costs one tiny training run plus
failures that stop during validation.
"""

import glob
import importlib
import os
import shutil
import subprocess
import sys

import pytest

import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "data.name": "digits",
    "data.image_size": 16,
    "data.num_classes": 10,
    "train.batch_size": 16,
    "train.steps": 6,
    "train.log_every": 3,
    "train.checkpoint_every": 3,
    "train.eval_batch_size": 64,
    "evaluate.methods": "grad_cam",
}


def config(arg="runlocal", **changes):
    """``configs/quickstart.py:<arg>`` with TINY and ``changes`` (``a__b`` for ``a.b``) applied."""
    module = importlib.import_module("configs.quickstart")
    c = module.get_config(arg)
    for path, value in {**TINY, **{k.replace("__", "."): v for k, v in changes.items()}}.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def cli(capfd, mode, get_config, workdir, debug=False):
    """``(exit status, stderr)`` of what ``launch.main`` runs after the flags: :func:`launch.execute`."""
    capfd.readouterr()
    rc = launch.execute(mode, get_config, str(workdir), debug)
    return rc, capfd.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli_run")
    assert launch.execute("train", config, str(workdir)) == 0
    return workdir


def _raises(exc):
    def get():
        raise exc

    return get


@pytest.mark.parametrize(
    "mode, get_config, message",
    [
        (
            "train",
            lambda: config(optimizer__lr=float("nan")),
            "error: config.optimizer.lr: expected a finite",
        ),
        ("train", lambda: config(train__nan_policy="maybe"), "error: config.train.nan_policy: unknown value"),
        ("explain", lambda: config(evaluate__methods="bogus"), "error: spec: unknown method 'bogus'"),
        ("evaluate", lambda: config(evaluate__methods="grad_cam(layer=5)"), "error: spec: option 'layer'"),
        ("train", lambda: config("foo=1"), "error: config argument: unknown key 'foo'"),
        ("train", lambda: config("backbone=nope"), "error: config argument: backbone expected one of"),
        ("train", _raises(OSError("disk\ngone")), "error: OSError: disk gone (rerun with --debug"),
    ],
)
def test_config_and_spec_errors_are_one_line(capfd, tmp_path, mode, get_config, message):
    rc, err = cli(capfd, mode, get_config, tmp_path)
    assert rc == 2
    assert message in _one_error_line(err)


def test_debug_shows_the_traceback(capfd, tmp_path):
    rc, err = cli(capfd, "explain", lambda: config(evaluate__methods="bogus"), tmp_path, debug=True)
    assert rc == 2 and "Traceback (most recent call last)" in err and "error: spec: unknown method" in err


def test_real_command_line_errors_are_one_line(tmp_path):
    """The flag layer itself (absl + config_flags), in one subprocess per case that parses no data."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    for args, message in [
        (
            ["--config", "configs/nonexistent.py"],
            "error: --config: no config file at 'configs/nonexistent.py'",
        ),
        (
            ["--config", "configs/quickstart.py:foo=1"],
            "Error whilst parsing config file: ValueError: config ",
        ),
    ]:
        cmd = [sys.executable, os.path.join(ROOT, "launch.py"), *args, "--workdir", str(tmp_path)]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and message in _one_error_line(r.stderr)


def _damage(workdir, how):
    for step in ("3", "6") if how.endswith("all") else ("6",):
        d = workdir / "checkpoints" / step
        if how.startswith("truncate"):
            for f in glob.glob(f"{d}/state/d/*") + glob.glob(f"{d}/state/ocdbt.process_0/d/*"):
                open(f, "r+b").truncate(10)
        elif how == "remove state":
            shutil.rmtree(d / "state")
        elif how == "garbage meta":
            (d / "meta" / "metadata").write_text("garbage")


@pytest.mark.parametrize("how", ["truncate", "remove state", "garbage meta"])
def test_explain_falls_back_to_the_newest_clean_checkpoint(capfd, trained, tmp_path, how):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    _damage(workdir, how)
    rc, err = cli(capfd, "explain", config, workdir)
    assert rc == 0, err[-3000:]
    assert f"checkpoint: skipping {workdir}/checkpoints/6, it does not restore (" in err
    assert f"checkpoint: restored {workdir}/checkpoints/3" in err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert os.path.isdir(workdir / "checkpoints" / "6")  # kept


@pytest.mark.parametrize("mode", ["train", "explain"])
def test_no_clean_checkpoint_is_one_line_for_resume_and_explain(capfd, trained, tmp_path, mode):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    _damage(workdir, "truncate all")
    rc, err = cli(capfd, mode, lambda: config(train__steps=9), workdir)
    assert rc == 2
    line = _one_error_line(err)
    assert f"no checkpoint in {workdir}/checkpoints restores" in line and "nothing was deleted" in line
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
