"""Between-epoch re-clustering of the interpretability losses (icCNN / HICCNN filter groups).

Statistics come from eval-mode forward passes over ``config.train.hook_batches`` full training batches
in a fixed order (0: the whole split, as the icCNN code does), so they depend only on the state: a
resumed run re-clusters exactly like an uninterrupted one. A loss re-clusters in
``spec.recluster_phases`` passes (HICCNN: deep groups, eq. 9 refinement, shallow groups under the new
regions), each pass gathering its statistics under the state the previous phase left.

Epochs are counted on the losses' schedule: with ``cluster_only`` (icCNN's reference code, notes §1)
an epoch in which a loss re-clusters runs no training step, so training epoch ``t`` is schedule epoch
:func:`schedule_epoch` ``(specs, t)``, and the learning-rate schedule counts training epochs only (the
reference calls ``scheduler.step()`` in training epochs only).
"""

import jax
import jax.numpy as jnp

from jinterp.data import feed
from jinterp.train import parallel


def compile_hooks(model, specs, mesh, stacked: bool, phase: int):
    """Jitted ``(update(stats, state, images, labels), recluster(loss_state, stats, key))`` for ``specs``."""

    def update(stats, state, images, labels):
        out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)[1]
        return {
            s.name: s.update_stats(stats[s.name], out, labels, state.loss_state[s.name], phase) for s in specs
        }

    def recluster(loss_state, stats, key):
        new = {s.name: s.recluster(loss_state[s.name], stats[s.name], key, phase) for s in specs}
        return {**loss_state, **new}

    if stacked:
        update = jax.vmap(update, in_axes=(0, 0, None, None))
        recluster = jax.vmap(recluster, in_axes=(0, 0, None))
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return (
        jax.jit(update, in_shardings=(repl, repl, data, data), out_shardings=repl),
        jax.jit(recluster, out_shardings=repl),
    )


def is_cluster_only(specs, epoch: int) -> bool:
    """True when schedule epoch ``epoch`` only re-clusters (a ``cluster_only`` loss re-clusters in it)."""
    return any(s.cluster_only and s.reclusters_at(epoch) for s in specs)


def schedule_epoch(specs, train_epoch: int) -> int:
    """The schedule epoch in which training epoch ``train_epoch`` runs (-1 for ``train_epoch`` < 0)."""
    epoch, trained = -1, -1
    while trained < train_epoch:
        epoch += 1
        trained += not is_cluster_only(specs, epoch)
    return epoch


def before_training_epoch(trainer, state, data: feed.Data, train_epoch: int):
    """Run every schedule epoch's re-clustering from the one after training epoch ``train_epoch - 1``
    up to the one training epoch ``train_epoch`` runs in (clustering-only epochs included)."""
    first = schedule_epoch(trainer.specs, train_epoch - 1) + 1
    for epoch in range(first, schedule_epoch(trainer.specs, train_epoch) + 1):
        state = recluster_due(trainer, state, data, epoch)
    return state


def recluster_due(trainer, state, data: feed.Data, epoch: int):
    """``state`` with every loss that ``reclusters_at(epoch)`` re-clustered, phase after phase."""
    due = [s for s in trainer.specs if s.reclusters_at(epoch)]
    key = jax.random.fold_in(jax.random.PRNGKey(int(trainer.config.seed) + 1), epoch)
    for phase in range(max((s.recluster_phases for s in due), default=0)):
        specs = [s for s in due if phase < s.recluster_phases]
        stats = _gather(trainer, state, data, specs, phase)
        _, recluster = trainer.hooks(specs, phase)
        phase_key = key if phase == 0 else jax.random.fold_in(key, phase)
        state = state.replace(loss_state=recluster(state.loss_state, stats, phase_key))
    return state


def _gather(trainer, state, data: feed.Data, specs, phase: int) -> dict:
    """One pass of ``phase``'s statistics over the ordered training batches."""
    update, _ = trainer.hooks(specs, phase)
    shapes = trainer.out_shapes()
    stats = {s.name: s.init_stats(shapes, phase) for s in specs}
    if trainer.points is not None:
        stats = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(trainer.points), *x.shape)), stats)
    stats = jax.device_put(stats, trainer.repl)
    limit = int(trainer.config.train.get("hook_batches", 0) or 0)
    batches = data.ordered("train", trainer.batch_size, jax.process_index(), jax.process_count())
    for i, batch in enumerate(batches):
        if limit and i >= limit:
            break
        b = feed.shard_batch(feed.image_label(batch), trainer.mesh)
        stats = update(stats, state, b["image"], b["label"])
    return stats
