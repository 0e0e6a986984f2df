"""jinterp's one command line: train, sweep, evaluate, explain, look at the data, concepts, compare,
fidelity (the papers' claims re-run), clam.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart                  # train
    python launch.py --config configs/vgg16.py:hiccnn,runlocal --workdir /tmp/v --config.train.steps=20
    python launch.py --config configs/quickstart.py --workdir runs/qs_sweep --mode sweep       # sweep(add)
    python launch.py --config configs/quickstart.py --workdir runs/qs_sweep --mode sweep --sweep_shard=1/4
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode evaluate  # report.md
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode explain   # heatmaps
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode show_data
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode concepts  # seed 001
    python launch.py --config configs/quickstart.py --workdir runs/compare --mode compare \\
        --runs cnn=runs/cnn/evaluation/metrics.json,hiccnn=runs/hiccnn/evaluation/metrics.json
    python launch.py --config configs/fidelity.py --workdir runs/fidelity --mode fidelity      # fidelity.md
    python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode clam      # seed 003

``--config`` is a Python file with ``get_config(arg)`` (``file.py:arg`` passes ``arg``); any field can be
overridden with ``--config.<path>=<value>`` (unknown keys and wrong types are rejected). Training resumes
from the last checkpoint in ``--workdir``; ``evaluate``, ``explain`` and ``concepts`` restore it. Errors in
the config, the workdir, the checkpoint or the data print one line ``error: ...`` and exit 2 (``--debug``
also prints the traceback); a damaged checkpoint is skipped for the newest one that restores
(``jinterp.train.Checkpoints``); a non-finite loss stops training as ``train.nan_policy`` says. Each
mode is a few lines over
importable functions (``jinterp.train``, ``jinterp.sweep``, ``jinterp.metrics``, ``jinterp.viz``).
"""

import importlib.util
import json
import os
import sys
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "sweep", "evaluate", "explain", "show_data", "concepts", "compare", "fidelity", "clam")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, reports).")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Same as --mode sweep.")
_RUNS = flags.DEFINE_string("runs", "", "--mode compare: name=path/to/metrics.json,name=...")
_DEBUG = flags.DEFINE_bool("debug", False, "On an error, print the traceback too.")
_SHARD = flags.DEFINE_string(
    "sweep_shard", "0/1", "--mode sweep: train points i, i+n, ... of the sweep (i/n)."
)
flags.mark_flags_as_required(["config", "workdir"])


def _methods(config) -> list[str]:
    """``config.evaluate.methods`` as specs, each validated (method, options) before any work starts."""
    from jinterp import explain

    specs = [m.strip() for m in config.evaluate.methods.split(",") if m.strip()]
    for spec in specs:
        explain.method(spec)
    return specs


def _items(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def train_mode(config, workdir: str) -> dict:
    """Train one run (resuming from ``workdir``); ``predictions.png`` and the evaluation report
    (``evaluation/report.md``, as ``--mode evaluate``) when ``config.outputs`` asks."""
    from jinterp import train, viz

    summary = train.train_and_evaluate(config, workdir)
    state = summary.pop("state")
    model = train.Trainer(config).model
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if config.outputs.predictions_png:
        test = train.load_split(config.data, config.train.eval_split, 16)
        pred = train.predict(model, variables, test["image"])
        titles = [f"pred {p} / {y}" for p, y in zip(pred, test["label"], strict=True)]
        colors = ["green" if p == y else "red" for p, y in zip(pred, test["label"], strict=True)]
        fig = viz.plot_image_grid(test["image"], titles=titles, title_colors=colors)
        summary["predictions_png"] = viz.save_figure(fig, os.path.join(workdir, "predictions.png"))
    if config.outputs.report:
        summary["report"] = _train_report(config, workdir, model, variables, summary["step"])
    print(json.dumps(summary, indent=2))
    return summary


def _train_report(config, workdir: str, model, variables, step: int) -> str:
    """The main job's ``evaluation/report.md``; skipped, with the reason, for data without part masks."""
    from jinterp import train

    data = train.load_split(config.data, config.train.eval_split, config.evaluate.num_images)
    if "part_masks" not in data:
        reason = f"{config.data.name!r} has no part masks (pointing, filter metrics)"
        print(f"report: skipped, {reason}", file=sys.stderr)
        return ""
    start = time.time()
    _, paths = evaluation_report(config, workdir, model, variables, step, data)
    print(f"report: {paths['report']} ({time.time() - start:.0f} s)", file=sys.stderr)
    return paths["report"]


def sweep_mode(config, workdir: str) -> list:
    """Every point of the config file's ``sweep(add)`` -> ``sweep.csv`` / ``sweep.md``."""
    from jinterp import sweep

    path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    spec = importlib.util.spec_from_file_location("jinterp_config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # `from configs import common` resolves: launch.py sits in the root
    if not hasattr(module, "sweep"):
        raise ValueError(f"--mode sweep: {path} defines no sweep(add) function")
    rows = sweep.run_sweep(config, module.sweep, workdir, arg=arg or None, shard=_SHARD.value)
    table = os.path.join(workdir, "sweep.md")
    print(
        open(table).read() if os.path.exists(table) else f"shard {_SHARD.value} done; sweep.md once all are"
    )
    return rows


def evaluate_mode(config, workdir: str) -> dict:
    """Accuracy, filter metrics, per-method localisation / faithfulness -> ``workdir/evaluation/``."""
    from jinterp import train

    model, variables, step = train.restore_model(config, workdir)
    data = train.load_split(config.data, config.train.eval_split, config.evaluate.num_images)
    results, paths = evaluation_report(config, workdir, model, variables, step, data)
    print(json.dumps({"accuracy": results["accuracy"], "files": paths}, indent=2, default=str))
    return results


def evaluation_report(config, workdir: str, model, variables, step: int, data: dict) -> tuple[dict, dict]:
    """``metrics.report.evaluate`` of ``config.evaluate`` on ``data`` -> ``workdir/evaluation/``
    (``report.md``, ``metrics.json``, figures); returns the results and the written paths."""
    from jinterp import viz
    from jinterp.metrics import report

    results, artifacts = report.evaluate(
        model,
        variables,
        data,
        layer=config.evaluate.layer or None,
        methods=_methods(config),
        num_explained=config.evaluate.num_explained,
    )
    name = f"{config.model.name}@{step}"
    paths = viz.write_report({name: results}, os.path.join(workdir, "evaluation"), {name: artifacts})
    return results, paths


def explain_mode(config, workdir: str, num_images: int = 8) -> str:
    """Heatmaps of ``config.evaluate.methods`` for the predicted classes -> ``workdir/explanations.png``."""
    from jinterp import explain, train, viz

    model, variables, _ = train.restore_model(config, workdir)
    data = train.load_split(config.data, config.train.eval_split, num_images)
    targets = train.predict(model, variables, data["image"])
    heatmaps = {}
    for spec in _methods(config):
        spec = explain.with_defaults(spec, layer=config.evaluate.layer or None)
        heatmaps[spec] = explain.explain(spec, model, variables, data["image"], targets)
    path = viz.save_figure(
        viz.plot_heatmap_grid(data["image"], heatmaps), os.path.join(workdir, "explanations.png")
    )
    print(f"wrote {path} (targets: predicted classes {targets.tolist()}, labels {data['label'].tolist()})")
    return path


def show_data_mode(config, workdir: str, n: int = 16) -> str:
    """Keys / shapes of the first training examples, and ``workdir/data.png`` (images, parts, classes)."""
    from jinterp import train, viz
    from jinterp.data import feed, parts_world_classes

    batch = train.load_split(config.data, "train", n)
    for key, value in batch.items():
        print(f"{key:14s} {str(value.shape):22s} {value.dtype}")
    names = None
    if config.data.name.startswith("parts_world"):
        names = [c["name"] for c in parts_world_classes(feed.parts_world_config_of(config.data))]
    path = os.path.join(workdir, "data.png")
    viz.save_examples_grid(batch, path, class_names=names, num=n, normalize=config.data.normalize)
    print(f"wrote {path}")
    return path


def concepts_mode(config, workdir: str) -> dict:
    """Seed 001's protocol on the trained model -> ``workdir/concepts/{table.md, results.json, *.png}``."""
    from jinterp import train, viz
    from jinterp.data import feed
    from jinterp.metrics import concepts_eval

    if not config.data.name.startswith("parts_world"):
        raise ValueError(f"--mode concepts: needs PartsWorld part masks, got data {config.data.name!r}")
    c = config.concepts
    model, variables, step = train.restore_model(config, workdir)
    data = train.load_split(config.data, config.train.eval_split, c.num_images)
    result = concepts_eval.run_protocol(
        model, variables, data, feed.parts_world_config_of(config.data), layers=_items(c.layers),
        cam_methods=_items(c.cams), lam=c.lam, linkage=c.linkage, batch_images=c.batch_images,
        progress=lambda s: print(s, flush=True),
    )  # fmt: skip
    out = os.path.join(workdir, "concepts")
    text = concepts_eval.format_table(result) + (
        f"\n\nModel {config.model.name} at step {step}, accuracy {result['accuracy']:.3f} on these images, "
        f"{result['wall_s']:.0f} s.\n"
    )
    viz.save_figure(viz.plot_iou_vs_complexity(result), os.path.join(out, "iou_vs_complexity.png"), dpi=110)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({**result, "step": step}, f, indent=2, default=float)
    print(text)
    return result


def compare_mode(config, workdir: str) -> dict:
    """One report over evaluated runs (``--runs name=metrics.json,...``) -> ``workdir/report.md``."""
    from jinterp import viz

    pairs = [r.partition("=") for r in _items(_RUNS.value)]
    if not pairs or any(not sep for _, sep, _ in pairs):
        raise ValueError(f"--runs: expected name=path/to/metrics.json[,name=...], got {_RUNS.value!r}")
    paths = viz.compare({name: path for name, _, path in pairs}, workdir)
    print(paths["report"])
    return paths


def fidelity_mode(config, workdir: str) -> dict:
    """The papers' claims re-run (``jinterp.fidelity``) -> ``workdir/fidelity.md`` (+ a report_dir copy)."""
    from jinterp import fidelity

    command = " ".join(["python launch.py", *sys.argv[1:]]) if sys.argv[0].endswith("launch.py") else ""
    result = fidelity.run_fidelity(config, workdir, command=command, progress=lambda s: print(s, flush=True))
    print(open(result["report"]).read())
    return result


def clam_mode(config, workdir: str) -> dict:
    """Seed 003: fit CLA-layers on the trained model in ``workdir`` and evaluate -> ``workdir/clam/``."""
    from jinterp.fidelity import clam

    return clam.launch(config, workdir)


def run(mode: str, config, workdir: str):
    """Validate the config and the workdir, then run ``mode`` (what ``main`` does, without flags)."""
    from jinterp import train

    train.validate_config(config)
    train.parallel.initialize(config)  # every mode: a multi-host job starts JAX's runtime first
    workdir = train.check_workdir(workdir)
    if mode in ("evaluate", "explain"):
        _methods(config)  # a bad spec fails before a checkpoint is restored
    modes = {"train": train_mode, "sweep": sweep_mode, "evaluate": evaluate_mode, "explain": explain_mode,
             "show_data": show_data_mode, "concepts": concepts_mode, "compare": compare_mode,
             "fidelity": fidelity_mode, "clam": clam_mode}  # fmt: skip
    return modes[mode](config, workdir)


def one_line(text: str) -> str:
    """An error message on one line: a traceback embedded in it (config_flags puts the config file's in)
    is reduced to its last line, the exception itself."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        head = lines[0] if not lines[0].startswith("Traceback") else ""
        lines = [head, lines[-1]] if head else [lines[-1]]
    return " ".join(lines)


def report_error(e: BaseException, debug: bool) -> int:
    """Print ``error: ...`` on one line (and the traceback with ``--debug``); the exit status, 2."""
    if debug:
        traceback.print_exception(e)
    message = one_line(str(e)) if isinstance(e, ValueError) else f"{type(e).__name__}: {one_line(str(e))}"
    hint = "" if debug or isinstance(e, ValueError) else " (rerun with --debug for the traceback)"
    print(f"error: {message}{hint}", file=sys.stderr)
    return 2


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax/tfds INFO lines would drown the progress line
        logging.set_verbosity(logging.ERROR)
    mode = "sweep" if _SWEEP.value else _MODE.value
    if _SWEEP.value and _MODE.value not in ("train", "sweep"):
        print(f"error: --sweep: only with --mode train or sweep, got --mode {_MODE.value}", file=sys.stderr)
        return 2
    return execute(mode, _flag_config, _WORKDIR.value, _DEBUG.value)


def _flag_config():
    """``--config``'s config (config_flags loads the file here, on first access)."""
    path = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
    if not os.path.isfile(path):
        raise ValueError(f"--config: no config file at {path!r} (expected configs/<name>.py[:arg])")
    return _CONFIG.value


def execute(mode: str, get_config, workdir: str, debug: bool = False) -> int:
    """:func:`run` with every failure reported as one ``error: ...`` line (exit status 2, traceback with
    ``debug``); ``get_config()`` gives the config (config_flags loads the file only then)."""
    try:  # ValueError: bad config, workdir, checkpoint, spec; anything else: one line too
        run(mode, get_config(), workdir)
    except Exception as e:
        return report_error(e, debug)
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a one-line message (exit 2) for an unknown ``--config.<key>``.

    config_flags raises a bare KeyError/AttributeError for a key the config does not have; absl raises
    ``flags.Error`` for wrong types (``--config.train.steps=abc``) and missing required flags.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # wrong type, missing --workdir, unknown flag, a config file that raised
        if "--debug" in argv:
            traceback.print_exception(e)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError) as e:
        message = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ").replace("\n", " ")
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        print(
            f"error: unknown config key in {' '.join(bad)}: {message.replace(chr(92), '')}", file=sys.stderr
        )
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
