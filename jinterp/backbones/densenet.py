"""DenseNet-121, layer for layer as torchvision's ``densenet121`` (memory_efficient=False).

Taps: ``conv0`` (stem after ReLU), ``denseblock1`` ... ``denseblock4`` (each block's concatenated
output, as a torch hook on ``features.denseblockN`` sees it: DenseNet is pre-activation, so these
maps are NOT post-ReLU), ``transition1`` ... ``transition3`` and ``features``
(ReLU(norm5(denseblock4)), the final post-ReLU map that CAMs and icCNN use).
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jinterp.backbones.base import Backbone
from jinterp.backbones.layers import BN_EPSILON, BN_MOMENTUM, AvgPool, ConvBN, MaxPool, global_avg_pool

CONFIGS = {121: (32, (6, 12, 24, 16), 64)}  # growth rate, layers per block, stem width
BN_SIZE = 4


def _bn(train, name):
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3; returns the ``growth`` new channels."""

    growth: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(_bn(train, "norm1")(x))
        y = ConvBN(BN_SIZE * self.growth, 1, 1, 0, use_bias=False, name="conv1")(y)
        y = nn.relu(_bn(train, "norm2")(y))
        return ConvBN(self.growth, 3, 1, 1, use_bias=False, name="conv2")(y)


class DenseNet(Backbone):
    """torchvision DenseNet; ``depth`` in {121}."""

    depth: int = 121
    num_classes: int = 1000

    min_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        growth, blocks, width = CONFIGS[self.depth]
        out = {}
        x = ConvBN(width, 7, 2, 3, use_bias=False, name="conv0")(x)
        x = self.tap("conv0", nn.relu(_bn(train, "norm0")(x)), out)
        x = MaxPool(3, 2, 1, name="pool0")(x)
        for b, layers in enumerate(blocks, start=1):
            for i in range(1, layers + 1):
                new = DenseLayer(growth, name=f"denseblock{b}_denselayer{i}")(x, train)
                x = jnp.concatenate([x, new], axis=-1)
            x = self.tap(f"denseblock{b}", x, out)
            if b < len(blocks):
                x = nn.relu(_bn(train, f"transition{b}_norm")(x))
                x = ConvBN(x.shape[-1] // 2, 1, 1, 0, use_bias=False, name=f"transition{b}_conv")(x)
                x = self.tap(f"transition{b}", AvgPool(2, 2, name=f"transition{b}_pool")(x), out)
        x = self.tap("features", nn.relu(_bn(train, "norm5")(x)), out)
        return nn.Dense(self.num_classes, name="classifier")(global_avg_pool(x)), out


def torch_names(model: DenseNet) -> dict[str, str]:
    """Flax module path -> torchvision state-dict prefix."""
    _, blocks, _ = CONFIGS[model.depth]
    names = {
        "conv0/conv": "features.conv0",
        "norm0": "features.norm0",
        "norm5": "features.norm5",
        "classifier": "classifier",
    }
    for b, layers in enumerate(blocks, start=1):
        for i in range(1, layers + 1):
            f, t = f"denseblock{b}_denselayer{i}", f"features.denseblock{b}.denselayer{i}"
            names.update(
                {
                    f"{f}/norm1": f"{t}.norm1",
                    f"{f}/conv1/conv": f"{t}.conv1",
                    f"{f}/norm2": f"{t}.norm2",
                    f"{f}/conv2/conv": f"{t}.conv2",
                }
            )
        if b < len(blocks):
            names[f"transition{b}_norm"] = f"features.transition{b}.norm"
            names[f"transition{b}_conv/conv"] = f"features.transition{b}.conv"
    return names
