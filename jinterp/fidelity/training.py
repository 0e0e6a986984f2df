"""Training-side fidelity (seed 000 HICCNN, seed 002 synchronization): every variant from one CNN.

Protocol (issue 13). The papers fine-tune ImageNet-pretrained backbones; here one plain CNN is
trained first (the runner's ``base``) and every variant continues from its checkpoint
(``train.init_from``) for ``fidelity.finetune_steps`` with the same optimiser (AdamW,
``fidelity.finetune_lr``, warm-up + cosine) and, per seed, the same data order, so the only
difference between variants is the loss. Variants (:data:`VARIANTS`):

* ``cnn``: cross-entropy only, trained as long (the papers' "Ori CNN" / "Baseline");
* ``iccnn``: icCNN L_group + multi-category L_multi (HICCNN eq. 1-7; lambda = beta = 0.1);
* ``hiccnn``: icCNN plus the hierarchical loss (eq. 8-12, gamma = 0.01) towards
  ``fidelity.shallow_layer``;
* ``lac``: sync paper's "Ours w/o sync" (L_lac only, lambda1 = 0.2); ``sync``: "Ours" (lambda1 = 0.2,
  lambda2 = 0.1); ``sync_no_lac``: L_sync alone (lambda2 = 0.1), the ablation the issue asks for.

Each run is evaluated at the deep layer (``evaluate.layer``) on the section's test images: accuracy,
Interp / Stability / Purity / Diversity (seed 002 eq. 11-14), module consistency and NMI / ARI / AVI
(Tables III-IV), Interp against the object mask (CSGCNN's evaluation code, which seed 002 says it
used, scores the object), the inconsistency-diversity curve (seed 000 Fig. 4), SRAS of the filters and of
Grad-CAM (Fig. 6), and the mechanical probes (:mod:`.mechanics`) at every kept checkpoint.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np

from jinterp import explain, losses, train
from jinterp.fidelity import mechanics
from jinterp.fidelity import training_report as report_lib
from jinterp.fidelity.section import Context, Section
from jinterp.metrics import report
from jinterp.metrics.consistency import sras
from jinterp.metrics.filters import filter_interpretability

VARIANTS = ("cnn", "iccnn", "hiccnn", "lac", "sync", "sync_no_lac")


def variant_losses(config: ml_collections.ConfigDict, variant: str) -> dict:
    """``config.losses`` of a variant: the papers' weights (``losses.for_backbone``) on its layers."""
    if variant not in VARIANTS:
        raise ValueError(
            f"config.fidelity.variants: unknown variant {variant!r}; expected some of {VARIANTS}"
        )
    deep, f = config.evaluate.layer, config.fidelity
    backbone = config.model.name if config.model.name in losses.LAYER_PAIRS else "small_cnn"
    if variant == "cnn":
        return {}
    if variant in ("iccnn", "hiccnn"):
        multi = not config.data.name.endswith("binary")  # binary: icCNN counts object images only
        extra = (
            {"shallow_layer": f.shallow_layer, "num_subgroups": f.num_groups} if variant == "hiccnn" else {}
        )
        extra.update({} if multi else {"positive_class": 1})
        spec = losses.for_backbone(
            variant, backbone, multi=multi, num_classes=train.num_classes(config), layer=deep,
            num_groups=f.num_groups, **extra,
        )  # fmt: skip
    else:
        paper = losses.for_backbone("sync", backbone, layer=deep)
        weights = {"lac": (paper.lac_weight, 0.0), "sync": (paper.lac_weight, paper.sync_weight),
                   "sync_no_lac": (0.0, paper.sync_weight)}[variant]  # fmt: skip
        spec = losses.Sync(layer=deep, lac_weight=weights[0], sync_weight=weights[1], eps=paper.eps)
    return {spec.name: losses.spec_fields(spec)}


def finetune_config(config, variant: str, seed: int, base_workdir: str) -> ml_collections.ConfigDict:
    """The run config of one (variant, seed): continue ``base_workdir``'s CNN with the variant's loss."""
    c = ml_collections.ConfigDict(config.to_dict())
    f = config.fidelity
    c.seed = seed
    c.data.seed = 1000 + seed  # another order than pre-training; the same for every variant
    c.train.init_from = base_workdir
    c.train.steps = int(f.finetune_steps)
    c.train.epochs = 0.0
    c.train.time_budget_s = 0.0
    c.train.checkpoint_every = int(f.probe_every)
    c.train.keep_checkpoints = int(f.finetune_steps) // int(f.probe_every) + 1
    c.optimizer.name = "adamw"
    c.optimizer.lr = float(f.finetune_lr)
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = max(1, int(f.finetune_steps) // 20)
    c.losses = variant_losses(config, variant)
    return c


def _probe_maps(ctx: Context, variables: dict, n: int = 256) -> np.ndarray:
    layer = ctx.config.evaluate.layer
    images = ctx.test["image"][:n]
    return np.asarray(jax.jit(lambda x: ctx.model.apply(variables, x)[1][layer])(images))


def probe_run(ctx: Context, workdir: str) -> list[dict]:
    """The mechanical probes of every checkpoint kept in ``workdir`` (step 0: the pretrained CNN)."""
    g = int(ctx.config.fidelity.num_groups)
    rows = [{"step": 0, **mechanics.probe(_probe_maps(ctx, ctx.variables), g)}]
    for step in train.checkpoint_steps(workdir):
        variables = train.restore_variables(workdir, step)
        rows.append({"step": step, **mechanics.probe(_probe_maps(ctx, variables), g)})
    return rows


def evaluate_run(ctx: Context, variables: dict) -> dict:
    """Filter metrics, curves and SRAS at the deep layer, plus Grad-CAM's SRAS per part."""
    cfg, layer = ctx.config, ctx.config.evaluate.layer
    results, _ = report.evaluate(
        ctx.model, variables, ctx.test, layer=layer, methods=(), num_explained=0,
    )  # fmt: skip
    n = min(int(cfg.evaluate.num_explained), len(ctx.test["label"]))
    heat = explain.explain(
        f'grad_cam(layer="{layer}")', ctx.model, variables, ctx.test["image"][:n], ctx.test["label"][:n]
    )
    grad_cam_sras = np.nanmean(np.asarray(sras(heat, ctx.test["part_masks"][:n])), axis=0)
    # CSGCNN's evaluation code (which seed 002 uses) scores IoU against the object mask, not parts.
    maps = _probe_maps(ctx, variables, len(ctx.test["label"]))
    interp_object = filter_interpretability(maps, ctx.test["object_mask"][..., None])["interp_mean"]
    return {
        **results,
        "grad_cam_sras_per_part": [float(x) for x in grad_cam_sras],
        "interp_object": float(interp_object),
    }


def run_variant(ctx: Context, variant: str, seed: int) -> dict:
    """Fine-tune, evaluate and probe one (variant, seed); cached in ``<variant>/seed<seed>/result.json``."""
    workdir = os.path.join(ctx.workdir, variant, f"seed{seed}")
    path = os.path.join(workdir, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    ctx.progress(f"[training] {variant} seed {seed}: fine-tuning {ctx.config.fidelity.finetune_steps} steps")
    start = time.time()
    summary = train.train_and_evaluate(finetune_config(ctx.config, variant, seed, ctx.base_workdir), workdir)
    summary.pop("state")
    variables = train.restore_variables(workdir)
    result = {
        "variant": variant,
        "seed": seed,
        "summary": summary,
        "evaluation": evaluate_run(ctx, variables),
        "probes": probe_run(ctx, workdir),
    }
    result["wall_s"] = time.time() - start
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result


def run_seconds(result: dict) -> float:
    """Wall time of one stored run: fine-tuning, evaluation and probes (older results: the training and
    evaluation timings they recorded, probes not counted)."""
    if "wall_s" in result:
        return float(result["wall_s"])
    return float(result["summary"]["wall_s"]) + float(sum(result["evaluation"]["timing"].values()))


def _items(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(ctx: Context) -> Section:
    """Every variant of ``fidelity.variants`` for every seed of ``fidelity.seeds``; the section."""
    variants = _items(ctx.config.fidelity.variants)
    for v in variants:
        variant_losses(ctx.config, v)  # a bad name fails before anything trains
    seeds = [int(s) for s in _items(ctx.config.fidelity.seeds)]
    results = {v: [run_variant(ctx, v, s) for s in seeds] for v in variants}
    start = time.time()
    base = evaluate_run(ctx, ctx.variables)
    section = report_lib.section(ctx, results, base)
    section.wall_s = time.time() - start + sum(run_seconds(r) for runs in results.values() for r in runs)
    return section
