"""Explanation loss (right for the right reasons): heatmaps move onto the object at equal accuracy.

Ross, Hughes & Doshi-Velez (IJCAI 2017) train with an explanation penalty (their eq. 1) and report
that the explanations move to the annotated evidence while test accuracy is kept. Here
(``jinterp.losses.RightReasons``, ``method = fidelity.rrr_method``, at ``evaluate.layer``):

* both arms continue the shared CNN (``train.init_from``) for ``fidelity.finetune_steps`` with the
  same optimiser and, per seed, the same data order (:func:`jinterp.fidelity.training.finetune_config`):
  ``cnn`` with cross-entropy only, ``rrr`` with the penalty added, so the only difference is the loss;
* the penalty's weight is chosen on **held-out** test images (the ``fidelity.rrr_select_images``
  after the reported ones), seed 0: the weight of ``fidelity.rrr_weights`` with the highest Grad-CAM
  pointing game whose accuracy there stays within :data:`NON_INFERIORITY` of the plain run's;
* reported on the section's test images (the first ``evaluate.num_images``): Grad-CAM pointing game
  (disc parts), energy pointing, relevance mass and IoU on the object; accuracy on every test image
  but the selection ones; ``fidelity.seeds`` seeds, Welch two-standard-error verdicts.
"""

import json
import os
import time

import numpy as np

from jinterp import explain, train, viz
from jinterp.fidelity.section import Context, Row, Section, mean_std
from jinterp.fidelity.training import finetune_config, run_seconds
from jinterp.fidelity.training_report import NON_INFERIORITY, verdict
from jinterp.metrics import report
from jinterp.ops.table import markdown_table

SCORES = {  # report.evaluate key -> (label, higher is better)
    "pointing_mean": ("pointing (disc parts)", True),
    "energy_pointing_mean": ("energy pointing", True),
    "relevance_mass_mean": ("relevance mass (object)", True),
    "iou_mean": ("IoU (object)", True),
}
METRICS = ("pointing_game", "energy_pointing_game", "relevance_mass", "localization_iou")


def _items(text: str, kind=str) -> list:
    return [kind(t.strip()) for t in text.split(",") if t.strip()]


def run_config(ctx: Context, seed: int, weight: float):
    """One arm's run: the shared CNN continued for ``finetune_steps``; ``weight`` 0 is plain CE."""
    c = finetune_config(ctx.config, "cnn", seed, ctx.base_workdir)
    if weight > 0:
        f = ctx.config.fidelity
        c.losses = {"rrr": {"method": f.rrr_method, "layer": ctx.config.evaluate.layer, "weight": weight}}
    return c


class Images:
    """The section's image sets: ``report`` (explained), ``select`` (held-out weight choice) and the
    test split's labels for accuracy (``accuracy_mask``: every test image but the selection ones)."""

    def __init__(self, ctx: Context):
        f, n = ctx.config.fidelity, len(ctx.test["label"])
        m = int(f.rrr_select_images)
        whole = ctx.load(ctx.config.train.eval_split, int(ctx.config.data.test_size))
        if len(whole["label"]) < n + m:
            raise ValueError(
                f"config.fidelity.rrr_select_images: {m} held-out images after the {n} reported ones "
                f"need a test split of {n + m}, got {len(whole['label'])}"
            )
        self.report = ctx.test
        self.select = {k: v[n : n + m] for k, v in whole.items()}
        self.images, self.labels = whole["image"], whole["label"]
        self.accuracy_mask = np.ones(len(self.labels), bool)
        self.accuracy_mask[n : n + m] = False


def score(ctx: Context, variables: dict, data: dict) -> dict:
    """Grad-CAM's localisation scores at ``evaluate.layer`` on ``data`` (report.evaluate's keys)."""
    layer = ctx.config.evaluate.layer
    results, _ = report.evaluate(
        ctx.model,
        variables,
        data,
        layer=layer,
        methods=(f'grad_cam(layer="{layer}")',),
        metrics=METRICS,
        num_explained=len(data["label"]),
    )
    (scores,) = results["explanations"].values()
    return {"accuracy": results["accuracy"], **{k: float(scores[k]) for k in SCORES}}


def run_arm(ctx: Context, images: Images, seed: int, weight: float) -> dict:
    """Fine-tune and score one (seed, weight); cached in ``w<weight>/seed<seed>/result.json``."""
    workdir = os.path.join(ctx.workdir, f"w{weight:g}", f"seed{seed}")
    path = os.path.join(workdir, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    ctx.progress(
        f"[explanation_loss] weight {weight:g} seed {seed}: {ctx.config.fidelity.finetune_steps} steps"
    )
    start = time.time()
    summary = train.train_and_evaluate(run_config(ctx, seed, weight), workdir)
    summary.pop("state")
    variables = train.restore_variables(workdir)
    correct = train.predict(ctx.model, variables, images.images) == images.labels
    result = {
        "seed": seed,
        "weight": weight,
        "summary": summary,
        "accuracy": float(correct[images.accuracy_mask].mean()),
        "report": score(ctx, variables, images.report),
        "select": score(ctx, variables, images.select),
    }
    result["wall_s"] = time.time() - start
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result


def choose_weight(plain: dict, candidates: dict[float, dict]) -> float:
    """The held-out choice: highest selection pointing among weights whose selection accuracy is
    within :data:`NON_INFERIORITY` of the plain run's (none: the smallest weight)."""
    floor = plain["select"]["accuracy"] - NON_INFERIORITY
    kept = [w for w, r in candidates.items() if r["select"]["accuracy"] >= floor]
    if not kept:
        return min(candidates)
    return max(kept, key=lambda w: candidates[w]["select"]["pointing_mean"])


def _values(runs: list[dict], key: str) -> list[float]:
    return [r["accuracy"] if key == "accuracy" else r["report"][key] for r in runs]


def _row(claim, paper_value, plain, rrr, key, margin=None) -> Row:
    answer, d, se2 = verdict(_values(rrr, key), _values(plain, key), True, margin)
    ours = f"cnn {mean_std(_values(plain, key))}; rrr {mean_std(_values(rrr, key))}"
    test = f"non-inferiority margin {margin}" if margin else "Welch"
    return Row("RRR", claim, paper_value, ours, answer, f"rrr−cnn = {d:+.3f} (2 s.e. {se2:.3f}; {test}).")


def rows(plain: list[dict], rrr: list[dict], weight: float) -> list[Row]:
    """The headline rows. Ross et al. show the effect on other data (decoy MNIST, text), so there is
    no number of theirs for this task: the claims are qualitative."""
    moved = "qualitative: explanations move to the annotated evidence"
    claims = [
        (f"explanation loss (weight {weight:g}, held-out choice) moves Grad-CAM onto the defining parts",
         moved, "pointing_mean", None),
        ("explanation loss moves Grad-CAM relevance onto the object", moved, "relevance_mass_mean", None),
        ("explanation loss keeps test accuracy", f"qualitative: accuracy kept (we test within "
         f"{NON_INFERIORITY:g})", "accuracy", NON_INFERIORITY),
    ]  # fmt: skip
    return [_row(claim, value, plain, rrr, key, margin) for claim, value, key, margin in claims]


def _table(arms: dict[str, list[dict]]) -> str:
    keys = {"accuracy": ("test accuracy", True), **SCORES}
    header = ["model", *[label + (" ↑" if up else " ↓") for label, up in keys.values()]]
    return markdown_table(
        header, [[name, *[mean_std(_values(runs, k)) for k in keys]] for name, runs in arms.items()]
    )


def _selection_table(plain: dict, candidates: dict[float, dict], weight: float) -> str:
    header = ["weight", "held-out accuracy", "held-out pointing", "held-out relevance mass", "chosen"]
    lines = [
        [
            0,
            plain["select"]["accuracy"],
            plain["select"]["pointing_mean"],
            plain["select"]["relevance_mass_mean"],
            "",
        ]
    ]
    for w, r in sorted(candidates.items()):
        s = r["select"]
        lines.append(
            [w, s["accuracy"], s["pointing_mean"], s["relevance_mass_mean"], "✓" if w == weight else ""]
        )
    return markdown_table(header, [[f"{v:.3f}" if isinstance(v, float) else v for v in r] for r in lines])


def figure(ctx: Context, weight: float, n: int = 6) -> str:
    """Grad-CAM of the shared CNN, the plain run and the rrr run (seed 0) on the first test images."""
    layer, data = ctx.config.evaluate.layer, ctx.test
    images, labels = data["image"][:n], data["label"][:n]
    spec = f'grad_cam(layer="{layer}")'
    heat = {"shared CNN": explain.explain(spec, ctx.model, ctx.variables, images, labels)}
    for name, w in (("cnn", 0.0), (f"rrr w={weight:g}", weight)):
        variables = train.restore_variables(os.path.join(ctx.workdir, f"w{w:g}", "seed0"))
        heat[name] = explain.explain(spec, ctx.model, variables, images, labels)
    fig = viz.plot_heatmap_grid(viz.display01(images), {k: np.asarray(v) for k, v in heat.items()})
    name = "grad_cam_before_after.png"
    viz.save_figure(fig, os.path.join(ctx.workdir, name))
    return name


def body(plain, rrr, candidates, weight, ctx: Context) -> str:
    f = ctx.config.fidelity
    return "\n".join(
        [
            f"Grad-CAM at `{ctx.config.evaluate.layer}`; penalty `{f.rrr_method}` "
            f"(`jinterp.losses.RightReasons`); {f.finetune_steps} fine-tuning steps from the shared CNN "
            f"per arm, seeds {f.seeds}. Weight chosen on {f.rrr_select_images} held-out test images "
            f"(seed 0), reported on the first "
            f"{len(ctx.test['label'])}; accuracy on the test split without the held-out images.",
            "",
            "**Weight choice (held-out images, seed 0)**",
            "",
            _selection_table(plain[0], candidates, weight),
            "",
            "**Reported images, mean ± std over seeds**",
            "",
            _table({"cnn": plain, f"rrr (w={weight:g})": rrr}),
        ]
    )


def run(ctx: Context) -> Section:
    f = ctx.config.fidelity
    seeds, weights = _items(f.seeds, int), _items(f.rrr_weights, float)
    if not weights or min(weights) <= 0:
        raise ValueError(f"config.fidelity.rrr_weights: expected positive weights, got {f.rrr_weights!r}")
    images = Images(ctx)
    plain = [run_arm(ctx, images, s, 0.0) for s in seeds]
    candidates = {w: run_arm(ctx, images, seeds[0], w) for w in weights}
    weight = choose_weight(plain[0], candidates)
    rrr = [candidates[weight], *[run_arm(ctx, images, s, weight) for s in seeds[1:]]]
    start = time.time()
    section = Section(
        "Explanation loss: right for the right reasons (Ross et al. 2017)",
        rows(plain, rrr, weight),
        body(plain, rrr, candidates, weight, ctx),
        [figure(ctx, weight)],
    )
    every = [*plain, *candidates.values(), *rrr[1:]]
    section.wall_s = time.time() - start + sum(run_seconds(r) for r in every)
    return section
