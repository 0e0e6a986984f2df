"""Score-CAM variants of torch-cam: SS-CAM (smoothed, Wang et al. 2020b) and IS-CAM (integrated, Naidu
et al. 2020), as torch-cam 0.5.0 (``torchcam/methods/activation.py``) computes them.

Both score, per image, every channel k of the layer through masked copies of the input and weight the
channel by the softmax over channels of its mean score (the target logit) over ``samples`` copies:

* mask: the channel's map min-max scaled at the layer's resolution (``eps = 1e-8``), then upsampled
  bilinearly with half-pixel centres (``align_corners=False``): torch-cam's order, also its Score-CAM
  (``score_cam(mask_scaling="layer", align_corners=False)``; pytorch-grad-cam upsamples first).
* SS-CAM: copy s is ``x * (mask + delta_s)``, ``delta_s ~ N(0, std^2)`` per pixel at the input's
  resolution (torch-cam: ``num_samples=35, std=2.0``).
* IS-CAM: copy s (0-based) is ``c_s * mask * x`` with ``c_s = sum_{j=1}^{s+1} j / samples`` (torch-cam's
  running sum of ``(s + 1) / num_samples``, the paper's ``M_i = sum_{j<i} j/N``-style accumulated
  masks; ``num_samples=10``).

torch-cam subtracts the unmasked image's score before the softmax, a per-image constant that the softmax
over channels ignores, so it is not computed here. The heatmap is ReLU(sum_k w_k A_k) of the layer's raw
maps through :func:`jinterp.explain.pipeline.finish`; with identical noise the heatmaps equal torch-cam's
maps upsampled and rescaled. Everything is one compiled program: (sample, image, channel) triples are
scored in chunks of ``batch`` with ``lax.map``, masks built on device per chunk, no host sync per score.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jinterp.checks import check_choice, check_int, check_number
from jinterp.explain import pipeline
from jinterp.explain.registry import register
from jinterp.ops import resize

NoiseFn = Callable[[jax.Array, jax.Array], jax.Array]  # (sample, pair) -> (H, W)


def layer_masks(maps: jax.Array) -> jax.Array:
    """(N, h, w, C) maps -> (N * C, h, w) masks min-max scaled per map at the layer's resolution
    (torch-cam ``_CAM._normalize``: ``(A - min) / (max - min + 1e-8)``); pair p is image p // C."""
    n, h, w, c = maps.shape
    flat = jnp.moveaxis(maps, -1, 1).reshape(n * c, h, w)
    return pipeline.minmax(flat, eps=1e-8)


def mean_masked_scores(model, variables, images, targets, masks, make_input, *, samples, batch, score):
    """``mean_s S_t(make_input(s, p, x_i, U(mask_p)))`` for every pair p = (image i, channel k): (N, C).

    ``masks`` (N * C, h, w) from :func:`layer_masks`; ``U`` is bilinear upsampling to the input size.
    The ``samples * N * C`` masked forward passes run ``batch`` at a time (``lax.map``).
    """
    n = images.shape[0]
    pairs = masks.shape[0]
    c = pairs // n
    size = images.shape[1:3]
    sfn = pipeline.score_fn(score)

    def one(q):
        s, p = q // pairs, q % pairs
        i = p // c
        up = resize.upsample(masks[p], size, align_corners=False)
        logits, _ = pipeline.forward(model, variables, make_input(s, p, images[i], up)[None])
        return sfn(logits, targets[i][None])[0]

    total = samples * pairs
    scores = jax.lax.map(one, jnp.arange(total), batch_size=min(batch, total))
    return scores.reshape(samples, n, c).mean(0)


def gaussian_mask_noise(std: float, seed: int, size: tuple[int, int]) -> NoiseFn:
    """SS-CAM's mask noise: ``(s, p) -> std * N(0, 1)`` of shape ``size``, from
    ``fold_in(fold_in(key(seed), s), p)`` (the same for any ``batch``)."""
    key = jax.random.key(seed)
    return lambda s, p: std * jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, s), p), size)


def ss_cam_weights(model, variables, images, targets, maps, noise_fn: NoiseFn, *, samples, batch, score):
    """SS-CAM channel weights (N, C): softmax over channels of the mean score of ``x * (mask + noise)``."""

    def make_input(s, p, image, mask):
        return image * (mask + noise_fn(s, p))[..., None]

    masks = layer_masks(maps)
    scores = mean_masked_scores(
        model, variables, images, targets, masks, make_input, samples=samples, batch=batch, score=score
    )
    return jax.nn.softmax(scores, axis=-1)


def is_cam_coefficients(samples: int) -> jax.Array:
    """IS-CAM's mask scales: ``c_s = sum_{j=1}^{s+1} j / samples`` for s = 0 .. samples - 1 (torch-cam)."""
    return jnp.cumsum(jnp.arange(1, samples + 1, dtype=jnp.float32) / samples)


def is_cam_weights(model, variables, images, targets, maps, *, samples, batch, score):
    """IS-CAM channel weights (N, C): softmax over channels of the mean score of ``c_s * mask * x``."""
    coef = is_cam_coefficients(samples)

    def make_input(s, p, image, mask):
        return coef[s] * (image * mask[..., None])

    masks = layer_masks(maps)
    scores = mean_masked_scores(
        model, variables, images, targets, masks, make_input, samples=samples, batch=batch, score=score
    )
    return jax.nn.softmax(scores, axis=-1)


@register(
    "ss_cam",
    needs_gradients=False,
    forward_passes=lambda channels, samples: channels * samples + 1,
    backward_passes=0,
    doc="SS-CAM (Wang et al. 2020), torch-cam's SSCAM; C * samples + 1 passes",
)
def ss_cam(
    layer: pipeline.Layer = None,
    samples: int = 35,
    std: float = 2.0,
    seed: int = 0,
    batch: int = 32,
    score: str = "logit",
):
    """SS-CAM: Score-CAM weights averaged over ``samples`` noisy masks (module docstring).

    Defaults are torch-cam's ``SSCAM`` (``num_samples=35``, ``std=2.0``, ``batch_size=32``, logit
    score), whose maps it reproduces given the same noise (``ss_cam_weights`` takes a noise function);
    noise here comes from ``jax.random.key(seed)`` (:func:`gaussian_mask_noise`).

    Args:
      layer: layer name(s); default :func:`jinterp.explain.pipeline.default_layer`.
      samples: noisy masks per channel.
      std: standard deviation of the noise added to the [0, 1] masks.
      seed: noise seed.
      batch: masked images per forward pass.
      score: ``'logit'`` (torch-cam) or ``'softmax'``.
    """
    check_int("samples", samples, low=1)
    check_int("batch", batch, low=1)
    check_int("seed", seed, low=0)
    check_number("std", std, 0.0)
    check_choice("score", score, pipeline.SCORES)

    def weights(model, variables, images, targets, maps):
        noise_fn = gaussian_mask_noise(std, seed, images.shape[1:3])
        return ss_cam_weights(
            model, variables, images, targets, maps, noise_fn, samples=samples, batch=batch, score=score
        )

    return pipeline.channel_weighted_explainer(weights, layer)


@register(
    "is_cam",
    needs_gradients=False,
    forward_passes=lambda channels, samples: channels * samples + 1,
    backward_passes=0,
    doc="IS-CAM (Naidu et al. 2020), torch-cam's ISCAM; C * samples + 1 passes",
)
def is_cam(layer: pipeline.Layer = None, samples: int = 10, batch: int = 32, score: str = "logit"):
    """IS-CAM: Score-CAM weights averaged over masks scaled by :func:`is_cam_coefficients` (module
    docstring). Defaults are torch-cam's ``ISCAM`` (``num_samples=10``, ``batch_size=32``, logit
    score), whose maps it reproduces.

    Args:
      layer: layer name(s); default :func:`jinterp.explain.pipeline.default_layer`.
      samples: integration steps per channel.
      batch: masked images per forward pass.
      score: ``'logit'`` (torch-cam) or ``'softmax'``.
    """
    check_int("samples", samples, low=1)
    check_int("batch", batch, low=1)
    check_choice("score", score, pipeline.SCORES)

    def weights(model, variables, images, targets, maps):
        return is_cam_weights(
            model, variables, images, targets, maps, samples=samples, batch=batch, score=score
        )

    return pipeline.channel_weighted_explainer(weights, layer)
