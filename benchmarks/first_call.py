"""Time to first heatmap: each method's first call (trace, compile, run) in a fresh process vs its peer.

For every method (``--methods``, default every registered one that runs without options) a fresh
Python process imports everything, builds the model (seeded torch twin, weights imported with
``from_torch``) and times its first ``ji.explain.explain`` call, then the median of ``--repeats``
further calls (steady state). jinterp runs twice on one empty persistent compilation cache
(``JINTERP_CACHE_DIR``, a fresh temporary directory per method): the first process compiles and
writes the cache, the second is what a notebook restarted later pays. The peer, where one exists
(pytorch-grad-cam for the CAMs it has, zennit for LRP), runs in its own fresh process: construct +
call, first and steady. Masked-input methods run at ``--masking-size``. Prints one Markdown table;
times only, nothing is asserted.

    python benchmarks/first_call.py [--models resnet18 vgg16] [--size 224] [--masking-size 64]
        [--methods grad_cam lrp ...] [--repeats 5] [--torch-threads 1]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

HERE = os.path.abspath(__file__)
MASKING = {"score_cam", "ablation_cam", "group_cam", "cluster_cam", "ss_cam", "is_cam"}
LAYERS = {"vgg16": ("conv5_3", 29), "resnet18": ("layer4", None)}


def _setup(model_name, size, torch_threads):
    """(torch twin, jinterp model, variables, images, targets): the same seeded weights and noise."""
    import numpy as np

    import jinterp as ji
    from tests import torch_refs

    common.set_torch_threads(torch_threads)
    torch_model = torch_refs.build(model_name, num_classes=1000)
    model = ji.backbones.create(model_name, num_classes=1000)
    variables = ji.backbones.from_torch(model_name, torch_model.state_dict())
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    return torch_model, model, variables, x, np.array([3])


def _jinterp_call(method, model_name, model, variables, x, t):
    import jinterp as ji

    spec = ji.explain.registry.with_defaults(method, layer=LAYERS[model_name][0])
    return lambda: ji.explain.explain(spec, model, variables, x, t).block_until_ready()


def runs_with_defaults(method) -> bool:
    """False for methods that need an option (``clam`` needs a fitted checkpoint)."""
    import jinterp as ji

    try:
        ji.explain.registry.method(method)
    except ValueError:
        return False
    return True


def _zennit_call(model_name, torch_model, x, t):
    """zennit's LRP (EpsilonPlusFlat, the model's canonizer), initialised with the target logit."""
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    from tests import torch_refs

    xt = torch_refs.to_nchw(x)
    canonizer = VGGCanonizer() if model_name.startswith("vgg") else ResNetCanonizer()

    def run():
        with Gradient(torch_model, EpsilonPlusFlat(canonizers=[canonizer])) as attr:
            out = torch_model(xt)
            init = torch.zeros_like(out)
            init[0, int(t[0])] = out[0, int(t[0])]
            attr(xt.clone().requires_grad_(), init.detach())

    return run


def _peer_call(method, model_name, torch_model, x, t):
    if method == "lrp":
        return _zennit_call(model_name, torch_model, x, t)
    import cams  # the pytorch-grad-cam runner of benchmarks/cams.py

    vgg = model_name.startswith("vgg")
    layer = torch_model.features[LAYERS[model_name][1]] if vgg else torch_model.layer4[-1]
    return lambda: cams.run_pgc(method, torch_model, layer, x, t)


def peer_of(method) -> str | None:
    if method == "lrp":
        return "zennit"
    from tests import torch_refs

    return "pytorch-grad-cam" if method in torch_refs.pgc_methods() else None


def child(args):
    """Run in a fresh process: print ``{"first": s, "steady": s}`` as the last line."""
    method = args.child[1]
    size = args.masking_size if method in MASKING else args.size
    torch_model, model, variables, x, t = _setup(args.models[0], size, args.torch_threads)
    if args.child[0] == "jinterp":
        fn = _jinterp_call(method, args.models[0], model, variables, x, t)
    else:
        fn = _peer_call(method, args.models[0], torch_model, x, t)
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    steady = statistics.median(common.alternating_times({"fn": fn}, args.repeats)["fn"])
    print(json.dumps({"first": first, "steady": steady}))


def run_child(side, method, model_name, args, env) -> dict | None:
    cmd = [sys.executable, HERE, "--child", side, method, "--models", model_name, "--size", str(args.size)]
    cmd += ["--masking-size", str(args.masking_size), "--repeats", str(args.repeats)]
    cmd += ["--torch-threads", str(args.torch_threads)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"  {side} {method}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(method, model_name, args) -> list:
    """One table row: jinterp's first / second process, the peer's fresh process."""
    with tempfile.TemporaryDirectory(prefix="jinterp-cache-") as cache:
        env = {**os.environ, "JINTERP_CACHE_DIR": cache, "JINTERP_COMPILATION_CACHE": "1"}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        cold = run_child("jinterp", method, model_name, args, env)
        warm = run_child("jinterp", method, model_name, args, env)
    peer = peer_of(method)
    theirs = run_child("peer", method, model_name, args, dict(os.environ)) if peer else None
    nan = float("nan")
    steady = warm["steady"] if warm else nan
    second = warm["first"] if warm else nan
    row = [model_name, method, args.masking_size if method in MASKING else args.size, 1e3 * steady]
    row += [cold["first"] if cold else nan, second, second / steady]
    row += [peer or "-", theirs["first"] if theirs else nan, 1e3 * theirs["steady"] if theirs else nan]
    print(f"  {model_name} {method}: " + ", ".join(str(c) for c in row[3:]), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"], choices=list(LAYERS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--masking-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "METHOD"), help=argparse.SUPPRESS)
    common.add_torch_threads(parser)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import jinterp as ji

    methods = args.methods or [m for m in ji.explain.METHODS if runs_with_defaults(m)]
    rows = [measure(m, name, args) for name in args.models for m in methods]
    common.print_table(
        ["model", "method", "px", "jinterp steady ms", "1st process first call s", "2nd process first call s",
         "2nd first / steady", "peer", "peer first call s", "peer steady ms"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
