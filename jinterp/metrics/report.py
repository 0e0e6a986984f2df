"""Whole-model evaluation: one call computes the default metric set; the report's tables.

``evaluate`` runs a trained model over an evaluation set with ground-truth parts (PartsWorld),
computes accuracy, the filter metrics of one layer (seed 002 eq. 11-14, seed 000 §4.1 / eq. 13-15,
modules), and for each explanation method the ``METRICS`` entries named by ``metrics``
(localisation and faithfulness by default) on the first ``num_explained`` images. ``write_report``
saves ``metrics.json`` and ``report.md`` (tables, plus links to figure files it is given);
``load_runs`` reads several evaluated runs to put them side by side. No figures here: the figures
and the one-call report (tables + figures) are ``jinterp.viz.write_report`` / ``viz.compare``.
Nothing here knows about training or checkpoints: the caller passes ``model`` and ``variables``.
"""

import functools
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import check_layers, layer_names
from jinterp.metrics import METRICS, compute
from jinterp.metrics.consistency import inconsistency_diversity_curve, sras
from jinterp.metrics.filters import filter_interpretability
from jinterp.metrics.modules import filter_modules, module_consistency, module_part_alignment
from jinterp.ops.table import markdown_table
from jinterp.progress import bar as progress_bar

DEFAULT_METHODS = ("grad_cam", "grad_cam_pp", "layer_cam", "score_cam", "cluster_cam")
# ``METRICS`` entries scored per explanation method; keys ``<prefix>_<score>`` (e.g. ``iou_mean``).
EXPLANATION_METRICS = (
    "energy_pointing_game",
    "pointing_game",
    "relevance_mass",
    "localization_iou",
    "confidence_change",
    "deletion",
)
EXPLANATION_INPUTS = ("heatmaps", "disc_mask", "object_mask", "images", "targets", "apply_fn")
REQUIRED_KEYS = ("image", "label", "part_masks", "object_mask", "disc_mask")


def _forward(model, variables, layer, batch_size):
    @jax.jit
    def run(images):
        logits, out = model.apply(variables, images)
        return logits, out[layer]

    def apply_all(images):
        outs = [run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    return apply_all


PER_IMAGE_KEYS = (
    "auc",
    "targets",
    "valid",
    "p_image",
    "p_explanation",
    "per_image",
    "prob",
    "correct",
    "iou",
)


def _scalars(d: dict) -> dict:
    """Keep what a report tabulates: scalars and curves (short 1-D arrays), not per-image values."""
    out = {}
    for k, v in d.items():
        if k in PER_IMAGE_KEYS:
            continue
        a = np.asarray(v)
        if a.ndim == 0:
            out[k] = float(a)
        elif a.ndim == 1 and a.size <= 64:
            out[k] = [float(x) for x in a]
    return out


def _check_inputs(data: dict, metrics: Sequence[str]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"data: missing keys {missing}; expected {list(REQUIRED_KEYS)}")
    if isinstance(metrics, str):
        raise ValueError(f"metrics: expected a sequence of METRICS names, got the string {metrics!r}")
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r}; expected one of {sorted(METRICS)}")
        missing = [k for k in METRICS[name].inputs if k not in EXPLANATION_INPUTS]
        if missing:
            raise ValueError(
                f"metrics: {name!r} needs {missing}, which evaluate does not have per method "
                f"(it has {list(EXPLANATION_INPUTS)})"
            )


def evaluate(
    model,
    variables: dict,
    data: dict[str, np.ndarray],
    *,
    layer: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    metrics: Sequence[str] = EXPLANATION_METRICS,
    num_explained: int = 256,
    explain_batch: int = 32,
    batch_size: int = 128,
    n_modules: int = 6,
    phi: float = 0.2,
) -> dict:
    """Evaluate ``model`` on ``data`` (arrays with keys ``REQUIRED_KEYS``, images normalised).

    Args:
      model, variables: the trained network (BatchNorm in eval mode).
      data: evaluation arrays: ``image`` (N,H,W,3), ``label`` (N,), ``part_masks`` (N,H,W,P),
        ``object_mask`` and ``disc_mask`` (N,H,W).
      layer: layer for the filter metrics; default the last tappable layer.
      methods: explanation specs (``ji.explain.get`` strings); ``layer`` is filled in where the
        method takes one and the spec leaves it out (``explain.with_defaults``).
      metrics: ``jinterp.metrics.METRICS`` names scored per method, from the inputs
        ``EXPLANATION_INPUTS``; each score is stored as ``<entry prefix>_<key>``.
      num_explained: images explained per method (localisation, faithfulness metrics).
      explain_batch: images per explanation call.
      batch_size: images per forward pass.
      n_modules: modules for module consistency / alignment (seed 002 §IV-E).
      phi: IoU threshold assigning a filter to a part (seed 002: 0.2 for animal parts).

    Returns:
      ``(results, artifacts)``: ``results`` is JSON-ready, ``{"accuracy", "filters", "curves",
      "explanations": {method: {...}}, "timing"}``; ``artifacts`` holds arrays for the figures
      (``images`` and per-method ``heatmaps`` of the first 8 images, filter ``responses`` and
      their ``modules`` for the t-SNE plot).
    """
    _check_inputs(data, metrics)
    layer = layer or layer_names(model)[-1]
    check_layers(model, [layer], "layer")
    start = time.perf_counter()
    logits, maps = _forward(model, variables, layer, batch_size)(np.asarray(data["image"], np.float32))
    labels = np.asarray(data["label"])
    accuracy = float((logits.argmax(-1) == labels).mean())
    timing = {"forward": time.perf_counter() - start}

    start = time.perf_counter()
    filters, curves, modules = _filter_scores(maps, data, n_modules, phi)
    timing["filters"] = time.perf_counter() - start

    n = min(num_explained, len(labels))
    inputs = {
        "images": jnp.asarray(data["image"][:n], jnp.float32),
        "targets": jnp.asarray(labels[:n], jnp.int32),
        "disc_mask": jnp.asarray(data["disc_mask"][:n]),
        "object_mask": jnp.asarray(data["object_mask"][:n]),
        "apply_fn": lambda x: model.apply(variables, x)[0],
    }
    explanations, heatmaps = {}, {}
    for spec in progress_bar(methods, desc="explain", unit="method"):
        spec, scores, heat = _explanation_scores(
            model, variables, spec, layer, inputs, metrics, explain_batch
        )
        explanations[spec] = scores
        heatmaps[spec] = np.asarray(heat[:8])
    results = {
        "accuracy": accuracy,
        "num_images": int(len(labels)),
        "layer": layer,
        "filters": filters,
        "curves": curves,
        "explanations": explanations,
        "timing": timing,
    }
    responses = np.moveaxis(maps[:64], -1, 0).reshape(maps.shape[-1], -1)  # one row per filter
    images = np.asarray(data["image"][:8])
    return results, {"images": images, "heatmaps": heatmaps, "responses": responses, "modules": modules}


def _filter_scores(maps, data, n_modules: int, phi: float) -> tuple[dict, dict, np.ndarray]:
    """Filter metrics of one layer's ``maps``: ``(filters, curves, modules)`` of :func:`evaluate`."""
    parts = jnp.asarray(data["part_masks"])
    interp = filter_interpretability(maps, parts, phi=phi)
    curve = inconsistency_diversity_curve(maps, parts, jnp.asarray(data["object_mask"]))
    sras_maps = np.asarray(sras(maps, parts))
    consistency = module_consistency(maps, n_modules)
    modules = np.asarray(filter_modules(maps, n_modules))
    part_of_filter = np.asarray(interp["iou"]).mean(0).argmax(-1)
    alignment = module_part_alignment(modules, part_of_filter)
    filters = {
        **_scalars(interp),
        **{f"module_{k}": v for k, v in _scalars(consistency).items()},
        **{f"alignment_{k}": v for k, v in _scalars(alignment).items()},
        "sras_mean_per_part": [float(x) for x in np.nanmean(sras_maps, axis=0)],
    }
    return filters, {"inconsistency_diversity": _scalars(curve)}, modules


def _on_local_devices(fn, model, variables, images, targets):
    """``fn(model, variables, images, targets)`` with the images split over every local device (the
    batch padded with its last image to a multiple of the device count, the padding dropped after)."""
    devices = jax.local_devices()
    n = len(targets)
    pad = -n % len(devices)
    images = jnp.concatenate([images, jnp.repeat(images[-1:], pad, axis=0)])
    targets = jnp.concatenate([targets, jnp.repeat(targets[-1:], pad, axis=0)])
    mesh = jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return fn(model, variables, jax.device_put(images, sharding), jax.device_put(targets, sharding))[:n]


def _explanation_scores(model, variables, spec, layer, inputs, metrics, explain_batch):
    """Explain ``inputs["images"]`` with ``spec`` (layer filled in) and score it by ``metrics``:
    ``(full spec, {"seconds_per_image", "<prefix>_<key>": ...}, heatmaps)``."""
    from jinterp import explain  # explain -> metrics is allowed; import lazily to keep metrics light

    spec = explain.with_defaults(spec, layer=layer)
    images, targets = inputs["images"], inputs["targets"]
    n = len(targets)
    start = time.perf_counter()
    run = functools.partial(explain.explain, spec)
    chunks = [
        _on_local_devices(
            run, model, variables, images[i : i + explain_batch], targets[i : i + explain_batch]
        )
        for i in range(0, n, explain_batch)
    ]
    heat = jnp.concatenate(chunks)
    scores = {"seconds_per_image": (time.perf_counter() - start) / n}
    for name in metrics:
        prefix = METRICS[name].prefix or name
        result = compute(name, {**inputs, "heatmaps": heat})
        scores.update({f"{prefix}_{k}": v for k, v in _scalars(result).items()})
    return spec, scores, heat


FILTER_COLUMNS = (
    ("interp_mean", "Interp ↑"),
    ("stability_mean", "Stability ↓"),
    ("purity_mean", "Purity ↓"),
    ("diversity_mean", "Diversity ↑"),
    ("module_consistency", "Module consistency ↓"),
    ("alignment_nmi", "NMI ↑"),
    ("alignment_ari", "ARI ↑"),
)
EXPLAIN_COLUMNS = (
    ("energy_pointing_mean", "Energy pointing ↑"),
    ("pointing_mean", "Pointing (disc parts) ↑"),
    ("relevance_mass_mean", "Relevance mass ↑"),
    ("iou_mean", "IoU (object) ↑"),
    ("confidence_average_drop", "Average drop ↓"),
    ("confidence_increase", "Increase ↑"),
    ("deletion_auc_mean", "Deletion AUC ↓"),
    ("seconds_per_image", "s / image"),
)


def markdown(results_by_model: dict[str, dict]) -> str:
    """Markdown tables: accuracy + filter metrics per model, explanation metrics per model and method."""
    rows = [
        [
            name,
            r.get("num_images", ""),
            r["accuracy"],
            r["layer"],
            *(r["filters"].get(k) for k, _ in FILTER_COLUMNS),
        ]
        for name, r in results_by_model.items()
    ]
    text = "## Filters\n\n" + markdown_table(
        ["model", "images", "accuracy", "layer", *(h for _, h in FILTER_COLUMNS)], rows
    )
    rows = [
        [name, method, *(scores.get(k) for k, _ in EXPLAIN_COLUMNS)]
        for name, r in results_by_model.items()
        for method, scores in r["explanations"].items()
    ]
    text += (
        "\n\n## Explanations\n\nTargets are the true labels; pointing and energy pointing are scored "
        "against the class's discriminative parts, relevance mass and IoU against the object.\n\n"
    )
    return text + markdown_table(["model", "method", *(h for _, h in EXPLAIN_COLUMNS)], rows) + "\n"


def write_report(
    results_by_model: dict[str, dict], outdir: str, *, figures: Sequence[tuple[str, str]] = ()
) -> dict:
    """Write ``metrics.json`` (``results_by_model`` as given) and ``report.md`` (the tables of
    :func:`markdown`, then one image link per figure) into ``outdir``.

    Args:
      results_by_model: ``{model name: evaluate(...)[0]}``.
      outdir: created if missing.
      figures: ``(title, file name relative to outdir)`` of figures drawn elsewhere
        (``jinterp.viz.report_figures``), linked at the end of the report.

    Returns:
      ``{"metrics": path, "report": path}``.
    """
    os.makedirs(outdir, exist_ok=True)
    paths = {"metrics": os.path.join(outdir, "metrics.json"), "report": os.path.join(outdir, "report.md")}
    with open(paths["metrics"], "w") as f:
        json.dump(results_by_model, f, indent=1)
    with open(paths["report"], "w") as f:
        f.write("# jinterp evaluation report\n\n")
        f.write(markdown(results_by_model))
        f.write("\n" + "\n".join(f"![{title}]({file})" for title, file in figures) + "\n")
    return paths


def load_runs(metrics_files: dict[str, str]) -> dict[str, dict]:
    """Results of several evaluated runs (``launch.py --mode evaluate`` wrote each ``metrics.json``).

    Args:
      metrics_files: ``{display name: path to an evaluation/metrics.json}``; each file holds one model.

    Returns:
      ``{display name: results}``, ready for ``write_report`` / ``jinterp.viz.write_report``.
    """
    results = {}
    for name, path in metrics_files.items():
        if not os.path.exists(path):
            raise ValueError(
                f"metrics_files: {name}={path!r} does not exist; run launch.py --mode evaluate first"
            )
        with open(path) as f:
            stored = json.load(f)
        results[name] = next(iter(stored.values()))
    return results
