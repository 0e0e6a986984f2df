"""Optimisers and learning-rate schedules of ``config.optimizer`` / ``config.schedule``.

Every optimiser number is injected into the optimiser state (``optax.inject_hyperparams``), so a sweep
can vmap over it; the learning rate is overwritten every step with ``hparams["lr"] * factor(step)``.
"""

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import optax

from jinterp.checks import check_choice
from jinterp.train.config import OPTIMIZERS, SCHEDULES


def _sgd(learning_rate, momentum, weight_decay, nesterov=False):
    """torch.optim.SGD semantics: weight decay added to the gradient before momentum (sync paper §IV-A5)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def _adam(learning_rate, b1, b2, eps, weight_decay):
    """torch.optim.Adam semantics: L2 weight decay added to the gradient (HICCNN §4 uses 0)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    )


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimiser of ``config.optimizer``, its numbers injected into the state (vmappable).

    ``name``: ``adam`` (HICCNN §4: Adam, lr 1e-4), ``sgd`` (sync paper §IV-A5: momentum 0.9, weight decay
    5e-4, lr 0.01) or ``adamw`` (quickstart). The learning rate is overwritten every step with
    ``hparams["lr"] * schedule(step)`` (see :func:`lr_factor`).
    """
    check_choice("config.optimizer.name", opt.name, OPTIMIZERS)
    wd = float(opt.get("weight_decay", 0.0))
    if opt.name == "sgd":
        return optax.inject_hyperparams(_sgd, static_args=("nesterov",))(
            learning_rate=1.0,
            momentum=float(opt.get("momentum", 0.9)),
            weight_decay=wd,
            nesterov=bool(opt.get("nesterov", False)),
        )
    b1, b2, eps = float(opt.get("b1", 0.9)), float(opt.get("b2", 0.999)), float(opt.get("eps", 1e-8))
    if opt.name == "adam":
        return optax.inject_hyperparams(_adam)(learning_rate=1.0, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    return optax.inject_hyperparams(optax.adamw)(learning_rate=1.0, b1=b1, b2=b2, eps=eps, weight_decay=wd)


def lr_factor(sched: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
    """``factor(step, hparams) -> multiplier of the base learning rate`` (jnp; traced step).

    ``name``:
      * ``constant``.
      * ``warmup_cosine``: linear warm-up over ``warmup_steps`` from 0, then cosine to ``end_factor`` at
        ``hparams["total_steps"]`` (an array, so a wall-clock budget can set it without a recompile).
      * ``step``: ``factor ** #{b in boundaries_epochs : epoch >= b}`` (sync paper §IV-A5: 0.1 at
        epochs 50, 75, 90 of 100), ``optax.piecewise_constant_schedule`` at ``b * steps_per_epoch``.
      * ``exponential_step``: ``factor ** floor(epoch / every_epochs)`` (HICCNN §4: x0.8 every 100
        epochs), ``optax.exponential_decay(staircase=True)``.
    Epochs are counted in steps with ``steps_per_epoch`` (fractional epochs floor, like torch's StepLR
    stepped once per epoch).
    """
    check_choice("config.schedule.name", sched.name, SCHEDULES)
    per_epoch = max(int(steps_per_epoch), 1)
    if sched.name == "constant":
        return lambda step, hp: jnp.ones((), jnp.float32)
    if sched.name == "warmup_cosine":
        return _warmup_cosine(float(sched.get("warmup_steps", 0)), float(sched.get("end_factor", 0.0)))
    if sched.name == "step":
        scales = {}
        for b in sched.boundaries_epochs:  # coinciding boundaries multiply, as they count twice
            scales[int(b) * per_epoch] = scales.get(int(b) * per_epoch, 1.0) * float(sched.factor)
        schedule = optax.piecewise_constant_schedule(1.0, scales)
    else:
        every = int(sched.every_epochs)
        if every <= 0:
            raise ValueError(f"config.schedule.every_epochs: expected a positive int, got {every}")
        schedule = optax.exponential_decay(1.0, every * per_epoch, float(sched.factor), staircase=True)
    return lambda step, hp: jnp.asarray(schedule(step), jnp.float32)


def _warmup_cosine(warmup: float, end: float) -> Callable:
    def factor(step, hp):
        step = step.astype(jnp.float32)
        up = jnp.minimum((step + 1.0) / max(warmup, 1.0), 1.0) if warmup > 0 else 1.0
        frac = jnp.clip((step - warmup) / jnp.maximum(hp["total_steps"] - warmup, 1.0), 0.0, 1.0)
        return up * (end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

    return factor
