"""Concept relevance propagation (Achtibat et al. 2023, zennit-crp ``CondAttribution``), batched.

The conditional heatmap of channel ``c`` of layer ``l`` for target ``t``: LRP from the target logit
(initial relevance = the logit value, zennit-crp's ``relevance_init``) down to ``l``, relevance at
``l`` masked to channel ``c``, then propagated from ``l`` to the input only through ``l`` (parallel
branches excluded, zennit-crp's default ``exclude_parallel=True``); heatmap = input relevance
summed over RGB, sign kept (``x.grad.sum(1)``).

Speed: the backward pass from the logit to ``l`` is the same for every channel, so it runs once;
only the ``l``-to-input backward is vmapped over channel masks (``jax.vjp`` of the lower network,
residuals and the rules' denominators shared), in chunks of ``batch_size`` channels in one compiled
loop. Channels with no relevance at ``l`` (exactly zero heatmaps) are skipped: the loop runs only
over the chunks holding live channels.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import check_layers, layer_shapes, min_size
from jinterp.backbones.base import PERTURBATIONS
from jinterp.checks import check_images, check_int, check_targets
from jinterp.explain import lrp, pipeline, rules
from jinterp.explain.registry import register


def channel_scores(relevance: jax.Array, abs_norm: bool = True) -> jax.Array:
    """Channel relevance (N, C) of a layer relevance (N, h, w, C): spatial sums (zennit-crp
    ``ChannelConcept.attribute``), divided by the sum of their absolute values if ``abs_norm``."""
    r = relevance.sum(axis=(1, 2))
    if abs_norm:
        total = jnp.abs(r).sum(-1, keepdims=True)
        r = r / jnp.where(total > 0, total, 1.0)
    return r


def _lower_and_upper(model, variables, images, targets, layer, composite):
    """One forward: logits, map at ``layer``, cotangent at ``layer`` from the target logit, and the
    VJP of images -> map (the lower network), whose residuals every channel's backward shares."""
    variables = lrp.rule_variables(variables, images)
    shape = layer_shapes(model, images.shape[1:3])[layer]
    zeros = jnp.zeros((images.shape[0], *shape[1:]), images.dtype)

    def upper(pert):
        with lrp.lrp_context(model, composite, images.shape):
            logits, out = model.apply({**variables, PERTURBATIONS: {layer: pert}}, images)
        return logits, out[layer]

    logits, vjp_up, amap = jax.vjp(upper, zeros, has_aux=True)
    (c_layer,) = vjp_up(lrp.logit_init(logits, targets))

    def lower(x):
        with lrp.lrp_context(model, composite, images.shape):
            return model.apply(variables, x)[1][layer]

    _, vjp_low = jax.vjp(lower, images)
    return logits, amap, c_layer, vjp_low


def _live_first(live):
    """Per image, the channel slots reordered so that live ones come first: (order, inverse order)."""
    order = jnp.argsort(~live, axis=1, stable=True)
    return order, jnp.argsort(order, axis=1)


@functools.partial(jax.jit, static_argnames=("model", "layer", "composite", "batch_size", "abs_norm"))
def _crp(model, variables, images, targets, channels, layer, composite, batch_size, abs_norm):
    logits, amap, c_layer, vjp_low = _lower_and_upper(model, variables, images, targets, layer, composite)
    (n, height, width, _), (n_ch, k) = images.shape, (amap.shape[-1], channels.shape[1])
    relevance = amap * c_layer

    def one(ch):  # ch: (N,) channel per image
        mask = jax.nn.one_hot(ch, n_ch, dtype=c_layer.dtype)[:, None, None, :]
        return vjp_low(c_layer * mask)[0].sum(-1)

    # A channel without relevance at the layer has an exactly zero heatmap (the lower backward is
    # linear in it), so live channels go first and the loop stops after the last chunk holding one.
    live = jnp.take_along_axis(jnp.any(relevance != 0, axis=(1, 2)), channels, axis=1)  # (N, K)
    order, inverse = _live_first(live)
    size = min(batch_size, k)
    n_chunks = -(-k // size)
    slots = jnp.pad(jnp.take_along_axis(channels, order, axis=1), ((0, 0), (0, n_chunks * size - k)))
    chunks = slots.T.reshape(n_chunks, size, n)
    n_live_chunks = -(-live.sum(1).max() // size)

    def chunk(i, heat):
        return jax.lax.dynamic_update_index_in_dim(heat, jax.vmap(one)(chunks[i]), i, axis=0)

    heat = jnp.zeros((n_chunks, size, n, height, width), images.dtype)
    heat = jax.lax.fori_loop(0, n_live_chunks, chunk, heat).reshape(n_chunks * size, n, height, width)
    heat = jnp.take_along_axis(jnp.moveaxis(heat[:k], 0, 1), inverse[:, :, None, None], axis=1)
    rel = channel_scores(relevance, abs_norm)
    return logits, heat, jnp.take_along_axis(rel, channels, axis=1), rel


def conditional_heatmaps(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    targets: jax.Array,
    layer: str,
    channels: Sequence[int] | jax.Array | None = None,
    composite="epsilon_plus_flat",
    batch_size: int = 32,
    abs_norm: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CRP conditional heatmaps for many channels of one layer, one compiled call.

    With ``composite="epsilon_plus_flat"`` and identical weights this reproduces zennit-crp's
    ``CondAttribution(model)(x, [{layer: [c], "y": [t]}], EpsilonPlusFlat(canonizers))`` heatmaps.

    Args:
      model, variables: a jinterp-compatible Flax model and its variables.
      images: (N, H, W, 3); targets: (N,) int class per image.
      layer: a tapped layer name (``layer_names(model)``).
      channels: (K,) channels shared by all images, or (N, K) per image; ``None`` = all channels.
      composite: LRP composite (``rules.COMPOSITES`` name, ``Composite`` or dict).
      batch_size: channels per vmapped chunk (bounds memory: chunk x N input-sized relevances).
      abs_norm: normalise the channel relevances by their absolute sum (zennit-crp default).

    Returns:
      ``(heatmaps (N, K, H, W) signed, relevances (N, K) of the chosen channels, all (N, C) channel
      relevances)``.
    """
    check_images(images, min_size=min_size(model))
    n = np.shape(images)[0]
    check_targets(targets, n, getattr(model, "num_classes", None))
    (layer,) = check_layers(model, (layer,), "layer")
    comp = lrp.check_composite(model, rules.composite(composite), tuple(np.shape(images)))
    n_ch = layer_shapes(model, np.shape(images)[1:3])[layer][-1]
    ch = np.arange(n_ch) if channels is None else np.asarray(channels)
    if ch.ndim == 1:
        ch = np.broadcast_to(ch, (n, ch.shape[0]))
    if ch.ndim != 2 or ch.shape[0] != n or ch.size == 0:
        raise ValueError(f"channels: expected shape (K,) or ({n}, K) with K >= 1, got {np.shape(channels)}")
    if ch.min() < 0 or ch.max() >= n_ch:
        raise ValueError(
            f"channels: indices must lie in [0, {n_ch}) for layer {layer!r}, got {ch.min()}..{ch.max()}"
        )
    check_int("batch_size", batch_size, low=1)
    images = jnp.asarray(images, pipeline.float_dtype(images))  # bf16 models: lrp.rule_variables
    _, heat, rel, all_rel = _crp(
        model, variables, images, jnp.asarray(targets), jnp.asarray(ch, jnp.int32),
        layer, comp, int(batch_size), bool(abs_norm),
    )  # fmt: skip
    return heat, rel, all_rel


def crp(layer: str | None = None, channel: int | None = None, composite: lrp.Composite = "epsilon_plus_flat"):
    """Registry factory: the CRP heatmap of one channel of ``layer`` (default: each image's most
    relevant channel of the last tapped conv layer), positive part scaled to [0, 1].

    Validated: ``channel`` None or an int >= 0, below the layer's channel count (checked when ``fn``
    sees the model); ``fn``'s inputs as :func:`jinterp.explain.lrp.lrp`'s (any H x W, not only square).
    """
    if channel is not None:
        check_int("channel", channel, low=0)
    comp = rules.composite(composite)

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        (lay,) = (
            pipeline.resolve_layers(model, layer) if layer is None else check_layers(model, (layer,), "layer")
        )
        n_ch = layer_shapes(model, tuple(images.shape[1:3]))[lay][-1]
        if channel is not None and channel >= n_ch:
            raise ValueError(f"channel: expected an int in [0, {n_ch}) for layer {lay!r}, got {channel}")
        lrp.check_composite(model, comp, tuple(images.shape))
        logits, amap, c_layer, vjp_low = _lower_and_upper(model, variables, images, targets, lay, comp)
        rel = (amap * c_layer).sum((1, 2))
        ch = jnp.argmax(rel, -1) if channel is None else jnp.full((images.shape[0],), channel)
        mask = jax.nn.one_hot(ch, amap.shape[-1], dtype=c_layer.dtype)[:, None, None, :]
        return lrp.to_heatmap(vjp_low(c_layer * mask)[0])

    return fn


register(
    "crp", crp, needs_gradients=True, forward_passes=2, backward_passes=2,
    doc="Concept relevance propagation (Achtibat 2023): one channel's conditional heatmap",
)  # fmt: skip
