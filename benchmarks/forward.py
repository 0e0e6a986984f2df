"""Forward throughput of each backbone: jinterp (jitted, after compile) vs the identical torch model.

Same weights (imported with ``from_torch``), same inputs, one run; jinterp and torch calls alternate
round by round (``--repeats`` rounds, medians), so load from other processes hits both alike. Prints a
Markdown table with per-image times, the torch/jinterp ratio (median of same-round ratios) and
jinterp's compile time. ``--lax-conv`` also times jinterp with every convolution through
``lax.conv_general_dilated``, i.e. without the patches-and-matmul path for maps smaller than the
kernel (``jinterp.backbones.conv``), in the same rounds.

    python benchmarks/forward.py [--models vgg16 resnet18] [--sizes 224] [--batches 1 8] [--lax-conv]
    python benchmarks/forward.py --models resnet18 --sizes 32 48 64 80 --batches 8 --lax-conv
"""

import argparse
import contextlib
import statistics
import time

import common
import jax
import numpy as np
import torch

import jinterp as ji
from jinterp.backbones import conv
from tests import torch_refs

DEFAULT_MODELS = ["vgg16", "vgg16_bn", "resnet18", "resnet50", "densenet121", "small_cnn"]


@contextlib.contextmanager
def lax_convolutions():
    """Every ``ConvBN`` convolution through ``lax.conv_general_dilated`` (jinterp before the patches path)."""
    saved = conv.conv_general_dilated
    conv.conv_general_dilated = jax.lax.conv_general_dilated
    try:
        yield
    finally:
        conv.conv_general_dilated = saved


def compiled_forward(model, variables, x):
    """``(compiled logits fn, compile seconds)``; a fresh jit, so it traces under the current conv."""
    start = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x)[0]).lower(variables, x).compile()
    return compiled, time.perf_counter() - start


def measure(name, model, variables, torch_model, size, batch, args):
    """One table row: jinterp / torch (/ lax-conv jinterp) medians over alternating rounds."""
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    xt = torch_refs.to_nchw(x)
    compiled, compile_s = compiled_forward(model, variables, x)

    def torch_forward():
        with torch.no_grad():
            torch_model(xt)

    fns = {"jinterp": lambda: compiled(variables, x).block_until_ready(), "torch": torch_forward}
    if args.lax_conv:
        with lax_convolutions():
            lax_compiled, _ = compiled_forward(model, variables, x)
        fns["lax"] = lambda: lax_compiled(variables, x).block_until_ready()
    for fn in fns.values():
        fn()
    t = common.alternating_times(fns, args.repeats)
    row = [name, size, batch, *(1e3 * statistics.median(t[k]) / batch for k in fns)]
    row.append(common.median_ratio(t["torch"], t["jinterp"]))
    if args.lax_conv:
        row.append(common.median_ratio(t["lax"], t["jinterp"]))
    print(
        f"  {name} {size}px batch {batch}: "
        + ", ".join(f"{k} {statistics.median(v):.4f}s" for k, v in t.items())
    )
    return [*row, compile_s]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", "--size", nargs="+", type=int, default=[224])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--lax-conv", action="store_true", help="also time lax.conv for every convolution")
    common.add_torch_threads(parser)
    args = parser.parse_args()
    common.set_torch_threads(args.torch_threads)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )
    rows = []
    for name in args.models:
        torch_model = torch_refs.build(name, num_classes=1000)
        variables = ji.backbones.from_torch(name, torch_model.state_dict())
        model = ji.backbones.create(name, num_classes=1000)
        for size in args.sizes:
            for batch in args.batches:
                rows.append(measure(name, model, variables, torch_model, size, batch, args))
    header = ["model", "px", "batch", "jinterp ms/img", "torch ms/img"]
    header += ["lax-conv jinterp ms/img"] if args.lax_conv else []
    header += ["torch / jinterp"] + (["lax-conv / jinterp"] if args.lax_conv else []) + ["compile s"]
    common.print_table(header, rows)


if __name__ == "__main__":
    main()
