"""The fidelity runner: pre-train the shared CNN, run every section, write ``fidelity.md``.

    python launch.py --config configs/fidelity.py --workdir runs/fidelity --mode fidelity

Resumable at two levels: the pre-training and every fine-tuning run resume from their Orbax
checkpoints, and a finished section (``<workdir>/<section>/section.json``) is not re-run. The report
is rewritten from the stored sections on every call, so its numbers are always what the runs printed.
"""

import importlib
import json
import os
import platform
import time

import jax
import ml_collections
import numpy as np

from jinterp import train
from jinterp.fidelity.section import Context, Section
from jinterp.ops.table import markdown_table

SECTIONS = ("training", "concepts", "clam", "cluster_cam", "explanation_loss")


def _items(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def sections_of(config) -> list[str]:
    """``config.fidelity.sections`` checked against :data:`SECTIONS`."""
    names = _items(config.fidelity.sections)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ValueError(
            f"config.fidelity.sections: expected some of {SECTIONS}, got {config.fidelity.sections!r}"
        )
    return names


def pretrain_config(config) -> ml_collections.ConfigDict:
    """The shared plain CNN's run: the config's recipe, no interpretability loss, ``pretrain_steps``."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.losses = {}
    c.train.steps = int(config.fidelity.pretrain_steps)
    c.train.epochs = 0.0
    c.train.init_from = ""
    return c


def pretrain(config, workdir: str, progress) -> tuple[str, dict]:
    """Train (or resume, or reuse) the shared CNN in ``<workdir>/base``; returns its workdir and summary."""
    base = os.path.join(workdir, "base")
    summary_path = os.path.join(base, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("step") == int(config.fidelity.pretrain_steps):
            return base, summary
    progress(f"[base] training the shared CNN for {config.fidelity.pretrain_steps} steps")
    summary = train.train_and_evaluate(pretrain_config(config), base)
    summary.pop("state")
    return base, summary


def _run_section(name: str, ctx: Context) -> Section:
    directory = ctx.workdir
    done = Section.load(directory)
    if done is not None:
        ctx.progress(f"[{name}] done before, reusing {directory}/section.json")
        return done
    ctx.progress(f"[{name}] running")
    start = time.time()
    section = importlib.import_module(f"jinterp.fidelity.{name}").run(ctx)
    section.wall_s = max(section.wall_s, time.time() - start)  # a section may count its cached runs
    section.save(directory)
    return section


def evaluation_images(config) -> dict:
    """The sections' ``evaluate.num_images`` test images; for the single-category (binary) task the
    object images only, read from twice as many (HICCNN evaluates its filters on the category's
    objects; a background image has no part to match)."""
    n = int(config.evaluate.num_images)
    if not config.data.name.endswith("binary"):
        return train.load_split(config.data, config.train.eval_split, n)
    data = train.load_split(config.data, config.train.eval_split, 2 * n)
    keep = np.flatnonzero(data["label"] == 1)[:n]
    return {k: v[keep] for k, v in data.items()}


def run_fidelity(config, workdir: str, command: str = "", progress=print) -> dict:
    """Every section of ``config.fidelity.sections`` -> ``<workdir>/fidelity.md`` (+ ``report_dir`` copy).

    Returns:
      ``{"report": path, "sections": {name: Section}, "base": pre-training summary}``.
    """
    names = sections_of(config)
    base, summary = pretrain(config, workdir, progress)
    model, variables, _ = train.restore_model(pretrain_config(config), base)
    test = evaluation_images(config)
    load = lambda split, n: train.load_split(config.data, split, n)  # noqa: E731
    sections = {}
    for name in names:
        directory = os.path.join(workdir, name)
        os.makedirs(directory, exist_ok=True)
        ctx = Context(config, directory, model, variables, test, load, base, progress)
        sections[name] = _run_section(name, ctx)
    meta = {"command": command, "machine": machine(), "base": summary, "config": config}
    path = os.path.join(workdir, "fidelity.md")
    with open(path, "w") as f:
        f.write(render(sections, meta, figure_root=""))
    if config.fidelity.report_dir:
        path = publish(sections, meta, workdir, config.fidelity.report_dir, config.fidelity.report_name)
    return {"report": path, "sections": sections, "base": summary}


def publish(sections: dict, meta: dict, workdir: str, report_dir: str, name: str = "fidelity") -> str:
    """Copy the figures to ``<report_dir>/<name>/<section>/`` and write ``<report_dir>/<name>.md``."""
    for section_name, section in sections.items():
        target = os.path.join(report_dir, name, section_name)
        os.makedirs(target, exist_ok=True)
        for fig in section.figures:
            compact_png(os.path.join(workdir, section_name, fig), os.path.join(target, fig))
    path = os.path.join(report_dir, f"{name}.md")
    with open(path, "w") as f:
        f.write(render(sections, meta, figure_root=f"{name}/"))
    return path


def compact_png(source: str, target: str, colours: int = 256) -> None:
    """Copy a figure as a palette PNG (``colours`` colours, same pixels size): heatmap grids shrink
    5-10x, small enough to commit beside the report."""
    from PIL import Image  # matplotlib's dependency

    with Image.open(source) as image:
        image.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def machine() -> str:
    """One line: CPU / accelerator, core count, jax version."""
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
        f"{len(jax.devices())} × {kind} ({device.platform}), jax {jax.__version__}"
    )


def _headline(sections: dict) -> str:
    header = ["paper", "claim", "paper's number", "ours", "replicated", "note"]
    rows = [
        [r.paper, r.claim, r.paper_value, r.ours, f"**{r.replicated}**", r.note]
        for s in sections.values()
        for r in s.rows
    ]
    return markdown_table(header, rows)


def render(sections: dict, meta: dict, figure_root: str) -> str:
    """The report: how it was made, the headline table, then each section's body and figures."""
    base, config = meta["base"], meta["config"]
    wall = float(base.get("wall_s", 0.0)) + sum(s.wall_s for s in sections.values())
    lines = [
        "# Fidelity: the papers' claims re-run on PartsWorld",
        "",
        "Generated by `jinterp.fidelity` — do not edit by hand; rerun the command.",
        "",
        f"- command: `{meta['command'] or 'jinterp.fidelity.run_fidelity(config, workdir)'}`",
        f"- machine: {meta['machine']}",
        f"- wall time: {wall / 60:.1f} min (pre-training {float(base.get('wall_s', 0)) / 60:.1f} min; "
        + ", ".join(f"{n} {s.wall_s / 60:.1f} min" for n, s in sections.items())
        + ")",
        f"- data: `{config.data.name}` {config.data.image_size} px, {config.data.num_classes} classes, "
        f"centred={config.data.centred}; model `{config.model.name}` {dict(config.model.kwargs)}; "
        f"shared CNN: {config.fidelity.pretrain_steps} steps, "
        f"test accuracy {base.get('test_accuracy', 0):.3f}",
        "",
        "## Headline",
        "",
        _headline(sections),
    ]
    for name, s in sections.items():
        lines += ["", f"## {s.title}", "", f"({s.wall_s / 60:.1f} min)", "", s.body]
        lines += [f"\n![{fig}]({figure_root}{name}/{fig})" for fig in s.figures]
    return "\n".join(lines) + "\n"
