"""Saving and loading a trained CLAM with Orbax: the arrays as a PyTree item, the configs as JSON.

A checkpoint is a directory (``path``) written by ``orbax.checkpoint`` with two items: ``arrays``
(``{"icp": (K, P, P), "params": [per-layer dict]}``, Orbax's standard PyTree format) and ``config``
(JSON: format tag, base explainer, one ``ClaLayerConfig`` per layer). No pickle, no hand-written files.
"""

import dataclasses
import os

import jax
import orbax.checkpoint as ocp

from jinterp.explain.clam.layers import ClaLayerConfig, Clam

FORMAT = "jinterp.explain.clam/1"


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(clam: Clam, path: str) -> None:
    """Write a trained CLAM to the directory ``path`` (replaced if it exists)."""
    path = os.path.abspath(path)  # Orbax needs absolute paths
    arrays = {"icp": clam.icp, "params": list(clam.params)}
    config = {"format": FORMAT, "base": clam.base, "configs": [dataclasses.asdict(c) for c in clam.configs]}
    with _checkpointer() as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), config=ocp.args.JsonSave(config)),
            force=True,
        )


def _abstract(tree_metadata):
    """Restore target: every stored leaf's shape and dtype, placed on this process's default device."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    tree = getattr(tree_metadata, "tree", tree_metadata)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)


def load(path: str) -> Clam:
    """Read a CLAM written by :func:`save`.

    Raises:
      ValueError: naming ``path`` if it is missing, empty or not a CLAM checkpoint.
    """
    hint = "train one with jinterp.explain.clam.fit and save()"
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint: no CLAM checkpoint directory at {path!r}; {hint}")
    path = os.path.abspath(path)
    try:
        with _checkpointer() as ckptr:
            stored = ckptr.metadata(path).item_metadata["arrays"]
            restored = ckptr.restore(
                path,
                args=ocp.args.Composite(
                    arrays=ocp.args.StandardRestore(_abstract(stored)), config=ocp.args.JsonRestore()
                ),
            )
        config, arrays = restored["config"], restored["arrays"]
        if config.get("format") != FORMAT:
            raise ValueError(f"format tag {config.get('format')!r}, expected {FORMAT!r}")
        configs = tuple(ClaLayerConfig(**c) for c in config["configs"])
        params = tuple(arrays["params"])
        if len(params) != len(configs):
            raise ValueError(f"{len(params)} parameter sets for {len(configs)} layer configs")
        return Clam(configs, params, arrays["icp"], config["base"])
    except Exception as e:  # Orbax raises several types (missing items, bad metadata, JSON errors)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ValueError(
            f"checkpoint: {path!r} is not a CLAM checkpoint written by save() ({reason}); {hint}"
        ) from e
