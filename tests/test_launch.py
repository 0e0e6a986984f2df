"""launch.py end to end (subprocess, real flags and loader on sklearn's bundled digits) and its errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.data.name=digits",
    "--config.data.image_size=16",
    "--config.data.num_classes=10",
    "--config.train.batch_size=16",
    "--config.train.steps=6",
    "--config.train.log_every=3",
    "--config.train.checkpoint_every=3",
    "--config.train.eval_batch_size=64",
]


def launch(*args, env=None):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **(env or {})}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "launch.py"),
        "--config",
        "configs/quickstart.py:runlocal",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_launch_trains_resumes_and_reports(tmp_path):
    r = launch("--workdir", str(tmp_path), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3/6 loss" in r.stderr and "steps/s ETA" in r.stderr
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["step"] == 6 and 0.0 <= summary["test_accuracy"] <= 1.0 and not summary["resumed"]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [3, 6, 6]  # two train records and the final test record
    assert os.path.getsize(tmp_path / "predictions.png") > 1000
    assert "report: skipped, 'digits' has no part masks" in r.stderr  # the quickstart's report needs parts
    # A longer run in the same workdir resumes from step 6 (a finished run is not retrained).
    r = launch("--workdir", str(tmp_path), *TINY[:-4], "--config.train.steps=9", *TINY[-3:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from step 6" in r.stderr
    assert json.load(open(tmp_path / "summary.json"))["step"] == 9
    # --mode explain restores that checkpoint and draws heatmaps of the first test images.
    r = launch("--workdir", str(tmp_path), "--mode", "explain", "--config.evaluate.methods=grad_cam", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.getsize(tmp_path / "explanations.png") > 1000


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.stepz=5", "unknown config key in --config.train.stepz"),
        ("--config.optimizer.name=adamx", "config.optimizer.name: unknown value 'adamx'"),
        ("--config.train.batch_size=-4", "config.train.batch_size: expected a positive integer"),
    ],
)
def test_bad_config_key_or_value_exits_with_a_clear_message(tmp_path, override, message):
    r = launch("--workdir", str(tmp_path), override)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "summary.json")


def test_bad_config_type_is_rejected_by_the_flag_parser(tmp_path):
    r = launch("--workdir", str(tmp_path), "--config.train.steps=abc")
    assert r.returncode == 2 and "--config.train.steps=abc" in r.stderr and "Traceback" not in r.stderr


def test_unwritable_workdir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a regular file instead
        locked = tmp_path / "file"
        locked.write_text("x")
    r = launch("--workdir", str(locked / "run"), *TINY)
    assert r.returncode == 2 and "--workdir:" in r.stderr and "not a writable directory" in r.stderr


def test_evaluate_without_a_checkpoint_fails_clearly(tmp_path):
    r = launch("--workdir", str(tmp_path), "--mode", "evaluate", *TINY)
    assert r.returncode == 2 and "no checkpoint in" in r.stderr and "Traceback" not in r.stderr


PARTS_WORLD = [
    "--config.data.image_size=32",
    "--config.data.num_classes=4",
    "--config.data.train_size=64",
    "--config.data.test_size=16",
    "--config.train.batch_size=16",
    "--config.train.steps=4",
    "--config.train.log_every=2",
    "--config.train.eval_batch_size=16",
    "--config.evaluate.methods=grad_cam",
    "--config.evaluate.num_images=16",
    "--config.evaluate.num_explained=8",
]


@pytest.mark.slow
def test_every_mode_on_a_tiny_parts_world(tmp_path):
    """train -> evaluate -> concepts -> show_data -> clam -> compare through the one command line."""
    env = {"JINTERP_DATA_DIR": str(tmp_path / "data")}
    run = lambda mode, *extra: launch(
        "--workdir", str(tmp_path / "run"), "--mode", mode, *PARTS_WORLD, *extra, env=env
    )
    for mode, extra in [
        ("train", ()),
        ("evaluate", ()),
        ("concepts", ("--config.concepts.num_images=4", "--config.concepts.cams=grad_cam")),
        ("show_data", ()),
        ("clam", ("--config.clam.num_train=16", "--config.clam.epochs=2", "--config.clam.num_images=8",
                  "--config.clam.lerf_steps=2", "--config.clam.bank_size=16", "--config.clam.hidden=8")),
    ]:  # fmt: skip
        r = run(mode, *extra)
        assert r.returncode == 0, (mode, r.stderr[-3000:])
        if mode == "train":  # the main job writes the evaluation report itself
            main_job = open(tmp_path / "run" / "evaluation" / "report.md").read()
            assert "Pointing (disc parts)" in main_job and "Average drop" in main_job and "Interp" in main_job
            grid = "small_cnn@4_heatmaps.png"
            assert f"]({grid})" in main_job and os.path.getsize(tmp_path / "run" / "evaluation" / grid) > 1000
    report = open(tmp_path / "run" / "evaluation" / "report.md").read()
    assert "grad_cam(layer='conv6')" in report and "Interp" in report
    metrics = json.load(open(tmp_path / "run" / "evaluation" / "metrics.json"))
    (scores,) = metrics.values()
    assert 0.0 <= scores["accuracy"] <= 1.0 and scores["layer"] == "conv6"
    table = open(tmp_path / "run" / "concepts" / "table.md").read()
    assert "concise" in table and "CRP-" in table and "grad_cam" in table
    assert os.path.getsize(tmp_path / "run" / "data.png") > 1000
    clam_table = open(tmp_path / "run" / "clam" / "table.md").read()
    assert "CLAM raises the energy pointing game" in clam_table and "0.5550" in clam_table  # paper beside ours
    runs = f"a={tmp_path}/run/evaluation/metrics.json,b={tmp_path}/run/evaluation/metrics.json"
    r = launch("--workdir", str(tmp_path / "cmp"), "--mode", "compare", "--runs", runs, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    compared = open(tmp_path / "cmp" / "report.md").read()
    assert "| a |" in compared and "| b |" in compared
    r = launch("--workdir", str(tmp_path / "cmp"), "--mode", "compare", "--runs", "a-no-path", env=env)
    assert r.returncode == 2 and "--runs: expected name=path" in r.stderr


@pytest.mark.slow
def test_sweep_mode_runs_every_point(tmp_path):
    r = launch(
        "--workdir", str(tmp_path), "--mode", "sweep", *TINY[:-4], "--config.train.steps=2", *TINY[-3:]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = open(tmp_path / "sweep.md").read().splitlines()
    assert lines[0].startswith("| optimizer.lr | seed |") and len(lines) == 2 + 4  # quickstart's 4 points
