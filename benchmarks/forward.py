"""Forward throughput of each backbone: jinterp (jitted, after compile) vs the identical torch model.

Same weights (imported with ``from_torch``), same inputs, one run. Prints a Markdown table with
per-image times, the jinterp/torch speed ratio and jinterp's compile time.

    python benchmarks/forward.py [--models vgg16 resnet18] [--size 224] [--batches 1 8]
"""

import argparse
import time

import common
import jax
import numpy as np
import torch

import jinterp as ji
from tests import torch_refs

DEFAULT_MODELS = ["vgg16", "vgg16_bn", "resnet18", "resnet50", "densenet121", "small_cnn"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, input {args.size} px"
    )
    rows = []
    for name in args.models:
        torch_model = torch_refs.build(name, num_classes=1000)
        variables = ji.backbones.from_torch(name, torch_model.state_dict())
        model = ji.backbones.create(name, num_classes=1000)
        apply = jax.jit(lambda v, x, model=model: model.apply(v, x)[0])
        for batch in args.batches:
            x = np.random.default_rng(0).normal(size=(batch, args.size, args.size, 3)).astype(np.float32)
            xt = torch_refs.to_nchw(x)
            start = time.perf_counter()
            compiled = apply.lower(variables, x).compile()
            compile_s = time.perf_counter() - start
            compiled(variables, x).block_until_ready()
            t_jax = common.median_time(
                lambda c=compiled, v=variables, x=x: c(v, x).block_until_ready(), args.repeats
            )
            with torch.no_grad():
                torch_model(xt)
                t_torch = common.median_time(lambda m=torch_model, xt=xt: m(xt), args.repeats)
            rows.append([name, batch, 1e3 * t_jax / batch, 1e3 * t_torch / batch, t_torch / t_jax, compile_s])
            print(f"  {name} batch {batch}: jinterp {t_jax:.3f}s torch {t_torch:.3f}s", flush=True)
    common.print_table(
        ["model", "batch", "jinterp ms/img", "torch ms/img", "speed-up (torch/jinterp)", "compile s"], rows
    )


if __name__ == "__main__":
    main()
