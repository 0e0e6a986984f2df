"""Building blocks shared by every backbone.

Every operation that an attribution rule may need to treat specially is its own small module
(``ConvBN``, ``AvgPool``, ``Sum``), so LRP can re-route it with ``flax.linen.intercept_methods``
without touching the backbone code (see ``jinterp.explain.lrp``). Pooling and padding follow
torchvision exactly, so imported weights reproduce torch logits.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
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


def fold_pool_into_kernel(kernel, in_hw: tuple[int, int], out_hw: tuple[int, int]):
    """The (h·w·C, F) kernel of a Dense on an (h, w, C) map equal to ``kernel`` (oh·ow·C, F) applied
    to the flattened ``AdaptiveAvgPool(out_hw)`` of that map (both NHWC order)."""
    (h, w), (oh, ow) = in_hw, out_hw
    pool = np.kron(adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))  # (oh·ow, h·w)
    # One matmul that reads the kernel once, (h·w, oh·ow) @ (oh·ow, C·F); an einsum over the two
    # pool axes lowered to transposes of the whole kernel (0.47 s for VGG16's fc6 at 64 px).
    rows = kernel.reshape(oh * ow, -1)
    folded = jnp.dot(jnp.asarray(pool.T, kernel.dtype), rows, precision=jax.lax.Precision.HIGHEST)
    return folded.reshape(h * w * (kernel.shape[0] // (oh * ow)), kernel.shape[-1])


class PooledDense(nn.Dense):
    """``nn.Dense`` on ``inputs``, the flattened ``AdaptiveAvgPool(pool_size)`` of ``source``.

    When the pool enlarges the map (VGG's pool5 at inputs under 224 px: 2×2 -> 7×7 at 64 px, where the
    pool only replicates) the pool is folded into the kernel once per call
    (:func:`fold_pool_into_kernel`) and the Dense runs on ``source`` (exact up to float rounding):
    fc6 then multiplies 2 048 inputs per image instead of 25 088, which every masked or ablated copy
    of the head pays (Ablation-CAM runs the head once per channel). The parameters are the plain
    Dense's. Code that re-routes this module (LRP's rule sites) sees the unfolded call on ``inputs``.
    """

    pool_size: int | Sequence[int] = 7

    @nn.compact
    def __call__(self, inputs, source=None):
        # The parameters as nn.Dense declares them (calling nn.Dense.__call__ here would be a second,
        # separately intercepted call of this module: LRP would apply its rule twice).
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        )
        x = inputs
        if source is not None and _enlarges(source.shape[1:3], _pairs(self.pool_size)):
            x = source.reshape(source.shape[0], -1)
            kernel = fold_pool_into_kernel(kernel, source.shape[1:3], _pairs(self.pool_size))
        x, kernel, bias = self.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.dot(x, kernel, precision=self.precision)
        return y if bias is None else y + bias


def _enlarges(in_hw, out_hw) -> bool:
    return in_hw[0] * in_hw[1] < out_hw[0] * out_hw[1]


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
