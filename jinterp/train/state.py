"""The train state and how it is built: one PyTree per run, or stacked over numeric sweep points."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from jinterp import losses
from jinterp.checks import check_choice

# Config paths whose values live in the state as numbers, so a sweep can vmap over them.
VMAPPABLE = ("seed", "optimizer.lr", "optimizer.weight_decay", "optimizer.momentum")
VMAPPABLE_LOSS_WEIGHT = "losses.<name>.<weight field>"
OPTIMIZER_NUMBERS = ("weight_decay", "momentum")


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes.

    Attributes:
      step: () int32, number of optimiser steps taken.
      params, batch_stats: Flax variable collections (``batch_stats`` is ``{}`` for BN-free models).
      opt_state: optax state; its ``hyperparams`` hold the current learning rate (and weight decay,
        momentum) as arrays (``optax.inject_hyperparams``).
      rng: PRNG key; step ``s`` uses ``fold_in(rng, s)`` (dropout), so resuming is exact.
      loss_state: ``{loss name: state}`` carried by the interpretability losses (EMA maps, filter groups).
      hparams: ``{"lr": base learning rate, "total_steps": schedule length, "loss_weights": {name: w}}``
        as float32 arrays, so a sweep can vmap over them.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    loss_state: Any
    hparams: Any


def is_vmappable(path: str) -> bool:
    """True for config paths whose values live in the train state as numbers."""
    if path in VMAPPABLE:
        return True
    parts = path.split(".")
    return len(parts) == 3 and parts[0] == "losses" and parts[2] in losses.WEIGHT_FIELDS.values()


def point_hparams(config: ml_collections.ConfigDict, specs, total_steps: int, points) -> list[dict]:
    """The numbers of each state: config values, overridden by each sweep point (``[base]`` without).

    Every point carries the same keys (an optimiser number one point sets comes from the config for the
    others), so the points stack into one vmappable tree.
    """
    base = {
        "seed": int(config.seed),
        "lr": float(config.optimizer.lr),
        "total_steps": float(total_steps),
        "loss_weights": losses.loss_weights(specs),
    }
    if points is None:
        return [base]
    set_anywhere = {path.rsplit(".", 1)[-1] for p in points for path in p if path in VMAPPABLE[2:]}
    base.update({k: float(config.optimizer[k]) for k in sorted(set_anywhere)})
    return [_override(base, point) for point in points]


def _override(base: dict, point: dict) -> dict:
    hp = {**base, "loss_weights": dict(base["loss_weights"])}
    for path, value in point.items():
        if not is_vmappable(path):
            raise ValueError(
                f"sweep point: {path!r} cannot be vmapped; "
                f"expected one of {(*VMAPPABLE, VMAPPABLE_LOSS_WEIGHT)}"
            )
        if path.startswith("losses."):
            key = path.split(".", 1)[1]
            check_choice("sweep point loss weight", key, hp["loss_weights"])
            hp["loss_weights"][key] = float(value)
        else:
            hp[path.rsplit(".", 1)[-1]] = value
    return hp


def make_init(model, tx, specs, image_size: int, shapes: dict, optimizer_name: str):
    """``init(key, hp) -> TrainState`` (pure: jit it, or vmap it over stacked keys and numbers)."""

    def init(key, hp):
        x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        init_key, state_key = jax.random.split(key)
        variables = model.init({"params": init_key, "dropout": init_key}, x)
        opt_state = tx.init(variables["params"])
        numbers = dict(opt_state.hyperparams)
        for k in OPTIMIZER_NUMBERS:
            if k in hp:
                if k not in numbers:
                    raise ValueError(f"sweep point: optimizer.{k} is not a {optimizer_name} hyper-parameter")
                numbers[k] = jnp.asarray(hp[k], numbers[k].dtype)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=opt_state._replace(hyperparams=numbers),
            rng=state_key,
            loss_state={spec.name: spec.init(shapes) for spec in specs},
            hparams={
                "lr": jnp.asarray(hp["lr"], jnp.float32),
                "total_steps": jnp.asarray(hp["total_steps"], jnp.float32),
                "loss_weights": {n: jnp.asarray(w, jnp.float32) for n, w in hp["loss_weights"].items()},
            },
        )

    return init


def stack(trees: list):
    """One tree with a leading axis over ``trees`` (identical structures)."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def with_total_steps(state: TrainState, total_steps: int) -> TrainState:
    """``state`` whose schedule ends at ``total_steps`` (every sweep point alike)."""
    hp = state.hparams
    return state.replace(hparams={**hp, "total_steps": jnp.full_like(hp["total_steps"], total_steps)})
