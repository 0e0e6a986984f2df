"""Parity with pytorch-grad-cam 1.5 on identical weights (torch twins imported with ``from_torch``).

Mixed targets in one batch (PGC ``ClassifierOutputTarget`` per image); 1e-3 max abs difference on
the [0, 1] maps (measured: ~1e-5). VGG16 ``conv5_3`` = torch ``features[29]``, ResNet18 ``layer4`` =
``layer4[-1]``, small_cnn ``conv6`` = ``features[17]``.
"""

import tests.torch_refs as torch_refs  # noqa: I001  (installs the torchvision stand-in first)

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import jinterp as ji

TOL = 1e-3
PGC = torch_refs.pgc_methods()
MASKING = {k: PGC[k] for k in ("score_cam", "ablation_cam")}
GRADIENT = {k: v for k, v in PGC.items() if k not in MASKING}


def _torch_layer(tm, name, layer):
    if name.startswith("resnet"):
        return getattr(tm, layer)[-1]
    if name == "vgg16":
        return tm.features[{"conv5_3": 29, "conv4_3": 22}[layer]]
    return tm.features[3 * int(layer[4:]) - 1]  # small_cnn conv{i}: ReLU features[3i - 1]


@pytest.fixture(scope="module", params=["vgg16", "resnet18"])
def twin(request):
    name = request.param
    tm = torch_refs.build(name, num_classes=10, seed=0)
    model = ji.backbones.create(name, num_classes=10)
    variables = ji.backbones.from_torch(model, tm.state_dict())
    x = np.random.default_rng(1).normal(size=(3, 64, 64, 3)).astype(np.float32)
    return name, tm, model, variables, x, np.array([1, 7, 4])


def _pgc(cls, tm, layers, x, targets, **kwargs):
    with cls(tm, layers, **kwargs) as c:
        return c(torch_refs.to_nchw(x), [ClassifierOutputTarget(int(t)) for t in targets])


@pytest.mark.parametrize("method", sorted(GRADIENT))
def test_gradient_cams_match_pgc(twin, method):
    name, tm, model, variables, x, t = twin
    layer = "layer4" if name == "resnet18" else "conv5_3"
    ref = _pgc(GRADIENT[method], tm, [_torch_layer(tm, name, layer)], x, t)
    ours = np.asarray(ji.explain.explain(f'{method}(layer="{layer}")', model, variables, x, t))
    assert ours.shape == ref.shape == (3, 64, 64)
    assert ref.max() > 0.99 and np.abs(ours - ref).max() < TOL


def test_several_layers_are_averaged_as_pgc(twin):
    name, tm, model, variables, x, t = twin
    layers = ["layer3", "layer4"] if name == "resnet18" else ["conv4_3", "conv5_3"]
    ref = _pgc(PGC["grad_cam"], tm, [_torch_layer(tm, name, k) for k in layers], x, t)
    ours = np.asarray(ji.explain.explain(f"grad_cam(layer={layers!r})", model, variables, x, t))
    assert np.abs(ours - ref).max() < TOL
    single = np.asarray(ji.explain.explain(f'grad_cam(layer="{layers[1]}")', model, variables, x, t))
    assert np.abs(single - ours).max() > 0.05  # the second layer really changes the result


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(MASKING))
def test_masking_cams_match_pgc(twin, method):
    name, tm, model, variables, x, t = twin
    layer = "layer4" if name == "resnet18" else "conv5_3"
    x, t = x[:2], t[:2]  # PGC runs C masked forwards per image
    ref = _pgc(MASKING[method], tm, [_torch_layer(tm, name, layer)], x, t)
    ours = np.asarray(ji.explain.explain(f'{method}(layer="{layer}", batch=64)', model, variables, x, t))
    assert np.abs(ours - ref).max() < TOL


@pytest.fixture(scope="module")
def small_twin():
    """small_cnn with a third of its conv6 channels dead (constant zero) in every image."""
    tm = torch_refs.build("small_cnn", num_classes=6, seed=3)
    with torch.no_grad():
        tm.features[16].bias[::3] = -1e3  # BN shift -> ReLU output exactly 0
    model = ji.backbones.create("small_cnn", num_classes=6)
    variables = ji.backbones.from_torch(model, tm.state_dict())
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    return tm, model, variables, x, np.array([5, 2])


@pytest.mark.parametrize("method", sorted(MASKING))
def test_masking_cams_match_pgc_with_dead_channels(small_twin, method):
    """Score-CAM skips constant channels (their mask is exactly 0): still PGC's result, which
    includes them in its softmax over channels."""
    tm, model, variables, x, t = small_twin
    _, out = model.apply(variables, x)
    dead = np.asarray(out["conv6"]).max(axis=(0, 1, 2)) == 0
    assert dead.sum() >= 40  # the skip path is really exercised
    ref = _pgc(MASKING[method], tm, [tm.features[17]], x, t)
    ours = np.asarray(ji.explain.explain(f'{method}(layer="conv6", batch=24)', model, variables, x, t))
    assert ref.max() > 0.99 and np.abs(ours - ref).max() < TOL
