"""Post-hoc explanations of any Flax CNN returning ``(logits, out)``.

>>> fn = get('score_cam(layer="conv5_3", batch=64)')
>>> heat = fn(model, variables, images, targets)        # (N, H, W) float32 in [0, 1]
>>> heat = explain('grad_cam(layer="conv5_3")', model, variables, images, targets)  # jitted, cached

``METHODS`` maps each method name to its factory and metadata (see :class:`registry.Method`).
"""

from jinterp.explain.registry import (
    METHODS,
    Method,
    explain,
    format_spec,
    get,
    jitted,
    method,
    parse,
    register,
    with_defaults,
)

# Importing a method module registers its methods.
from jinterp.explain import cam, clam, concepts, crp, lrp, masking, score_cam  # noqa: E402, F401  isort: skip
from jinterp.explain import attribution, fullgrad, score_variants  # noqa: E402, F401  isort: skip
from jinterp.explain.masking import cluster_cam_details  # noqa: E402  isort: skip

__all__ = [
    "METHODS",
    "Method",
    "cluster_cam_details",
    "explain",
    "format_spec",
    "get",
    "jitted",
    "method",
    "parse",
    "register",
    "with_defaults",
]
