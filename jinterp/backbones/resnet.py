"""ResNet 18/34/50 (v1.5: stride on the 3x3 conv), layer for layer as torchvision's ``resnet*``.

Taps: ``conv1`` (stem after ReLU), one per block (``layer3.1`` ...: the block output after its
final ReLU) and one per stage (``layer1`` ... ``layer4``: the stage's last block, the layers
pytorch-grad-cam users pick). The residual addition is a :class:`~jinterp.backbones.layers.Sum`
module, so LRP applies its sum rule there (zennit's ``ResNetCanonizer``).
"""

from typing import ClassVar

import flax.linen as nn

from jinterp.backbones.base import Backbone
from jinterp.backbones.layers import ConvBN, MaxPool, Sum, global_avg_pool

# torchvision: (block type, blocks per stage)
CONFIGS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
EXPANSION = {"basic": 1, "bottleneck": 4}


class Block(nn.Module):
    """BasicBlock or Bottleneck; ``downsample`` when stride or width changes."""

    kind: str
    planes: int
    strides: int
    downsample: bool

    @nn.compact
    def __call__(self, x, train: bool = False):
        def cbn(ch, k, s, name):
            return ConvBN(ch, k, s, k // 2, use_bias=False, use_bn=True, name=name)

        if self.kind == "basic":
            y = nn.relu(cbn(self.planes, 3, self.strides, "conv1")(x, train))
            y = cbn(self.planes, 3, 1, "conv2")(y, train)
        else:
            y = nn.relu(cbn(self.planes, 1, 1, "conv1")(x, train))
            y = nn.relu(cbn(self.planes, 3, self.strides, "conv2")(y, train))
            y = cbn(self.planes * 4, 1, 1, "conv3")(y, train)
        identity = x
        if self.downsample:
            identity = cbn(self.planes * EXPANSION[self.kind], 1, self.strides, "downsample")(x, train)
        return nn.relu(Sum(name="add")(y, identity))


class ResNet(Backbone):
    """torchvision ResNet; ``depth`` in {18, 34, 50}."""

    depth: int = 18
    num_classes: int = 1000

    min_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        kind, stages = CONFIGS[self.depth]
        out = {}
        x = ConvBN(64, 7, 2, 3, use_bias=False, use_bn=True, name="conv1")(x, train)
        x = self.tap("conv1", nn.relu(x), out)
        x = MaxPool(3, 2, 1, name="maxpool")(x)
        in_ch = 64
        for s, blocks in enumerate(stages, start=1):
            planes = 64 * 2 ** (s - 1)
            for b in range(blocks):
                strides = 2 if (b == 0 and s > 1) else 1
                downsample = b == 0 and (strides != 1 or in_ch != planes * EXPANSION[kind])
                x = Block(kind, planes, strides, downsample, name=f"layer{s}_{b}")(x, train)
                x = self.tap(f"layer{s}.{b}", x, out)
                in_ch = planes * EXPANSION[kind]
            x = self.tap(f"layer{s}", x, out)
        return nn.Dense(self.num_classes, name="fc")(global_avg_pool(x)), out


def torch_names(model: ResNet) -> dict[str, str]:
    """Flax module path -> torchvision state-dict prefix."""
    kind, stages = CONFIGS[model.depth]
    names = {"conv1/conv": "conv1", "conv1/bn": "bn1", "fc": "fc"}
    convs = ("conv1", "conv2") if kind == "basic" else ("conv1", "conv2", "conv3")
    for s, blocks in enumerate(stages, start=1):
        for b in range(blocks):
            flax_block, torch_block = f"layer{s}_{b}", f"layer{s}.{b}"
            for i, c in enumerate(convs, start=1):
                names[f"{flax_block}/{c}/conv"] = f"{torch_block}.conv{i}"
                names[f"{flax_block}/{c}/bn"] = f"{torch_block}.bn{i}"
            names[f"{flax_block}/downsample/conv"] = f"{torch_block}.downsample.0"
            names[f"{flax_block}/downsample/bn"] = f"{torch_block}.downsample.1"
    return names
