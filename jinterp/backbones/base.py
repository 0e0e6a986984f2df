"""The backbone contract: ``logits, out = model.apply(variables, x)``.

``out`` maps every tappable layer name to its (N, h, w, C) map. Each map passes through
:meth:`Backbone.tap`, which adds a zero-valued ``perturbations`` variable when one is supplied:
the gradient w.r.t. that variable is the gradient w.r.t. the map (``jinterp.backbones.feature_grads``),
so no hooks are needed and ``jax.jit`` prunes whatever the caller does not use.
"""

from typing import ClassVar

import flax.linen as nn

PERTURBATIONS = "perturbations"


class Backbone(nn.Module):
    """Base class: the smallest input side a backbone accepts, and the tap helper."""

    min_size: ClassVar[int] = 32

    def tap(self, name: str, x, out: dict):
        """Record ``x`` as ``out[name]`` (see :func:`tap`)."""
        return tap(self, name, x, out)


def tap(module: nn.Module, name: str, x, out: dict):
    """Record ``x`` as ``out[name]`` inside ``module``, adding its perturbation if one was passed.

    Call this in any Flax model to make its maps tappable. Unlike ``nn.Module.perturb`` nothing
    is created at ``init``, so variables never carry batch-sized zeros and callers may perturb
    any subset of layers.
    """
    if module.scope is not None and module.has_variable(PERTURBATIONS, name):
        x = x + module.get_variable(PERTURBATIONS, name)
    out[name] = x
    return x
