"""Layer names and gradients of class scores w.r.t. named feature maps, without hooks.

Any Flax model that returns ``(logits, out)`` and routes its maps through :func:`tap` works
here, jinterp's backbones included. Gradients come from zero-valued perturbations at the named
sites (the Flax ``perturb`` idea), so the backward pass only runs through the part of the network
above the deepest requested layer.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jinterp.backbones.base import PERTURBATIONS, tap  # noqa: F401  (re-exported)
from jinterp.checks import check_choice, check_images, check_targets

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def min_size(model: nn.Module) -> int:
    """Smallest input side the model accepts (``model.min_size``, else 32)."""
    return int(getattr(model, "min_size", 32))


@functools.lru_cache(maxsize=64)
def _layer_shapes(model: nn.Module, size: int | tuple[int, int]) -> dict:
    order = []

    def init(key, x):
        (logits, out), variables = model.init_with_output(key, x)
        order.extend(out)  # pytrees sort dict keys; the trace itself sees execution order
        return out

    height, width = (size, size) if isinstance(size, int) else size
    x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    shapes = jax.eval_shape(init, jax.random.key(0), x)
    return {k: shapes[k].shape for k in order}


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """Ordered names of the model's tappable layers (traced once with shapes only, then cached)."""
    return tuple(_layer_shapes(model, max(min_size(model), 64)))


def layer_shapes(model: nn.Module, image_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """``{layer: (1, h, w, C)}`` for a square input of side ``image_size``, or an (H, W) input."""
    size = int(image_size) if np.ndim(image_size) == 0 else tuple(int(s) for s in image_size)
    return dict(_layer_shapes(model, size))


def check_layers(model: nn.Module, layers: Sequence[str], argument: str = "layers") -> tuple[str, ...]:
    """Validate layer names (a name or a list / tuple of names) against :func:`layer_names`; returns
    them as a tuple."""
    if isinstance(layers, str):
        layers = (layers,)
    valid = layer_names(model)
    if not isinstance(layers, tuple | list) or not all(isinstance(k, str) for k in layers):
        raise ValueError(
            f"{argument}: expected a layer name or a list of names from {list(valid)}, got {layers!r}"
        )
    for layer in layers:
        check_choice(argument, layer, valid)
    if not layers:
        raise ValueError(f"{argument}: expected at least one layer name from {list(valid)}")
    return tuple(layers)


def target_logit(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Default score: the logit of each image's target class, shape (N,)."""
    return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=1)[:, 0]


def strip_perturbations(variables: dict) -> dict:
    """Variables without a ``perturbations`` collection (e.g. from ``nn.Module.perturb`` at init)."""
    return {k: v for k, v in variables.items() if k != PERTURBATIONS}


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _feature_grads(model, variables, images, targets, layers, score_fn):
    variables = strip_perturbations(variables)
    _, shapes = jax.eval_shape(lambda: model.apply(variables, images))
    zeros = {layer: jnp.zeros(shapes[layer].shape, shapes[layer].dtype) for layer in layers}

    def total_score(perturbations):
        logits, out = model.apply({**variables, PERTURBATIONS: perturbations}, images)
        return score_fn(logits, targets).sum(), (logits, {layer: out[layer] for layer in layers})

    grads, (logits, maps) = jax.grad(total_score, has_aux=True)(zeros)
    return logits, maps, grads


def feature_grads(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    targets: jax.Array,
    layers: str | Sequence[str],
    score_fn: ScoreFn = target_logit,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Feature maps and d score / d map for each named layer, per image, in one jitted call.

    Args:
      model: a Flax module returning ``(logits, out)`` (BatchNorm in eval mode).
      variables: its variables (``params``, ``batch_stats``).
      images: (N, H, W, 3) float32.
      targets: (N,) int class per image (a batch may mix classes).
      layers: one name or a sequence of names from :func:`layer_names`.
      score_fn: ``(logits, targets) -> (N,)`` scores to differentiate; default target logit.
        Must be hashable (a module-level function), it is a static jit argument.

    Returns:
      ``(logits, maps, grads)``; ``maps[l]`` and ``grads[l]`` are (N, h, w, C). Each image's
      score depends on that image only, so summing scores gives per-image gradients.
    """
    check_images(images, min_size=min_size(model))
    layers = check_layers(model, layers)
    n = np.shape(images)[0]
    check_targets(targets, n, getattr(model, "num_classes", None))
    return _feature_grads(model, variables, jnp.asarray(images), jnp.asarray(targets), layers, score_fn)
