"""Whole-model evaluation: one call computes the default metric set and writes the report.

``evaluate`` runs a trained model over an evaluation set with ground-truth parts (PartsWorld),
computes accuracy, the filter metrics of one layer (seed 002 eq. 11-14, seed 000 §4.1 / eq. 13-15,
modules), and for each explanation method the localisation and faithfulness metrics on the
first ``num_explained`` images. ``write_report`` saves ``metrics.json`` and ``report.md``;
``compare`` puts several evaluated models side by side. Nothing here knows about training or
checkpoints: the caller passes ``model`` and ``variables``.
"""

import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import check_layers, layer_names
from jinterp.metrics.consistency import inconsistency_diversity_curve, sras
from jinterp.metrics.faithfulness import confidence_change, perturbation_curve
from jinterp.metrics.filters import filter_interpretability
from jinterp.metrics.localization import energy_pointing_game, localization_iou, pointing_game, relevance_mass
from jinterp.metrics.modules import filter_modules, module_consistency, module_part_alignment

DEFAULT_METHODS = ("grad_cam", "grad_cam_pp", "layer_cam", "score_cam", "cluster_cam")
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


def evaluate(
    model,
    variables: dict,
    data: dict[str, np.ndarray],
    *,
    layer: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
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
      methods: explanation specs (``ji.explain.get`` strings); ``layer`` is filled in when absent.
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
    from jinterp import explain  # explain -> metrics is allowed; import lazily to keep metrics light

    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"data: missing keys {missing}; expected {list(REQUIRED_KEYS)}")
    layer = layer or layer_names(model)[-1]
    check_layers(model, [layer], "layer")
    timing = {}
    start = time.perf_counter()
    logits, maps = _forward(model, variables, layer, batch_size)(np.asarray(data["image"], np.float32))
    labels = np.asarray(data["label"])
    accuracy = float((logits.argmax(-1) == labels).mean())
    timing["forward"] = time.perf_counter() - start

    start = time.perf_counter()
    parts = jnp.asarray(data["part_masks"])
    interp = filter_interpretability(maps, parts, phi=phi)
    curve = inconsistency_diversity_curve(maps, parts, jnp.asarray(data["object_mask"]))
    sras_maps = np.asarray(sras(maps, parts))
    consistency = module_consistency(maps, n_modules)
    modules = np.asarray(filter_modules(maps, n_modules))
    part_of_filter = np.asarray(interp["iou"]).mean(0).argmax(-1)
    alignment = module_part_alignment(modules, part_of_filter)
    timing["filters"] = time.perf_counter() - start
    filters = {
        **_scalars(interp),
        **{f"module_{k}": v for k, v in _scalars(consistency).items()},
        **{f"alignment_{k}": v for k, v in _scalars(alignment).items()},
        "sras_mean_per_part": [float(x) for x in np.nanmean(sras_maps, axis=0)],
    }
    curves = {"inconsistency_diversity": _scalars(curve)}

    n = min(num_explained, len(labels))
    images, targets = jnp.asarray(data["image"][:n], jnp.float32), jnp.asarray(labels[:n], jnp.int32)
    disc = jnp.asarray(data["disc_mask"][:n])
    obj = jnp.asarray(data["object_mask"][:n])

    def apply_fn(x):
        return model.apply(variables, x)[0]

    explanations, heatmaps = {}, {}
    for spec in methods:
        spec = spec if "layer=" in spec or "(" in spec else f'{spec}(layer="{layer}")'
        start = time.perf_counter()
        heat = jnp.concatenate(
            [
                explain.explain(
                    spec, model, variables, images[i : i + explain_batch], targets[i : i + explain_batch]
                )
                for i in range(0, n, explain_batch)
            ]
        )
        seconds = time.perf_counter() - start
        scores = {
            "seconds_per_image": seconds / n,
            **{
                f"energy_pointing_{k}": v
                for k, v in _scalars(energy_pointing_game(heat, disc, empty="ignore")).items()
            },
            **{f"pointing_{k}": v for k, v in _scalars(pointing_game(heat, disc, empty="ignore")).items()},
            **{
                f"relevance_mass_{k}": v
                for k, v in _scalars(relevance_mass(heat, obj, empty="ignore")).items()
            },
            **{f"iou_{k}": v for k, v in _scalars(localization_iou(heat, obj, empty="ignore")).items()},
            **{
                f"confidence_{k}": v
                for k, v in _scalars(confidence_change(apply_fn, images, heat, targets)).items()
            },
            **{
                f"deletion_{k}": v
                for k, v in _scalars(perturbation_curve(apply_fn, images, heat, targets)).items()
            },
        }
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
    artifacts = {
        "images": np.asarray(data["image"][:8]),
        "heatmaps": heatmaps,
        "responses": responses,
        "modules": modules,
    }
    return results, artifacts


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


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results_by_model: dict[str, dict]) -> str:
    """Markdown tables: accuracy + filter metrics per model, explanation metrics per model and method."""
    rows = [
        [name, r["accuracy"], r["layer"], *(r["filters"].get(k) for k, _ in FILTER_COLUMNS)]
        for name, r in results_by_model.items()
    ]
    text = "## Filters\n\n" + _table(["model", "accuracy", "layer", *(h for _, h in FILTER_COLUMNS)], rows)
    rows = [
        [name, method, *(scores.get(k) for k, _ in EXPLAIN_COLUMNS)]
        for name, r in results_by_model.items()
        for method, scores in r["explanations"].items()
    ]
    text += (
        "\n\n## Explanations\n\nTargets are the true labels; pointing and energy pointing are scored "
        "against the class's discriminative parts, relevance mass and IoU against the object.\n\n"
    )
    return text + _table(["model", "method", *(h for _, h in EXPLAIN_COLUMNS)], rows) + "\n"


def _method_curves(scores: dict, prefix: str, x: str) -> dict:
    return {
        "energies" if x == "energies" else "fractions": scores[f"{prefix}_{x}"],
        "curve": scores[f"{prefix}_curve"],
        "mean": scores.get(f"{prefix}_mean"),
        "auc_mean": scores.get(f"{prefix}_auc_mean"),
    }


def write_report(
    results_by_model: dict[str, dict], outdir: str, artifacts_by_model: dict | None = None
) -> dict:
    """Write ``metrics.json``, ``report.md`` and the figures of one or several evaluated models.

    Figures: inconsistency-diversity curves of all models; per model, energy-pointing and deletion
    curves of every method, a heatmap grid and a t-SNE of filter responses coloured by module.
    """
    from jinterp.metrics import plots

    os.makedirs(outdir, exist_ok=True)
    paths = {"metrics": os.path.join(outdir, "metrics.json"), "report": os.path.join(outdir, "report.md")}
    with open(paths["metrics"], "w") as f:
        json.dump(results_by_model, f, indent=1)
    figures = [("inconsistency-diversity", "inconsistency_diversity.png")]
    curves = {name: r["curves"]["inconsistency_diversity"] for name, r in results_by_model.items()}
    plots.plot_inconsistency_diversity(curves, os.path.join(outdir, figures[0][1]))
    for name, r in results_by_model.items():
        ex = r["explanations"]
        if ex:
            pointing = {m: _method_curves(s, "energy_pointing", "energies") for m, s in ex.items()}
            deletion = {m: _method_curves(s, "deletion", "fractions") for m, s in ex.items()}
            figures.append((f"{name}: pointing", f"{name}_pointing.png"))
            plots.plot_pointing_curves(pointing, os.path.join(outdir, figures[-1][1]))
            figures.append((f"{name}: deletion", f"{name}_deletion.png"))
            plots.plot_perturbation_curves(deletion, os.path.join(outdir, figures[-1][1]))
        art = (artifacts_by_model or {}).get(name)
        if art is not None:
            if art["heatmaps"]:
                figures.append((f"{name}: heatmaps", f"{name}_heatmaps.png"))
                plots.plot_heatmap_grid(art["images"], art["heatmaps"], os.path.join(outdir, figures[-1][1]))
            figures.append((f"{name}: t-SNE of filters by module", f"{name}_tsne.png"))
            plots.plot_tsne(
                art["responses"], art["modules"], os.path.join(outdir, figures[-1][1]), title=name
            )
    with open(paths["report"], "w") as f:
        f.write("# jinterp evaluation report\n\n")
        f.write(markdown(results_by_model))
        f.write("\n" + "\n".join(f"![{title}]({file})" for title, file in figures) + "\n")
    paths.update({file.removesuffix(".png"): os.path.join(outdir, file) for _, file in figures})
    return paths


def compare(metrics_files: dict[str, str], outdir: str) -> dict:
    """One report over several evaluated runs (``launch.py --mode evaluate`` wrote each ``metrics.json``).

    Args:
      metrics_files: ``{display name: path to an evaluation/metrics.json}``; each file holds one model.
      outdir: where the combined ``metrics.json``, ``report.md`` and figures go.
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
    return write_report(results, outdir)


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m jinterp.metrics.report --out DIR cnn=runs/cnn/evaluation/metrics.json iccnn=...``."""
    import argparse

    parser = argparse.ArgumentParser(description=compare.__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+", help="name=path/to/metrics.json")
    args = parser.parse_args(argv)
    pairs = [r.partition("=") for r in args.runs]
    bad = [r for r, (_, sep, _) in zip(args.runs, pairs, strict=True) if not sep]
    if bad:
        parser.error(f"runs: expected name=path/to/metrics.json, got {bad}")
    paths = compare({name: path for name, _, path in pairs}, args.out)
    print(paths["report"])
    return paths


if __name__ == "__main__":
    main()
