"""Orbax checkpoints of a run under ``<workdir>/checkpoints``: the state plus a small JSON ``meta``.

Restored into an abstract target built from the current model (shapes, dtypes, shardings), after
checking that the stored tree and meta match it; a mismatch is refused and nothing is overwritten.

A checkpoint that does not restore (truncated or overwritten array files, a missing item, garbage
metadata: any Orbax / TensorStore / JSON failure) is skipped: :meth:`Checkpoints.restore` walks back
from the latest step to the newest one that restores cleanly, saying which it skipped and why (one line
each, naming the path). Nothing is deleted or overwritten at restore; if training later reaches the
step of an unreadable checkpoint, that directory is first moved to ``<workdir>/checkpoints_unreadable/``.
If none restores, :class:`UnreadableCheckpointError` lists them all (a corrupted run never silently
restarts from scratch).
"""

import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from jinterp.train.state import TrainState

META_KEYS = ("model", "num_classes", "losses", "optimizer", "points")


class IncompatibleCheckpointError(ValueError):
    """The checkpoint in the workdir was written by a different model or configuration."""


class UnreadableCheckpointError(ValueError):
    """No checkpoint in the workdir restores (each one is corrupt or incomplete)."""


def _closed_loop_noise(unraisable) -> bool:
    e = unraisable.exc_value
    return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


def quiet_closed_loop_callbacks() -> None:
    """After a failed Orbax restore, TensorStore futures still pending complete later and call back
    into the event loop Orbax already closed; Python then prints an "Event loop is closed" traceback
    (an unraisable exception) around the real error. Drop exactly those; everything else still goes
    to the previous ``sys.unraisablehook``. Installed once, on the first failed restore."""
    previous = sys.unraisablehook
    if getattr(previous, "_jinterp_quiet", False):
        return

    def hook(unraisable):
        if not _closed_loop_noise(unraisable):
            previous(unraisable)

    hook._jinterp_quiet = True
    sys.unraisablehook = hook


def fingerprint(tree) -> list[float]:
    """Per-leaf sums of ``|x|`` (float64, on the host, from this process's copy of each array): written
    into ``meta`` at save and compared at restore, so array files overwritten with bytes of the right
    length (which TensorStore reads without complaint) do not restore silently."""
    out = []
    for x in jax.tree.leaves(tree):
        a = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        out.append(float(np.abs(a.astype(np.float64)).sum()))
    return out


def failure_reason(e: BaseException) -> str:
    """One line for an Orbax / TensorStore failure: the type and first line of the innermost cause
    (TensorStore wraps the useful part, e.g. "OUT_OF_RANGE: Error reading ..."), without its spec dump."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    for cut in (" [tensorstore_spec", " See full TensorStore details"):
        text = text.split(cut)[0]
    return f"{type(e).__name__}: {text[:240]}"


class Checkpoints:
    """Orbax ``CheckpointManager`` under ``<workdir>/checkpoints``: ``state`` + a small JSON ``meta``."""

    def __init__(self, workdir: str, keep: int = 2, asynchronous: bool = True, log=None):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")  # Orbax needs absolute paths
        self.log = log if log is not None else sys.stderr
        self.unreadable: dict[int, str] = {}  # step -> why it did not restore
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
                ),
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
            )
        except Exception as e:  # e.g. an unreadable directory or a file in its place
            raise ValueError(f"checkpoint: cannot open {self.directory} ({failure_reason(e)})") from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Save ``step`` (a step already on disk is kept as it is, unless it was found unreadable: that
        one is moved to ``<workdir>/checkpoints_unreadable/`` first)."""
        if step in self.unreadable:
            self._move_aside(step)
        if step in (self.manager.all_steps() or []):
            return
        meta = {**meta, "fingerprint": fingerprint(state)}
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def _move_aside(self, step: int) -> None:
        self.manager.wait_until_finished()
        aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
        os.makedirs(aside, exist_ok=True)
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):
            target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
        print(f"checkpoint: moved unreadable {self.directory}/{step} to {target} (kept)", file=self.log)
        del self.unreadable[step]
        self.manager.reload()

    def restore(self, abstract_state: TrainState, meta: dict) -> TrainState | None:
        """The newest state that restores cleanly into ``abstract_state``'s structure and shardings, or
        None when there is no checkpoint. Unreadable newer checkpoints are skipped with one line each
        (path and reason) to ``log``; nothing is deleted.

        Raises:
          IncompatibleCheckpointError: the stored tree (names, shapes) or meta (model) differs.
          UnreadableCheckpointError: there are checkpoints, and none restores.
        """
        steps = sorted(self.manager.all_steps() or [], reverse=True)
        for step in steps:
            where = f"{self.directory}/{step}"
            try:
                state = self._restore_step(step, abstract_state, meta, where)
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # Orbax / TensorStore / JSON raise many types for a damaged checkpoint
                quiet_closed_loop_callbacks()
                self.unreadable[step] = failure_reason(e)
                print(
                    f"checkpoint: skipping {where}, it does not restore ({self.unreadable[step]}); "
                    "trying an older one (nothing deleted)",
                    file=self.log,
                    flush=True,
                )
                continue
            if self.unreadable:
                print(f"checkpoint: restored {where}", file=self.log, flush=True)
            return state
        if steps:
            listed = "; ".join(f"{self.directory}/{s}: {r}" for s, r in self.unreadable.items())
            raise UnreadableCheckpointError(
                f"checkpoint: no checkpoint in {self.directory} restores ({listed}); nothing was deleted: "
                "move them away to start afresh, or use a fresh --workdir"
            )
        return None

    def _restore_step(self, step: int, abstract_state: TrainState, meta: dict, where: str) -> TrainState:
        stored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(stored, dict):
            raise ValueError(f"meta is a {type(stored).__name__}, expected a JSON object")
        for key in META_KEYS:
            if stored.get(key) != meta.get(key):
                raise IncompatibleCheckpointError(
                    f"checkpoint {where} was written with {key}={stored.get(key)!r}, this config has "
                    f"{key}={meta.get(key)!r}; use a fresh --workdir (nothing was overwritten)"
                )
        tree = self.manager.item_metadata(step)["state"]
        if tree is None:
            raise ValueError("its 'state' item is missing")
        check_tree_compatible(getattr(tree, "tree", tree), abstract_state, where)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]
        want = stored.get("fingerprint")
        if want is not None:
            got = fingerprint(restored)
            if len(got) != len(want) or not np.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True):
                raise ValueError("its arrays do not match the fingerprint saved with them (overwritten?)")
        return restored

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints kept in ``workdir``, ascending."""
    checkpoints = Checkpoints(workdir, asynchronous=False)
    try:
        return sorted(int(s) for s in checkpoints.manager.all_steps())
    finally:
        checkpoints.close()


def _restore_raw(workdir: str, step: int | None) -> dict:
    """The stored train state of ``step`` (default: the latest) as a plain tree, whatever its optimiser."""
    checkpoints = Checkpoints(workdir, asynchronous=False)
    try:
        steps = [int(s) for s in checkpoints.manager.all_steps()]
        if step is not None and step not in steps:
            raise ValueError(
                f"step: no checkpoint at step {step} in {checkpoints.directory}; have {sorted(steps)}"
            )
        step = checkpoints.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"config.train.init_from: no checkpoint in {checkpoints.directory}")
        raw = checkpoints.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        checkpoints.close()
    return raw["state"]


def restore_variables(workdir: str, step: int | None = None) -> dict:
    """``{"params", "batch_stats"}`` of the latest checkpoint in ``workdir`` (or of ``step``), whatever its
    optimiser and losses (``config.train.init_from``: continue from a trained model with another recipe).

    Raises:
      ValueError: ``workdir`` holds no checkpoint, or none at ``step``.
    """
    state = _restore_raw(workdir, step)
    return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


def restore_loss_state(workdir: str, step: int | None = None) -> dict:
    """``{loss name: state}`` (e.g. icCNN's learned ``groups``) of the latest checkpoint (or ``step``)."""
    return dict(_restore_raw(workdir, step).get("loss_state", {}) or {})


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
