"""Explanation losses: train a model whose explanations fall on the annotated object.

``RightReasons`` is "right for the right reasons" (Ross, Hughes & Doshi-Velez, IJCAI 2017, eq. 1): the
input gradient of the summed log-probabilities is penalised where the annotation says the evidence is
not, A_n = 0 (PartsWorld: outside ``object_mask``):

    L_rrr = weight * mean_n sum_{x, c} (1 - A_n(x)) * (d/dx_{x,c} sum_k log p_k(x_n))^2

``method="grad_cam"`` is the attribution-prior variant on a CAM instead of the input gradient: the
share of the Grad-CAM heatmap (``jinterp.explain``, differentiable, second order through the
network) that lies outside the object, ``mean_n sum_x H_n (1 - A_n) / sum_x H_n`` in [0, 1].

Unlike the filter losses these need the model, its variables and the batch's mask, so the train step
calls :meth:`RightReasons.penalty` (``needs_inputs``) instead of ``spec(out, labels, state)``. The
explanations are of the eval-mode model (BatchNorm running statistics), as a user would compute them.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jinterp.checks import check_choice
from jinterp.explain import registry

METHODS = ("input_gradient", "grad_cam")


@dataclasses.dataclass(frozen=True)
class RightReasons:
    """Right-for-the-right-reasons penalty (module docstring); ``weight`` = lambda_1 of eq. 1."""

    weight: float = 1.0
    method: str = "input_gradient"
    layer: str | None = None  # grad_cam: the explained layer (None: the model's last spatial one)
    mask: str = "object_mask"  # batch key of the (B, H, W) annotation

    name: ClassVar[str] = "rrr"
    needs_inputs: ClassVar[bool] = True
    cluster_only: ClassVar[bool] = False
    recluster_phases: ClassVar[int] = 0
    layers: ClassVar[tuple] = ()

    def __post_init__(self):
        check_choice("method", self.method, METHODS)

    def reclusters_at(self, epoch: int) -> bool:
        return False

    def init(self, shapes: dict) -> dict:
        return {}

    def penalty(self, model, variables: dict, batch: dict) -> tuple[jax.Array, dict]:
        """``(unweighted penalty, {"rrr/outside": penalty})`` for a batch with ``image``, ``label``, mask."""
        images, labels = batch["image"], batch["label"]
        outside = 1.0 - batch[self.mask].astype(images.dtype)
        if self.method == "grad_cam":
            spec = registry.with_defaults("grad_cam", layer=self.layer)
            heat = registry.get(spec)(model, variables, images, labels)
            value = jnp.mean((heat * outside).sum((1, 2)) / (heat.sum((1, 2)) + 1e-6))
        else:
            log_probs = lambda x: jax.nn.log_softmax(model.apply(variables, x)[0]).sum()
            grads = jax.grad(log_probs)(images)  # per image: the batch rows do not interact in eval mode
            value = jnp.mean(((outside[..., None] * grads) ** 2).sum((1, 2, 3)))
        return value, {f"{self.name}/outside": value}


def explanation_terms(specs, model, variables: dict, batch: dict, weights=None) -> tuple[jax.Array, dict]:
    """Sum of the ``needs_inputs`` specs' penalties, each times ``weights["<name>.weight"]`` (or its own
    ``weight``); logs ``loss/<name>`` (weighted) and ``<name>/outside`` (unweighted)."""
    total, logs = jnp.zeros((), jnp.float32), {}
    for spec in specs:
        value, spec_logs = spec.penalty(model, variables, batch)
        w = spec.weight if weights is None else weights[f"{spec.name}.weight"]
        total = total + w * value
        logs.update({f"loss/{spec.name}": w * value, **spec_logs})
    return total, logs
