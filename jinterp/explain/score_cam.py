"""Score-CAM (Wang et al. 2020, eq. 8-9): every channel's upsampled, normalised map masks the input and
its weight is the masked image's score. One compiled program: masked inputs are built on device chunk
by chunk (``batch`` bounds memory), constant channels are skipped exactly, scores stay on device.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import check_choice, check_int
from jinterp.explain import pipeline
from jinterp.explain.registry import register
from jinterp.ops import resize


def score_cam_weights(model, variables, images, targets, maps, *, batch, score, channel_softmax, baseline,
                      align_corners, mask_scaling="input"):  # fmt: skip
    """Score-CAM channel weights (eq. 8-9) for (N, h, w, C) ``maps``; (N, C).

    Only channels with a non-constant map are run through the network: a constant map's mask
    ``(U - min) / (max - min + 1e-8)`` is exactly zero, so its masked image is the zero image,
    whose score ``s0`` is computed once per call. The weights therefore equal PGC's, which runs
    every channel. (image, channel) pairs are flattened and sorted so active pairs come first; a
    ``while_loop`` runs ``ceil(active / batch)`` chunks. Reverse-mode differentiation (which a
    ``while_loop`` does not support) goes through the same computation with every chunk run
    (``lax.map`` over a static count, :func:`_weights_all_chunks`), so gradients are exact.
    """
    options = (batch, score, channel_softmax, baseline, align_corners, mask_scaling)
    return _score_weights(model, options, variables, images, targets, maps)


def _masked_channel_scores(model, variables, images, targets, flat, idx, options):
    """Scores of the images masked by the upsampled, min-max normalised channel maps ``flat[idx]``."""
    batch, score, _, _, align_corners, mask_scaling = options
    c = flat.shape[0] // images.shape[0]
    if mask_scaling == "layer":  # torch-cam: min-max at the layer's resolution, then upsampled
        masks = resize.upsample(pipeline.minmax(flat[idx], eps=1e-8), images.shape[1:3], align_corners)
    else:
        up = resize.upsample(flat[idx], images.shape[1:3], align_corners)
        lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
        masks = (up - lo) / (hi - lo + 1e-8)  # PGC score_cam.py epsilon
    logits, _ = pipeline.forward(model, variables, images[idx // c] * masks[..., None])
    return pipeline.score_fn(score)(logits, targets[idx // c])


def _zero_image_scores(model, variables, images, targets, score):
    """The score of the zero image (what a constant channel's all-zero mask gives), per target: (N,)."""
    zero_logits, _ = pipeline.forward(model, variables, jnp.zeros((1, *images.shape[1:]), images.dtype))
    return pipeline.score_fn(score)(
        jnp.broadcast_to(zero_logits, (len(targets), zero_logits.shape[-1])), targets
    )


def _finish_weights(scores, s0, options):
    _, _, channel_softmax, baseline, *_ = options
    if baseline:
        scores = scores - s0[:, None]
    return jax.nn.softmax(scores, axis=-1) if channel_softmax else scores


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _score_weights(model, options, variables, images, targets, maps):
    n, h, w, c = maps.shape
    flat = pipeline.channel_first(maps).reshape(n * c, h, w)
    active = (flat.max((1, 2)) > flat.min((1, 2))).reshape(-1)
    order = jnp.argsort(~active, stable=True)
    b = min(options[0], n * c)
    chunks = (active.sum() + b - 1) // b
    s0 = _zero_image_scores(model, variables, images, targets, options[1])

    def body(carry):
        i, scores = carry
        idx = jax.lax.dynamic_slice(order, (i * b,), (b,))  # start clamped: a tail chunk recomputes
        new = _masked_channel_scores(model, variables, images, targets, flat, idx, options)
        return i + 1, scores.at[idx].set(new)

    _, scores = jax.lax.while_loop(lambda carry: carry[0] < chunks, body, (0, jnp.repeat(s0, c)))
    return _finish_weights(scores.reshape(n, c), s0, options)


def _weights_all_chunks(model, options, variables, images, targets, maps):
    """The same weights with every (image, channel) pair run, in ``lax.map`` chunks (differentiable)."""
    n, h, w, c = maps.shape
    flat = pipeline.channel_first(maps).reshape(n * c, h, w)
    b = min(options[0], n * c)
    idx = jnp.arange(-(-n * c // b) * b).reshape(-1, b)  # indices past the last pair are dropped
    run = lambda i: _masked_channel_scores(model, variables, images, targets, flat, i, options)
    s0 = _zero_image_scores(model, variables, images, targets, options[1])
    scores = jnp.zeros((n * c,), s0.dtype).at[idx.ravel()].set(jax.lax.map(run, idx).ravel(), mode="drop")
    return _finish_weights(scores.reshape(n, c), s0, options)


def _score_weights_fwd(model, options, variables, images, targets, maps):
    return _score_weights(model, options, variables, images, targets, maps), (
        variables,
        images,
        targets,
        maps,
    )


def _score_weights_bwd(model, options, residuals, cotangent):
    variables, images, targets, maps = residuals
    _, vjp = jax.vjp(
        lambda v, x, m: _weights_all_chunks(model, options, v, x, targets, m), variables, images, maps
    )
    d_variables, d_images, d_maps = vjp(cotangent)
    return d_variables, d_images, np.zeros(targets.shape, jax.dtypes.float0), d_maps


_score_weights.defvjp(_score_weights_fwd, _score_weights_bwd)


@register(
    "score_cam",
    needs_gradients=False,
    forward_passes=lambda channels: channels + 1,
    backward_passes=0,
    doc="Score-CAM (Wang et al. 2020), eq. 8-9; at most C + 1 passes (constant maps skipped)",
)
def score_cam(
    layer: pipeline.Layer = None,
    batch: int = 16,
    score: str = "logit",
    channel_softmax: bool = True,
    baseline: bool = False,
    align_corners: bool = True,
    mask_scaling: str = "input",
):
    """Score-CAM: each channel's upsampled, min-max normalised map masks the input; its weight is
    the masked image's score (eq. 8-9). Heat = ReLU(sum_k w_k A_k), upsampled and scaled.

    Defaults reproduce pytorch-grad-cam's ``ScoreCAM`` exactly: logit score, softmax of the scores
    over channels, no baseline, masks upsampled with ``align_corners=True``
    (``nn.UpsamplingBilinear2d``). The authors' code (haofanwang/Score-CAM) instead uses
    ``score='softmax', channel_softmax=False`` (and ``align_corners=False``); the paper's eq. 8
    subtracts the baseline score ``S_c(X_b)`` (``baseline=True``, X_b = zero image).

    Channels whose map is constant (e.g. dead ReLU channels, common in trained nets) cost no
    forward pass and the result is unchanged (see :func:`score_cam_weights`).

    Args:
      layer: layer name(s); default :func:`jinterp.explain.pipeline.default_layer`.
      batch: masked images per forward pass (bounds memory).
      score: ``'logit'`` or ``'softmax'`` (probability of the target class).
      channel_softmax: softmax the scores over channels (PGC).
      baseline: subtract the zero image's score (eq. 8).
      align_corners: mask upsampling convention.
      mask_scaling: ``'input'`` (PGC, the authors' code): min-max scale each upsampled mask;
        ``'layer'``: min-max scale each channel map at the layer's resolution, then upsample, as
        torch-cam 0.5 does (``mask_scaling="layer", align_corners=False`` reproduces its ``ScoreCAM``).
    """
    check_int("batch", batch, low=1)
    check_choice("score", score, pipeline.SCORES)
    check_choice("mask_scaling", mask_scaling, ("input", "layer"))

    def weights(model, variables, images, targets, maps):
        return score_cam_weights(
            model, variables, images, targets, maps, batch=batch, score=score,
            channel_softmax=channel_softmax, baseline=baseline, align_corners=align_corners,
            mask_scaling=mask_scaling,
        )  # fmt: skip

    return pipeline.channel_weighted_explainer(weights, layer)
