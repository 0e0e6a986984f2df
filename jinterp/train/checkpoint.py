"""Orbax checkpoints of a run under ``<workdir>/checkpoints``: the state plus a small JSON ``meta``.

Restored into an abstract target built from the current model (shapes, dtypes, shardings), after
checking that the stored tree and meta match it; a mismatch is refused and nothing is overwritten.
"""

import os

import jax
import orbax.checkpoint as ocp

from jinterp.train.state import TrainState

META_KEYS = ("model", "num_classes", "losses", "optimizer", "points")


class IncompatibleCheckpointError(ValueError):
    """The checkpoint in the workdir was written by a different model or configuration."""


class Checkpoints:
    """Orbax ``CheckpointManager`` under ``<workdir>/checkpoints``: ``state`` + a small JSON ``meta``."""

    def __init__(self, workdir: str, keep: int = 2, asynchronous: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")  # Orbax needs absolute paths
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
            ),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        if step in (self.manager.all_steps() or []):
            return
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def restore(self, abstract_state: TrainState, meta: dict) -> TrainState | None:
        """Latest state restored into ``abstract_state``'s structure and shardings, or None.

        Raises:
          IncompatibleCheckpointError: the stored tree (names, shapes) or meta (model) differs.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        where = f"{self.directory}/{step}"
        stored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        for key in META_KEYS:
            if stored.get(key) != meta.get(key):
                raise IncompatibleCheckpointError(
                    f"checkpoint {where} was written with {key}={stored.get(key)!r}, this config has "
                    f"{key}={meta.get(key)!r}; use a fresh --workdir (nothing was overwritten)"
                )
        tree = self.manager.item_metadata(step)["state"]
        check_tree_compatible(getattr(tree, "tree", tree), abstract_state, where)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_variables(workdir: str) -> dict:
    """``{"params", "batch_stats"}`` of the latest checkpoint in ``workdir``, whatever its optimiser and
    losses (``config.train.init_from``: continue from a trained model with another recipe).

    Raises:
      ValueError: ``workdir`` holds no checkpoint.
    """
    checkpoints = Checkpoints(workdir, asynchronous=False)
    try:
        step = checkpoints.latest_step()
        if step is None:
            raise ValueError(f"config.train.init_from: no checkpoint in {checkpoints.directory}")
        raw = checkpoints.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        checkpoints.close()
    return {"params": raw["state"]["params"], "batch_stats": raw["state"].get("batch_stats", {})}


def _path_str(path) -> str:
    keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return "/".join(str(k) for k in keys)


def check_tree_compatible(stored, abstract_state: TrainState, where: str) -> None:
    """Raise IncompatibleCheckpointError naming the first leaf whose path or shape differs."""
    # Orbax stores dataclass fields and namedtuples as dict keys: compare on '/'-joined key names.
    want = {_path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
    leaves = jax.tree_util.tree_leaves_with_path(stored, is_leaf=lambda x: hasattr(x, "shape"))
    got = {_path_str(p): tuple(x.shape) for p, x in leaves}
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            raise IncompatibleCheckpointError(
                f"checkpoint {where} does not match this model: {k} is {got.get(k, 'missing')} in the "
                f"checkpoint and {want.get(k, 'missing')} in the model; use a fresh --workdir "
                "(nothing was overwritten)"
            )
