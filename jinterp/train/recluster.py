"""Between-epoch re-clustering of the interpretability losses (icCNN / HICCNN filter groups).

Statistics come from eval-mode forward passes over ``config.train.hook_batches`` full training batches
in a fixed order (0: the whole split, as the icCNN code does), so they depend only on the state: a
resumed run re-clusters exactly like an uninterrupted one.
"""

import jax
import jax.numpy as jnp

from jinterp.data import feed
from jinterp.train import parallel


def compile_hooks(model, specs, mesh, stacked: bool):
    """Jitted ``(update(stats, state, images, labels), recluster(loss_state, stats, key))`` for ``specs``."""

    def update(stats, state, images, labels):
        out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)[1]
        return {s.name: s.update_stats(stats[s.name], out, labels, state.loss_state[s.name]) for s in specs}

    def recluster(loss_state, stats, key):
        return {**loss_state, **{s.name: s.recluster(loss_state[s.name], stats[s.name], key) for s in specs}}

    if stacked:
        update = jax.vmap(update, in_axes=(0, 0, None, None))
        recluster = jax.vmap(recluster, in_axes=(0, 0, None))
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return (
        jax.jit(update, in_shardings=(repl, repl, data, data), out_shardings=repl),
        jax.jit(recluster, out_shardings=repl),
    )


def recluster_due(trainer, state, data: feed.Data, epoch: int):
    """``state`` with every loss that ``reclusters_at(epoch)`` re-clustered (before the epoch's 1st step)."""
    due = tuple(s.name for s in trainer.specs if s.reclusters_at(epoch))
    if not due:
        return state
    specs = [s for s in trainer.specs if s.name in due]
    update, recluster = trainer.hooks(due, specs)
    shapes = trainer.out_shapes()
    stats = {s.name: s.init_stats(shapes) for s in specs}
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
    key = jax.random.fold_in(jax.random.PRNGKey(int(trainer.config.seed) + 1), epoch)
    return state.replace(loss_state=recluster(state.loss_state, stats, key))
