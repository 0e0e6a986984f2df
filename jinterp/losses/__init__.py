"""Interpretability losses for training: icCNN grouping, HICCNN hierarchical, synchronization.

Each entry of ``LOSSES`` is a frozen dataclass (hashable, so it can be a static argument of a jitted
step) whose fields are the hyper-parameters. The interface, shared by all of them:

```python
spec = LOSSES["iccnn"](layer="conv5_3", num_groups=5, weight=1.0)   # or get('iccnn(layer="conv5_3")')
spec = for_backbone("hiccnn", "vgg16")                  # paper layers and weights for a backbone
spec.layers                                             # out[...] keys the loss reads
shapes = backbones.layer_shapes(model, image_size)      # {layer: (1, h, w, C)} (batch size ignored)
state = spec.init(shapes)                               # pytree (EMA, group ids): carry it in TrainState
value, state, logs = spec(out, labels, state)           # in jit, per batch; weighted: total = ce + value
                                                        # logs = {"iccnn/group": ...} (unweighted terms)
# between epochs (icCNN: every `recluster_every` epochs while epoch < `recluster_until`)
if spec.reclusters_at(epoch):
    for phase in range(spec.recluster_phases):          # HICCNN: deep groups, eq. 9, then shallow
        stats = spec.init_stats(shapes, phase)
        for batch in data:                              # forward passes only (eval mode); jit update_stats
            stats = spec.update_stats(stats, out, labels, state, phase)
        state = spec.recluster(state, stats, key, phase)   # spectral clustering on device
```

Several specs at once: ``apply(specs, out, labels, states)`` with ``states = {spec.name: state}``; with
``weights=`` (``{"<name>.<field>": w}``, see :func:`loss_weights` and ``WEIGHT_FIELDS``) the terms are
re-weighted by those numbers instead of the specs' own fields, so a sweep can vmap them.
Specs without a between-epoch step (``sync``) return ``False`` from ``reclusters_at`` and their
``init_stats``/``update_stats``/``recluster`` are identities, so a trainer needs no special cases.

icCNN's own schedule spends each clustering epoch on clustering only (no training step; reference-code
notes §1): with ``cluster_only=True`` (the default) ``jinterp.train`` runs no training step in epochs
where ``reclusters_at`` is true. Before the first ``recluster`` the groups are contiguous channel blocks.

Losses: ``iccnn`` (HICCNN eq. 1-6: lambda * L_group + beta * L_multi), ``hiccnn`` (adds gamma * L_hier,
eq. 8-12; gamma = 0 is ICCNN, gamma = lambda = 0 a plain CNN), ``sync`` (TNNLS'24 eq. 3-10:
lambda1 * L_lac + lambda2 * L_sync). Building blocks: :mod:`.grouping`, :mod:`.hierarchical`,
:mod:`.sync`, and :mod:`jinterp.ops.clustering` (on-device k-means and spectral clustering, shared with
Cluster-CAM and the module metrics).
"""

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp

from jinterp.checks import check_choice
from jinterp.losses import explanation, grouping, hierarchical, sync
from jinterp.losses.explanation import RightReasons, explanation_terms
from jinterp.losses.hierarchical import LAYER_PAIRS
from jinterp.ops import clustering
from jinterp.ops.spec import bind, parse


def _check_layers(spec, shapes: dict) -> None:
    for layer in spec.layers:
        if layer not in shapes:
            raise ValueError(
                f"{type(spec).__name__}: layer {layer!r} not in the model's maps {sorted(shapes)}"
            )
        if len(shapes[layer]) != 4:
            raise ValueError(f"shapes[{layer!r}]: expected (N, h, w, C), got {shapes[layer]}")


@dataclasses.dataclass(frozen=True)
class ICCNN:
    """icCNN filter grouping (HICCNN eq. 1-4) and multi-category (eq. 5-6) losses on one layer.

    value = weight * L_group + multi_weight * L_multi (eq. 7). Defaults: K = 5, lambda = 1.0 (HICCNN §4
    "for most models"; 0.1 for VGG-16 and in the multi-category setting, where beta = 0.1); EMA decay
    0.95, re-clustering every 2 epochs until epoch 200 (icCNN code, VGG). ``positive_class``: count only
    images of that label in L_group (icCNN single-category uses 0, the object class); None = all.
    ``multi_weight > 0`` needs ``num_classes``. ``activation``: see ``grouping.group_activations``.
    """

    layer: str = "conv5_3"
    num_groups: int = 5
    weight: float = 1.0
    multi_weight: float = 0.0
    num_classes: int = 0
    positive_class: int | None = None
    activation: str = "mean"
    ema_decay: float = 0.95
    recluster_every: int = 2
    recluster_until: int = 200
    cluster_only: bool = True
    kmeans_iters: int = 100
    kmeans_init: int = 10

    name: ClassVar[str] = "iccnn"

    def __post_init__(self):
        if self.num_groups < 1:
            raise ValueError(f"num_groups: expected >= 1, got {self.num_groups}")
        if self.recluster_every < 1:
            raise ValueError(f"recluster_every: expected >= 1, got {self.recluster_every}")
        if self.cluster_only and self.recluster_every == 1 and self.recluster_until > 0:
            raise ValueError(
                "cluster_only: with recluster_every=1 every epoch before recluster_until would only "
                "cluster (no training); set cluster_only=False or recluster_every >= 2"
            )
        if self.multi_weight and self.num_classes < 2:
            raise ValueError(f"num_classes: multi_weight > 0 needs num_classes >= 2, got {self.num_classes}")
        check_choice("activation", self.activation, ("mean", "code"))

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def reclusters_at(self, epoch: int) -> bool:
        """True at the start of epochs where the groups are re-clustered (icCNN schedule)."""
        return epoch % self.recluster_every == 0 and epoch < self.recluster_until

    @property
    def recluster_phases(self) -> int:
        """Passes over the data a re-clustering takes (one statistics pass per phase)."""
        return 1

    def _sample_weight(self, labels):
        if self.positive_class is None:
            return None
        return (labels == self.positive_class).astype(jnp.float32)

    def init(self, shapes: dict) -> dict:
        _check_layers(self, shapes)
        _, h, w, c = shapes[self.layer]
        if c < self.num_groups:
            raise ValueError(
                f"num_groups: expected <= {c} (channels of {self.layer!r}), got {self.num_groups}"
            )
        return {
            "groups": grouping.block_groups(c, self.num_groups),
            "ema": jnp.zeros((h, w, c), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
        }

    def __call__(self, out: dict, labels: jax.Array, state: dict):
        fmap = out[self.layer].astype(jnp.float32)
        ema, count = grouping.update_ema(state["ema"], state["count"], fmap, self.ema_decay)
        loss = grouping.group_loss(fmap, ema, state["groups"], self.num_groups, self._sample_weight(labels))
        value, logs = self.weight * loss, {f"{self.name}/group": loss}
        if self.multi_weight:
            multi = grouping.multi_loss(
                fmap, labels, state["groups"], self.num_groups, self.num_classes, self.activation
            )
            value, logs = value + self.multi_weight * multi, {**logs, f"{self.name}/multi": multi}
        return value, {**state, "ema": ema, "count": count}, logs

    def init_stats(self, shapes: dict, phase: int = 0) -> dict:
        _, h, w, c = shapes[self.layer]
        return {"deep": grouping.init_stats(c, (h, w))}

    def update_stats(self, stats: dict, out: dict, labels: jax.Array, state: dict, phase: int = 0) -> dict:
        return {**stats, "deep": grouping.update_stats(stats["deep"], out[self.layer])}

    def recluster(self, state: dict, stats: dict, key: jax.Array, phase: int = 0) -> dict:
        sim = grouping.similarity(stats["deep"])
        groups = clustering.spectral_clustering(
            sim, self.num_groups, key, self.kmeans_iters, self.kmeans_init
        )
        return {**state, "groups": groups}


@dataclasses.dataclass(frozen=True)
class HICCNN(ICCNN):
    """HICCNN: icCNN on the deep ``layer`` plus the hierarchical loss (eq. 8-12) on ``shallow_layer``.

    value = lambda * L_group + beta * L_multi + gamma * L_hier (Algorithm 1 l. 12/14); gamma =
    ``hier_weight`` = 0.01 (HICCNN §4). Deep regions come from the deep groups (threshold 0.5 on the
    min-max normalised group map). Between epochs, with the deep groups' schedule and in Algorithm 1's
    order, one pass per phase: (0) the deep filters are clustered (eq. 1), (1) with ``refine_deep`` the
    grouping is refined from the masked shallow maps (eq. 9), (2) the shallow filters are clustered into
    ``num_subgroups`` inside each region of the new grouping (see ``losses.hierarchical``).
    ``refine_deep=False`` skips eq. 9 (the deep grouping is the correlation clustering alone).
    """

    layer: str = "conv5_3"
    shallow_layer: str = "conv4_3"
    hier_weight: float = 0.01
    num_subgroups: int = 5
    threshold: float = 0.5
    refine_deep: bool = True

    name: ClassVar[str] = "hiccnn"

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.shallow_layer, self.layer)

    @property
    def recluster_phases(self) -> int:
        return 3 if self.refine_deep else 2

    def _phase(self, phase: int) -> str:
        return "deep" if phase == 0 else ("shallow" if phase == self.recluster_phases - 1 else "refine")

    def init(self, shapes: dict) -> dict:
        state = super().init(shapes)
        _, h, w, c = shapes[self.shallow_layer]
        if c < self.num_subgroups:
            raise ValueError(
                f"num_subgroups: expected <= {c} (channels of {self.shallow_layer!r}), "
                f"got {self.num_subgroups}"
            )
        sub = grouping.block_groups(c, self.num_subgroups)
        return {
            **state,
            "subgroups": jnp.broadcast_to(sub, (self.num_groups, c)),
            "hier_center": jnp.zeros((self.num_groups, h, w, c), jnp.float32),
        }

    def __call__(self, out: dict, labels: jax.Array, state: dict):
        value, new_state, logs = super().__call__(out, labels, state)
        if not self.hier_weight:
            return value, new_state, logs
        deep, shallow = out[self.layer], out[self.shallow_layer].astype(jnp.float32)
        center, _ = hierarchical.update_center(
            state["hier_center"],
            state["count"],
            deep,
            shallow,
            state["groups"],
            self.num_groups,
            self.threshold,
            self.ema_decay,
        )
        hier = hierarchical.hier_loss(
            deep,
            shallow,
            state["groups"],
            self.num_groups,
            state["subgroups"],
            self.num_subgroups,
            center,
            self.threshold,
            self._sample_weight(labels),
        )
        new_state = {**new_state, "hier_center": center}
        return value + self.hier_weight * hier, new_state, {**logs, f"{self.name}/hier": hier}

    def init_stats(self, shapes: dict, phase: int = 0) -> dict:
        kind = self._phase(phase)
        if kind == "deep":
            return super().init_stats(shapes)
        if kind == "refine":
            return {"refine": hierarchical.init_guidance(shapes[self.layer][-1], self.num_groups)}
        _, h, w, c = shapes[self.shallow_layer]
        return {"shallow": hierarchical.init_stats(self.num_groups, c, (h, w))}

    def update_stats(self, stats: dict, out: dict, labels: jax.Array, state: dict, phase: int = 0) -> dict:
        kind = self._phase(phase)
        if kind == "deep":
            return super().update_stats(stats, out, labels, state)
        update = hierarchical.update_guidance if kind == "refine" else hierarchical.update_stats
        deep, shallow = out[self.layer], out[self.shallow_layer]
        return {kind: update(stats[kind], deep, shallow, state["groups"], self.num_groups, self.threshold)}

    def recluster(self, state: dict, stats: dict, key: jax.Array, phase: int = 0) -> dict:
        kind = self._phase(phase)
        if kind == "deep":
            return super().recluster(state, stats, key)
        if kind == "refine":
            return {**state, "groups": hierarchical.refine_groups(stats["refine"], state["groups"])}
        sub = hierarchical.recluster(
            stats["shallow"], self.num_subgroups, key, self.kmeans_iters, self.kmeans_init
        )
        return {**state, "subgroups": sub}


@dataclasses.dataclass(frozen=True)
class Sync:
    """Synchronization losses (TNNLS'24 eq. 10): lac_weight * L_lac (eq. 3-5) + sync_weight * L_sync (6-9).

    Defaults §IV-A5: eps = 0.03, lambda1 = 0.2, lambda2 = 0.1 (halved for ResNet, see ``for_backbone``).
    ``tau``: eq. 4 distance scale (None = one feature-map cell, see ``losses.sync``). Stateless.
    """

    layer: str = "conv5_3"
    lac_weight: float = sync.LAMBDA_LAC
    sync_weight: float = sync.LAMBDA_SYNC
    eps: float = sync.EPS
    tau: float | None = None

    name: ClassVar[str] = "sync"

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    cluster_only: ClassVar[bool] = False
    recluster_phases: ClassVar[int] = 0

    def reclusters_at(self, epoch: int) -> bool:
        return False

    def init(self, shapes: dict) -> dict:
        _check_layers(self, shapes)
        return {}

    def __call__(self, out: dict, labels: jax.Array, state: dict):
        fmap = out[self.layer].astype(jnp.float32)
        lac = sync.lac_loss(fmap, self.tau)
        snc = sync.sync_loss(fmap, self.eps)
        value = self.lac_weight * lac + self.sync_weight * snc
        return value, state, {f"{self.name}/lac": lac, f"{self.name}/sync": snc}

    def init_stats(self, shapes: dict, phase: int = 0) -> dict:
        return {}

    def update_stats(self, stats: dict, out: dict, labels: jax.Array, state: dict, phase: int = 0) -> dict:
        return stats

    def recluster(self, state: dict, stats: dict, key: jax.Array, phase: int = 0) -> dict:
        return state


LOSSES = {"iccnn": ICCNN, "hiccnn": HICCNN, "sync": Sync, "rrr": explanation.RightReasons}


def get(spec: str):
    """A loss from a spec string, e.g. ``'hiccnn(layer="conv5_3", num_groups=8)'`` or ``'sync'``.

    Parsed by :func:`jinterp.ops.spec.parse` (literals only, nothing evaluated) and bound by
    :func:`jinterp.ops.spec.bind`: an unknown loss, an option that is not a field of it, or a value of
    another type than the field's annotation raises ValueError naming it.
    """
    name, options = parse(spec)
    check_choice("spec", name, LOSSES)
    return LOSSES[name](**bind("spec", name, LOSSES[name], options))


def for_backbone(name: str, backbone: str, multi: bool = False, num_classes: int = 0, **overrides):
    """A loss with the papers' layers and weights for a backbone (``overrides`` win).

    HICCNN §4: layer pair from ``LAYER_PAIRS``; lambda = 1.0, 0.1 for VGG-16; multi-category lambda =
    beta = 0.1; gamma = 0.01. Sync §IV-A5: the top conv layer (deep layer of the pair), lambda1 = 0.2,
    lambda2 = 0.1, halved for ResNet.
    """
    check_choice("name", name, LOSSES)
    check_choice("backbone", backbone, LAYER_PAIRS)
    shallow, deep = LAYER_PAIRS[backbone]
    if name == "sync":
        scale = 0.5 if backbone.startswith("resnet") else 1.0
        kw = {"layer": deep, "lac_weight": sync.LAMBDA_LAC * scale, "sync_weight": sync.LAMBDA_SYNC * scale}
    else:
        kw = {"layer": deep, "weight": 0.1 if multi or backbone.startswith("vgg16") else 1.0}
        if multi:
            kw.update(multi_weight=0.1, num_classes=num_classes)
        if name == "hiccnn":
            kw.update(shallow_layer=shallow, hier_weight=0.01)
    return LOSSES[name](**{**kw, **overrides})


# Log suffix of each unweighted term of a spec -> the spec field that weights it. A spec's value is
# exactly sum_suffix spec.<field> * logs["<name>/<suffix>"] (checked in the tests), so a trainer can
# recompute that sum with weights held as numbers in its state (vmappable over sweep points).
WEIGHT_FIELDS = {
    "group": "weight",
    "outside": "weight",
    "multi": "multi_weight",
    "hier": "hier_weight",
    "lac": "lac_weight",
    "sync": "sync_weight",
}


def loss_weights(specs) -> dict[str, float]:
    """``{"<loss>.<field>": value}`` of every weight field of ``specs`` (the vmappable loss weights)."""
    return {
        f"{spec.name}.{field}": float(getattr(spec, field))
        for spec in specs
        for field in WEIGHT_FIELDS.values()
        if hasattr(spec, field) and getattr(spec, field) is not None
    }


def weighted_loss(spec, logs: dict, weights: Mapping[str, jax.Array]) -> jax.Array:
    """``sum_suffix weights["<name>.<field>"] * logs["<name>/<suffix>"]`` (the spec's value, re-weighted)."""
    total = jnp.zeros((), jnp.float32)
    for key, value in logs.items():
        suffix = key.split("/", 1)[1]
        if suffix not in WEIGHT_FIELDS:
            raise ValueError(f"loss {spec.name!r}: log {key!r} has no weight field in losses.WEIGHT_FIELDS")
        total = total + weights[f"{spec.name}.{WEIGHT_FIELDS[suffix]}"] * value
    return total


def apply(specs, out: dict, labels: jax.Array, states: dict, weights: Mapping[str, jax.Array] | None = None):
    """Run several losses -> (summed value, {name: new state}, logs); ``states``: {name: state}.

    Without ``weights`` each spec contributes its own value (its fields weight its terms); with
    ``weights`` (``{"<name>.<field>": scalar}``, keys as :func:`loss_weights`) it contributes
    :func:`weighted_loss` of its unweighted terms. ``logs`` holds, per spec, ``loss/<name>`` (its
    weighted contribution) and its unweighted terms ``<name>/<term>``. Explanation losses
    (``needs_inputs``, :mod:`.explanation`) are left to :func:`explanation_terms`; their state passes
    through unchanged.
    """
    total, new_states, logs = jnp.zeros((), jnp.float32), {}, {}
    for spec in specs:
        if needs_inputs(spec):
            new_states[spec.name] = states[spec.name]
            continue
        value, new_states[spec.name], spec_logs = spec(out, labels, states[spec.name])
        if weights is not None:
            value = weighted_loss(spec, spec_logs, weights)
        total = total + value
        logs[f"loss/{spec.name}"] = value
        logs.update(spec_logs)
    return total, new_states, logs


def spec_fields(spec) -> dict:
    """A spec's fields as ``config.losses.<name>`` holds them (fields left at None omitted)."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return {k: v for k, v in fields.items() if v is not None}


def needs_inputs(spec) -> bool:
    """True for losses computed from the model and the batch (explanations), not from the maps."""
    return getattr(spec, "needs_inputs", False)


__all__ = [
    "HICCNN",
    "ICCNN",
    "LAYER_PAIRS",
    "LOSSES",
    "RightReasons",
    "WEIGHT_FIELDS",
    "Sync",
    "apply",
    "explanation",
    "explanation_terms",
    "needs_inputs",
    "spec_fields",
    "for_backbone",
    "get",
    "grouping",
    "hierarchical",
    "loss_weights",
    "sync",
    "weighted_loss",
]
