"""Explanation losses (right for the right reasons): the penalty is the masked squared input gradient
of the summed log-probabilities, image by image; it trains through ``config.losses`` with the batch's
mask fed to the step; a data set without the mask is refused clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji
from jinterp import losses, train
from tests.test_train import MemoryData, tiny_config


@pytest.fixture(scope="module")
def net():
    model = ji.backbones.create("small_cnn", num_classes=3, widths=(4, 8), strides=(2, 2))
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    mask = (jnp.arange(16)[None, :, None] < 8) & jnp.ones((3, 16, 16), bool)  # left half annotated
    return (
        model,
        model.init(jax.random.key(1), x),
        {"image": x, "label": jnp.array([0, 1, 2]), "object_mask": mask},
    )


def test_input_gradient_penalty_is_the_masked_squared_gradient_per_image(net):
    model, variables, batch = net
    value, logs = losses.RightReasons().penalty(model, variables, batch)
    want = []
    for x, m in zip(batch["image"], batch["object_mask"], strict=True):
        g = jax.grad(lambda im: jax.nn.log_softmax(model.apply(variables, im[None])[0]).sum())(x)
        want.append(float((((1.0 - m)[..., None] * g) ** 2).sum()))
    assert float(value) == pytest.approx(np.mean(want), rel=1e-5) and float(value) > 0
    assert float(logs["rrr/outside"]) == float(value)
    everything = {**batch, "object_mask": jnp.ones((3, 16, 16), bool)}
    assert float(losses.RightReasons().penalty(model, variables, everything)[0]) == 0.0


def test_grad_cam_penalty_is_the_heat_share_outside_the_mask(net):
    model, variables, batch = net
    spec = losses.get("rrr(method='grad_cam', layer='conv2')")
    heat = ji.explain.explain("grad_cam(layer='conv2')", model, variables, batch["image"], batch["label"])
    share = (heat * (1 - batch["object_mask"])).sum((1, 2)) / (heat.sum((1, 2)) + 1e-6)
    assert float(spec.penalty(model, variables, batch)[0]) == pytest.approx(float(share.mean()), rel=1e-5)
    grads = jax.grad(lambda v: spec.penalty(model, v, batch)[0])(variables)
    assert np.isfinite(sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["params"])))


class MaskedData(MemoryData):
    """MemoryData whose class evidence (a bright square) always lies in its object mask."""

    def load(self, name, split, batch_size, **kw):
        for batch in super().load(name, split, batch_size, **kw):
            yield {**batch, "object_mask": batch["image"].mean(-1) > 0.8}


def test_rrr_trains_through_the_config_and_logs_its_weighted_term(tmp_path):
    cfg = tiny_config(**{"train.steps": 4, "train.log_every": 2, "train.checkpoint_every": 0})
    cfg.losses = {"rrr": {"weight": 0.5}}
    summary = train.train_and_evaluate(cfg, str(tmp_path / "ok"), data=MaskedData().data(cfg.data))
    assert summary["step"] == 4
    import json

    lines = [json.loads(x) for x in open(tmp_path / "ok" / "metrics.jsonl") if '"train"' in x]
    assert all(r["loss/rrr"] == pytest.approx(0.5 * r["rrr/outside"], rel=1e-4) for r in lines)
    with pytest.raises(ValueError, match=r"the losses need \['object_mask'\]"):
        train.train_and_evaluate(cfg, str(tmp_path / "bad"), data=MemoryData().data(cfg.data))
