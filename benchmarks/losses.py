"""Time added by each interpretability loss to a plain cross-entropy train step, and the between-epoch work.

Train step = forward + backward + Adam update of the whole backbone, jitted with donated state. Each
loss variant is timed interleaved with the plain step (round-robin, medians), so machine load drifts
hit all variants alike. The between-epoch part (eq. 1 statistics for one batch, spectral re-clustering
of the deep layer and, for HICCNN, of the shallow layer inside each deep region) is timed separately.
Issue goal: each loss <= 15 % over the plain step for vgg16 at batch 16.

    python benchmarks/losses.py [--model vgg16] [--size 224] [--batch 16] [--repeats 5] [--steps iccnn sync]

``--steps`` limits the whole-step timing to some variants (plain CE is always timed); the loss-alone
column is measured for every variant.
"""

import argparse
import time

import common
import jax
import jax.numpy as jnp
import optax

import jinterp as ji


def make_step(model, tx, specs):
    def loss_fn(params, states, x, y):
        logits, out = model.apply({"params": params}, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        if not specs:
            return ce, states
        value, states, _ = ji.losses.apply(specs, out, y, states)
        return ce + value, states

    def step(params, opt_state, states, x, y):
        (loss, states), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, states, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, states, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def loss_only(specs, shapes, out, labels):
    """Median s of value + gradient of the losses w.r.t. their input maps alone (the added work)."""
    states = {s.name: s.init(shapes) for s in specs}
    maps = {layer: out[layer] for s in specs for layer in s.layers}
    fn = jax.jit(jax.grad(lambda m: ji.losses.apply(specs, m, labels, states)[0]))
    jax.block_until_ready(fn(maps))
    return common.median_time(lambda: jax.block_until_ready(fn(maps)), 5)


def between_epochs(spec, shapes, out, labels, key):
    """(stats s per batch, recluster s, recluster first call s) for one loss spec."""
    state = spec.init(shapes)
    update = jax.jit(spec.update_stats)
    stats = jax.block_until_ready(update(spec.init_stats(shapes), out, labels, state))
    t_stats = common.median_time(lambda: jax.block_until_ready(update(stats, out, labels, state)), 3)
    recluster = jax.jit(spec.recluster)
    start = time.perf_counter()
    jax.block_until_ready(recluster(state, stats, key))
    first = time.perf_counter() - start
    return t_stats, common.median_time(lambda: jax.block_until_ready(recluster(state, stats, key)), 3), first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--head", default="gap", help="gap (CAM-ready, 2x faster on CPU) or classifier")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--steps", nargs="*", default=None, help="variants whose whole train step is timed (default: all)"
    )
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), {args.model} head={args.head}, "
        f"{args.size} px, batch {args.batch}"
    )

    model = ji.backbones.create(args.model, num_classes=args.classes, head=args.head)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (args.batch, args.size, args.size, 3))
    y = jnp.arange(args.batch) % args.classes
    params = jax.jit(model.init)(key, x[:1])["params"]
    shapes = ji.backbones.layer_shapes(model, args.size)
    tx = optax.adam(1e-4)

    variants = {
        "plain CE": (),
        "iccnn": (ji.losses.for_backbone("iccnn", args.model),),
        "iccnn+multi": (ji.losses.for_backbone("iccnn", args.model, multi=True, num_classes=args.classes),),
        "hiccnn": (ji.losses.for_backbone("hiccnn", args.model),),
        "hiccnn+multi": (ji.losses.for_backbone("hiccnn", args.model, multi=True, num_classes=args.classes),),
        "sync": (ji.losses.for_backbone("sync", args.model),),
    }
    runs = {}
    for name, specs in variants.items():
        if args.steps is not None and name != "plain CE" and name not in args.steps:
            continue
        step = make_step(model, tx, specs)
        carry = [jax.tree.map(jnp.copy, params), tx.init(params), {s.name: s.init(shapes) for s in specs}]
        start = time.perf_counter()
        carry[:3] = step(*carry, x, y)[:3]
        jax.block_until_ready(carry)
        runs[name] = {"step": step, "carry": carry, "compile": time.perf_counter() - start, "times": []}

    for _ in range(args.repeats):
        for run in runs.values():

            def one(run=run):
                p, o, s, loss = run["step"](*run["carry"], x, y)
                run["carry"] = [p, o, s]
                loss.block_until_ready()

            run["times"].append(common.median_time(one, 1))
    # The loss terms alone (value + gradient w.r.t. the maps they read): a noise-free estimate of the
    # work they add, since whole-step medians on a loaded CPU drift by several percent.
    _, out = jax.jit(model.apply)({"params": params}, x)
    base = sorted(runs["plain CE"]["times"])[args.repeats // 2]
    rows = []
    for name, specs in variants.items():
        alone = loss_only(specs, shapes, out, y) if specs else 0.0
        if name in runs:
            t = sorted(runs[name]["times"])[args.repeats // 2]
            step_cols = [t, f"{100 * (t / base - 1):+.1f} %"]
        else:
            step_cols = ["-", "-"]
        compile_s = runs[name]["compile"] if name in runs else "-"
        rows.append([name, *step_cols, alone, f"{100 * alone / base:.1f} %", compile_s])
    header = ["train step", "median s", "vs plain", "loss alone s", "loss alone / plain", "first call s"]
    common.print_table(header, rows)

    # Between epochs: statistics of one batch (given its maps) and the re-clustering itself.
    rows = [[name, *between_epochs(variants[name][0], shapes, out, y, key)] for name in ("iccnn", "hiccnn")]
    common.print_table(["between epochs", "stats s / batch", "recluster s", "recluster first call s"], rows)


if __name__ == "__main__":
    main()
