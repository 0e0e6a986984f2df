"""LRP vs zennit and CRP over all channels of VGG16 conv5_3 vs zennit-crp, identical weights, same run.

    python benchmarks/relevance.py --size 224 --crp-size 64 --images 1 --crp-channels 512

Prints seconds per image for each side and the ratio (goal: LRP >= 2x zennit, CRP >= 5x zennit-crp).
Timings are medians over ``--repeats`` calls after one warm-up call (compilation excluded); torch uses
its default threads. CRP also reports how many channels carry relevance (the others are skipped).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import jinterp as ji  # noqa: E402
import tests.torch_refs as torch_refs  # noqa: E402  (torchvision stand-in before zennit)
from benchmarks.common import median_time  # noqa: E402


def timed(fn, repeats):
    fn()
    return median_time(fn, repeats)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224, help="LRP input size")
    p.add_argument("--crp-size", type=int, default=64, help="CRP input size (zennit-crp ~1 s/channel at 224)")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--crp-channels", type=int, default=512)
    p.add_argument("--batch", type=int, default=32, help="CRP channels per vmapped chunk")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    from crp.attribution import CondAttribution
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import VGGCanonizer

    tm = torch_refs.build("vgg16", num_classes=10, seed=0)
    model = ji.backbones.create("vgg16", num_classes=10)
    v = ji.backbones.from_torch("vgg16", tm.state_dict())
    x = np.random.default_rng(0).normal(size=(a.images, a.size, a.size, 3)).astype(np.float32)
    t = np.arange(a.images) % 10
    xt = torch_refs.to_nchw(x)
    comp = EpsilonPlusFlat(canonizers=[VGGCanonizer()])

    def ours_lrp():
        ji.explain.lrp.lrp_relevance(model, v, x, t).input.block_until_ready()

    def zennit_lrp():
        xr = xt.clone().requires_grad_()
        with Gradient(tm, comp) as attr:
            out = tm(xr)
            init = torch.zeros_like(out)
            init[range(a.images), t] = out[range(a.images), t]
            attr(xr, init.detach())

    jl, zl = timed(ours_lrp, a.repeats) / a.images, timed(zennit_lrp, a.repeats) / a.images
    print(f"LRP  {a.size}px: jinterp {jl:.3f} s/img  zennit {zl:.3f} s/img  ratio {zl / jl:.2f}x")

    chans = np.arange(a.crp_channels)
    xc = np.random.default_rng(0).normal(size=(a.images, a.crp_size, a.crp_size, 3)).astype(np.float32)
    xct = torch_refs.to_nchw(xc)

    def ours_crp():
        ji.explain.crp.conditional_heatmaps(model, v, xc, t, "conv5_3", chans, batch_size=a.batch)[
            0
        ].block_until_ready()

    attr = CondAttribution(tm)

    def zennit_crp():
        for i in range(a.images):  # zennit-crp's own batching: conditions in batches of a.batch
            for s in range(0, a.crp_channels, a.batch):
                cs = chans[s : s + a.batch]
                conds = [{"features.28": [int(c)], "y": [int(t[i])]} for c in cs]
                attr(xct[i : i + 1].repeat(len(cs), 1, 1, 1).requires_grad_(), conds, comp)

    _, _, rel = ji.explain.crp.conditional_heatmaps(model, v, xc, t, "conv5_3", chans, abs_norm=False)
    live = int((np.asarray(rel)[:, chans] != 0).sum()) / a.images
    jc = timed(ours_crp, 1) / a.images
    zc = timed(zennit_crp, 1) / a.images
    print(
        f"CRP  {a.crp_size}px, {a.crp_channels} channels of conv5_3 ({live:.0f} with relevance): "
        f"jinterp {jc:.2f} s/img  zennit-crp {zc:.2f} s/img  ratio {zc / jc:.2f}x"
    )
    print(f"devices: {jax.devices()}, torch threads {torch.get_num_threads()}, jnp {jnp.__name__}")


if __name__ == "__main__":
    main()
