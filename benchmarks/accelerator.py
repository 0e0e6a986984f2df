"""One table for one accelerator: forward, explainers and train steps, compile times, TFLOP/s vs matmul peak.

    python benchmarks/accelerator.py           # VGG16 / ResNet50, 224 px, batch 1 and 64, bf16 and f32
    python benchmarks/accelerator.py --small   # seconds on a CPU (tiny sizes): what the test suite runs

Workloads: the forward pass, Grad-CAM, Score-CAM, Cluster-CAM, LRP (``epsilon_plus_flat``), CRP over
512 channels of the last conv layer (all of them when it has fewer), and a train step (forward,
backward, Adam) with plain cross-entropy and with each interpretability loss (icCNN, HICCNN, sync,
RRR). Each row: compile seconds (lower + compile), the median of ``--repeats`` calls after a warm-up
call, and achieved TFLOP/s with its share of the matmul peak measured first in the same run (one
large square matmul per dtype). FLOPs come from XLA's cost analysis of the compiled program; for
programs with a while loop (which the analysis counts once) they are estimated as forward FLOPs times
the method's passes (``ji.explain.METHODS``, a backward pass counted as two forwards) and marked ``~``:
an upper bound, since Score-CAM and CRP skip channels without activation / relevance exactly (so a
``~`` share can exceed 100 %).
bf16 rows cast the variables and images to bfloat16; CRP takes float32 images and runs its rules on
the weights cast back up (``lrp.rule_variables``), so its bf16 rows time that. Rows run
breadth-first (every model, batch and dtype for one workload before the next) until ``--budget-s``
is spent; the rest are listed as skipped, so the default run stays under 8 minutes on one GPU. A
row that fails prints its error.
"""

import argparse
import statistics
import time
import traceback

import common
import jax
import jax.numpy as jnp
import optax

import jinterp as ji

FULL = {"models": ["vgg16", "resnet50"], "size": 224, "batches": [1, 64], "crp_channels": 512, "peak_n": 8192}
SMALL = {"models": ["small_cnn"], "size": 32, "batches": [2], "crp_channels": 8, "peak_n": 256}
EXPLAINERS = ["forward", "grad_cam", "score_cam", "cluster_cam", "lrp", "crp"]
LOSSES = ["ce", "iccnn", "hiccnn", "sync", "rrr"]
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}


def matmul_peak(n: int, dtype, repeats: int) -> float:
    """TFLOP/s of one (n, n) @ (n, n) matmul in ``dtype`` on the default device (median of repeats)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t = statistics.median(common.alternating_times({"mm": lambda: f(a).block_until_ready()}, repeats)["mm"])
    return 2 * n**3 / t / 1e12


def explainer(workload, model, layer, crp_channels):
    """``fn(variables, x, t)`` for an explainer workload (the forward returns the logits)."""
    if workload == "forward":
        return lambda v, x, t: model.apply(v, x)[0]
    if workload == "crp":
        channels = jnp.arange(crp_channels)
        return lambda v, x, t: ji.explain.crp.conditional_heatmaps(model, v, x, t, layer, channels)[0]
    fn = ji.explain.get(ji.explain.registry.with_defaults(workload, layer=layer))
    return lambda v, x, t: fn(model, v, x, t)


def _loss_specs(loss: str, name: str) -> tuple:
    if loss == "ce":
        return ()
    return (ji.losses.LOSSES["rrr"](),) if loss == "rrr" else (ji.losses.for_backbone(loss, name),)


def train_step(model, name, loss, tx):
    """Jitted ``step(variables, opt_state, states, batch) -> (variables, opt_state, states, loss)``:
    train mode (BatchNorm statistics updated, dropout on), cross-entropy plus the loss's terms."""
    specs = _loss_specs(loss, name)
    explained = [s for s in specs if ji.losses.needs_inputs(s)]

    def loss_fn(params, rest, states, batch):
        variables, rngs = {"params": params, **rest}, {"dropout": jax.random.key(0)}
        if "batch_stats" in rest:
            (logits, out), rest = model.apply(
                variables, batch["image"], True, rngs=rngs, mutable=["batch_stats"]
            )
        else:
            logits, out = model.apply(variables, batch["image"], True, rngs=rngs)
        value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        extra, states, _ = ji.losses.apply(specs, out, batch["label"], states)
        penalty, _ = ji.losses.explanation_terms(explained, model, variables, batch)
        return value + extra + penalty, (states, rest)

    def step(variables, opt_state, states, batch):
        params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
        (value, (states, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, states, batch
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return {"params": optax.apply_updates(params, updates), **rest}, opt_state, states, value

    return jax.jit(step), specs


def _flops(compiled) -> float | None:
    if "while" in compiled.as_text():
        return None
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) or None


def timed(jitted, args, repeats):
    """``(compile s, median s, compiled)``: lower + compile, one warm-up call, then median of repeats."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    run = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
    return compile_s, statistics.median(common.alternating_times({"run": run}, repeats)["run"]), compiled


class Setup:
    """Model, variables and inputs of one (model, batch, dtype), built once and shared by its rows."""

    def __init__(self, name, batch, dtype, size, crp_channels):
        self.name, self.model = name, ji.backbones.create(name, num_classes=1000)
        key = jax.random.key(0)
        x = jax.random.uniform(key, (batch, size, size, 3))
        self.variables = ji.explain.pipeline.cast_floating(jax.jit(self.model.init)(key, x[:1]), dtype)
        self.x, self.t = x.astype(dtype), jnp.arange(batch) % 1000
        self.layer = ji.explain.pipeline.default_layer(self.model)
        shapes = ji.backbones.layer_shapes(self.model, size)
        self.shapes, self.channels = shapes, min(crp_channels, shapes[self.layer][-1])
        fwd = jax.jit(lambda v, x: self.model.apply(v, x)[0]).lower(self.variables, self.x).compile()
        self.forward_flops = _flops(fwd)


def run_row(workload, s: Setup, repeats):
    """``(compile s, median s, flops, estimated)`` of one workload on one setup."""
    if workload in EXPLAINERS:
        jitted = jax.jit(explainer(workload, s.model, s.layer, s.channels))
        compile_s, t, compiled = timed(jitted, (s.variables, s.x, s.t), repeats)
        flops = _flops(compiled)
        if flops is None and s.forward_flops:  # a loop: forward FLOPs x passes, a backward as two
            fwd, bwd = (
                (1, s.channels) if workload == "crp" else ji.explain.METHODS[workload].passes(s.channels)
            )
            return compile_s, t, s.forward_flops * (fwd + 2 * bwd), True
        return compile_s, t, flops, False
    tx = optax.adam(1e-4)
    step, specs = train_step(s.model, s.name, workload, tx)
    mask = jnp.zeros(s.x.shape[:3], s.x.dtype).at[:, : s.x.shape[1] // 2].set(1)
    batch = {"image": s.x, "label": s.t, "object_mask": mask}
    args = (s.variables, tx.init(s.variables["params"]), {sp.name: sp.init(s.shapes) for sp in specs}, batch)
    compile_s, t, compiled = timed(step, args, repeats)
    return compile_s, t, _flops(compiled), False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny CPU sizes (seconds)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting rows after this")
    parser.add_argument("--workloads", nargs="+", default=EXPLAINERS + LOSSES)
    args = parser.parse_args()
    cfg = SMALL if args.small else FULL
    start = time.perf_counter()
    device = jax.devices()[0]
    peaks = {k: matmul_peak(cfg["peak_n"], d, args.repeats) for k, d in DTYPES.items()}
    peak_text = ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peaks.items())
    print(
        f"jax {jax.__version__}, {device.platform} {device.device_kind}; matmul peak: {peak_text}", flush=True
    )
    setups, rows = {}, []
    for workload in args.workloads:
        for name in cfg["models"]:
            for batch in cfg["batches"]:
                for dk, dtype in DTYPES.items():
                    label = [workload if workload in EXPLAINERS else f"train {workload}", name, batch, dk]
                    if time.perf_counter() - start > args.budget_s:
                        rows.append([*label, "skipped (budget)", "", "", ""])
                        continue
                    try:
                        key = (name, batch, dk)
                        setups.setdefault(key, Setup(name, batch, dtype, cfg["size"], cfg["crp_channels"]))
                        compile_s, t, flops, est = run_row(workload, setups[key], args.repeats)
                        tflops = flops / t / 1e12 if flops else float("nan")
                        share = f"{100 * tflops / peaks[dk]:.1f} %" if flops else "-"
                        rows.append(
                            [*label, compile_s, 1e3 * t, ("~" if est else "") + f"{tflops:.3g}", share]
                        )
                    except Exception as e:  # one failing row must not hide the others
                        traceback.print_exc()
                        rows.append([*label, f"error: {type(e).__name__}: {str(e)[:80]}", "", "", ""])
                    print(f"  {' '.join(map(str, rows[-1][:4]))}: {rows[-1][4:]}", flush=True)
    common.print_table(
        ["workload", "model", "batch", "dtype", "compile s", "ms / call", "TFLOP/s", "of peak"], rows
    )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
