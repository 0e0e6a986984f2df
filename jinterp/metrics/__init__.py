"""Metrics: filter interpretability, localisation, faithfulness, modules.

Every metric is a pure function of arrays (NHWC maps, (N, H, W) heatmaps and masks) that returns a
dict of ``jax.Array`` scores. ``METRICS`` maps a name to the function and what it needs, so a config
can list metric names (``report.evaluate(..., metrics=names)`` does this per explanation method)::

    for name in config.metrics:
        scores = compute(name, inputs)  # METRICS[name].fn(*(inputs[k] for k in .inputs), **.defaults)

Adding a metric is one ``METRICS`` line.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

from jinterp.metrics.concepts_eval import evaluate_concepts
from jinterp.metrics.consistency import inconsistency_diversity_curve, sras
from jinterp.metrics.faithfulness import confidence_change, gaussian_blur, perturbation_curve
from jinterp.metrics.filters import (
    filter_focus,
    filter_interpretability,
    filter_thresholds,
    landmark_metric_curves,
    metrics_from_assignment,
    part_iou,
)
from jinterp.metrics.localization import (
    boxes_to_masks,
    energy_pointing_game,
    localization_iou,
    mean_max_iou,
    pointing_game,
    relevance_mass,
)
from jinterp.metrics.modules import (
    adjusted_variation_of_information,
    filter_modules,
    module_consistency,
    module_part_alignment,
    pruning_curve,
    spectral_labels,
    taylor_importance,
)


class Metric(NamedTuple):
    """Registry entry.

    ``inputs`` names the positional data the function takes, from: ``maps`` (N, h, w, C),
    ``part_masks`` (N, H, W, K), ``object_mask`` (N, H, W), ``disc_mask`` (N, H, W, the parts that
    define the class), ``heatmaps`` (N, H, W), ``images``, ``targets`` (N,), ``apply_fn``,
    ``landmarks``; ``scalars`` are the keys of the returned dict worth tabulating, each with ``+1``
    (higher is better) or ``-1``; ``source`` cites the definition; ``default`` marks the default
    evaluation set; ``defaults`` are keyword arguments always passed; ``prefix`` starts the keys of
    its scores in a report (None: the registry name).
    """

    fn: Any
    inputs: tuple[str, ...]
    scalars: dict[str, int]
    source: str
    default: bool = True
    defaults: dict[str, Any] = {}
    prefix: str | None = None


# Masks of images without the object / defining parts (hidden by an occluder) are skipped, not errors.
_IGNORE_EMPTY = {"empty": "ignore"}

METRICS: dict[str, Metric] = {
    "filter_interpretability": Metric(
        filter_interpretability,
        ("maps", "part_masks"),
        {"interp_mean": 1, "stability_mean": -1, "purity_mean": -1, "diversity_mean": 1},
        "seed 002 eq. 11-14",
    ),
    "landmark_curves": Metric(
        landmark_metric_curves, ("maps", "landmarks", "image_size"), {}, "seed 002 §III-D", default=False
    ),
    "inconsistency_diversity": Metric(
        inconsistency_diversity_curve, ("maps", "part_masks", "object_mask"), {}, "seed 000 §4.1"
    ),
    "sras_maps": Metric(sras, ("maps", "part_masks"), {}, "seed 000 eq. 13-15"),
    "sras_heatmaps": Metric(sras, ("heatmaps", "part_masks"), {}, "seed 000 eq. 13-15 on Grad-CAM maps"),
    "energy_pointing_game": Metric(
        energy_pointing_game,
        ("heatmaps", "disc_mask"),
        {"mean": 1, "lower": 1, "higher": 1},
        "seed 003 eq. 6",
        defaults=_IGNORE_EMPTY,
        prefix="energy_pointing",
    ),
    "pointing_game": Metric(
        pointing_game,
        ("heatmaps", "disc_mask"),
        {"mean": 1},
        "Zhang et al. 2018; Quantus",
        defaults=_IGNORE_EMPTY,
        prefix="pointing",
    ),
    "relevance_mass": Metric(
        relevance_mass,
        ("heatmaps", "object_mask"),
        {"mean": 1},
        "Arras et al. 2022; Quantus",
        defaults=_IGNORE_EMPTY,
    ),
    "localization_iou": Metric(
        localization_iou,
        ("heatmaps", "object_mask"),
        {"mean": 1},
        "seed 003 §A.5",
        defaults=_IGNORE_EMPTY,
        prefix="iou",
    ),
    "mean_max_iou": Metric(
        mean_max_iou, ("concept_maps", "feature_masks"), {"best": 1}, "seed 001 §4.2, DCNE", default=False
    ),
    "confidence_change": Metric(
        confidence_change,
        ("apply_fn", "images", "heatmaps", "targets"),
        {"average_drop": -1, "drop_absolute": -1, "increase": 1},
        "seed 004 eq. 23; Grad-CAM++; torch-cam / pytorch-grad-cam",
        prefix="confidence",
    ),
    "deletion": Metric(
        perturbation_curve,
        ("apply_fn", "images", "heatmaps", "targets"),
        {"auc_mean": -1},
        "RISE; seed 003 §4.3.2",
    ),
    "insertion": Metric(
        perturbation_curve,
        ("apply_fn", "images", "heatmaps", "targets"),
        {"auc_mean": 1},
        "RISE",
        defaults={"mode": "insertion"},
    ),
    "lerf": Metric(
        perturbation_curve,
        ("apply_fn", "images", "heatmaps", "targets"),
        {"auc_mean": 1},
        "seed 003 §4.3.2 (100 steps of 200 px at 224 px)",
        default=False,
        defaults={"order": "lerf"},
    ),
    "module_consistency": Metric(
        module_consistency, ("maps",), {"consistency": -1}, "seed 002 §IV-E.1", defaults={"n_modules": 6}
    ),
}


def compute(name: str, inputs: Mapping[str, Any]) -> dict:
    """Run ``METRICS[name]`` on ``inputs`` (its ``inputs`` taken positionally, then its ``defaults``).

    Raises ValueError naming the metric or the missing inputs.
    """
    if name not in METRICS:
        raise ValueError(f"metrics: unknown metric {name!r}; expected one of {sorted(METRICS)}")
    m = METRICS[name]
    missing = [k for k in m.inputs if k not in inputs]
    if missing:
        raise ValueError(f"metrics: {name!r} needs inputs {list(m.inputs)}; missing {missing}")
    return m.fn(*(inputs[k] for k in m.inputs), **m.defaults)


__all__ = [
    "METRICS",
    "Metric",
    "compute",
    "evaluate_concepts",
    "adjusted_variation_of_information",
    "boxes_to_masks",
    "confidence_change",
    "energy_pointing_game",
    "filter_focus",
    "filter_interpretability",
    "filter_modules",
    "filter_thresholds",
    "gaussian_blur",
    "inconsistency_diversity_curve",
    "landmark_metric_curves",
    "localization_iou",
    "mean_max_iou",
    "metrics_from_assignment",
    "module_consistency",
    "module_part_alignment",
    "part_iou",
    "perturbation_curve",
    "pointing_game",
    "pruning_curve",
    "relevance_mass",
    "spectral_labels",
    "sras",
    "taylor_importance",
]
