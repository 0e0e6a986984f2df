"""``small_cnn`` on PartsWorld 64 px with each interpretability loss: quickstart-sized comparisons.

    python launch.py --config configs/small_cnn.py:hiccnn --workdir runs/small_hiccnn
    python launch.py --config configs/small_cnn.py:sync --workdir runs/small_sync
    python launch.py --config configs/small_cnn.py:iccnn --workdir runs/small_iccnn --sweep

Variants ``cnn``, ``iccnn``, ``hiccnn``, ``sync``, ``sync_no_sync``: the quickstart optimiser (AdamW
3e-3, warm-up + cosine; ``configs/quickstart.py``) so the runs compare the losses, not the recipes, with
the papers' loss weights for a residual-free backbone (HICCNN §4, shared/seeds/000_*: lambda = 1.0,
multi-category lambda = beta = 0.1, gamma = 0.01; sync §IV-A5, shared/seeds/002_*: lambda1 = 0.2,
lambda2 = 0.1, eps = 0.03) on layers ``conv4`` (shallow) / ``conv6`` (deep, 8x8 at 64 px).
icCNN re-clusters every 2 epochs (its code's T = 2) over ``train.hook_batches`` batches.
"""

from configs import common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, variant="hiccnn", runlocal=False)
    if a.variant not in common.VARIANTS:
        raise ValueError(f"config argument: variant expected one of {common.VARIANTS}, got {a.variant!r}")
    c = common.base()
    c.model.name = "small_cnn"
    c.data.image_size = 64
    c.data.num_classes = 8
    c.train.batch_size = 64
    c.train.steps = 1500
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.hook_batches = 20
    c.losses = common.loss_config(a.variant, "small_cnn", True, c.data.num_classes)
    if a.runlocal:
        c.data.train_size, c.data.test_size = 256, 128
        c.train.batch_size = 32
        c.train.steps = 20
        c.train.log_every = 5
        c.train.hook_batches = 2
        c.schedule.warmup_steps = 5
    return c


def sweep(add, arg: str | None = None):
    """The variant's loss weights around the paper values, two seeds (vmapped: numeric only)."""
    common.loss_sweep(add, get_config(arg))
