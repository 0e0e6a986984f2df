"""SS-CAM, IS-CAM and Score-CAM in torch-cam's convention against torch-cam 0.5.0 on identical weights.

torch-cam hooks the torch twin's layer (small_cnn ``conv6`` = ``features[17]``, ``conv4`` = ``features[11]``)
and returns maps at the layer's resolution, min-max scaled per image: they are upsampled bilinearly
(half-pixel centres) and rescaled before comparing (max abs difference on [0, 1] maps). SS-CAM's noise is
drawn once in NumPy and given to both (torch-cam's sampler is replaced). The classifier's weights are
scaled up so that the softmax over channels is sharp and mask differences show in the maps.
"""

import tests.torch_refs as torch_refs  # noqa: I001  (installs the torchvision stand-in first)

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchcam.methods import ISCAM, SSCAM, ScoreCAM

import jinterp as ji
from jinterp.explain import pipeline, score_variants

TOL = 1e-5
N, SIZE, C = 2, 32, 128


@functools.cache
def _twin():
    tm = torch_refs.build("small_cnn", num_classes=6, seed=3)
    with torch.no_grad():
        tm.fc.weight.mul_(30.0)
    model = ji.backbones.create("small_cnn", num_classes=6)
    variables = ji.backbones.from_torch(model, tm.state_dict())
    x = np.random.default_rng(2).normal(size=(N, SIZE, SIZE, 3)).astype(np.float32)
    return tm, model, variables, x, np.array([5, 2])


class _Noise:
    """Stands in for torch-cam's ``Normal(0, std)``: returns the given draws in order."""

    def __init__(self, draws):
        self.draws, self.i = draws, 0

    def sample(self, size):
        out = torch.from_numpy(self.draws[self.i])
        assert tuple(out.shape) == tuple(size)
        self.i += 1
        return out


def _torchcam(cls, layer_index, noise=None, **kwargs):
    tm, _, _, x, t = _twin()
    with cls(tm, target_layer=tm.features[layer_index], input_shape=(3, SIZE, SIZE), **kwargs) as extractor:
        if noise is not None:
            extractor._distrib = _Noise(noise)
        with torch.no_grad():
            scores = tm(torch_refs.to_nchw(x))
        cams = extractor(class_idx=[int(c) for c in t], scores=scores)[0]
    up = F.interpolate(cams[:, None], (SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0].numpy()
    lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    return (up - lo) / (hi - lo + 1e-7)


def test_ss_cam_matches_torchcam_on_the_same_noise():
    _, model, variables, x, t = _twin()
    samples = 2
    noise = np.random.default_rng(5).normal(0, 2.0, size=(samples, N, C, SIZE, SIZE)).astype(np.float32)
    ref = _torchcam(SSCAM, 17, noise, num_samples=samples, std=2.0, batch_size=64)
    flat = jnp.asarray(noise.reshape(samples, N * C, SIZE, SIZE))

    def weights(m, v, images, targets, maps):
        noise_fn = lambda s, p: flat[s, p]
        return score_variants.ss_cam_weights(m, v, images, targets, maps, noise_fn, samples=samples, batch=64,
                                             score="logit")  # fmt: skip

    fn = jax.jit(pipeline.channel_weighted_explainer(weights, "conv6"), static_argnums=0)
    ours = np.asarray(fn(model, variables, jnp.asarray(x), jnp.asarray(t)))
    assert ref.max() > 0.99 and np.abs(ours - ref).max() < TOL
    seeded = np.asarray(
        ji.explain.explain(f'ss_cam(layer="conv6", samples={samples}, batch=64)', model, variables, x, t)
    )
    assert np.abs(seeded - ref).max() > 10 * TOL  # other noise, other map: the noise is really used


def test_is_cam_matches_torchcam():
    _, model, variables, x, t = _twin()
    ref = _torchcam(ISCAM, 17, num_samples=3, batch_size=64)
    ours = np.asarray(
        ji.explain.explain('is_cam(layer="conv6", samples=3, batch=64)', model, variables, x, t)
    )
    assert ref.max() > 0.99 and np.abs(ours - ref).max() < TOL
    assert np.allclose(score_variants.is_cam_coefficients(3), [1 / 3, 1.0, 2.0])  # 1/3, + 2/3, + 3/3


@pytest.mark.parametrize(("layer", "index"), [("conv4", 11), ("conv6", 17)])
def test_score_cam_torchcam_convention(layer, index):
    """``mask_scaling="layer", align_corners=False`` is torch-cam's ScoreCAM; PGC's order (upsample, then
    scale) is measurably different on the same weights."""
    _, model, variables, x, t = _twin()
    ref = _torchcam(ScoreCAM, index, batch_size=64)
    spec = f'score_cam(layer="{layer}", batch=64, align_corners=False, mask_scaling="layer")'
    ours = np.asarray(ji.explain.explain(spec, model, variables, x, t))
    assert ref.max() > 0.99 and np.abs(ours - ref).max() < TOL
    pgc_order = np.asarray(ji.explain.explain(spec.replace('"layer")', '"input")'), model, variables, x, t))
    assert np.abs(pgc_order - ref).max() > 5 * TOL


def test_registered():
    _, model, variables, x, t = _twin()
    for name in ("ss_cam", "is_cam"):
        m = ji.explain.METHODS[name]
        assert not m.needs_gradients
        assert m.passes(128, samples=2) == (257, 0)
    with pytest.raises(ValueError):
        ji.explain.get("ss_cam(samples=0)")
    with pytest.raises(ValueError):
        ji.explain.get("ss_cam(std=-1.0)")
    with pytest.raises(ValueError, match="mask_scaling"):
        ji.explain.get('score_cam(mask_scaling="output")')
