"""Right for the right reasons on PartsWorld: the quickstart model, with or without the explanation loss.

    python launch.py --config configs/rrr.py:rrr --workdir runs/rrr_s0 --config.seed=0
    python launch.py --config configs/rrr.py:cnn --workdir runs/cnn_s0 --config.seed=0
    python launch.py --config configs/rrr.py:rrr --workdir runs/rrr_s0 --mode evaluate

``rrr`` adds ``jinterp.losses.RightReasons(method="grad_cam")`` (Ross et al. 2017 eq. 1, as an
attribution prior on Grad-CAM at ``conv6``): the share of the heatmap outside ``object_mask``, weight 1
(the penalty lies in [0, 1], the size of the cross-entropy early in training; not tuned on test images).
Both variants train 300 steps with the same data order; ``evaluate`` scores Grad-CAM on the test split.
Trained from scratch at weight 1 the penalty wins over the cross-entropy and costs accuracy (README).
The equal-accuracy demonstration is the fidelity runner's ``explanation_loss`` section
(``jinterp.fidelity.explanation_loss``): both arms continue one trained CNN and the weight is chosen on
held-out images (``docs/fidelity_explanation_loss.md``).
"""

from configs import common, quickstart


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, variant="rrr")
    if a.variant not in ("rrr", "cnn"):
        raise ValueError(f"config argument: variant expected rrr or cnn, got {a.variant!r}")
    c = quickstart.get_config(None)
    c.train.steps = 300
    c.train.time_budget_s = 0.0
    c.outputs.predictions_png = False
    c.evaluate.methods = "grad_cam"
    c.evaluate.layer = "conv6"
    c.evaluate.num_images = 256
    c.evaluate.num_explained = 128
    if a.variant == "rrr":
        c.losses = {"rrr": {"method": "grad_cam", "layer": "conv6", "weight": 1.0}}
    return c
