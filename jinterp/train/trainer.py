"""Model, optimiser, losses, mesh and the jitted steps of one config (everything but the loop).

>>> trainer = Trainer(config)                        # model, optimiser, losses, mesh of a config
>>> state = trainer.init_state(total_steps)          # TrainState, replicated over the ``data`` mesh axis
>>> state, metrics = trainer.train_step(state, batch)   # jitted once, state donated

Every number a sweep may vary lives in the state as an array (``state.hparams``: base learning rate,
loss weights, total steps; optimiser numbers in ``opt_state.hyperparams`` via
``optax.inject_hyperparams``), so the same compiled step can be ``vmap``-ed over a stack of states
(``points``) and a wall-clock budget can fix the schedule length without a recompile.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jinterp import backbones, losses
from jinterp.checks import check_choice
from jinterp.data import feed
from jinterp.ops.spec import bind
from jinterp.train import optim, parallel, recluster, step
from jinterp.train import state as state_lib
from jinterp.train.checkpoint import check_tree_compatible
from jinterp.train.config import num_classes


def build_losses(config_losses) -> tuple:
    """Loss specs from ``config.losses`` (``{name: {field: value}}``, names of ``jinterp.losses.LOSSES``);
    fields and their types checked as for a spec string (:func:`jinterp.ops.spec.bind`)."""
    specs = []
    for name, cfg in (config_losses or {}).items():
        check_choice("config.losses", name, losses.LOSSES)
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        specs.append(losses.LOSSES[name](**bind(f"config.losses.{name}", name, losses.LOSSES[name], options)))
    return tuple(specs)


def computed_terms(specs: tuple, points) -> tuple:
    """``specs`` with every weight that a sweep point sets but the config leaves at 0 switched on (1.0).

    A spec skips a term whose weight is 0 (HICCNN's ``hier_weight``, icCNN's ``multi_weight``); the train
    step weights the terms with ``state.hparams["loss_weights"]`` (the config's 0 for the base point), so
    switching the term on here only makes it computed where a point needs it.
    """
    fields = {tuple(path.split(".")[1:]) for p in points or () for path in p if path.startswith("losses.")}
    out = []
    for spec in specs:
        off = {f: 1.0 for name, f in fields if name == spec.name and not getattr(spec, f)}
        try:
            out.append(dataclasses.replace(spec, **off) if off else spec)
        except ValueError as e:
            raise ValueError(
                f"sweep point: losses.{spec.name}.{sorted(off)} cannot be swept from 0: {e}"
            ) from None
    return tuple(out)


class Trainer:
    """The compiled pieces of one run.

    Args:
      config: a run config (see ``configs/common.py``).
      points: optional list of config overrides ``{path: number}`` whose paths all satisfy
        :func:`jinterp.train.is_vmappable`: the state gets a leading axis of ``len(points)`` and every
        step runs over it (one compiled program for a numeric sweep).
      num_classes_: number of classes (default :func:`jinterp.train.num_classes`).
    """

    def __init__(
        self, config: ml_collections.ConfigDict, points: list[dict] | None = None, num_classes_=None
    ):
        self.config = config
        self.points = points
        self.num_classes = int(num_classes_ or num_classes(config))
        model_kwargs = dict(config.model.get("kwargs", {}) or {})
        self.model = backbones.create(config.model.name, num_classes=self.num_classes, **model_kwargs)
        self.tx = optim.make_optimizer(config.optimizer)
        self.loss_specs = build_losses(config.get("losses", {}))  # as configured: they seed the weights
        self.specs = computed_terms(self.loss_specs, points)  # what the step computes
        self.batch_keys = tuple(dict.fromkeys(s.mask for s in self.specs if losses.needs_inputs(s)))
        self.mesh = parallel.make_mesh(int(config.get("num_devices", 0) or 0))
        self.batch_size = int(config.train.batch_size)
        if self.batch_size % self.mesh.devices.size:
            raise ValueError(
                f"config.train.batch_size: expected a multiple of the {self.mesh.devices.size} devices, "
                f"got {self.batch_size}"
            )
        self.repl = parallel.replicated(self.mesh)
        self.image_size = int(config.data.get("image_size", 64))
        self.steps_per_epoch = 1
        strategy = parallel.resolve_sweep_strategy(config)
        self.sweep_strategy = strategy if strategy in ("vmap", "map") else "vmap"  # stacked states need one
        self._hooks = {}
        self._build_steps()

    def _build_steps(self):
        factor = optim.lr_factor(self.config.schedule, self.steps_per_epoch)
        train_step = step.make_train_step(self.model, self.tx, self.specs, factor)
        eval_step = step.make_eval_step(self.model)
        if self.points is not None:
            train_step = parallel.over_points(train_step, self.sweep_strategy)
            eval_step = parallel.over_points(eval_step, "vmap")
        data = parallel.batch_sharded(self.mesh)
        self.train_step = jax.jit(
            train_step, in_shardings=(self.repl, data), out_shardings=(self.repl, self.repl), donate_argnums=0
        )
        self.eval_step = jax.jit(eval_step, in_shardings=(self.repl, data), out_shardings=self.repl)

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Epoch-based schedules need the epoch length (known once the data are); rebuilds the steps."""
        if steps_per_epoch != self.steps_per_epoch:
            self.steps_per_epoch = int(steps_per_epoch)
            self._build_steps()

    def out_shapes(self) -> dict[str, tuple[int, ...]]:
        return backbones.layer_shapes(self.model, self.image_size)

    def init_state(self, total_steps: int = 1) -> state_lib.TrainState:
        """Fresh state (stacked over sweep points if any, in one compiled call), replicated over the mesh."""
        hps = state_lib.point_hparams(self.config, self.loss_specs, total_steps, self.points)
        keys = [jax.random.PRNGKey(int(hp.pop("seed"))) for hp in hps]  # raw uint32 keys: arrays for Orbax
        init = state_lib.make_init(
            self.model, self.tx, self.specs, self.image_size, self.out_shapes(), self.config.optimizer.name
        )
        if self.points is None:
            return jax.jit(init, out_shardings=self.repl)(keys[0], hps[0])
        return jax.jit(jax.vmap(init), out_shardings=self.repl)(jnp.stack(keys), state_lib.stack(hps))

    def abstract_state(self, total_steps: int = 1) -> state_lib.TrainState:
        """Shapes, dtypes and shardings of :meth:`init_state` (restore target), computed without FLOPs."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.repl),
            jax.eval_shape(lambda: self.init_state(total_steps)),
        )

    def with_variables(self, state, variables: dict):
        """``state`` with ``params`` / ``batch_stats`` taken from ``variables`` (every sweep point alike).

        Raises:
          IncompatibleCheckpointError: a name or shape differs from this model's.
        """
        abstract = {"params": state.params, "batch_stats": state.batch_stats}
        if self.points is not None:
            abstract = jax.tree.map(lambda x: x[0], abstract)
        check_tree_compatible(variables, abstract, "config.train.init_from")
        new = jax.tree.map(
            lambda a, x: jnp.broadcast_to(jnp.asarray(x, a.dtype), a.shape),
            {"params": state.params, "batch_stats": state.batch_stats},
            variables,
        )
        new = jax.device_put(new, self.repl)
        return state.replace(params=new["params"], batch_stats=new["batch_stats"])

    def meta(self) -> dict:
        """What a checkpoint must match to be resumed by this trainer."""
        return {
            "model": self.config.model.name,
            "num_classes": self.num_classes,
            "losses": sorted(spec.name for spec in self.specs),
            "optimizer": self.config.optimizer.name,
            "points": None if self.points is None else len(self.points),
        }

    def hooks(self, specs, phase: int) -> tuple:
        """The compiled re-clustering functions of ``specs`` for ``phase`` (built once per set and phase)."""
        key = (tuple(s.name for s in specs), phase)
        if key not in self._hooks:
            stacked = self.points is not None
            self._hooks[key] = recluster.compile_hooks(self.model, specs, self.mesh, stacked, phase)
        return self._hooks[key]

    def run_epoch_hooks(self, state, data: feed.Data, train_epoch: int):
        """Re-cluster before training epoch ``train_epoch``: every schedule epoch up to it, clustering-only
        ones included (see :mod:`.recluster`)."""
        return recluster.before_training_epoch(self, state, data, train_epoch)

    def evaluate(self, state, data: feed.Data, split: str = "test") -> dict:
        """Accuracy and mean loss over a whole split (partial last batch padded and masked)."""
        size = int(self.config.train.get("eval_batch_size", 0) or self.batch_size)
        size -= size % self.mesh.devices.size
        hosts, totals = jax.process_count(), None
        for batch in data.ordered(split, size, jax.process_index(), hosts, drop_remainder=False):
            sums = self.eval_step(state, feed.shard_batch(feed.pad_batch(batch, size // hosts), self.mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = np.maximum(totals["count"], 1)
        return {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count}
