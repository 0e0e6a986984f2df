"""Quickstart: PartsWorld 64 px (8 classes) + ``small_cnn`` on a laptop CPU in under 10 minutes.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart

Builds the data set on first use (``$JINTERP_DATA_DIR`` or ``~/tensorflow_datasets``), trains with AdamW
(lr 3e-3, 100 warm-up steps, cosine to 0, batch 64: the recipe of shared/notes/stack.md §9, 91.9 % after
~1200 steps), evaluates on the 2000 test images, saves a checkpoint and ``predictions.png``.
``train.time_budget_s`` ties the schedule to the wall clock: after ``calibrate_steps`` timed steps the
run is shortened (the cosine ends at the new last step) so that everything, data build included, ends
within the budget on a slower machine. ``--config.train.time_budget_s=0`` trains all ``train.steps``.
"""

from configs import common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, runlocal=False)
    c = common.base()
    c.model.name = "small_cnn"
    c.data.name = "parts_world"
    c.data.image_size = 64
    c.data.num_classes = 8
    c.train.batch_size = 64
    c.train.steps = 1500
    c.train.time_budget_s = 540.0
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 100
    c.outputs.predictions_png = True
    if a.runlocal:
        c.data.train_size, c.data.test_size = 512, 256
        c.train.steps = 40
        c.train.time_budget_s = 0.0
        c.schedule.warmup_steps = 5
        c.train.log_every = 10
    return c


def sweep(add, arg: str | None = None):
    """Learning rate x seed (numeric only: trained as one vmapped program)."""
    for lr in (1e-3, 3e-3):
        for seed in (0, 1):
            add(**{"optimizer.lr": lr, "seed": seed})
