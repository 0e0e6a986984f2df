"""Train-step throughput: jinterp's train step vs the same model and optimiser in torch, the added cost
of each interpretability loss, and the input pipeline.

jinterp: ``jinterp.train.Trainer``'s jitted step (forward, backward, AdamW, donated state) on one
in-memory batch; torch: the twin of ``tests/torch_refs.py`` with the same weights (``from_torch``) in
train mode, ``torch.optim.AdamW`` with the same hyper-parameters, eager and (when it compiles on this
build) ``torch.compile``. Steps alternate round by round (``--repeats`` rounds of ``--steps`` steps),
so load from other processes hits every side alike; ratios are medians of same-round ratios. Loss
rows time jinterp's step with ``config.losses`` set to each paper variant (``configs/common.py``)
against the plain one in the same rounds. ``--loader``: steps/s of the plain step fed by the real
PartsWorld loader (``feed.Data`` + prefetch, as ``train_and_evaluate`` runs it) vs by one in-memory
batch. Prints tables, never asserts.

    python benchmarks/train_vs_torch.py [--models resnet18 vgg16_bn] [--sizes 64 112] [--batch 32]
    python benchmarks/train_vs_torch.py --models resnet18 --sizes 64 --losses iccnn hiccnn sync rrr
    python benchmarks/train_vs_torch.py --loader
"""

import argparse
import itertools
import statistics
import time

import common
import jax
import numpy as np
import torch

import jinterp as ji
from configs import common as config_common
from jinterp import train
from jinterp.data import feed
from tests import torch_refs

NUM_CLASSES = 8
LOSSES = ("iccnn", "hiccnn", "sync", "rrr")


def run_config(name: str, size: int, batch: int, loss: str = "cnn"):
    """The benchmark's run config: AdamW (lr 1e-3, wd 1e-4), constant schedule, ``loss``'s terms."""
    c = config_common.base()
    c.model.name, c.data.image_size, c.data.num_classes = name, size, NUM_CLASSES
    c.train.batch_size = batch
    c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay = "adamw", 1e-3, 1e-4
    c.schedule.name = "constant"
    backbone = name.removesuffix("_bn")
    if loss == "rrr":
        c.losses = {"rrr": {"method": "grad_cam"}}
    elif loss != "cnn":
        c.losses = config_common.loss_config(loss, backbone, True, NUM_CLASSES)
    return c


def host_batch(size: int, batch: int) -> dict:
    rng = np.random.default_rng(0)
    masks = np.zeros((batch, size, size), np.float32)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return {
        "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
        "object_mask": masks,
    }


def jinterp_stepper(config, host: dict, variables=None):
    """``run(k)``: k train steps of the config's Trainer on ``host`` (compiled before it returns)."""
    trainer = train.Trainer(config)
    state = trainer.init_state(1000)
    if variables is not None:
        state = trainer.with_variables(state, variables)
    batch = train.shard_batch(feed.image_label(host, trainer.batch_keys), trainer.mesh)
    box = {"state": state}

    def run(k: int):
        for _ in range(k):
            box["state"], _ = trainer.train_step(box["state"], batch)
        jax.block_until_ready(box["state"].params)

    run(1)
    return run


def torch_stepper(model, host: dict, compiled: bool):
    """``run(k)``: k AdamW steps of ``model`` in train mode; ``compiled``: through ``torch.compile``."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = torch_refs.to_nchw(host["image"]), torch.as_tensor(host["label"], dtype=torch.long)
    forward = torch.compile(model) if compiled else model

    def run(k: int):
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(forward(x), y).backward()
            opt.step()

    run(2)  # compiles the forward and backward graphs
    return run


def _steppers(name, size, batch, args) -> dict:
    host = host_batch(size, batch)
    twin = torch_refs.build(name, num_classes=NUM_CLASSES)
    # host copies: every stepper donates its own device buffers
    imported = ji.backbones.from_torch(name, twin.state_dict(), num_classes=NUM_CLASSES)
    variables = jax.tree.map(np.asarray, imported)
    fns = {"jinterp": jinterp_stepper(run_config(name, size, batch), host, variables)}
    fns["torch eager"] = torch_stepper(twin, host, compiled=False)
    if args.compile:
        try:
            fns["torch.compile"] = torch_stepper(torch_refs.build(name, num_classes=NUM_CLASSES), host, True)
        except Exception as e:  # inductor needs a C++ toolchain; report instead of failing the table
            print(f"  torch.compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    for loss in args.losses:
        fns[f"jinterp + {loss}"] = jinterp_stepper(run_config(name, size, batch, loss), host, variables)
    return fns


def measure(name: str, size: int, batch: int, args) -> list[list]:
    """Rows ``[model, px, side, ms/step, images/s, ratio]`` of one model and size."""
    fns = _steppers(name, size, batch, args)
    runs = {k: (lambda f=f: f(args.steps)) for k, f in fns.items()}
    t = common.alternating_times(runs, args.repeats)
    rows = []
    for side, times in t.items():
        ms = 1e3 * statistics.median(times) / args.steps
        if side.startswith("torch"):
            ratio = f"{common.median_ratio(times, t['jinterp']):.2f} (torch / jinterp)"
        elif side == "jinterp":
            ratio = ""
        else:
            ratio = f"+{100 * (common.median_ratio(times, t['jinterp']) - 1):.0f} % over plain"
        rows.append([name, size, side, ms, 1e3 * batch / ms, ratio])
    return rows


def loader_rows(args) -> list[list]:
    """Steps/s of the plain small_cnn step from the real PartsWorld loader vs from memory."""
    config = run_config("small_cnn", 64, 64)
    config.data.name, config.data.centred = "parts_world", True
    data = feed.Data(config.data)
    trainer = train.Trainer(config)
    to_device = lambda b: feed.shard_batch(feed.image_label(b, trainer.batch_keys), trainer.mesh)  # noqa: E731
    host = next(data.train(64, 0, 0, 1))
    memory = jinterp_stepper(config, {k: host[k] for k in ("image", "label")})
    state = trainer.init_state(1000)
    batches = feed.prefetch(data.train(64, 0, 0, 1), to_device)
    state, _ = trainer.train_step(state, next(batches))  # compile (the step donates its state)

    def from_loader():
        nonlocal state
        for batch in itertools.islice(batches, args.steps):
            state, _ = trainer.train_step(state, batch)
        jax.block_until_ready(state.params)

    t = common.alternating_times({"loader": from_loader, "memory": lambda: memory(args.steps)}, args.repeats)
    rate = {k: args.steps / statistics.median(v) for k, v in t.items()}
    share = 1 / common.median_ratio(t["loader"], t["memory"])
    return [["small_cnn", 64, "PartsWorld loader", rate["loader"], f"{100 * share:.0f} % of in-memory"],
            ["small_cnn", 64, "in-memory batch", rate["memory"], ""]]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16_bn"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 112])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--losses", nargs="*", default=[], choices=LOSSES)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--loader", action="store_true", help="only the input-pipeline comparison")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    start = time.perf_counter()
    if args.loader:
        common.print_table(["model", "px", "feed", "steps/s", "share"], loader_rows(args))
        return
    pairs = itertools.product(args.models, args.sizes)
    rows = [row for name, size in pairs for row in measure(name, size, args.batch, args)]
    common.print_table(["model", "px", "side", "ms / step", "images / s", "ratio"], rows)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
