"""CAM family: per-image time of every method, jinterp vs pytorch-grad-cam (PGC), same weights and inputs.

jinterp runs the jitted ``ji.explain.explain`` (compile excluded, reported separately); PGC runs its
own classes with ``ClassifierOutputTarget`` per image on the torch twin of the same backbone. Both
explain the same layer (VGG ``conv5_3`` = ``features[29]``, ResNet ``layer4`` = ``layer4[-1]``).
Prints a Markdown table with per-image times (medians of ``--repeats`` rounds that alternate jinterp
and PGC calls, so load from other processes hits both alike), the PGC/jinterp ratio (median of the
same-round ratios), forward passes per image (``METHODS`` metadata for jinterp) and the max abs
difference of the two heatmaps.

Masked-input methods are slow in PGC on a CPU (Score-CAM on VGG16 at 224 px: minutes per image),
so ``--masking-size`` runs them at a smaller input (the table states the size used).

By default both run seeded random weights on noise images (targets random). ``--trained CONFIG
WORKDIR`` runs a checkpoint trained with ``launch.py`` instead (``LAYERS``' backbones), exported to
the torch twin with ``ji.backbones.to_torch``, on the first test images of its data set at its training
size, explaining the true labels: the realistic case for Score-CAM, whose exact skipping of all-zero
channels finds nothing to skip on random weights (the table's "zero ch." column counts them).

    python benchmarks/cams.py [--models vgg16 resnet18] [--size 224] [--batches 1 8]
        [--methods grad_cam score_cam ...] [--masking-size 64] [--repeats 5] [--no-pgc]
    python benchmarks/cams.py --trained configs/x.py WORKDIR --methods score_cam --batches 1 8
"""

import argparse
import contextlib
import functools
import io
import statistics
import time

import common
import jax
import numpy as np
import torch

import jinterp as ji

from tests import torch_refs  # isort: skip  (installs the torchvision stand-in before PGC)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # isort: skip

PGC = torch_refs.pgc_methods()
MASKING = {"score_cam", "ablation_cam", "group_cam", "cluster_cam"}
CAMS = [
    "cam", "grad_cam", "grad_cam_pp", "smooth_grad_cam_pp", "xgrad_cam", "hires_cam", "layer_cam",
    "eigen_cam", "score_cam", "ablation_cam", "group_cam", "cluster_cam",
]  # fmt: skip
LAYERS = {
    "vgg16": ("conv5_3", lambda m: m.features[29]),
    "resnet18": ("layer4", lambda m: m.layer4[-1]),
    "small_cnn": ("conv6", lambda m: m.features[17]),  # with --trained
}


def pgc_passes(method: str, channels: int) -> str:
    if method in ("score_cam", "ablation_cam"):
        return f"{channels + 1} full"
    return "1 + full backward" if method != "eigen_cam" else "1"


def run_pgc(method, torch_model, layer, x, targets):
    cls = PGC[method]
    kwargs = {"batch_size": 32} if method == "ablation_cam" else {}
    with cls(torch_model, [layer], **kwargs) as cam, contextlib.redirect_stderr(io.StringIO()):
        if method == "score_cam":
            cam.batch_size = 16  # PGC's default
        return cam(torch_refs.to_nchw(x), [ClassifierOutputTarget(int(t)) for t in targets])


def timed_pair(fns, repeats):
    """``(jinterp s, PGC s, PGC/jinterp)``: medians over alternating rounds (NaN without ``fns["pgc"]``)."""
    times = common.alternating_times(fns, repeats)
    if "pgc" not in times:
        return statistics.median(times["jinterp"]), float("nan"), float("nan")
    ratio = common.median_ratio(times["pgc"], times["jinterp"])
    return statistics.median(times["jinterp"]), statistics.median(times["pgc"]), ratio


def zero_channels(maps) -> float:
    """Mean number of all-zero channels per image of (N, h, w, C) ``maps`` (what Score-CAM skips)."""
    return float(np.mean(np.all(np.asarray(maps) == 0, axis=(1, 2)).sum(-1)))


def setups(args):
    """Yield ``(name, model, variables, torch_model, inputs)``; ``inputs(batch, size) -> (x, targets)``."""
    if args.trained:
        from jinterp import train
        from launch import config_module

        module, arg = config_module(args.trained[0])
        config = module.get_config(arg)
        model, variables, step = train.restore_model(config, args.trained[1])
        name = config.model.name
        torch_model = torch_refs.build(name, config.data.num_classes, **dict(config.model.kwargs))
        state = ji.backbones.to_torch(model, variables)
        torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        test = train.load_split(config.data, "test", max(args.batches))
        args.size = args.masking_size = config.data.image_size
        print(f"{name} trained {step} steps ({args.trained[1]}), {config.data.name} test images")

        def first_test_images(batch, size):
            return test["image"][:batch], test["label"][:batch]

        yield name, model, variables, torch_model, first_test_images
        return
    for name in args.models:
        torch_model = torch_refs.build(name, num_classes=1000)
        variables = ji.backbones.from_torch(name, torch_model.state_dict())
        model = ji.backbones.create(name, num_classes=1000)

        def noise(batch, size):
            rng = np.random.default_rng(0)
            x = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
            return x, rng.integers(0, 1000, size=batch)

        yield name, model, variables, torch_model, noise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet18"], choices=list(LAYERS))
    parser.add_argument("--methods", nargs="+", default=CAMS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--masking-size", type=int, default=None, help="input size for masked-input methods")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="alternating jinterp / PGC rounds")
    parser.add_argument("--no-pgc", action="store_true", help="time jinterp only")
    parser.add_argument("--trained", nargs=2, metavar=("CONFIG", "WORKDIR"), help="a launch.py checkpoint")
    common.add_torch_threads(parser)
    args = parser.parse_args()
    common.set_torch_threads(args.torch_threads)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")  # fmt: skip
    rows, own = [], {}
    for name, model, variables, torch_model, inputs in setups(args):
        layer, torch_layer = LAYERS[name]
        channels = ji.backbones.layer_shapes(model, 64)[layer][-1]
        forward = jax.jit(model.apply)  # one compile per input shape, for the zero-channel count
        for method in args.methods:
            size = args.masking_size if (method in MASKING and args.masking_size) else args.size
            spec = f'{method}(layer="{layer}")'
            for batch in args.batches:
                x, t = inputs(batch, size)
                zero = zero_channels(forward(variables, x)[1][layer])
                start = time.perf_counter()
                heat = ji.explain.explain(spec, model, variables, x, t).block_until_ready()
                first = time.perf_counter() - start
                run = functools.partial(ji.explain.explain, spec, model, variables, x, t)
                fns = {"jinterp": lambda run=run: run().block_until_ready()}
                diff = float("nan")
                if method in PGC and not args.no_pgc:
                    fns["pgc"] = functools.partial(
                        run_pgc, method, torch_model, torch_layer(torch_model), x, t
                    )
                    diff = float(np.abs(np.asarray(heat) - fns["pgc"]()).max())  # also PGC's warm-up
                t_jax, t_pgc, ratio = timed_pair(fns, args.repeats)
                own[(name, method, size, batch)] = t_jax
                fwd, bwd = ji.explain.METHODS[method].passes(channels)
                rows.append([
                    name, method, size, batch, 1e3 * t_jax / batch, 1e3 * t_pgc / batch, ratio,
                    f"{fwd} fwd / {bwd} bwd", pgc_passes(method, channels) if method in PGC else "-",
                    f"{zero:.0f}/{channels}", diff, first - t_jax,
                ])  # fmt: skip
                print(
                    f"  {name} {method} {size}px batch {batch}: jinterp {t_jax:.3f}s pgc {t_pgc:.3f}s",
                    flush=True,
                )
    common.print_table(
        ["model", "method", "px", "batch", "jinterp ms/img", "PGC ms/img", "PGC/jinterp", "jinterp passes",
         "PGC passes", "zero ch.", "max |diff|", "compile s"],
        rows,
    )  # fmt: skip
    for (name, method, size, batch), t in own.items():
        if method == "cluster_cam" and (name, "score_cam", size, batch) in own:
            ratio = own[(name, "score_cam", size, batch)] / t
            print(f"{name} {size}px batch {batch}: jinterp Score-CAM / Cluster-CAM time = {ratio:.1f}x")


if __name__ == "__main__":
    main()
