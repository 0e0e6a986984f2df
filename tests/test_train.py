"""Training loop: whole-loop run, exact resume, no retrace, 1 vs 4 devices, optimiser recipes, losses.

Runs on a tiny ``small_cnn`` (widths 4, 8) and an in-memory 16 px data set that follows the
``jinterp.data.load`` contract (batch order a pure function of (seed, step)), so every test is fast.
"""

import json
import math
import os
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from jinterp import train
from jinterp.train import step as step_lib


def _images(n, size, seed):
    """Class 1 = a bright square in the left half, class 0 = in the right half, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    x = rng.normal(0, 0.3, (n, size, size, 3)).astype(np.float32)
    for i, y in enumerate(labels):
        r, c = rng.integers(0, size - 5), rng.integers(0, size // 2 - 5) + (0 if y else size // 2)
        x[i, r : r + 5, c : c + 5] += 1.5
    return x, labels


class Killed(Exception):
    """Raised by MemoryData in place of the training batch of step ``kill_at`` (a killed run)."""


class MemoryData:
    """An in-memory data source with ``jinterp.data.load``'s signature and order contract."""

    def __init__(self, n_train=64, n_test=40, size=16, kill_at=None, stall_at=None):
        self.splits = {"train": _images(n_train, size, 0), "test": _images(n_test, size, 1)}
        self.served = []  # (split, start_step) of every iterator, to check resume offsets
        self.kill_at, self.stall_at = kill_at, stall_at  # raise / block forever at that training step

    def load(
        self,
        name,
        split,
        batch_size,
        *,
        seed=0,
        start_step=0,
        shuffle=True,
        repeat=True,
        drop_remainder=True,
        augment=False,
        host_id=0,
        host_count=1,
        **unused,
    ):
        x, y = self.splits[split]
        n = len(y)
        steps = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        self.served.append((split, start_step))
        step, last = start_step, None if repeat else (start_step // steps + 1) * steps
        while last is None or step < last:
            epoch, j = divmod(step, steps)
            order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
            if split == "train" and step == self.kill_at:
                raise Killed(f"killed at step {step}")
            if split == "train" and step == self.stall_at:
                threading.Event().wait()  # a hung host: only a kill ends it
            idx = order[j * batch_size : (j + 1) * batch_size]
            rows = np.array_split(idx, host_count)[host_id]
            yield {"image": x[rows], "label": y[rows], "index": rows}
            step += 1

    def data(self, cfg):
        return train.Data(cfg, load=self.load, num_examples=lambda split: len(self.splits[split][1]))


def tiny_config(**changes):
    c = common.base()
    c.model.name = "small_cnn"
    c.model.num_classes = 2
    c.model.kwargs.widths = (4, 8)
    c.model.kwargs.strides = (2, 2)
    c.data.image_size = 16
    c.train.batch_size = 8
    c.train.steps = 6
    c.train.log_every = 2
    c.train.checkpoint_every = 3
    c.train.eval_batch_size = 16
    c.schedule.warmup_steps = 2
    c.optimizer.lr = 1e-2
    for path, value in changes.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _params(summary):
    return jax.device_get(summary["state"].params)


def _assert_trees_close(a, b, atol):
    diffs = jax.tree.leaves(
        jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    )
    assert max(diffs) <= atol, max(diffs)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 10-step run on all 4 (fake) devices, shared by the loop, resume and device tests."""
    workdir = tmp_path_factory.mktemp("full")
    src = MemoryData()
    cfg = tiny_config_run()
    return workdir, src, train.train_and_evaluate(cfg, str(workdir), data=src.data(cfg.data))


def tiny_config_run(**changes):
    return tiny_config(**{"train.steps": 10, "train.log_every": 4, "train.checkpoint_every": 3, **changes})


def test_whole_loop_writes_metrics_summary_checkpoints(full_run):
    workdir, src, summary = full_run
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_lines = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == [4, 8, 10]
    assert all(
        np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["steps_per_s"] > 0 for r in train_lines
    )
    on_disk = json.load(open(workdir / "summary.json"))
    assert on_disk["step"] == 10 and on_disk["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    # Test accuracy equals an independent evaluation of the final params on the 40 test images.
    x, y = src.splits["test"]
    model = train.Trainer(tiny_config_run()).model
    variables = {"params": _params(summary), "batch_stats": jax.device_get(summary["state"].batch_stats)}
    logits, _ = jax.jit(model.apply)(variables, x)
    assert on_disk["test_accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)), abs=1e-6)
    # keep_checkpoints=2 of the saves at 3, 6, 9 and the last step.
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [9, 10]


def test_kill_and_resume_matches_uninterrupted_run(full_run, tmp_path):
    """Killed during step 6 (after the step-3 checkpoint), resumed from step 3: same final state."""
    cfg = tiny_config_run()
    with pytest.raises(Killed):
        train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData(kill_at=5).data(cfg.data))
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [3]
    src = MemoryData()
    resumed = train.train_and_evaluate(cfg, str(tmp_path), data=src.data(cfg.data))
    assert resumed["resumed"] and resumed["step"] == 10
    assert ("train", 3) in src.served  # the data restarted at the resumed step, not at 0
    full = full_run[2]
    _assert_trees_close(_params(full), _params(resumed), atol=1e-6)
    _assert_trees_close(
        jax.device_get(full["state"].opt_state), jax.device_get(resumed["state"].opt_state), 1e-6
    )


def test_one_device_and_four_devices_give_the_same_params(full_run, tmp_path):
    assert jax.device_count() == 4, "conftest sets --xla_force_host_platform_device_count=4"
    cfg = tiny_config_run(num_devices=1)
    one = train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData().data(cfg.data))
    four = full_run[2]
    assert len(four["state"].params["fc"]["kernel"].sharding.device_set) == 4
    assert len(one["state"].params["fc"]["kernel"].sharding.device_set) == 1
    # Same math, different reduction order of the gradient all-reduce: float32 round-off only.
    _assert_trees_close(_params(one), _params(four), atol=1e-5)


def test_train_step_does_not_retrace_and_donates_state(monkeypatch):
    make = step_lib.make_train_step
    monkeypatch.setattr(step_lib, "make_train_step", lambda *a: chex.assert_max_traces(make(*a), n=1))
    cfg = tiny_config()
    trainer = train.Trainer(cfg)
    state = trainer.init_state(10)
    x, y = _images(8, 16, 3)
    batch = train.shard_batch({"image": x, "label": y}, trainer.mesh)
    old = state
    state, _ = trainer.train_step(state, batch)
    assert old.params["fc"]["kernel"].is_deleted()  # donated
    state, metrics = trainer.train_step(state, batch)  # a retrace would raise here
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))


def test_train_step_leaves_its_input_state_untouched():
    """Pure: the un-jitted step returns a new learning rate in a new optimiser state, the old one stays."""
    trainer = train.Trainer(tiny_config())
    state = jax.device_get(trainer.init_state(10))
    before = jax.tree.map(np.array, state.opt_state.hyperparams)
    factor = train.lr_factor(trainer.config.schedule, 1)
    step = train.make_train_step(trainer.model, trainer.tx, trainer.specs, factor)
    x, y = _images(8, 16, 5)
    new, _ = step(state, {"image": x, "label": y})
    _assert_trees_close(jax.tree.map(np.array, state.opt_state.hyperparams), before, atol=0)
    assert float(new.opt_state.hyperparams["learning_rate"]) != float(before["learning_rate"])


def test_train_step_matches_a_hand_written_sgd_step():
    """One SGD step (momentum, torch-style weight decay, step schedule) against a plain jax.grad update."""
    cfg = tiny_config(
        **{
            "optimizer.name": "sgd",
            "optimizer.lr": 0.1,
            "optimizer.weight_decay": 0.01,
            "schedule.name": "constant",
        }
    )
    trainer = train.Trainer(cfg)
    state = trainer.init_state(10)
    params0 = jax.device_get(state.params)
    stats0 = jax.device_get(state.batch_stats)
    x, y = _images(8, 16, 4)

    def loss(p):
        (logits, _), _ = trainer.model.apply(
            {"params": p, "batch_stats": stats0}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    g = jax.jit(jax.grad(loss))(params0)
    want = jax.tree.map(lambda p, g: p - 0.1 * (g + 0.01 * p), params0, g)
    state, metrics = trainer.train_step(state, train.shard_batch({"image": x, "label": y}, trainer.mesh))
    _assert_trees_close(jax.device_get(state.params), want, atol=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(loss(params0)), rel=1e-5)


@pytest.mark.parametrize(
    "sched, steps_per_epoch, want",
    [
        # sync paper §IV-A5: x0.1 at epochs 50, 75, 90.
        (
            dict(name="step", boundaries_epochs=(50, 75, 90), factor=0.1),
            10,
            {0: 1.0, 499: 1.0, 500: 0.1, 749: 0.1, 750: 0.01, 900: 0.001},
        ),
        # HICCNN §4: x0.8 every 100 epochs.
        (
            dict(name="exponential_step", every_epochs=100, factor=0.8),
            3,
            {0: 1.0, 299: 1.0, 300: 0.8, 650: 0.64},
        ),
        (dict(name="warmup_cosine", warmup_steps=10, end_factor=0.0), 1, {0: 0.1, 9: 1.0, 55: 0.5, 100: 0.0}),
    ],
)
def test_lr_schedules(sched, steps_per_epoch, want):
    c = common.base().schedule
    c.update(sched)
    f = train.lr_factor(c, steps_per_epoch)
    for step, value in want.items():
        assert float(f(jnp.int32(step), {"total_steps": jnp.float32(100)})) == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
def test_interpretability_losses_train_and_recluster(tmp_path):
    """icCNN re-clusters between epochs; its loss is logged and the groups change from the initial blocks."""
    cfg = tiny_config(**{"train.steps": 16, "train.log_every": 8})
    cfg.losses = {
        "iccnn": {
            "layer": "conv2",
            "num_groups": 2,
            "weight": 0.5,
            "recluster_every": 1,
            "cluster_only": False,
        }
    }
    summary = train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData().data(cfg.data))
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"train"' in line]
    assert all(
        np.isfinite(r["loss/iccnn"]) and r["loss/iccnn"] == pytest.approx(0.5 * r["iccnn/group"], rel=1e-4)
        for r in lines
    )
    assert np.asarray(summary["state"].loss_state["iccnn"]["groups"]).shape == (8,)


def test_epoch_hook_reclusters_from_ordered_training_statistics():
    """run_epoch_hooks == update_stats over the full training batches in index order, then recluster."""
    cfg = tiny_config(**{"train.hook_batches": 3})
    cfg.losses = {"iccnn": {"layer": "conv2", "num_groups": 3, "recluster_every": 2, "cluster_only": False}}
    src = MemoryData()
    data = src.data(cfg.data)
    trainer = train.Trainer(cfg)
    state = trainer.init_state(10)
    spec = trainer.specs[0]
    assert trainer.run_epoch_hooks(state, data, 1) is state  # odd epoch: not due
    got = np.asarray(trainer.run_epoch_hooks(state, data, 2).loss_state["iccnn"]["groups"])
    x, y = src.splits["train"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    stats = spec.init_stats(trainer.out_shapes())
    for b in range(3):
        out = trainer.model.apply(variables, x[8 * b : 8 * (b + 1)])[1]
        stats = spec.update_stats(stats, out, y[8 * b : 8 * (b + 1)], state.loss_state["iccnn"])
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), 2)
    want = np.asarray(spec.recluster(state.loss_state["iccnn"], stats, key)["groups"])
    np.testing.assert_array_equal(got, want)


def test_incompatible_checkpoint_is_refused_and_left_untouched(full_run, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(full_run[0], workdir)
    before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(workdir) for p in fs}
    cfg = tiny_config_run(**{"model.kwargs.widths": (4, 16)})
    with pytest.raises(
        train.IncompatibleCheckpointError,
        match=r"batch_stats/conv2/bn/mean is \(8,\) in the checkpoint and \(16,\)",
    ):
        train.train_and_evaluate(cfg, str(workdir), data=MemoryData().data(cfg.data))
    after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(workdir) for p in fs}
    assert after == before
    cfg = tiny_config_run(**{"optimizer.name": "sgd"})
    with pytest.raises(train.IncompatibleCheckpointError, match="optimizer='adamw'"):
        train.train_and_evaluate(cfg, str(workdir), data=MemoryData().data(cfg.data))


def test_bad_config_values_raise_value_errors(tmp_path):
    for changes, message in [
        ({"schedule.name": "linear"}, "config.schedule.name"),
        ({"model.name": "vgg17"}, "config.model.name"),
        ({"optimizer.lr": -1.0}, "config.optimizer.lr"),
    ]:
        with pytest.raises(ValueError, match=message):
            train.validate_config(tiny_config(**changes))
    cfg = tiny_config()
    cfg.losses = {"iccnn": {"layer": "conv2", "num_groupz": 2}}
    with pytest.raises(ValueError, match="config.losses.iccnn"):
        train.build_losses(cfg.losses)
    cfg = tiny_config(**{"train.batch_size": 6})  # 4 devices
    with pytest.raises(ValueError, match="multiple of the 4 devices"):
        train.Trainer(cfg)


def test_time_budget_shortens_the_schedule(tmp_path):
    """A budget already spent at calibration (2 timed steps after the compiling one) ends the run one
    step later, with the cosine ending there."""
    cfg = tiny_config(
        **{
            "train.steps": 50,
            "train.time_budget_s": 1e-3,
            "train.time_reserve_s": 0.0,
            "train.calibrate_steps": 2,
            "train.checkpoint_every": 0,
        }
    )
    summary = train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData().data(cfg.data))
    assert summary["step"] == 4
    assert float(summary["state"].hparams["total_steps"]) == 4.0
