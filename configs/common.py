"""Shared config pieces: the run schema (``base``), the papers' recipes (``paper``), ``parse_arg``.

Every config file's ``get_config(arg)`` returns a ``ConfigDict`` with the fields of :func:`base`; a
field's type is fixed by its default (``--config.train.steps=abc`` fails, as does an unknown key).

Paper recipes (``paper(backbone, variant, ...)``), variants:

* ``cnn``, ``iccnn``, ``hiccnn``: HICCNN §4 (shared/seeds/000_*): Adam, lr 1e-4 decayed x0.8 every 100
  epochs, 2000 epochs, batch 64; lambda = 1.0 (0.1 for VGG-16), multi-category lambda = beta = 0.1,
  gamma = 0.01. ``iccnn`` is gamma = 0 and ``cnn`` gamma = lambda = 0 (HICCNN §4's ablation), trained
  with the same optimiser for a fair comparison.
* ``sync``, ``sync_no_sync``: synchronization paper §IV-A5 (shared/seeds/002_*): SGD lr 0.01 decayed
  x0.1 at epochs 50/75/90 of 100, weight decay 5e-4, batch 32 (VGG) / 64 (ResNet, DenseNet),
  eps = 0.03, lambda1 = 0.2, lambda2 = 0.1, halved for ResNet. Momentum is not stated in the paper; we
  use 0.9 (the torchvision ImageNet recipe the backbones come from). ``sync_no_sync`` is the paper's
  "Ours w/o sync" ablation (lambda2 = 0; the sync term is still computed and logged, unweighted).

The papers fine-tune ImageNet-pretrained backbones at 224 px on CUB-200 / PASCAL-Part; here the default
data are PartsWorld at 224 px (``data=cub`` selects ``caltech_birds2011`` when its tfds files are present
locally; ``data=binary`` the single-category setting). Load pretrained weights with
``jinterp.backbones.from_torch`` before training if you have them: no weights are downloaded.
``runlocal`` shrinks everything (64 px, a few steps, GAP head) so the same code path runs on a CPU in
under two minutes.
"""

import ml_collections

VARIANTS = ("cnn", "iccnn", "hiccnn", "sync", "sync_no_sync")
BACKBONES = ("vgg16", "resnet18", "densenet121", "small_cnn")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """``"hiccnn,runlocal,data=cub"`` -> ConfigDict(variant="hiccnn", runlocal=True, data="cub").

    A bare token is ``<first default key>=token`` unless it names a bool default (then True); values are
    converted to the type of their default. Unknown keys raise ValueError.
    """
    out = dict(defaults)
    first = next(iter(defaults), None)
    for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        key, sep, value = token.partition("=")
        if not sep:
            key, value = (token, "True") if isinstance(defaults.get(token), bool) else (first, token)
        if key not in defaults:
            raise ValueError(f"config argument: unknown key {key!r} in {arg!r}; expected {list(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            if value not in ("True", "False", "true", "false", "1", "0"):
                raise ValueError(f"config argument: {key} expects a bool, got {value!r}")
            out[key] = value in ("True", "true", "1")
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"config argument: {key} expects {kind.__name__}, got {value!r}") from None
    return ml_collections.ConfigDict(out)


def base() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default (and so its type): ``jinterp.train.default_config()``."""
    from jinterp import train

    return train.default_config()


def loss_config(variant: str, backbone: str, multi: bool, num_classes: int, **overrides) -> dict:
    """``config.losses`` for a paper variant: the spec of ``jinterp.losses.for_backbone`` as a dict."""
    from jinterp import losses

    if variant == "cnn":
        return {}
    if variant in ("iccnn", "hiccnn"):
        spec = losses.for_backbone(variant, backbone, multi=multi, num_classes=num_classes, **overrides)
    else:
        extra = {"sync_weight": 0.0} if variant == "sync_no_sync" else {}
        spec = losses.for_backbone("sync", backbone, **{**extra, **overrides})
    return {spec.name: losses.spec_fields(spec)}


def paper(backbone: str, arg: str | None) -> ml_collections.ConfigDict:
    """A paper recipe; ``arg``: ``variant[,runlocal][,data=parts_world|binary|cub]``."""
    a = parse_arg(arg, variant="hiccnn", runlocal=False, data="parts_world")
    if a.variant not in VARIANTS:
        raise ValueError(f"config argument: variant expected one of {VARIANTS}, got {a.variant!r}")
    if a.data not in ("parts_world", "binary", "cub"):
        raise ValueError(f"config argument: data expected parts_world, binary or cub, got {a.data!r}")
    c = base()
    c.model.name = backbone
    c.data.image_size = 224
    if a.data == "cub":
        c.data.name = "caltech_birds2011"
        c.data.num_classes = 200
    elif a.data == "binary":
        c.data.name = "parts_world_binary"
        c.data.num_classes = 2
    multi = a.data != "binary"
    sync_recipe = a.variant.startswith("sync")
    if sync_recipe:  # sync paper §IV-A5
        c.optimizer.name = "sgd"
        c.optimizer.lr = 0.01
        c.optimizer.momentum = 0.9
        c.optimizer.weight_decay = 5e-4
        c.schedule.name = "step"
        c.schedule.boundaries_epochs = (50, 75, 90)
        c.schedule.factor = 0.1
        c.train.epochs = 100.0
        c.train.batch_size = 32 if backbone.startswith("vgg") else 64
    else:  # HICCNN §4
        c.optimizer.name = "adam"
        c.optimizer.lr = 1e-4
        c.optimizer.weight_decay = 0.0
        c.schedule.name = "exponential_step"
        c.schedule.factor = 0.8
        c.schedule.every_epochs = 100
        c.train.epochs = 2000.0
        c.train.batch_size = 64
    c.train.checkpoint_every = 2000
    c.train.log_every = 100
    # Single-category (binary PartsWorld): icCNN counts only object images (label 1 here) in L_group.
    extra = {"positive_class": 1} if not multi and a.variant in ("iccnn", "hiccnn") else {}
    c.losses = loss_config(a.variant, backbone, multi, c.data.num_classes, **extra)

    if a.runlocal:
        if backbone.startswith("vgg"):
            c.model.kwargs.head = "gap"  # the 4096-wide FC head doubles CPU time (stack.md §6)
        c.data.name = "parts_world" if a.data == "cub" else c.data.name
        c.data.image_size = 64
        c.data.num_classes = 2 if a.data == "binary" else 4
        c.data.train_size, c.data.test_size = 64, 32
        c.train.batch_size = 8
        c.train.steps = 6
        c.train.epochs = 0.0
        c.train.log_every = 2
        c.train.checkpoint_every = 3
        c.train.eval_batch_size = 16
        c.train.hook_batches = 2
        c.losses = loss_config(a.variant, backbone, multi, c.data.num_classes, **extra)
        for spec in c.losses.values():
            if "num_groups" in spec:  # fewer groups: a 2-epoch run still re-clusters on real statistics
                spec.num_groups = 4
            if "recluster_every" in spec:  # every epoch, and training in it (no clustering-only epochs)
                spec.recluster_every = 1
                spec.cluster_only = False
    return c


_MAIN_WEIGHT = {"iccnn": "weight", "hiccnn": "hier_weight", "sync": "sync_weight"}


def loss_sweep(add, config: ml_collections.ConfigDict, scales=(0.5, 1.0, 2.0), seeds=(0, 1)) -> None:
    """Sweep points for ``sweep(add)``: the main weight of each loss (icCNN lambda, HICCNN gamma, sync
    lambda2) times ``scales``, for each seed; the learning rate times ``scales`` when there is no loss.
    Only numbers change, so ``launch.py --sweep`` trains all points in one vmapped program."""
    for seed in seeds:
        for s in scales:
            point = {"seed": seed}
            for name, spec in config.losses.items():
                field = _MAIN_WEIGHT[name]
                point[f"losses.{name}.{field}"] = spec[field] * s if spec[field] else s * 0.1
            if not config.losses:
                point["optimizer.lr"] = config.optimizer.lr * s
            add(**point)
