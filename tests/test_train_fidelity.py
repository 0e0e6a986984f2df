"""Issue 13's training defects, each pinned by a test that failed on the code before the fix:
HICCNN re-clusters in Algorithm 1's order (subgroups belong to the new deep regions), eq. 9 refines the
deep grouping, icCNN's clustering-only epochs, sweeps of weights whose base value is 0, ``init_from``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from jinterp import losses, train
from jinterp.losses import hierarchical
from jinterp.train import recluster
from tests.test_train import MemoryData, _assert_trees_close, _images, tiny_config

LEFT_TRUTH, RIGHT_TRUTH = np.repeat([0, 1], 4), np.tile([0, 1], 4)


def _planted(seed: int, b: int = 16):
    """Deep filters 0-1 fire in the left column, 2-3 in the right one (4 columns, the middle two quiet);
    shallow filters fire in planted subgroups that differ between the left and the right half."""
    rng = np.random.default_rng(seed)
    deep = np.zeros((b, 4, 4, 4), np.float32)  # each pair shares a per-image amplitude (correlated)
    deep[:, :, 0, :2] = rng.uniform(0.5, 1.5, (b, 1, 1)) + 0.05 * rng.uniform(size=(b, 4, 2))
    deep[:, :, 3, 2:] = rng.uniform(0.5, 1.5, (b, 1, 1)) + 0.05 * rng.uniform(size=(b, 4, 2))
    base = rng.uniform(size=(b, 8, 8, 2))
    sh = np.zeros((b, 8, 8, 8), np.float32)
    sh[:, :, :4] = base[:, :, :4][..., LEFT_TRUTH]
    sh[:, :, 4:] = base[:, :, 4:][..., RIGHT_TRUTH]
    sh += 0.05 * rng.uniform(size=sh.shape)
    return {"deep": jnp.asarray(deep), "shallow": jnp.asarray(sh)}


def _recluster(spec, state, outs, key):
    """What ``jinterp.train`` does between epochs: one statistics pass per phase, then that phase's step."""
    shapes = {k: (1, *v.shape[1:]) for k, v in outs[0].items()}
    labels = jnp.zeros(len(outs[0]["deep"]), jnp.int32)
    for phase in range(spec.recluster_phases):
        stats = spec.init_stats(shapes, phase)
        for out in outs:
            stats = spec.update_stats(stats, out, labels, state, phase)
        state = spec.recluster(state, stats, jax.random.fold_in(key, phase), phase)
    return state


@pytest.mark.parametrize("refine_deep", [False, True])
def test_hiccnn_subgroups_belong_to_the_new_deep_regions(refine_deep):
    """Defect 1: the deep groups come out with the labels swapped relative to the state's; the shallow
    subgroups of row k must still be those planted in the region of the *new* group k."""
    spec = losses.HICCNN(
        layer="deep", shallow_layer="shallow", num_groups=2, num_subgroups=2, refine_deep=refine_deep
    )
    outs = [_planted(s) for s in range(3)]
    shapes = {k: (1, *v.shape[1:]) for k, v in outs[0].items()}
    state = spec.init(shapes)
    key = jax.random.key(0)
    first = np.asarray(_recluster(spec, state, outs, key)["groups"])
    state = {**state, "groups": jnp.asarray(1 - first)}  # the previous round labelled them the other way
    new = _recluster(spec, state, outs, key)
    groups, sub = np.asarray(new["groups"]), np.asarray(new["subgroups"])
    assert adjusted_rand_score([0, 0, 1, 1], groups) == 1.0
    left = groups[0]  # the group of the left-firing deep filters
    assert adjusted_rand_score(LEFT_TRUTH, sub[left]) == 1.0
    assert adjusted_rand_score(RIGHT_TRUTH, sub[1 - left]) == 1.0


def test_eq9_moves_a_misgrouped_deep_filter_to_the_region_it_fires_in():
    """Defect 3: filter 1 fires on the left but was grouped with the right filters; eq. 9's refinement
    (lift under the masked shallow guidance) moves it, the well-placed filters stay."""
    outs = [_planted(s) for s in range(2)]
    groups = jnp.array([0, 1, 1, 1])
    stats = hierarchical.init_guidance(4, 2)
    for out in outs:
        stats = hierarchical.update_guidance(stats, out["deep"], out["shallow"], groups, 2)
    np.testing.assert_array_equal(hierarchical.refine_groups(stats, groups), [0, 0, 1, 1])
    stats = hierarchical.init_guidance(4, 2)
    right = jnp.array([0, 0, 1, 1])
    for out in outs:
        stats = hierarchical.update_guidance(stats, out["deep"], out["shallow"], right, 2)
    np.testing.assert_array_equal(hierarchical.refine_groups(stats, right), right)


def test_clustering_only_epochs_follow_the_iccnn_schedule():
    """Defect 2: with T = 2 and a stop epoch 4, epochs 0 and 2 only cluster; training runs in 1, 3, 4, 5."""
    spec = losses.ICCNN(layer="conv2", num_groups=2, recluster_every=2, recluster_until=4)
    assert [recluster.schedule_epoch((spec,), t) for t in range(-1, 4)] == [-1, 1, 3, 4, 5]
    assert [
        recluster.schedule_epoch((spec.__class__(layer="conv2", cluster_only=False),), t) for t in range(3)
    ] == [0, 1, 2]
    with pytest.raises(ValueError, match="cluster_only"):
        losses.ICCNN(recluster_every=1)


def test_training_loop_spends_clustering_epochs_on_clustering(tmp_path, monkeypatch):
    """The loop re-clusters at schedule epochs 0 and 2 (before training epochs 0 and 1) and trains every
    step of both training epochs."""
    cfg = tiny_config(**{"train.steps": 16, "train.log_every": 8, "train.checkpoint_every": 0})
    cfg.losses = {"iccnn": {"layer": "conv2", "num_groups": 2, "recluster_every": 2, "recluster_until": 4}}
    seen = []
    real = recluster.recluster_due
    monkeypatch.setattr(recluster, "recluster_due", lambda t, s, d, e: seen.append(e) or real(t, s, d, e))
    summary = train.train_and_evaluate(cfg, str(tmp_path), data=MemoryData().data(cfg.data))
    assert seen == [0, 1, 2, 3] and summary["step"] == 16


def test_a_sweep_of_a_weight_that_is_zero_in_the_config_trains_that_term(tmp_path):
    """Defect 4: hier_weight is 0 in the config; the point with 0.5 must train with the term, the point
    with 0 without it (equal to a plain icCNN step)."""
    cfg = tiny_config()
    cfg.losses = {"hiccnn": {"layer": "conv2", "shallow_layer": "conv1", "num_groups": 2, "num_subgroups": 2,
                             "hier_weight": 0.0, "cluster_only": False}}  # fmt: skip
    points = [{"losses.hiccnn.hier_weight": 0.0}, {"losses.hiccnn.hier_weight": 0.5}]
    trainer = train.Trainer(cfg, points=points)
    state = trainer.init_state(10)
    x, y = _images(8, 16, 3)
    _, metrics = trainer.train_step(state, train.shard_batch({"image": x, "label": y}, trainer.mesh))
    hier, total = np.asarray(metrics["hiccnn/hier"]), np.asarray(metrics["loss/hiccnn"])
    assert np.all(hier < 0)  # computed for both points (in [-1, 0])
    assert total[1] == pytest.approx(total[0] + 0.5 * hier[1], rel=1e-5)
    cfg.losses = {"iccnn": {"layer": "conv2", "num_groups": 2, "cluster_only": False}}
    with pytest.raises(ValueError, match=r"losses.iccnn.\['multi_weight'\] cannot be swept from 0"):
        train.Trainer(cfg, points=[{"losses.iccnn.multi_weight": 0.1}])


def test_init_from_continues_from_a_trained_run_with_another_recipe(tmp_path):
    """``train.init_from``: a CNN run's params / batch stats start an icCNN run with another optimiser."""
    src = MemoryData()
    base = tiny_config(**{"train.steps": 4, "train.checkpoint_every": 0})
    trained = train.train_and_evaluate(base, str(tmp_path / "cnn"), data=src.data(base.data))
    cfg = tiny_config(**{"optimizer.name": "sgd", "train.init_from": str(tmp_path / "cnn")})
    cfg.losses = {"iccnn": {"layer": "conv2", "num_groups": 2, "cluster_only": False}}
    trainer = train.Trainer(cfg)
    state = trainer.with_variables(trainer.init_state(4), train.restore_variables(str(tmp_path / "cnn")))
    _assert_trees_close(jax.device_get(state.params), jax.device_get(trained["state"].params), atol=0)
    other = tiny_config(**{"model.kwargs.widths": (4, 16)})
    with pytest.raises(train.IncompatibleCheckpointError, match="init_from"):
        train.Trainer(other).with_variables(
            train.Trainer(other).init_state(4), train.restore_variables(str(tmp_path / "cnn"))
        )
    cfg.train.steps = 1
    summary = train.train_and_evaluate(cfg, str(tmp_path / "iccnn"), data=src.data(cfg.data))
    assert summary["step"] == 1 and summary["test_accuracy"] == pytest.approx(
        trained["test_accuracy"], abs=0.2
    )
