"""jinterp command line: train, sweep, evaluate, explain, look at the data.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart
    python launch.py --config configs/vgg16.py:hiccnn,runlocal --workdir /tmp/v --config.train.steps=20
    python launch.py --config configs/quickstart.py --workdir runs/qs_sweep --sweep
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode evaluate
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode explain
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode show_data

``--config`` is a Python file with ``get_config(arg)`` (``file.py:arg`` passes ``arg``); any field can be
overridden with ``--config.<path>=<value>`` (unknown keys and wrong types are rejected). A training run
resumes from the last checkpoint in ``--workdir``; ``evaluate`` (``jinterp.metrics.report``: accuracy,
filter metrics, localisation and faithfulness of ``config.evaluate.methods``) and ``explain`` (heatmap
grid) restore it. Errors in the config, the workdir or the checkpoint print one line and exit 2.
Everything here is a thin wrapper around importable
functions (``jinterp.train.train_and_evaluate``, ``jinterp.sweep.run_sweep``), usable from notebooks.
"""

import importlib.util
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "explain", "show_data")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (checkpoints, metrics.jsonl, summary.json)."
)
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Run every point of the config's sweep(add) (train mode).")
flags.mark_flags_as_required(["config", "workdir"])


def config_module(path_with_arg: str):
    """The config file's module (for its ``sweep``) and the ``:arg`` part of ``--config``."""
    path, _, arg = path_with_arg.partition(":")
    spec = importlib.util.spec_from_file_location("jinterp_config_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(path)))
    )  # `from configs import common`
    spec.loader.exec_module(module)
    return module, arg or None


def train_mode(config, workdir: str, sweep: bool = False, config_path: str = "") -> dict | list:
    """Train one run (resuming from ``workdir``), or every point of the config's ``sweep``."""
    from jinterp import sweep as sweeps
    from jinterp import train

    train.validate_config(config)
    if not sweep:
        summary = train.train_and_evaluate(config, workdir)
        summary.pop("state", None)
        print(json.dumps(summary, indent=2))
        return summary
    module, arg = config_module(config_path)
    if not hasattr(module, "sweep"):
        raise ValueError(f"--sweep: {config_path} defines no sweep(add) function")
    rows = sweeps.run_sweep(config, module.sweep, workdir, arg=arg)
    print(open(os.path.join(os.path.abspath(workdir), "sweep.md")).read())
    return rows


def _methods(config) -> list[str]:
    return [m.strip() for m in config.evaluate.methods.split(",") if m.strip()]


def evaluate_mode(config, workdir: str) -> dict:
    """Accuracy, filter metrics and per-method localisation/faithfulness of the model in ``workdir``.

    Writes ``workdir/evaluation/{metrics.json, report.md, *.png}`` (``jinterp.metrics.report``).
    """
    from jinterp import train
    from jinterp.metrics import report

    train.validate_config(config)
    model, variables, step = train.restore_model(config, workdir)
    data = train.load_split(config, config.train.eval_split, config.evaluate.num_images)
    results, artifacts = report.evaluate(
        model,
        variables,
        data,
        layer=config.evaluate.layer or None,
        methods=_methods(config),
        num_explained=config.evaluate.num_explained,
    )
    name = f"{config.model.name}@{step}"
    paths = report.write_report(
        {name: results}, os.path.join(os.path.abspath(workdir), "evaluation"), {name: artifacts}
    )
    print(json.dumps({"accuracy": results["accuracy"], "files": paths}, indent=2, default=str))
    return results


def explain_mode(config, workdir: str, num_images: int = 8) -> str:
    """Heatmaps of ``config.evaluate.methods`` on the first test images -> ``workdir/explanations.png``."""
    import numpy as np

    from jinterp import explain, train
    from jinterp.metrics import plots

    train.validate_config(config)
    model, variables, _ = train.restore_model(config, workdir)
    data = train.load_split(config, config.train.eval_split, num_images)
    images = np.asarray(data["image"], np.float32)
    logits, _ = model.apply(variables, images)
    targets = np.asarray(logits).argmax(-1).astype(np.int32)  # explain the predicted class
    layer = config.evaluate.layer
    heatmaps = {}
    for spec in _methods(config):
        name, kwargs = explain.parse(spec)
        if layer and "layer" not in kwargs and "layer" in explain.METHODS[name].options():
            spec = f"{name}({', '.join([*(f'{k}={v!r}' for k, v in kwargs.items()), f'layer={layer!r}'])})"
        heatmaps[spec] = np.asarray(explain.explain(spec, model, variables, images, targets))
    path = os.path.join(os.path.abspath(workdir), "explanations.png")
    plots.plot_heatmap_grid(images, heatmaps, path, max_images=num_images)
    print(f"wrote {path} (targets: predicted classes {targets.tolist()}, labels {data['label'].tolist()})")
    return path


def show_data_mode(config, workdir: str, n: int = 16) -> str:
    """Print the keys/shapes of one training batch and save ``workdir/data.png`` (images with labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jinterp import train

    train.validate_config(config)
    workdir = train.check_workdir(workdir)
    data = train.Data(config.data)
    batch = next(iter(data.eval("train", max(n, 1))))
    for key, value in batch.items():
        print(f"{key:14s} {str(value.shape):22s} {value.dtype}")
    images = np.asarray(batch["image"], np.float32)
    lo, hi = images.min(axis=(1, 2, 3), keepdims=True), images.max(axis=(1, 2, 3), keepdims=True)
    images = (images - lo) / np.maximum(hi - lo, 1e-8)
    cols = min(8, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label in zip(axes.ravel(), images, batch["label"], strict=False):
        ax.imshow(image)
        ax.set_title(f"label {label}", fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "data.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax/tfds INFO lines would drown the progress line
        logging.set_verbosity(logging.ERROR)
    config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
    try:
        if mode == "train":
            train_mode(config, workdir, _SWEEP.value, config_flags.get_config_filename(flags.FLAGS["config"]))
            return 0
        if _SWEEP.value:
            raise ValueError(f"--sweep: only with --mode train, got --mode {mode}")
        if mode == "show_data":
            show_data_mode(config, workdir)
            return 0
        (evaluate_mode if mode == "evaluate" else explain_mode)(config, workdir)
        return 0
    except ValueError as e:  # bad config values, unwritable workdir, incompatible checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 2


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a one-line message (exit 2) for an unknown ``--config.<key>``.

    config_flags raises a bare KeyError/AttributeError for a key the config does not have; absl raises
    ``flags.Error`` for wrong types (``--config.train.steps=abc``) and missing required flags.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # wrong type, missing --workdir, unknown flag
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError) as e:
        message = (
            str(e.args[0] if e.args else e)
            .strip("'\"")
            .replace("\\n", " ")
            .replace("\n", " ")
            .replace("\\", "")
        )
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        print(f"error: unknown config key in {' '.join(bad)}: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
