"""``small_cnn``: a fast CNN for CPU quickstarts and tests.

Six 3x3 Conv-BN-ReLU layers (widths 32, 32, 64, 64, 128, 128; stride 2 on layers 1, 3, 5), global
average pooling and one Dense layer: 288 k parameters, ~92 % test accuracy on PartsWorld-64 after
8 CPU minutes (shared/notes/stack.md §9). Taps ``conv1`` ... ``conv6`` after each ReLU (64 px input:
32, 32, 16, 16, 8, 8 px maps). Its torch twin (for parity tests) is ``nn.Sequential`` of
Conv2d(bias=False)/BatchNorm2d/ReLU triplets named ``features.{3i}``, ``features.{3i+1}``, and ``fc``.
"""

from typing import ClassVar

import flax.linen as nn

from jinterp.backbones.base import Backbone
from jinterp.backbones.layers import ConvBN, global_avg_pool


class SmallCNN(Backbone):
    """A few Conv-BN-ReLU layers + GAP + Dense; widths and strides configurable."""

    num_classes: int = 8
    widths: tuple[int, ...] = (32, 32, 64, 64, 128, 128)
    strides: tuple[int, ...] = (2, 1, 2, 1, 2, 1)

    min_size: ClassVar[int] = 16

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        for i, (width, stride) in enumerate(zip(self.widths, self.strides, strict=True), start=1):
            x = ConvBN(width, 3, stride, 1, use_bias=False, use_bn=True, name=f"conv{i}")(x, train)
            x = self.tap(f"conv{i}", nn.relu(x), out)
        return nn.Dense(self.num_classes, name="fc")(global_avg_pool(x)), out


def torch_names(model: SmallCNN) -> dict[str, str]:
    """Flax module path -> torch state-dict prefix of the twin described in the module docstring."""
    names = {"fc": "fc"}
    for i in range(len(model.widths)):
        names[f"conv{i + 1}/conv"] = f"features.{3 * i}"
        names[f"conv{i + 1}/bn"] = f"features.{3 * i + 1}"
    return names
