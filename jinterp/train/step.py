"""The pure per-batch functions: ``train_step(state, batch) -> (state, metrics)`` and ``eval_step``."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jinterp import losses
from jinterp.train.state import TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model, tx: optax.GradientTransformation, specs: tuple, factor: Callable):
    """Pure ``train_step(state, batch) -> (state, metrics)`` (batch: ``image`` (B,H,W,3), ``label`` (B,)).

    Loss = CE + the terms of ``specs`` (``jinterp.losses.apply``; explanation losses through
    ``jinterp.losses.explanation_terms``, which read the batch's masks) weighted by
    ``state.hparams["loss_weights"]``. Metrics are means over the global batch. The input state is not
    modified (the new learning rate goes into a new optimiser state).

    A step whose loss, gradient norm or update norm is not finite changes nothing but ``step`` (params,
    BatchNorm statistics, optimiser and loss state stay as they were: the batch is skipped) and reports
    ``metrics["nonfinite"] = 1``; ``train.nan_policy`` decides what the loop does about it
    (:class:`jinterp.train.actions.NonFiniteGuard`).
    """

    explainers = tuple(s for s in specs if losses.needs_inputs(s))

    def loss_fn(params, state, batch, rng):
        (logits, out), updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        ce = cross_entropy(logits, batch["label"])
        weights = state.hparams["loss_weights"]
        extra, loss_state, logs = losses.apply(specs, out, batch["label"], state.loss_state, weights=weights)
        if explainers:  # explanation losses: of the eval-mode model at the current parameters
            variables = {"params": params, "batch_stats": state.batch_stats}
            penalty, more = losses.explanation_terms(explainers, model, variables, batch, weights)
            extra, logs = extra + penalty, {**logs, **more}
        batch_stats = updates.get("batch_stats", state.batch_stats)
        return ce + extra, (logits, batch_stats, loss_state, {"loss/ce": ce, **logs})

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, batch_stats, loss_state, logs)), grads = grad_fn(state.params, state, batch, rng)
        lr = state.hparams["lr"] * factor(state.step, state.hparams)
        numbers = state.opt_state.hyperparams
        opt_state = state.opt_state._replace(
            hyperparams={**numbers, "learning_rate": lr.astype(numbers["learning_rate"].dtype)}
        )
        updates, opt_state = tx.update(grads, opt_state, state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "lr": lr,
            "grad_norm": grad_norm,
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            **logs,
        }
        kept = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=kept(optax.apply_updates(state.params, updates), state.params),
            batch_stats=kept(batch_stats, state.batch_stats),
            opt_state=kept(opt_state, state.opt_state),
            loss_state=kept(loss_state, state.loss_state),
        )
        return new_state, metrics

    return train_step


def make_eval_step(model):
    """Pure ``eval_step(state, batch) -> sums`` (``valid`` (B,) masks padding of a last partial batch)."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        logits, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
        valid = batch["valid"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {
            "correct": jnp.sum(valid * (jnp.argmax(logits, -1) == batch["label"])),
            "loss_sum": jnp.sum(valid * nll),
            "count": jnp.sum(valid),
        }

    return eval_step
