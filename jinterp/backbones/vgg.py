"""VGG 11/13/16/19 with and without BatchNorm, layer for layer as torchvision's ``vgg*``.

Taps: ``conv{block}_{i}`` after each ReLU (e.g. ``conv5_3`` for VGG16, the layer Score-CAM and
icCNN use), and ``pool5``. ``head="classifier"`` is torchvision's AdaptiveAvgPool(7) + 3 FC
layers (needed for imported weights); ``head="gap"`` is global average pooling + one Dense,
which CAM needs and which is 2x faster on CPU (shared/notes/stack.md §6).
"""

from typing import ClassVar

import flax.linen as nn

from jinterp.backbones.base import Backbone
from jinterp.backbones.layers import AdaptiveAvgPool, ConvBN, MaxPool, PooledDense, global_avg_pool

# torchvision.models.vgg.cfgs: channel counts per block.
CONFIGS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(Backbone):
    """torchvision VGG; ``depth`` in {11, 13, 16, 19}."""

    depth: int = 16
    batch_norm: bool = False
    num_classes: int = 1000
    head: str = "classifier"
    dropout: float = 0.5

    min_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        for b, block in enumerate(CONFIGS[self.depth], start=1):
            for i, ch in enumerate(block, start=1):
                name = f"conv{b}_{i}"
                x = ConvBN(ch, 3, 1, 1, use_bias=True, use_bn=self.batch_norm, name=name)(x, train)
                x = self.tap(name, nn.relu(x), out)
            x = MaxPool(2, 2, name=f"pool{b}")(x)
        x = self.tap("pool5", x, out)
        if self.head == "gap":
            return nn.Dense(self.num_classes, name="fc")(global_avg_pool(x)), out
        pool5 = x
        x = AdaptiveAvgPool(7, name="avgpool")(x)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten; from_torch permutes fc6 from torch's NCHW order
        # Below 224 px the pool only enlarges pool5: fc6 folds it into its kernel (PooledDense).
        x = nn.relu(PooledDense(4096, pool_size=7, name="fc6")(x, source=pool5))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(nn.Dense(4096, name="fc7")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="fc8")(x), out


def torch_names(model: VGG) -> dict[str, str]:
    """Flax module path -> torchvision state-dict prefix (``conv1_1/conv`` -> ``features.0``)."""
    names, idx = {}, 0
    for b, block in enumerate(CONFIGS[model.depth], start=1):
        for i, _ in enumerate(block, start=1):
            names[f"conv{b}_{i}/conv"] = f"features.{idx}"
            if model.batch_norm:
                names[f"conv{b}_{i}/bn"] = f"features.{idx + 1}"
            idx += 3 if model.batch_norm else 2
        idx += 1  # max pool
    if model.head == "gap":
        names["fc"] = "fc"
    else:
        names.update({"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"})
    return names
