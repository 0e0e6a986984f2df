"""Quickstart: PartsWorld 64 px (8 classes) + ``small_cnn`` on a laptop CPU in under 10 minutes.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart
    python launch.py --config configs/quickstart.py:backbone=vgg16 --workdir runs/quickstart_vgg16

Builds the data set on first use (``$JINTERP_DATA_DIR`` or ``~/tensorflow_datasets``), trains with AdamW
(lr 3e-3, 100 warm-up steps, cosine to 0, batch 64: the recipe of shared/notes/stack.md §9; 96.4 % test
accuracy after 1101 steps / 519 s with torchvision's conv init, 91.9 % with flax's), evaluates on the 2000
test images, saves a checkpoint and ``predictions.png``, then writes ``evaluation/report.md`` (heatmap grid,
pointing / confidence drop per method, filter metrics; ``outputs.report``). Measured on the 2-core CPU
from a fresh data directory: 8 min 21 s in all, 1105 steps, 95.9 % test accuracy, report 73 s.
``train.time_budget_s`` ties the schedule to the wall clock: after ``calibrate_steps`` timed steps the
run is shortened (the cosine ends at the new last step) so that everything, data build included, ends
within the budget on a slower machine. ``--config.train.time_budget_s=0`` trains all ``train.steps``.

``backbone=`` swaps in another backbone trained from scratch: batch 32; VGG gets ``head="gap"`` and lr
3e-4 (it has no BatchNorm). Measured here: VGG16, 1200 s budget (476 steps at 0.4 steps/s): 49 % test
accuracy (8 classes), with 191 of conv5_3's 512 channels all-zero per test image, the realistic
case for Score-CAM's exact skipping (``benchmarks/cams.py --trained``).
"""

from configs import common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, runlocal=False, backbone="small_cnn")
    if a.backbone not in common.BACKBONES:
        raise ValueError(f"config argument: backbone expected one of {common.BACKBONES}, got {a.backbone!r}")
    c = common.base()
    c.model.name = a.backbone
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
    c.outputs.report = True  # evaluation/report.md: heatmap grid, pointing / confidence drop, filter metrics
    c.evaluate.methods = "grad_cam,grad_cam_pp,layer_cam,score_cam,lrp"
    c.evaluate.num_images = 500
    c.evaluate.num_explained = 64
    c.train.time_reserve_s = 90.0  # the final test pass, the predictions grid and the report
    if a.backbone != "small_cnn":
        c.train.batch_size = 32
    if a.backbone.startswith("vgg"):
        c.model.kwargs.head = "gap"
        c.optimizer.lr = 3e-4
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
