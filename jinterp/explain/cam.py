"""Gradient CAMs and Eigen-CAM: each method is its per-layer CAM function on (maps, grads).

Equation numbers refer to Cluster-CAM (Feng et al. 2024, seed 004), whose §2 restates CAM (eq. 1-2),
Grad-CAM (eq. 3), Grad-CAM++ (eq. 4), Smooth Grad-CAM++ (eq. 5) and XGrad-CAM (eq. 6). Maps and
gradients come from :func:`jinterp.backbones.feature_grads` (perturbations at the named layer,
so the backward pass only runs through the network above it). The score is the target logit,
as PGC's ``ClassifierOutputTarget``. With ``layer`` a list, each layer's CAM is scaled, upsampled and
the layers averaged, as PGC does (:func:`jinterp.explain.pipeline.finish`). ``layer=None`` picks
:func:`jinterp.explain.pipeline.default_layer`. Defaults reproduce pytorch-grad-cam 1.5.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jinterp.backbones import feature_grads
from jinterp.checks import check_choice, check_int, check_number
from jinterp.explain import pipeline
from jinterp.explain.registry import register
from jinterp.ops import principal

CamFn = Callable[[jax.Array, jax.Array], jax.Array]  # (maps, grads) (N, h, w, C) -> (N, h, w)


def gradient_explainer(cam_fn: CamFn, layer):
    """``fn(model, variables, images, targets)`` running ``cam_fn`` on each layer's maps and grads."""

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        layers = pipeline.resolve_layers(model, layer)
        _, maps, grads = feature_grads(model, variables, images, targets, layers)
        return pipeline.finish([cam_fn(maps[k], grads[k]) for k in layers], images.shape[1:3])

    return fn


def channel_weighted(weight_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> CamFn:
    """A CAM whose map is ``sum_k w_k A_k`` (eq. 1) with ``w = weight_fn(maps, grads)`` of shape (N, C)."""
    return lambda maps, grads: pipeline.weighted_sum(maps, weight_fn(maps, grads))


def _sum_hw(x):
    return x.sum(axis=(1, 2))


def cam_weights(maps, grads):
    """CAM (Zhou et al. 2016), eq. 2: for a GAP + linear head, ``sum_ij dS_c/dA_k(i, j) = w_k^c``
    exactly (the classifier weight), so this is CAM without reading the head's parameters; on
    other heads it is Grad-CAM's weight times h*w (identical heatmap after scaling)."""
    return _sum_hw(grads)


def grad_cam_weights(maps, grads):
    """Grad-CAM, eq. 3 (mean rather than sum over positions, as PGC: same heatmap after scaling)."""
    return grads.mean(axis=(1, 2))


def grad_cam_pp_weights(maps, grads, eps: float = 1e-6):
    """Grad-CAM++, eq. 4, with the exponential-score closed form of the higher derivatives
    (d2 = g^2, d3 = g^3), exactly as PGC: ``a = g^2 / (2 g^2 + sum A * g^3 + eps)`` (0 where g = 0),
    ``w_k = sum_ij relu(g) a``. torch-cam 0.5's ``GradCAMpp`` departs from this formula (its division
    runs in place on a copy, ``alpha[idx][mask].div_``, so the alphas stay un-normalised: 0.21 apart on
    ResNet18); the paper's formula is kept."""
    g2 = grads**2
    g3 = g2 * grads
    a = g2 / (2 * g2 + _sum_hw(maps)[:, None, None, :] * g3 + eps)
    a = jnp.where(grads != 0, a, 0.0)
    return _sum_hw(jax.nn.relu(grads) * a)


def xgrad_cam_weights(maps, grads, eps: float = 1e-7):
    """XGrad-CAM, eq. 6: ``w_k = sum_ij A_k(i,j) / (sum_ab A_k(a,b) + eps) * g_k(i,j)`` (PGC eps)."""
    return _sum_hw(grads * maps / (_sum_hw(maps)[:, None, None, :] + eps))


def hires_cam_map(maps, grads):
    """HiResCAM (Draelos & Carin 2020): ``sum_k g_k ⊙ A_k``, element-wise, no spatial averaging."""
    return (grads * maps).sum(-1)


def layer_cam_map(maps, grads):
    """LayerCAM (Jiang et al. 2021): ``sum_k relu(g_k) ⊙ A_k``.

    Per-position gradients (also :func:`hires_cam_map`) are discontinuous where a max-pool above
    the layer has a near tie: two values equal to float precision may route the gradient to
    different cells in XLA and torch (seen on random-init VGG16 at 224 px: maps equal to 5e-7,
    heatmaps differing by up to 0.06). Spatially summed weights (Grad-CAM & co.) are immune.
    """
    return (jax.nn.relu(grads) * maps).sum(-1)


@register("cam", needs_gradients=True, forward_passes=1, backward_passes=1, doc="CAM (Zhou 2016), eq. 1-2")
def cam(layer: pipeline.Layer = None):
    """CAM: class weights of a GAP + linear head (:func:`cam_weights`); ``layer`` default the last spatial."""
    return gradient_explainer(channel_weighted(cam_weights), layer)


@register("grad_cam", needs_gradients=True, forward_passes=1, backward_passes=1, doc="Grad-CAM, eq. 3")
def grad_cam(layer: pipeline.Layer = None):
    """Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of d logit / d map. Matches PGC GradCAM."""
    return gradient_explainer(channel_weighted(grad_cam_weights), layer)


@register("grad_cam_pp", needs_gradients=True, forward_passes=1, backward_passes=1, doc="Grad-CAM++, eq. 4")
def grad_cam_pp(layer: pipeline.Layer = None):
    """Grad-CAM++ (Chattopadhay et al. 2018), :func:`grad_cam_pp_weights`. Matches PGC GradCAMPlusPlus."""
    return gradient_explainer(channel_weighted(grad_cam_pp_weights), layer)


@register("xgrad_cam", needs_gradients=True, forward_passes=1, backward_passes=1, doc="XGrad-CAM, eq. 6")
def xgrad_cam(layer: pipeline.Layer = None):
    """XGrad-CAM (Fu et al. 2020), :func:`xgrad_cam_weights`. Matches PGC XGradCAM."""
    return gradient_explainer(channel_weighted(xgrad_cam_weights), layer)


@register("hires_cam", needs_gradients=True, forward_passes=1, backward_passes=1, doc="HiResCAM")
def hires_cam(layer: pipeline.Layer = None):
    """HiResCAM, :func:`hires_cam_map`. Matches PGC HiResCAM."""
    return gradient_explainer(hires_cam_map, layer)


@register("layer_cam", needs_gradients=True, forward_passes=1, backward_passes=1, doc="LayerCAM")
def layer_cam(layer: pipeline.Layer = None):
    """LayerCAM, :func:`layer_cam_map`. Matches PGC LayerCAM."""
    return gradient_explainer(layer_cam_map, layer)


@register(
    "smooth_grad_cam_pp",
    needs_gradients=True,
    forward_passes=lambda samples: samples + 1,
    backward_passes=lambda samples: samples,
    doc="Smooth Grad-CAM++, eq. 5",
)
def smooth_grad_cam_pp(layer: pipeline.Layer = None, samples: int = 4, std: float = 0.3, seed: int = 0):
    """Smooth Grad-CAM++ (Omeiza et al. 2019), eq. 5.

    The gradients at ``samples`` noisy copies ``x + N(0, std^2)`` are averaged per power (D1, D2 =
    g^2, D3 = g^3 in eq. 5's notation), then combined with the clean image's maps as Grad-CAM++.
    Defaults ``samples=4, std=0.3`` (absolute noise on the normalised input) are torch-cam's
    ``SmoothGradCAMpp``; unlike torch-cam, which multiplies the alphas by the *last* sample's
    gradient and uses that sample's activations (its maps then differ across seeds, correlation 0.50 on
    ResNet18), eq. 5's averaged gradient and the clean image's maps are used. Noise comes from
    ``jax.random.key(seed)`` (pure).
    Validated: ``samples`` an int >= 1, ``std`` a finite number >= 0, ``seed`` an int in [0, 2^31).
    """
    check_int("samples", samples, low=1)
    check_number("std", std, low=0.0)
    check_int("seed", seed, low=0)

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        layers = pipeline.resolve_layers(model, layer)
        _, maps, _ = feature_grads(model, variables, images, targets, layers)
        noise = std * jax.random.normal(jax.random.key(seed), (samples, *images.shape), images.dtype)

        def grads_at(eps):
            return feature_grads(model, variables, images + eps, targets, layers)[2]

        g = jax.lax.map(grads_at, noise)  # samples sequential: memory of one backward pass
        cams = []
        for k in layers:
            d1, d2, d3 = (jnp.mean(g[k] ** p, axis=0) for p in (1, 2, 3))
            a = d2 / (2 * d2 + _sum_hw(maps[k])[:, None, None, :] * d3 + 1e-6)
            a = jnp.where(d1 != 0, a, 0.0)
            cams.append(pipeline.weighted_sum(maps[k], _sum_hw(jax.nn.relu(d1) * a)))
        return pipeline.finish(cams, images.shape[1:3])

    return fn


@register("eigen_cam", needs_gradients=False, forward_passes=1, backward_passes=0, doc="Eigen-CAM")
def eigen_cam(layer: pipeline.Layer = None, sign: str = "svd"):
    """Eigen-CAM (Muhammad & Yeasin 2020): projection of the position-centred maps on their first
    right singular vector (PGC ``get_2d_projection``), then ReLU and scaling. Class-agnostic.

    The direction is the top eigenvector of the smaller Gram matrix, from matmuls
    (:func:`jinterp.ops.principal.projection`), not a full SVD.

    Args:
      layer: layer name(s); default :func:`jinterp.explain.pipeline.default_layer`.
      sign: a singular vector's sign is arbitrary. ``'svd'`` (default) takes the sign of LAPACK's
        ``gesdd``, behind the ``np.linalg.svd`` PGC calls, at leading order
        (:func:`jinterp.ops.principal.sign_as_gesdd`: negative at the first position), which
        reproduces PGC on VGG / ResNet maps as the full float32 SVD did; ``'max'`` flips the
        projection so its largest-magnitude value is positive (Seg-Eigen-CAM eq. 13).
    """
    check_choice("sign", sign, ("svd", "max"))

    def project(maps):
        n, h, w, c = maps.shape
        x = maps.reshape(n, h * w, c)
        x = x - x.mean(axis=1, keepdims=True)
        p = principal.projection(x)
        if sign == "max":
            p = jnp.where(jnp.abs(p.min(1, keepdims=True)) > jnp.abs(p.max(1, keepdims=True)), -p, p)
        else:
            p = principal.sign_as_gesdd(p)
        return p.reshape(n, h, w)

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        layers = pipeline.resolve_layers(model, layer)
        _, out = pipeline.forward(model, variables, images)
        return pipeline.finish([project(out[k]) for k in layers], images.shape[1:3])

    return fn
