"""Reliability of training (issue 19): the non-finite-loss guard (train.nan_policy) and checkpoint walk-back.

Tiny ``small_cnn`` on the in-memory 16 px data of ``test_train`` (a few seconds per run). Checkpoints are
damaged the ways a crash, a full disk or a stray write damage them; restore must fall back to the newest
checkpoint that restores, say which it skipped, and never delete or overwrite the damaged one.
"""

import glob
import io
import os
import shutil

import numpy as np
import pytest

from jinterp import train
from jinterp.train import actions
from tests.test_train import MemoryData, tiny_config


class PoisonedData(MemoryData):
    """MemoryData with NaN in one training image (it lands in one batch per epoch)."""

    def __init__(self, bad_index=5, value=np.nan, **kw):
        super().__init__(**kw)
        x, y = self.splits["train"]
        x = x.copy()
        x[bad_index, 0, 0, 0] = value
        self.splits["train"] = (x, y)


def _poisoned_steps(src, cfg, bad_index=5):
    """1-based training steps (up to train.steps) whose batch holds ``bad_index``."""
    batches = src.load("x", "train", cfg.train.batch_size, seed=cfg.data.seed)
    steps = range(1, cfg.train.steps + 1)
    return [s for s, b in zip(steps, batches, strict=False) if bad_index in b["index"]]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_stop_policy_names_the_step_terms_and_keeps_the_last_good_checkpoint(tmp_path, value):
    cfg = tiny_config(**{"train.steps": 8, "train.log_every": 8, "train.checkpoint_every": 1})
    src = PoisonedData(value=value)
    bad = _poisoned_steps(src, cfg)[0]
    log = io.StringIO()
    with pytest.raises(actions.NonFiniteLossError) as e:
        train.train_and_evaluate(cfg, str(tmp_path), data=src.data(cfg.data), log=log)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"non-finite loss at step {bad} " in msg and "loss=nan" in msg and "loss/ce=nan" in msg
    ckpts = tmp_path / "checkpoints"
    if bad > 1:
        assert f"last good checkpoint: {ckpts}/{bad - 1} (kept)" in msg
    assert sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())[-1] == bad - 1  # no NaN state saved
    assert not (tmp_path / "summary.json").exists()


def test_skip_policy_skips_the_batch_and_finishes_with_finite_params(tmp_path):
    cfg = tiny_config(**{"train.steps": 10, "train.log_every": 5, "train.nan_policy": "skip"})
    src = PoisonedData()
    bad = _poisoned_steps(src, cfg)
    log = io.StringIO()
    summary = train.train_and_evaluate(cfg, str(tmp_path), data=src.data(cfg.data), log=log)
    assert f"skipped {len(bad)} batch(es) with a non-finite loss, at steps {bad}" in log.getvalue()
    assert "loss nan" not in log.getvalue()  # progress lines average the finite steps
    assert np.isfinite(summary["test_loss"]) and summary["step"] == 10
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(summary["state"].params)]
    assert all(np.isfinite(x).all() for x in leaves)


def test_a_diverging_run_stops_even_with_skip(tmp_path):
    """lr = 1e30 overflows the parameters at once; with 'skip' every step is skipped: that is divergence."""
    cfg = tiny_config(
        **{"train.steps": 6, "train.log_every": 3, "optimizer.lr": 1e30, "train.nan_policy": "skip"}
    )
    with pytest.raises(actions.NonFiniteLossError, match="non-finite loss at step 1; every step from 1 to 3"):
        train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData().data(cfg.data), log=io.StringIO())


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("optimizer.lr", float("nan"), "config.optimizer.lr: expected a finite number, got nan"),
        ("optimizer.weight_decay", float("inf"), "config.optimizer.weight_decay: expected a finite number"),
        ("train.nan_policy", "ignore", "config.train.nan_policy: unknown value 'ignore'"),
    ],
)
def test_non_finite_or_unknown_config_values_are_refused(tmp_path, path, value, message):
    cfg = tiny_config(**{path: value})
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData().data(cfg.data), log=io.StringIO())


# ------------------------------------------------------------------------------------ checkpoints


def _array_files(step_dir):
    return glob.glob(f"{step_dir}/state/d/*") + glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*")


def _truncate(step_dir):
    for f in _array_files(step_dir):
        open(f, "r+b").truncate(10)


def _overwrite(step_dir):
    """Same length, other bytes (a stray write): TensorStore reads it; the fingerprint catches it."""
    for f in _array_files(step_dir):
        size = os.path.getsize(f)
        open(f, "wb").write(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())


def _remove_state(step_dir):
    shutil.rmtree(f"{step_dir}/state")


def _garbage_meta(step_dir):
    open(f"{step_dir}/meta/metadata", "w").write("not json {")


def _remove_manifest(step_dir):
    os.remove(f"{step_dir}/state/manifest.ocdbt")


DAMAGE = {
    "truncated arrays": (_truncate, "OUT_OF_RANGE"),
    "overwritten arrays": (_overwrite, "Error"),  # TensorStore's decode error or the fingerprint's
    "removed state": (_remove_state, "Unknown key: state"),
    "garbage meta": (_garbage_meta, "JSONDecodeError"),
    "removed manifest": (_remove_manifest, "NOT_FOUND"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 3 and 6."""
    workdir = tmp_path_factory.mktemp("trained")
    cfg = tiny_config()
    train.train_and_evaluate(cfg, str(workdir), data=MemoryData().data(cfg.data), log=io.StringIO())
    return cfg, workdir


def _copy(trained, tmp_path):
    cfg, workdir = trained
    shutil.copytree(workdir, tmp_path / "run")
    return cfg, tmp_path / "run"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_restore_walks_back_to_the_newest_clean_checkpoint(trained, tmp_path, damage):
    cfg, workdir = _copy(trained, tmp_path)
    fn, reason = DAMAGE[damage]
    bad = workdir / "checkpoints" / "6"
    fn(bad)
    before = sorted(os.listdir(bad))
    log = io.StringIO()
    checkpoints = train.Checkpoints(str(workdir), log=log)
    try:
        state = checkpoints.restore(train.Trainer(cfg).abstract_state(), train.Trainer(cfg).meta())
    finally:
        checkpoints.close()
    assert int(state.step) == 3
    lines = log.getvalue().splitlines()
    assert lines[0].startswith(f"checkpoint: skipping {bad}, it does not restore (") and reason in lines[0]
    assert lines[1] == f"checkpoint: restored {workdir}/checkpoints/3"
    assert sorted(os.listdir(bad)) == before  # nothing deleted or rewritten


def test_resume_after_damage_trains_from_the_older_step_and_moves_the_bad_one_aside(trained, tmp_path):
    cfg, workdir = _copy(trained, tmp_path)
    _truncate(workdir / "checkpoints" / "6")
    log = io.StringIO()
    summary = train.train_and_evaluate(cfg, str(workdir), data=MemoryData().data(cfg.data), log=log)
    text = log.getvalue()
    assert "resuming from step 3" in text and "skipping" in text
    assert f"moved unreadable {workdir}/checkpoints/6 to {workdir}/checkpoints_unreadable/6 (kept)" in text
    assert summary["step"] == 6 and np.isfinite(summary["test_loss"])
    assert (workdir / "checkpoints_unreadable" / "6" / "state").is_dir()
    # the new step 6 restores cleanly
    model, variables, step = train.restore_model(cfg, str(workdir))
    assert step == 6


def test_no_clean_checkpoint_is_one_error_naming_each_and_nothing_is_restarted(trained, tmp_path):
    cfg, workdir = _copy(trained, tmp_path)
    _truncate(workdir / "checkpoints" / "6")
    _garbage_meta(workdir / "checkpoints" / "3")
    with pytest.raises(train.UnreadableCheckpointError) as e:
        train.train_and_evaluate(cfg, str(workdir), data=MemoryData().data(cfg.data), log=io.StringIO())
    msg = str(e.value)
    assert "\n" not in msg and f"{workdir}/checkpoints/6: " in msg and f"{workdir}/checkpoints/3: " in msg
    assert "nothing was deleted" in msg
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
