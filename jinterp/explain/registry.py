"""The explainer registry: method name -> factory + metadata, spec strings, jitted cached calls.

A method is a factory that closes over its hyper-parameters and returns a pure function
``fn(model, variables, images, targets) -> (N, H, W) float32 heatmaps in [0, 1]``::

    @register("grad_cam", needs_gradients=True, forward_passes=1, backward_passes=1, doc="...")
    def grad_cam(layer=None): ...

    fn = get('score_cam(layer="conv5_3", batch=64)')     # factory(**options), options are literals
    heat = explain('grad_cam(layer="conv5_3")', model, variables, images, targets)  # jitted + cached

Spec strings are parsed with :mod:`ast` by :mod:`jinterp.ops.spec` (a bare name or a call with keyword
arguments whose values are Python literals); nothing is ever evaluated. ``parse`` and ``format_spec``
are that module's functions.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import check_bool, check_images, check_targets
from jinterp.ops.spec import bind, format_spec, parse, with_options  # noqa: F401  (format_spec, parse re-exported)

ExplainFn = Callable[..., jax.Array]
Count = int | Callable[..., int]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered explainer.

    Attributes:
      name: registry key.
      factory: ``factory(**options) -> fn(model, variables, images, targets)``.
      needs_gradients: whether ``fn`` differentiates the model.
      forward_passes: passes through the network per image; an int, or a function whose
        parameters are named ``channels`` (channels of the explained layer) and/or any of the
        factory's options (defaults filled in), e.g. ``lambda channels: channels + 1``.
      backward_passes: same convention as ``forward_passes``.
      doc: one-line description.
    """

    name: str
    factory: Callable[..., ExplainFn]
    needs_gradients: bool
    forward_passes: Count
    backward_passes: Count
    doc: str

    def options(self, **overrides) -> dict[str, Any]:
        """The factory's options with defaults, updated by ``overrides``: names checked against the
        factory's signature, values against its annotations (:func:`jinterp.ops.spec.bind`)."""
        return bind("spec", self.name, self.factory, overrides)

    def passes(self, channels: int, **options) -> tuple[int, int]:
        """``(forward, backward)`` passes per image for a layer with ``channels`` channels."""
        values = {"channels": channels, **self.options(**options)}

        def count(c):
            if not callable(c):
                return int(c)
            params = inspect.signature(c).parameters
            return int(c(**{k: values[k] for k in params}))

        return count(self.forward_passes), count(self.backward_passes)


METHODS: dict[str, Method] = {}


def register(
    name: str,
    factory: Callable[..., ExplainFn] | None = None,
    *,
    needs_gradients: bool,
    forward_passes: Count,
    backward_passes: Count,
    doc: str,
):
    """Add a method to :data:`METHODS`; usable as ``register(name, factory, ...)`` or as a decorator.

    Raises ValueError if ``name`` is already registered to a different factory.
    """

    def add(f):
        old = METHODS.get(name)
        if old is not None and old.factory is not f:
            raise ValueError(f"name: method {name!r} is already registered (by {old.factory.__module__})")
        METHODS[name] = Method(name, f, needs_gradients, forward_passes, backward_passes, doc)
        return f

    return add if factory is None else add(factory)


def method(spec: str) -> tuple[Method, dict[str, Any]]:
    """The registered :class:`Method` and its full (defaults filled in) options for ``spec``."""
    name, options = parse(spec)
    if name not in METHODS:
        raise ValueError(f"spec: unknown method {name!r}; expected one of {sorted(METHODS)}")
    m = METHODS[name]
    return m, m.options(**options)


def with_defaults(spec: str, **defaults) -> str:
    """``spec`` with each of ``defaults`` added where the spec leaves it out and the method takes it.

    ``with_defaults('grad_cam', layer="conv4")`` -> ``'grad_cam(layer="conv4")'``; options the spec sets
    win, and options the method has no parameter for are dropped (``cam`` has no ``layer``: unchanged).
    A value of None is treated as "no default". (:func:`jinterp.ops.spec.with_options` with the
    method's parameters as ``accepted``.)
    """
    m, _ = method(spec)
    return with_options(spec, accepted=m.options(), **defaults)


def get(spec: str) -> ExplainFn:
    """The pure explain function ``fn(model, variables, images, targets) -> (N, H, W)`` for ``spec``."""
    m, options = method(spec)
    return m.factory(**options)


def _key(spec: str) -> tuple:
    m, options = method(spec)
    return m.name, tuple(sorted((k, _hashable(v)) for k, v in options.items()))


def _hashable(v):
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


@functools.lru_cache(maxsize=256)
def _compiled(key: tuple) -> ExplainFn:
    name, options = key
    fn = METHODS[name].factory(**dict(options))
    return jax.jit(fn, static_argnums=0)


def jitted(spec: str) -> ExplainFn:
    """``jax.jit(get(spec), static_argnums=0)``, cached per normalised spec (the model is static)."""
    return _compiled(_key(spec))


def explain(
    spec: str, model, variables: dict, images: jax.Array, targets: jax.Array, *, check_finite: bool = True
) -> jax.Array:
    """Heatmaps for ``images`` and per-image ``targets`` with the method selected by ``spec``.

    Validates the inputs on the host, then calls the jitted function cached for (spec, model);
    a second call with the same shapes does not retrace. Validated: the spec (method, option names and
    types, option ranges), images (real (N, H, W, 3), N >= 1, H, W >= the model's ``min_size``, no NaN /
    inf), targets (N,) integers in [0, num_classes). The raw functions of :func:`get` are jittable, so
    they check only what is static there (shapes, dtypes, options); values (finiteness, target range)
    are checked here, on concrete arrays.

    Args:
      spec: method spec, e.g. ``'grad_cam(layer="conv5_3")'`` (see :func:`parse`).
      model: a Flax module returning ``(logits, out)`` (hashable; a static jit argument).
      variables: its variables.
      images: (N, H, W, 3) float32.
      targets: (N,) int class per image.
      check_finite: test the images for NaN / inf (one ``isfinite`` reduction on their device);
        ``False`` skips it in speed-critical loops over inputs known to be finite.

    Returns:
      (N, H, W) float32 heatmaps in [0, 1].
    """
    fn = jitted(spec)
    images = images if hasattr(images, "shape") else np.asarray(images)  # nested lists are accepted here
    check_images(
        images, min_size=int(getattr(model, "min_size", 1)), finite=check_bool("check_finite", check_finite)
    )
    check_targets(targets, np.shape(images)[0], getattr(model, "num_classes", None))
    return fn(model, variables, jnp.asarray(images, jnp.float32), jnp.asarray(targets))
