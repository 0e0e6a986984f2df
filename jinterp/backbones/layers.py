"""Building blocks shared by every backbone.

Every operation that an attribution rule may need to treat specially is its own small module
(``ConvBN``, ``AvgPool``, ``Sum``), so LRP can re-route it with ``flax.linen.intercept_methods``
without touching the backbone code (see ``jinterp.explain.lrp``). Pooling and padding follow
torchvision exactly, so imported weights reproduce torch logits.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import conv

# torch.nn.BatchNorm2d defaults: eps 1e-5, momentum 0.1 (flax momentum is 1 - torch momentum).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
# torchvision's VGG / ResNet conv init, kaiming_normal_(mode="fan_out", nonlinearity="relu"): without
# it (flax's lecun_normal) the signal variance halves at every ReLU and a VGG16 trained from scratch
# stays at chance level.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pairs(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class ConvBN(nn.Module):
    """Convolution with torch-style symmetric zero padding, optionally followed by BatchNorm.

    Returns the pre-activation. On maps smaller than the kernel the convolution runs as one matmul
    over patches (``jinterp.backbones.conv``: exact, 10-130x faster on XLA:CPU). Parameters
    (initialised with ``CONV_INIT`` and zero bias): ``conv/{kernel,bias}``, ``bn/{scale,bias}``,
    batch stats ``bn/{mean,var}``. Keeping conv and BN in one module lets LRP fold BN into the
    convolution on the fly (zennit's ``MergeBatchNorm`` canonizer).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: int = 1
    use_bias: bool = True
    use_bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = _pairs(self.padding)
        x = nn.Conv(
            self.features,
            _pairs(self.kernel_size),
            strides=_pairs(self.strides),
            padding=((p[0], p[0]), (p[1], p[1])),
            use_bias=self.use_bias,
            kernel_init=CONV_INIT,
            conv_general_dilated=conv.conv_general_dilated,  # a matmul on maps smaller than the kernel
            name="conv",
        )(x)
        if self.use_bn:
            x = nn.BatchNorm(
                use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn"
            )(x)
        return x


class MaxPool(nn.Module):
    """``torch.nn.MaxPool2d`` (padding with -inf, floor mode)."""

    window: int
    strides: int
    padding: int = 0

    def __call__(self, x):
        p = self.padding
        return nn.max_pool(x, (self.window, self.window), (self.strides, self.strides), ((p, p), (p, p)))


class AvgPool(nn.Module):
    """``torch.nn.AvgPool2d`` without padding (DenseNet transitions)."""

    window: int
    strides: int

    def __call__(self, x):
        return nn.avg_pool(x, (self.window, self.window), (self.strides, self.strides))


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Averaging matrix (out_size, in_size) of ``torch.nn.AdaptiveAvgPool`` along one axis.

    Bin i covers [floor(i*in/out), ceil((i+1)*in/out)), exactly as torch computes it.
    """
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool(nn.Module):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` for any static input size."""

    output_size: int | Sequence[int]

    def __call__(self, x):
        oh, ow = _pairs(self.output_size)
        _, h, w, _ = x.shape
        if (h, w) == (oh, ow):
            return x
        mh = jnp.asarray(adaptive_pool_matrix(h, oh))
        mw = jnp.asarray(adaptive_pool_matrix(w, ow))
        return jnp.einsum("ph,nhwc,qw->npqc", mh, x, mw, optimize=True)


def global_avg_pool(x):
    """(N, h, w, C) -> (N, C) through an ``AdaptiveAvgPool(1)`` module, so LRP sees the pooling as a
    rule site (zennit applies its Norm rule to torchvision's ``AdaptiveAvgPool2d``)."""
    return AdaptiveAvgPool(1, name="avgpool")(x).reshape(x.shape[0], -1)


class Sum(nn.Module):
    """Sum of same-shaped tensors (residual connections): a rule site for LRP's z-rule on sums."""

    def __call__(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out
