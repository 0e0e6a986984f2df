"""Pure Flax Linen CNNs with named feature taps, and torchvision weight import / export.

>>> model = create("vgg16", num_classes=200)
>>> variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
>>> logits, out = model.apply(variables, x)            # out["conv5_3"]: (N, 14, 14, 512)
>>> logits, maps, grads = feature_grads(model, variables, x, targets, ["conv5_3"])
"""

import functools

from jinterp.backbones.base import Backbone, tap
from jinterp.backbones.densenet import DenseNet
from jinterp.backbones.resnet import ResNet
from jinterp.backbones.small import SmallCNN
from jinterp.backbones.taps import (
    check_layers,
    feature_grads,
    layer_names,
    layer_shapes,
    min_size,
    strip_perturbations,
    target_logit,
)
from jinterp.backbones.torch_import import from_torch, load_state_dict, to_torch
from jinterp.backbones.vgg import VGG
from jinterp.checks import check_choice

MODELS = {
    **{f"vgg{d}": functools.partial(VGG, depth=d) for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": functools.partial(VGG, depth=d, batch_norm=True) for d in (11, 13, 16, 19)},
    **{f"resnet{d}": functools.partial(ResNet, depth=d) for d in (18, 34, 50)},
    "densenet121": functools.partial(DenseNet, depth=121),
    "small_cnn": SmallCNN,
}


def create(name: str, num_classes: int = 1000, **kwargs) -> Backbone:
    """Build a backbone by name (see ``MODELS``); ``kwargs`` go to its constructor (e.g. ``head="gap"``)."""
    check_choice("name", name, MODELS)
    return MODELS[name](num_classes=num_classes, **kwargs)


__all__ = [
    "MODELS",
    "Backbone",
    "DenseNet",
    "ResNet",
    "SmallCNN",
    "VGG",
    "check_layers",
    "create",
    "feature_grads",
    "from_torch",
    "layer_names",
    "layer_shapes",
    "load_state_dict",
    "min_size",
    "strip_perturbations",
    "tap",
    "target_logit",
    "to_torch",
]
