"""FullGrad: the full-gradient decomposition (exact for ReLU networks) and parity with pytorch-grad-cam's
``FullGrad`` on identical weights (max abs difference on the [0, 1] maps; mixed targets in one batch)."""

import tests.torch_refs as torch_refs  # noqa: I001  (installs the torchvision stand-in first)

import jax
import numpy as np
import pytest
from pytorch_grad_cam import FullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import jinterp as ji
from jinterp.explain import fullgrad

TOL = 1e-5


def _twin(name):
    kwargs = {"head": "gap"} if name == "vgg16" else {}
    tm = torch_refs.build(name, num_classes=10, seed=0, **kwargs)
    model = ji.backbones.create(name, num_classes=10, **kwargs)
    variables = ji.backbones.from_torch(model, tm.state_dict())
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
    return tm, model, variables, x, np.array([1, 7, 4])


@pytest.mark.parametrize("name", ["small_cnn", pytest.param("vgg16", marks=pytest.mark.slow),
                                  pytest.param("resnet18", marks=pytest.mark.slow)])  # fmt: skip
def test_matches_pgc(name):
    tm, model, variables, x, t = _twin(name)
    with FullGrad(tm, []) as cam:
        ref = cam(torch_refs.to_nchw(x), [ClassifierOutputTarget(int(c)) for c in t])
    ours = np.asarray(ji.explain.explain("fullgrad", model, variables, x, t))
    assert ours.shape == ref.shape == (3, 32, 32)
    assert ref.max() > 0.99 and np.abs(ours - ref).max() < TOL


def test_full_gradient_decomposition_is_complete():
    """For a ReLU network (BatchNorm in eval mode), ``f(x) = x . df/dx + sum_l b_l . df/dz_l`` over every
    bias, here the conv / BatchNorm biases FullGrad maps plus the classifier's own bias."""
    _, model, variables, x, t = _twin("small_cnn")
    gx, gz, biases = jax.jit(fullgrad.full_gradients, static_argnums=0)(model, variables, x, t)
    assert len(gz) == 6  # small_cnn: six BatchNorms (its convolutions have no bias)
    total = (x * np.asarray(gx)).sum((1, 2, 3))
    total += sum((np.asarray(g) * np.asarray(b)).sum((1, 2, 3)) for g, b in zip(gz, biases, strict=True))
    total += np.asarray(variables["params"]["fc"]["bias"])[t]
    logits, _ = model.apply(variables, x)
    assert np.allclose(total, np.asarray(logits)[np.arange(3), t], rtol=1e-4, atol=1e-4)
