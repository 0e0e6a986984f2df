"""The CAM pipeline shared by every method: per-layer CAM -> ReLU -> resize -> per-image [0, 1] scaling.

The order and epsilons reproduce pytorch-grad-cam (PGC) ``BaseCAM.compute_cam_per_layer`` +
``aggregate_multi_layers``: each layer's low-resolution CAM is ReLU'd, min-max scaled
(``(x - min) / (max - min + 1e-7)``), upsampled bilinearly with half-pixel centres (``cv2.resize``
``INTER_LINEAR``); the layers are averaged and the mean is min-max scaled again. A constant or
all-zero map becomes an all-zero heatmap (never NaN).

Resizing is :func:`jinterp.ops.resize.upsample`: a pair of small interpolation matrices (one per
axis) applied with ``einsum``: exact cv2/torch semantics for both ``align_corners`` conventions.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones import check_layers, layer_shapes, min_size, strip_perturbations, target_logit
from jinterp.checks import check_choice, check_images, check_targets
from jinterp.ops.resize import upsample

EPS = 1e-7  # PGC scale_cam_image

# The ``layer`` option of the CAMs: None (:func:`default_layer`), a layer name, or several (averaged).
Layer = str | tuple[str, ...] | list[str] | None


def minmax(x: jax.Array, axes: Sequence[int] = (-2, -1), eps: float = EPS) -> jax.Array:
    """``(x - min) / (max - min + eps)`` over ``axes``: [0, 1], zero for constant input (PGC)."""
    lo = x.min(axis=tuple(axes), keepdims=True)
    hi = x.max(axis=tuple(axes), keepdims=True)
    return (x - lo) / (hi - lo + eps)


def float_dtype(x) -> jnp.dtype:
    """float32, or float64 for float64 input (under ``jax.enable_x64``: finite-difference checks)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def cast_floating(tree, dtype):
    """``tree`` with its floating leaves (bfloat16 included) cast to ``dtype``, other leaves as they are."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def finish(cams: Sequence[jax.Array], size: tuple[int, int]) -> jax.Array:
    """Per-layer (N, h_l, w_l) CAMs -> (N, H, W) float32 heatmaps in [0, 1] (PGC order, module doc);
    float64 ones for float64 maps."""
    per_layer = [upsample(minmax(jax.nn.relu(c.astype(float_dtype(c)))), size) for c in cams]
    return minmax(jax.nn.relu(jnp.mean(jnp.stack(per_layer), axis=0)))


def weighted_sum(maps: jax.Array, weights: jax.Array) -> jax.Array:
    """Eq. 1 of Cluster-CAM (CAM): ``sum_k w_k A_k`` for (N, h, w, C) maps and (N, C) weights."""
    return jnp.einsum("nhwc,nc->nhw", maps, weights, precision=jax.lax.Precision.HIGHEST)


def default_layer(model) -> str:
    """The last tappable layer whose map is still spatial (h, w > 1 at a 224 px input).

    The same rule as torch-cam's ``locate_candidate_layer``; e.g. ``pool5`` for VGG, ``layer4`` for
    ResNet, ``conv6`` for small_cnn. PGC has no default (its README suggests ``features[-1]``,
    i.e. ``pool5``, for VGG).
    """
    shapes = layer_shapes(model, max(min_size(model), 224))
    spatial = [k for k, s in shapes.items() if len(s) == 4 and s[1] > 1 and s[2] > 1]
    if not spatial:
        raise ValueError(f"layer: the model has no spatial tappable layer; layers: {list(shapes)}")
    return spatial[-1]


def resolve_layers(model, layer: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None`` -> (:func:`default_layer`,); a name or names -> validated tuple."""
    if layer is None:
        return (default_layer(model),)
    return check_layers(model, layer, argument="layer")


def check_inputs(model, images, targets) -> None:
    """Checks of ``fn(model, variables, images, targets)``'s arrays: shapes and dtypes always (images
    real (N, H, W, 3), H, W >= ``min_size``, N >= 1; targets (N,) integers), values (finiteness, target
    range) only on concrete arrays (under ``jax.jit`` they are tracers)."""
    check_images(images, min_size=min_size(model))
    check_targets(targets, np.shape(images)[0], getattr(model, "num_classes", None))


def softmax_score(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax probability of each image's target class, shape (N,)."""
    return target_logit(jax.nn.softmax(logits, axis=-1), targets)


SCORES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "logit": target_logit,
    "softmax": softmax_score,
}


def score_fn(name: str):
    """``'logit'`` (PGC ``ClassifierOutputTarget``) or ``'softmax'`` -> ``(logits, targets) -> (N,)``."""
    check_choice("score", name, SCORES)
    return SCORES[name]


def forward(model, variables: dict, images: jax.Array, perturbations: dict | None = None):
    """``model.apply`` with only the given perturbations (variables' own ones dropped)."""
    variables = strip_perturbations(variables)
    if perturbations:
        variables = {**variables, "perturbations": perturbations}
    return model.apply(variables, images)


def channel_first(maps: jax.Array) -> jax.Array:
    """(N, h, w, C) -> (N, C, h, w)."""
    return jnp.moveaxis(maps, -1, 1)


def forward_layers(model, variables, images, targets, layer):
    """Check the inputs, resolve ``layer`` and run the model: ``(layers, logits, out)``."""
    check_inputs(model, images, targets)
    layers = resolve_layers(model, layer)
    logits, out = forward(model, variables, images)
    return layers, logits, out


def channel_weighted_explainer(weights_fn: Callable, layer) -> Callable:
    """``fn(model, variables, images, targets)``: per layer of ``layer``, ``weighted_sum`` of its maps with
    ``weights_fn(model, variables, images, targets, maps) -> (N, C)``, then :func:`finish` (the
    masked-input CAMs: Score-CAM and its SS / IS variants)."""

    def fn(model, variables, images, targets):
        layers, _, out = forward_layers(model, variables, images, targets, layer)
        weights = lambda k: weights_fn(model, variables, images, targets, out[k])
        return finish([weighted_sum(out[k], weights(k)) for k in layers], images.shape[1:3])

    return fn
