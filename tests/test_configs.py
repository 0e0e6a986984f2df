"""Configs: every variant builds and validates, carries the papers' numbers, and fits its backbone."""

import jax
import pytest

from configs import common, densenet121, quickstart, resnet18, small_cnn, vgg16
from jinterp import backbones, sweep, train

PAPER = {"vgg16": vgg16, "resnet18": resnet18, "densenet121": densenet121}


@pytest.mark.parametrize("backbone", sorted(PAPER))
@pytest.mark.parametrize("variant", common.VARIANTS)
def test_paper_configs_validate_and_losses_fit_the_backbone(backbone, variant):
    for arg in (variant, f"{variant},runlocal"):
        cfg = PAPER[backbone].get_config(arg)
        train.validate_config(cfg)
        specs = train.build_losses(cfg.losses)
        model = backbones.create(cfg.model.name, num_classes=cfg.data.num_classes, **cfg.model.kwargs)
        shapes = backbones.layer_shapes(model, cfg.data.image_size)  # traced with shapes only
        for spec in specs:
            jax.eval_shape(
                lambda s=spec, shapes=shapes: s.init(shapes)
            )  # layers exist, group counts fit the channels
        assert {s.name for s in specs} == {"cnn": set(), "iccnn": {"iccnn"}, "hiccnn": {"hiccnn"}}.get(
            variant, {"sync"}
        )


def test_paper_hyper_parameters():
    h = vgg16.get_config("hiccnn")  # HICCNN §4
    assert (h.optimizer.name, h.optimizer.lr, h.schedule.name) == ("adam", 1e-4, "exponential_step")
    assert (h.schedule.factor, h.schedule.every_epochs) == (0.8, 100)
    assert (h.train.epochs, h.train.batch_size, h.losses.hiccnn.hier_weight) == (2000, 64, 0.01)
    assert h.losses.hiccnn.weight == 0.1 and h.losses.hiccnn.multi_weight == 0.1  # multi-category
    assert resnet18.get_config("hiccnn,data=binary").losses.hiccnn.weight == 1.0  # single category
    assert vgg16.get_config("hiccnn,data=binary").losses.hiccnn.weight == 0.1  # VGG-16 exception
    s = vgg16.get_config("sync")  # sync §IV-A5
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.weight_decay, s.train.epochs) == (
        "sgd",
        0.01,
        5e-4,
        100,
    )
    assert tuple(s.schedule.boundaries_epochs) == (50, 75, 90) and s.train.batch_size == 32
    assert (s.losses.sync.lac_weight, s.losses.sync.sync_weight, s.losses.sync.eps) == (0.2, 0.1, 0.03)
    r = resnet18.get_config("sync")
    assert (r.losses.sync.lac_weight, r.losses.sync.sync_weight, r.train.batch_size) == (0.1, 0.05, 64)
    assert vgg16.get_config("sync_no_sync").losses.sync.sync_weight == 0.0


def test_quickstart_and_small_cnn_configs():
    q = quickstart.get_config()
    train.validate_config(q)
    assert (q.model.name, q.data.image_size, q.optimizer.name, q.train.batch_size) == (
        "small_cnn",
        64,
        "adamw",
        64,
    )
    assert 0 < q.train.time_budget_s <= 600 and q.outputs.predictions_png
    v = quickstart.get_config("backbone=vgg16")
    train.validate_config(v)
    assert (v.model.name, v.model.kwargs.head, v.optimizer.lr) == ("vgg16", "gap", 3e-4)
    assert v.train.batch_size == 32
    assert quickstart.get_config("backbone=resnet18").model.kwargs.to_dict() == {}
    with pytest.raises(ValueError, match="backbone expected one of"):
        quickstart.get_config("backbone=vgg17")
    for variant in common.VARIANTS:
        cfg = small_cnn.get_config(variant)
        train.validate_config(cfg)
        for spec in train.build_losses(cfg.losses):
            assert set(spec.layers) <= {"conv4", "conv6"}


def test_sweeps_are_valid_and_numeric():
    for module, arg in [(quickstart, None), (small_cnn, "hiccnn"), (vgg16, "sync"), (resnet18, "cnn")]:
        cfg = module.get_config(arg)
        points = sweep.collect_points(module.sweep, arg)
        assert len(points) == len({tuple(sorted(p.items())) for p in points}) > 1
        for p in points:
            sweep.apply_overrides(cfg, p)
            assert all(train.is_vmappable(k) for k in p), p


def test_parse_arg():
    a = common.parse_arg("sync,runlocal,data=cub", variant="hiccnn", runlocal=False, data="parts_world")
    assert (a.variant, a.runlocal, a.data) == ("sync", True, "cub")
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        common.parse_arg("bogus=1", variant="x")
    with pytest.raises(ValueError, match="variant expected one of"):
        vgg16.get_config("hicnn")
