"""FullGrad (Srinivas & Fleuret 2019): input-gradient x input plus bias-gradients of every layer.

The full-gradient decomposition ``f(x) = grad_x f . x + sum_l sum_c b_lc . grad_{z_l} f`` (for ReLU
networks, exact) gives one map per biased layer: ``|b_c * df / dz_c|`` at each position of the layer's
output ``z``. The heatmap, as pytorch-grad-cam's ``FullGrad`` (and the authors' ``FullGradSimple``)
aggregates it: every channel of ``|x * df/dx|`` and of each layer's ``|b * df/dz|`` min-max scaled per
image (``eps = 1e-7``) and resized bilinearly to the input, summed over channels and layers, min-max
scaled per image again.

Biased layers, as PGC selects them: every ``nn.Conv`` with a bias and every ``nn.BatchNorm``, whose bias
is its effective shift ``beta - mean * gamma / sqrt(var + eps)`` (inside a ``ConvBN`` these are its own
``conv`` / ``bn`` submodules). Their outputs are found and perturbed with ``nn.intercept_methods`` (a
zero added to each call's output, the gradient w.r.t. it is d f / d z): no hooks, any Flax model built
from those modules, jittable, batched with per-image targets. Dense layers carry no spatial map and are
left out, as in PGC.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jinterp.backbones import target_logit
from jinterp.backbones.taps import strip_perturbations
from jinterp.explain import pipeline
from jinterp.explain.registry import register
from jinterp.ops.resize import upsample

EPS = 1e-7  # PGC scale_cam_image


def _bias(module: nn.Module):
    """The bias a biased layer adds to its output (None for other modules)."""
    if isinstance(module, nn.Conv) and module.use_bias:
        return module.variables["params"]["bias"]
    if isinstance(module, nn.BatchNorm) and module.use_running_average:
        v = module.variables
        stats = v["batch_stats"]
        scale = v["params"].get("scale", 1.0) / jnp.sqrt(stats["var"] + module.epsilon)
        return v["params"].get("bias", 0.0) - stats["mean"] * scale
    return None


def _run(model, variables, images, deltas=None):
    """``model.apply`` with ``deltas[i]`` added to the i-th biased layer call's output.

    Returns ``(logits, biases, shapes)``: each biased call's bias and output shape, in call order.
    """
    biases, shapes = [], []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or module.scope is None:
            return out
        b = _bias(module)
        if b is None:
            return out
        if deltas is not None:
            out = out + deltas[len(biases)]
        biases.append(b)
        shapes.append(jax.ShapeDtypeStruct(out.shape, out.dtype))
        return out

    with nn.intercept_methods(interceptor):
        logits, _ = model.apply(variables, images)
    return logits, biases, shapes


def full_gradients(model, variables, images, targets):
    """``(df/dx, [df/dz_l], [b_l])``: the input gradient and, per biased layer call (in call order), the
    gradient w.r.t. its output (N, h, w, C) and its bias (C,); f = the target logit."""
    variables = strip_perturbations(variables)
    _, _, shapes = jax.eval_shape(lambda: _run(model, variables, images))
    zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]

    def total(x, deltas):
        logits, biases, _ = _run(model, variables, x, deltas)
        return target_logit(logits, targets).sum(), biases

    (gx, gz), biases = jax.grad(total, argnums=(0, 1), has_aux=True)(images, zeros)
    return gx, gz, biases


def _channel_sum_of_scaled(x: jax.Array, size) -> jax.Array:
    """Sum over channels of each (image, channel) map min-max scaled, resized to ``size``: (N, H, W).
    Resizing is linear, so the channel sum is taken first and resized once."""
    scaled = pipeline.minmax(x, axes=(1, 2), eps=EPS).sum(-1)
    return scaled if scaled.shape[1:3] == tuple(size) else upsample(scaled, tuple(size))


@register("fullgrad", needs_gradients=True, forward_passes=1, backward_passes=1,
          doc="FullGrad (Srinivas & Fleuret 2019), pytorch-grad-cam's aggregation")  # fmt: skip
def fullgrad():
    """FullGrad heatmaps (module docstring); matches pytorch-grad-cam's ``FullGrad``."""

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        size = images.shape[1:3]
        gx, gz, biases = full_gradients(model, variables, images, targets)
        total = _channel_sum_of_scaled(jnp.abs(images * gx), size)
        for g, b in zip(gz, biases, strict=True):
            total = total + _channel_sum_of_scaled(jnp.abs(g * b), size)
        return pipeline.minmax(total, eps=EPS)

    return fn
