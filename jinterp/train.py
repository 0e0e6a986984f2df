"""Training: a pure, data-parallel train step, Orbax checkpoints with exact resume, and the loop.

>>> trainer = Trainer(config)                        # model, optimiser, losses, mesh of a config
>>> state = trainer.init_state()                     # TrainState, replicated over the ``data`` mesh axis
>>> state, metrics = trainer.train_step(state, batch)   # jitted once, state donated
>>> summary = train_and_evaluate(config, workdir)    # the whole job (what ``launch.py --mode train`` runs)

Design (flax ``examples/imagenet``, big_vision ``train.py``):

* ``TrainState`` is a PyTree; ``train_step(state, batch) -> (state, metrics)`` is a pure function,
  jitted once with the state donated. The loss is cross-entropy plus the interpretability losses of
  ``config.losses`` (``jinterp.losses.LOSSES``), each weighted and logged.
* Every number a sweep may vary lives in the state as an array (``state.hparams``: base learning rate,
  loss weights, total steps; optimiser numbers in ``opt_state.hyperparams`` via
  ``optax.inject_hyperparams``), so the same compiled step can be ``vmap``-ed over a stack of states
  (``jinterp.sweep``) and a wall-clock budget can fix the schedule length without a recompile.
* Data parallelism: the global batch is split over a 1-D ``data`` mesh of all devices
  (``NamedSharding``), the state is replicated and XLA inserts the gradient all-reduce. Multi-host
  runs call ``jax.distributed.initialize()`` (``config.distributed=True``); each host loads
  ``batch_size // process_count`` examples and the global array is assembled with
  ``jax.make_array_from_process_local_data``.
* Checkpoints: ``orbax.checkpoint.CheckpointManager`` under ``<workdir>/checkpoints`` (absolute path),
  restored into an abstract target built from the current model. Data order is a pure function of
  ``(config.data.seed, step)`` and per-step randomness is ``fold_in(state.rng, step)``, so a resumed run
  sees exactly what an uninterrupted run would.
"""

import dataclasses
import functools
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jinterp import backbones
from jinterp.checks import check_choice

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "step", "exponential_step")
SWEEP_STRATEGIES = ("auto", "vmap", "map", "sequential")


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


# ------------------------------------------------------------------------------------------- config


def default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default (and so its type); configs start from this."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init and dropout
    c.num_devices = 0  # data-parallel devices (0: all)
    c.distributed = False  # multi-host: call jax.distributed.initialize() first

    c.model = ml_collections.ConfigDict()
    c.model.name = "small_cnn"  # jinterp.backbones.MODELS
    c.model.num_classes = 0  # 0: from the data set
    c.model.kwargs = ml_collections.ConfigDict()  # backbone constructor fields (e.g. head="gap")

    c.data = ml_collections.ConfigDict()
    c.data.name = "parts_world"  # jinterp.data.NAMES (``parts_world/<config>`` allowed)
    c.data.image_size = 64
    c.data.num_classes = 8
    c.data.train_size = 8000
    c.data.test_size = 2000
    c.data.data_seed = 0  # PartsWorld generation seed
    c.data.seed = 0  # batch order and augmentation: batch s = f(seed, s)
    c.data.augment = False
    c.data.normalize = "imagenet"
    c.data.data_dir = ""  # '' = $JINTERP_DATA_DIR or ~/tensorflow_datasets

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64  # global
    c.train.steps = 0  # > 0 wins over epochs
    c.train.epochs = 0.0
    c.train.time_budget_s = 0.0  # > 0: shorten the run to fit this wall-clock budget (from process start)
    c.train.time_reserve_s = 30.0  # budget kept for the final evaluation and outputs
    c.train.calibrate_steps = 20  # steps timed before the budget fixes the schedule length
    c.train.log_every = 50
    c.train.eval_every = 0  # 0: evaluate at the end only
    c.train.eval_split = "test"
    c.train.eval_batch_size = 256
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.hook_batches = 0  # batches per re-clustering pass (0: whole train split)
    c.train.sweep_strategy = "auto"  # numeric sweeps: vmap|map|sequential|auto (resolve_sweep_strategy)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adam | adamw | sgd
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9  # sgd
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "warmup_cosine"  # constant | warmup_cosine | step | exponential_step
    c.schedule.warmup_steps = 100
    c.schedule.end_factor = 0.0
    c.schedule.boundaries_epochs = (50, 75, 90)  # step
    c.schedule.factor = 0.1  # step, exponential_step
    c.schedule.every_epochs = 100  # exponential_step

    c.losses = ml_collections.ConfigDict()  # {name in jinterp.losses.LOSSES: {spec field: value}}

    c.outputs = ml_collections.ConfigDict()
    c.outputs.predictions_png = False

    # --mode evaluate / explain (launch.py): the trained model of the workdir on the test split.
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.methods = "grad_cam,grad_cam_pp,layer_cam,score_cam,cluster_cam"  # jinterp.explain specs
    c.evaluate.layer = ""  # '' = the model's last tappable layer
    c.evaluate.num_images = 512  # test images evaluated
    c.evaluate.num_explained = 64  # images explained per method
    return c


# Sub-dicts whose keys are free-form (backbone constructor fields; loss specs, checked by build_losses).
_FREE_FORM = ("model.kwargs", "losses")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError for a key that :func:`default_config` does not have, or a value of another type."""
    ref = default_config()

    def walk(node, ref_node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in _FREE_FORM:
                continue
            if key not in ref_node:
                raise ValueError(f"config: unknown key {path!r}; expected one of {sorted(ref_node.keys())}")
            want = ref_node[key]
            if isinstance(want, ml_collections.ConfigDict):
                if not isinstance(value, ml_collections.ConfigDict | dict):
                    raise ValueError(f"config.{path}: expected a dict of fields, got {value!r}")
                walk(value, want, path + ".")
            elif isinstance(want, bool) != isinstance(value, bool) or not isinstance(
                value, float | int if isinstance(want, float) else type(want)
            ):
                raise ValueError(f"config.{path}: expected {type(want).__name__}, got {value!r}")

    walk(config, ref, "")
    check_choice("config.optimizer.name", config.optimizer.name, OPTIMIZERS)
    check_choice("config.schedule.name", config.schedule.name, SCHEDULES)
    check_choice("config.model.name", config.model.name, backbones.MODELS)
    check_choice("config.train.sweep_strategy", config.train.sweep_strategy, SWEEP_STRATEGIES)
    for path in ("train.batch_size", "train.log_every", "train.eval_batch_size", "train.keep_checkpoints"):
        node = config
        for k in path.split("."):
            node = node[k]
        if node <= 0:
            raise ValueError(f"config.{path}: expected a positive integer, got {node}")
    if config.optimizer.lr <= 0:
        raise ValueError(f"config.optimizer.lr: expected > 0, got {config.optimizer.lr}")


# ------------------------------------------------------------------------------------------- optimiser


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
        epochs 50, 75, 90 of 100).
      * ``exponential_step``: ``factor ** floor(epoch / every_epochs)`` (HICCNN §4: x0.8 every 100 epochs).
    Epochs are counted in steps with ``steps_per_epoch`` (fractional epochs floor, like torch's StepLR
    stepped once per epoch).
    """
    check_choice("config.schedule.name", sched.name, SCHEDULES)
    name = sched.name
    if name == "constant":
        return lambda step, hp: jnp.ones((), jnp.float32)
    if name == "warmup_cosine":
        warmup = float(sched.get("warmup_steps", 0))
        end = float(sched.get("end_factor", 0.0))

        def warmup_cosine(step, hp):
            step = step.astype(jnp.float32)
            up = jnp.minimum((step + 1.0) / max(warmup, 1.0), 1.0) if warmup > 0 else 1.0
            frac = jnp.clip((step - warmup) / jnp.maximum(hp["total_steps"] - warmup, 1.0), 0.0, 1.0)
            return up * (end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

        return warmup_cosine
    epoch = lambda step: step // max(steps_per_epoch, 1)
    if name == "step":
        bounds = jnp.asarray(list(sched.boundaries_epochs), jnp.int32)
        return lambda step, hp: (
            jnp.float32(sched.factor) ** jnp.sum(epoch(step) >= bounds).astype(jnp.float32)
        )
    every = int(sched.every_epochs)
    if every <= 0:
        raise ValueError(f"config.schedule.every_epochs: expected a positive int, got {every}")
    return lambda step, hp: jnp.float32(sched.factor) ** (epoch(step) // every).astype(jnp.float32)


# ------------------------------------------------------------------------------------------- losses

# Log suffix of each unweighted term of a ``jinterp.losses`` spec -> the spec field that weights it.
# A spec's value is exactly sum_suffix spec.<field> * logs["<name>/<suffix>"] (checked in the tests); the
# train step recomputes that sum with the weights taken from ``state.hparams`` so sweeps can vmap them.
WEIGHT_FIELDS = {
    "group": "weight",
    "multi": "multi_weight",
    "hier": "hier_weight",
    "lac": "lac_weight",
    "sync": "sync_weight",
}


def build_losses(config_losses) -> tuple:
    """Loss specs from ``config.losses`` (``{name: {field: value}}``, names of ``jinterp.losses.LOSSES``)."""
    if not config_losses:
        return ()
    from jinterp import losses

    specs = []
    for name, cfg in config_losses.items():
        check_choice("config.losses", name, losses.LOSSES)
        fields = {f.name for f in dataclasses.fields(losses.LOSSES[name])}
        kwargs = dict(cfg)
        for k in kwargs:
            check_choice(f"config.losses.{name}", k, sorted(fields))
        specs.append(
            losses.LOSSES[name](**{k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()})
        )
    return tuple(specs)


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
            raise ValueError(f"loss {spec.name!r}: log {key!r} has no weight field in train.WEIGHT_FIELDS")
        total = total + weights[f"{spec.name}.{WEIGHT_FIELDS[suffix]}"] * value
    return total


VMAPPABLE = (
    "seed",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "losses.<name>.<weight field>",
)


def is_vmappable(path: str) -> bool:
    """True for config paths whose values live in the train state as numbers (see :class:`Trainer`)."""
    if path in VMAPPABLE[:4]:
        return True
    parts = path.split(".")
    return len(parts) == 3 and parts[0] == "losses" and parts[2] in WEIGHT_FIELDS.values()


# ------------------------------------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model, tx: optax.GradientTransformation, specs: tuple, factor: Callable):
    """Pure ``train_step(state, batch) -> (state, metrics)`` (batch: ``image`` (B,H,W,3), ``label`` (B,)).

    Loss = CE + sum over ``specs`` (``jinterp.losses``) of their terms weighted by
    ``state.hparams["loss_weights"]``. Metrics are means over the global batch.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            (logits, out), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            ce = cross_entropy(logits, batch["label"])
            total, logs, new_loss_state = ce, {"loss/ce": ce}, {}
            for spec in specs:
                _, new_loss_state[spec.name], term_logs = spec(
                    out, batch["label"], state.loss_state[spec.name]
                )
                value = weighted_loss(spec, term_logs, state.hparams["loss_weights"])
                total = total + value
                logs[f"loss/{spec.name}"] = value
                logs.update(term_logs)
            return total, (logits, updates.get("batch_stats", state.batch_stats), new_loss_state, logs)

        (loss, (logits, batch_stats, loss_state, logs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        lr = state.hparams["lr"] * factor(state.step, state.hparams)
        opt_state = state.opt_state
        opt_state.hyperparams["learning_rate"] = lr.astype(opt_state.hyperparams["learning_rate"].dtype)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "lr": lr,
            "grad_norm": optax.tree.norm(grads),
            **logs,
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            loss_state=loss_state,
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


# ------------------------------------------------------------------------------------------- sharding


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """1-D ``data`` mesh over the first ``num_devices`` devices (0: all devices of all hosts)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(
                f"config.num_devices: expected at most {len(devices)} devices, got {num_devices}"
            )
        devices = devices[:num_devices]
    # Auto axes: Linen convs fail under the default Explicit axis type (stack.md §3).
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
    """Host-local numpy batch -> global jax arrays split over the ``data`` axis."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------- data


class Data:
    """The training/eval data of a config, through ``jinterp.data.load`` (or any function like it).

    Args:
      cfg: ``config.data``: ``name``, ``seed`` (order and augmentation), ``augment``, ``normalize``,
        ``data_dir`` ('' = ``jinterp.data.default_data_dir()``), and data-set fields passed on to the
        loader (PartsWorld: ``image_size``, ``num_classes``, ``train_size``, ``test_size``, ``data_seed``).
      load: a function with the signature of ``jinterp.data.load`` (tests pass in-memory loaders).
      num_examples: ``num_examples(split) -> int`` (default: ``jinterp.data.info(...)["splits"]``).
    """

    LOADER_KEYS = ("name", "seed", "augment", "normalize", "data_dir")

    def __init__(self, cfg: ml_collections.ConfigDict, load: Callable | None = None, num_examples=None):
        self.cfg = cfg
        self.name = cfg.name
        self.fields = data_fields(cfg)
        self.data_dir = os.path.abspath(os.path.expanduser(cfg.data_dir)) if cfg.get("data_dir") else None
        if load is None:
            from jinterp import data

            load = data.load
            if num_examples is None:
                num_examples = functools.partial(
                    _info_num_examples, self.name, self.fields, data_dir=self.data_dir
                )
        self._load = load
        self._num_examples = num_examples

    def num_examples(self, split: str) -> int:
        return int(self._num_examples(split))

    def _common(self):
        return dict(
            seed=int(self.cfg.seed),
            normalize=self.cfg.get("normalize", "imagenet"),
            data_dir=self.data_dir,
            **self.fields,
        )

    def train(
        self, batch_size: int, start_step: int, host_id: int = 0, host_count: int = 1
    ) -> Iterator[dict]:
        """Shuffled, augmented, repeated batches from global step ``start_step`` on."""
        return self._load(
            self.name,
            "train",
            batch_size,
            start_step=start_step,
            augment=bool(self.cfg.get("augment", False)),
            host_id=host_id,
            host_count=host_count,
            **self._common(),
        )

    def ordered(
        self, split: str, batch_size: int, host_id: int = 0, host_count: int = 1, drop_remainder: bool = True
    ) -> Iterator[dict]:
        """One pass in index order, no augmentation: full batches (statistics for epoch hooks) or, with
        ``drop_remainder=False``, the whole split."""
        return self._load(
            self.name,
            split,
            batch_size,
            shuffle=False,
            repeat=False,
            drop_remainder=drop_remainder,
            augment=False,
            host_id=host_id,
            host_count=host_count,
            **self._common(),
        )

    def eval(self, split: str, batch_size: int, host_id: int = 0, host_count: int = 1) -> Iterator[dict]:
        """One pass over a whole split (last batch may be short), no augmentation."""
        return self.ordered(split, batch_size, host_id, host_count, drop_remainder=False)


def data_fields(cfg: ml_collections.ConfigDict) -> dict:
    """Data-set fields of ``config.data`` for the loader: all PartsWorld fields, else ``image_size`` only."""
    fields = {k: v for k, v in cfg.items() if k not in Data.LOADER_KEYS and v not in (None, "")}
    if not cfg.name.startswith("parts_world"):
        fields = {k: v for k, v in fields.items() if k == "image_size"}
    return fields


def _info_num_examples(name: str, fields: dict, split: str, data_dir: str | None = None) -> int:
    from jinterp import data

    splits = data.info(name, **fields).get("splits")
    if splits and split in splits:
        return splits[split]
    # data.info has no split sizes for non-PartsWorld sets: open the source (reads only its metadata).
    from jinterp.data import loader

    source = loader._source(name, split, data_dir or data.default_data_dir(), fields.get("image_size"), {})
    return len(source)


def prefetch(iterator: Iterator, transform: Callable, size: int = 2) -> Iterator:
    """Yield ``transform(x)`` for ``x`` in ``iterator``, computed ``size`` items ahead in a thread.

    Loading and sharding the next batch overlaps the current step (numpy releases the GIL); the order
    is unchanged, so determinism is kept.
    """
    items: queue.Queue = queue.Queue(maxsize=size)

    def worker():
        try:
            for x in iterator:
                items.put((True, transform(x)))
        except BaseException as e:  # surfaced in the consumer
            items.put((False, e))
        items.put((False, None))

    threading.Thread(target=worker, daemon=True).start()
    while True:
        ok, value = items.get()
        if not ok:
            if value is None:
                return
            raise value
        yield value


def _pad(batch: Mapping[str, np.ndarray], size: int) -> dict:
    """Pad a (possibly short) batch to ``size`` rows, adding a ``valid`` mask."""
    n = len(batch["label"])
    out = {"image": batch["image"], "label": batch["label"].astype(np.int32), "valid": np.ones(n, np.float32)}
    if n < size:
        out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in out.items()}
    return out


# ------------------------------------------------------------------------------------------- checkpoints


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
        stored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        for key in ("model", "num_classes", "losses", "optimizer", "points"):
            if stored.get(key) != meta.get(key):
                raise IncompatibleCheckpointError(
                    f"checkpoint {self.directory}/{step} was written with {key}={stored.get(key)!r}, this "
                    f"config has {key}={meta.get(key)!r}; use a fresh --workdir (nothing was overwritten)"
                )
        tree = self.manager.item_metadata(step)["state"]
        _check_tree_compatible(getattr(tree, "tree", tree), abstract_state, f"{self.directory}/{step}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _path_str(path) -> str:
    keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return "/".join(str(k) for k in keys)


def _check_tree_compatible(stored, abstract_state: TrainState, where: str) -> None:
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


# ------------------------------------------------------------------------------------------- trainer


def num_classes(config: ml_collections.ConfigDict) -> int:
    """``config.model.num_classes`` if set (> 0), else the data set's (``jinterp.data.num_classes``)."""
    n = int(config.model.get("num_classes", 0) or 0)
    if n > 0:
        return n
    from jinterp import data

    return int(data.num_classes(config.data.name, **data_fields(config.data)))


def resolve_sweep_strategy(config: ml_collections.ConfigDict) -> str:
    """How a numeric sweep runs: ``config.train.sweep_strategy``; ``auto`` = ``vmap`` on accelerators and
    ``sequential`` (one run per point) on CPU.

    Measured on the 2-core CPU (``benchmarks/train.py``, quickstart model, 4 points, 20 steps, with
    ``jinterp.xla_cpu``'s defaults): separate runs 0.90 s per step of all points; ``vmap`` 1.16 s (0.77x;
    the per-point kernels turn the convolutions into grouped ones) but 1.06x faster in total thanks to
    one compile instead of four (with YNNPACK fusion on, vmap was 3.25 s, 0.28x); ``lax.map`` 31 s
    (0.03x). On accelerators vmap fills the device with K small models at once, which is what it is for.
    """
    strategy = config.train.get("sweep_strategy", "auto")
    check_choice("config.train.sweep_strategy", strategy, SWEEP_STRATEGIES)
    if strategy == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def over_points(step_fn: Callable, strategy: str) -> Callable:
    """``step_fn(state, batch)`` over a leading sweep-point axis of ``state`` (same batch for every point):
    ``vmap`` batches the points into every op, ``map`` (``lax.map``) runs them one after another inside
    the compiled program (see :func:`resolve_sweep_strategy` for what each costs)."""
    if strategy == "vmap":
        return jax.vmap(step_fn, in_axes=(0, None))
    return lambda states, batch: jax.lax.map(lambda s: step_fn(s, batch), states)


class Trainer:
    """Model, optimiser, losses, mesh and the jitted steps of one config (everything but the loop).

    Args:
      config: a run config (see ``configs/common.py``).
      points: optional list of config overrides ``{path: number}`` whose paths all satisfy
        :func:`is_vmappable` (``seed``, ``optimizer.lr``, ``optimizer.weight_decay``,
        ``optimizer.momentum``, ``losses.<name>.<weight field>``): the state gets a leading axis of
        ``len(points)`` and every step is ``vmap``-ed over it (one compiled program for a numeric sweep).
      num_classes_: number of classes (default :func:`num_classes`).
    """

    def __init__(
        self, config: ml_collections.ConfigDict, points: list[dict] | None = None, num_classes_=None
    ):
        self.config = config
        self.points = points
        self.num_classes = int(num_classes_ or num_classes(config))
        model_kwargs = dict(config.model.get("kwargs", {}) or {})
        self.model = backbones.create(config.model.name, num_classes=self.num_classes, **model_kwargs)
        self.tx = make_optimizer(config.optimizer)
        self.specs = build_losses(config.get("losses", {}))
        self.mesh = make_mesh(int(config.get("num_devices", 0) or 0))
        gbs = int(config.train.batch_size)
        n_dev = self.mesh.devices.size
        if gbs % n_dev:
            raise ValueError(
                f"config.train.batch_size: expected a multiple of the {n_dev} devices, got {gbs}"
            )
        self.repl = NamedSharding(self.mesh, P())
        self.image_size = int(config.data.get("image_size", 64))
        self.steps_per_epoch = 1
        self._factor_config = config.schedule
        strategy = resolve_sweep_strategy(config)
        self.sweep_strategy = strategy if strategy in ("vmap", "map") else "vmap"  # stacked states need one
        self._build_steps()

    def _build_steps(self):
        factor = lr_factor(self._factor_config, self.steps_per_epoch)
        train_step = make_train_step(self.model, self.tx, self.specs, factor)
        eval_step = make_eval_step(self.model)
        if self.points is not None:
            train_step, eval_step = (
                over_points(train_step, self.sweep_strategy),
                over_points(eval_step, "vmap"),
            )
        data = NamedSharding(self.mesh, P("data"))
        self.train_step = jax.jit(
            train_step, in_shardings=(self.repl, data), out_shardings=(self.repl, self.repl), donate_argnums=0
        )
        self.eval_step = jax.jit(eval_step, in_shardings=(self.repl, data), out_shardings=self.repl)

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Epoch-based schedules need the epoch length (known once the data are); rebuilds the steps."""
        if steps_per_epoch != self.steps_per_epoch:
            self.steps_per_epoch = int(steps_per_epoch)
            self._build_steps()

    # -- state

    def out_shapes(self) -> dict[str, tuple[int, ...]]:
        return backbones.layer_shapes(self.model, self.image_size)

    def _init_one(self, key, hp):
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        init_key, state_key = jax.random.split(key)
        variables = self.model.init({"params": init_key, "dropout": init_key}, x)
        params = variables["params"]
        opt_state = self.tx.init(params)
        for k in ("weight_decay", "momentum"):
            if k in hp:
                if k not in opt_state.hyperparams:
                    raise ValueError(
                        f"sweep point: optimizer.{k} is not a {self.config.optimizer.name} hyper-parameter"
                    )
                opt_state.hyperparams[k] = jnp.asarray(hp[k], opt_state.hyperparams[k].dtype)
        shapes = self.out_shapes()
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=opt_state,
            rng=state_key,
            loss_state={spec.name: spec.init(shapes) for spec in self.specs},
            hparams={
                "lr": jnp.asarray(hp["lr"], jnp.float32),
                "total_steps": jnp.asarray(hp["total_steps"], jnp.float32),
                "loss_weights": {n: jnp.asarray(w, jnp.float32) for n, w in hp["loss_weights"].items()},
            },
        )

    def point_hparams(self, total_steps: int) -> list[dict]:
        """Numbers of each (sweep point's) state: config values, overridden by the point."""
        cfg = self.config
        base = {
            "seed": int(cfg.seed),
            "lr": float(cfg.optimizer.lr),
            "total_steps": float(total_steps),
            "loss_weights": loss_weights(self.specs),
        }
        if self.points is None:
            return [base]
        out = []
        for point in self.points:
            hp = {**base, "loss_weights": dict(base["loss_weights"])}
            for path, value in point.items():
                if not is_vmappable(path):
                    raise ValueError(f"sweep point: {path!r} cannot be vmapped; expected one of {VMAPPABLE}")
                if path.startswith("losses."):
                    key = path.split(".", 1)[1]
                    check_choice("sweep point loss weight", key, hp["loss_weights"])
                    hp["loss_weights"][key] = float(value)
                else:
                    hp[path.rsplit(".", 1)[-1]] = value
            out.append(hp)
        return out

    def init_state(self, total_steps: int = 1) -> TrainState:
        """Fresh state (stacked over sweep points if any), replicated over the mesh."""
        states = []
        for hp in self.point_hparams(total_steps):
            key = jax.random.PRNGKey(int(hp["seed"]))  # raw uint32 key: a plain array for Orbax
            fixed = {k: v for k, v in hp.items() if k != "seed"}
            states.append(jax.jit(functools.partial(self._init_one, hp=fixed), out_shardings=self.repl)(key))
        if self.points is None:
            return states[0]
        return jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), self.repl)

    def abstract_state(self, total_steps: int = 1) -> TrainState:
        """Shapes, dtypes and shardings of :meth:`init_state` (restore target), computed without FLOPs."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.repl),
            jax.eval_shape(lambda: self.init_state(total_steps)),
        )

    def meta(self) -> dict:
        """What a checkpoint must match to be resumed by this trainer."""
        return {
            "model": self.config.model.name,
            "num_classes": self.num_classes,
            "losses": sorted(spec.name for spec in self.specs),
            "optimizer": self.config.optimizer.name,
            "points": None if self.points is None else len(self.points),
        }

    # -- between-epoch hooks (icCNN / HICCNN re-clustering)

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one trainer per run; keyed by the due losses)
    def _hook_fns(self, due: tuple):
        specs = [s for s in self.specs if s.name in due]

        def update(stats, state, images, labels):
            out = self.model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)[1]
            return {
                s.name: s.update_stats(stats[s.name], out, labels, state.loss_state[s.name]) for s in specs
            }

        def recluster(loss_state, stats, key):
            return {
                **loss_state,
                **{s.name: s.recluster(loss_state[s.name], stats[s.name], key) for s in specs},
            }

        if self.points is not None:
            update = jax.vmap(update, in_axes=(0, 0, None, None))
            recluster = jax.vmap(recluster, in_axes=(0, 0, None))
        data = NamedSharding(self.mesh, P("data"))
        return (
            jax.jit(update, in_shardings=(self.repl, self.repl, data, data), out_shardings=self.repl),
            jax.jit(recluster, out_shardings=self.repl),
        )

    def run_epoch_hooks(self, state: TrainState, data: "Data", epoch: int) -> TrainState:
        """Re-cluster the filters of every loss with ``reclusters_at(epoch)`` (before the epoch's first step).

        Statistics come from eval-mode forward passes over ``config.train.hook_batches`` full training
        batches in a fixed order (0: the whole split, as the icCNN code does), so they depend only on
        the state: a resumed run re-clusters exactly like an uninterrupted one.
        """
        due = tuple(s.name for s in self.specs if s.reclusters_at(epoch))
        if not due:
            return state
        update, recluster = self._hook_fns(due)
        shapes = self.out_shapes()
        stats = {s.name: s.init_stats(shapes) for s in self.specs if s.name in due}
        if self.points is not None:
            stats = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(self.points), *x.shape)), stats)
        stats = jax.device_put(stats, self.repl)
        gbs = int(self.config.train.batch_size)
        limit = int(self.config.train.get("hook_batches", 0) or 0)
        for i, batch in enumerate(data.ordered("train", gbs, jax.process_index(), jax.process_count())):
            if limit and i >= limit:
                break
            b = shard_batch({"image": batch["image"], "label": batch["label"].astype(np.int32)}, self.mesh)
            stats = update(stats, state, b["image"], b["label"])
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed) + 1), epoch)
        return state.replace(loss_state=recluster(state.loss_state, stats, key))

    # -- evaluation

    def evaluate(self, state: TrainState, data: "Data", split: str = "test") -> dict:
        """Accuracy and mean loss over a whole split (partial last batch padded and masked)."""
        gbs = int(self.config.train.get("eval_batch_size", 0) or self.config.train.batch_size)
        gbs -= gbs % self.mesh.devices.size
        totals = None
        for batch in data.eval(split, gbs, jax.process_index(), jax.process_count()):
            sums = self.eval_step(state, shard_batch(_pad(batch, gbs // jax.process_count()), self.mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        count = np.maximum(totals["count"], 1)
        return {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count}


# ------------------------------------------------------------------------------------------- the loop


class MetricsWriter:
    """Appends JSON lines to ``<workdir>/metrics.jsonl`` (host 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    arr = np.asarray(x) if isinstance(x, (np.ndarray, np.generic, jax.Array)) else None
    if arr is not None:
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return x


def _fmt_time(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def check_workdir(workdir: str) -> str:
    """Create ``workdir`` if needed and make sure it is writable; returns its absolute path."""
    if not workdir:
        raise ValueError("--workdir: expected a directory path, got an empty string")
    path = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"--workdir: {path} is not a writable directory ({e.strerror})") from None
    return path


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """``train.steps`` if > 0, else ``train.epochs * steps_per_epoch``."""
    steps, epochs = int(config.train.get("steps", 0) or 0), float(config.train.get("epochs", 0) or 0)
    if steps <= 0 and epochs <= 0:
        raise ValueError(f"config.train: set steps > 0 or epochs > 0, got steps={steps} epochs={epochs}")
    return steps if steps > 0 else int(math.ceil(epochs * steps_per_epoch))


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    points: list[dict] | None = None,
    data: Data | None = None,
    stop_after: int | None = None,
    log=sys.stderr,
) -> dict:
    """Train (resuming from ``workdir`` if it holds a checkpoint), evaluate, write the summary.

    Args:
      config: run config. workdir: output directory (``checkpoints/``, ``metrics.jsonl``, ``summary.json``).
      points: numeric sweep points trained together (see :class:`Trainer`); the summary then has one
        entry per point under ``"points"``.
      data: the data (default ``Data(config.data)`` over ``jinterp.data.load``).
      stop_after: stop (with a checkpoint) after this step, as if killed there: for resume tests.
      log: stream for the progress line.

    Returns:
      the summary dict also written to ``workdir/summary.json``.
    """
    t_start = time.time()
    validate_config(config)
    workdir = check_workdir(workdir)
    if config.get("distributed", False):
        jax.distributed.initialize()
    data = data or Data(config.data)
    trainer = Trainer(config, points=points)
    gbs = int(config.train.batch_size)
    host_id, host_count = jax.process_index(), jax.process_count()
    n_train = data.num_examples("train")
    steps_per_epoch = max(n_train // gbs, 1)
    trainer.set_steps_per_epoch(steps_per_epoch)
    n_steps = total_steps(config, steps_per_epoch)

    ckpt = Checkpoints(workdir, keep=int(config.train.get("keep_checkpoints", 2)))
    meta = trainer.meta()
    try:
        state = ckpt.restore(trainer.abstract_state(n_steps), meta)
    except BaseException:
        ckpt.manager.close()
        raise
    resumed = state is not None
    if state is None:
        state = trainer.init_state(n_steps)
    else:
        stored_total = np.asarray(jax.device_get(state.hparams["total_steps"])).ravel()[0]
        budget_fixed = bool(config.train.get("time_budget_s", 0))
        if budget_fixed:
            n_steps = int(stored_total)  # a wall-clock budget fixed the length on the first run
        elif int(stored_total) != n_steps:
            state = state.replace(
                hparams={**state.hparams, "total_steps": jnp.full_like(state.hparams["total_steps"], n_steps)}
            )
    start = int(np.asarray(jax.device_get(state.step)).ravel()[0])
    print(
        f"{'resuming from step ' + str(start) if resumed else 'starting'}: {trainer.config.model.name}, "
        f"{n_steps} steps ({steps_per_epoch} per epoch), batch {gbs} over {trainer.mesh.devices.size} devices"
        + (f", {len(points)} vmapped sweep points" if points else ""),
        file=log,
    )

    writer = MetricsWriter(workdir)
    log_every = int(config.train.get("log_every", 50))
    ckpt_every = int(config.train.get("checkpoint_every", 0) or 0)
    eval_every = int(config.train.get("eval_every", 0) or 0)
    budget = float(config.train.get("time_budget_s", 0) or 0)
    calibrate = int(config.train.get("calibrate_steps", 20))
    to_device = lambda b: shard_batch(
        {"image": b["image"], "label": b["label"].astype(np.int32)}, trainer.mesh
    )
    it = prefetch(data.train(gbs, start, host_id, host_count), to_device)
    timing = {"compile_s": None, "steps_per_s": None}
    t_loop, step_at_t, acc_metrics = None, start, []
    step = start
    while step < n_steps:
        if step % steps_per_epoch == 0:
            state = trainer.run_epoch_hooks(state, data, step // steps_per_epoch)
        batch = next(it)
        t0 = time.time()
        state, metrics = trainer.train_step(state, batch)
        step += 1
        acc_metrics.append(metrics)
        if timing["compile_s"] is None:
            jax.block_until_ready(state.step)
            timing["compile_s"] = time.time() - t0
            t_loop, step_at_t = time.time(), step
        # Wall-clock budget: fix the schedule length after `calibrate` timed steps, and shorten it again
        # at every log step if the machine got slower (only ever shorter: the cosine end moves closer).
        if (
            budget
            and not resumed
            and step - step_at_t >= calibrate
            and (step - step_at_t == calibrate or step % log_every == 0)
        ):
            jax.block_until_ready(state.step)
            rate = (step - step_at_t) / (time.time() - t_loop)
            reserve = float(config.train.get("time_reserve_s", 30.0))
            affordable = max(step + int(rate * (t_start + budget - reserve - time.time())), step + 1)
            if affordable < n_steps:
                n_steps = affordable
                state = state.replace(
                    hparams={
                        **state.hparams,
                        "total_steps": jnp.full_like(state.hparams["total_steps"], n_steps),
                    }
                )
                print(f"time budget {budget:.0f}s at {rate:.2f} steps/s: training {n_steps} steps", file=log)
        if step % log_every == 0 or step == n_steps:
            host = jax.device_get(acc_metrics)
            mean = {k: np.mean([m[k] for m in host], axis=0) for k in host[0]}
            acc_metrics = []
            elapsed = time.time() - t_loop
            rate = (step - step_at_t) / elapsed if elapsed > 0 and step > step_at_t else float("nan")
            timing["steps_per_s"] = rate
            writer.write({"step": step, "split": "train", "steps_per_s": rate, **mean})
            loss, acc = np.mean(mean["loss"]), np.mean(mean["accuracy"])
            eta = (n_steps - step) / rate if rate == rate and rate > 0 else float("nan")
            print(
                f"step {step}/{n_steps} loss {loss:.4f} acc {acc:.3f} {rate:.2f} steps/s "
                f"ETA {_fmt_time(eta) if eta == eta else '?'}",
                file=log,
                flush=True,
            )
        if eval_every and step % eval_every == 0 and step < n_steps:
            ev = trainer.evaluate(state, data, config.train.get("eval_split", "test"))
            writer.write({"step": step, "split": "test", **ev})
        if (ckpt_every and step % ckpt_every == 0) or step == n_steps or step == stop_after:
            ckpt.save(step, state, meta)
        if stop_after is not None and step >= stop_after:
            break
    ckpt.close()
    if step < n_steps:
        return {"stopped_at": step}

    ev = trainer.evaluate(state, data, config.train.get("eval_split", "test"))
    writer.write({"step": step, "split": "test", **ev})
    summary = {
        "step": step,
        "model": config.model.name,
        "test_accuracy": ev["accuracy"],
        "test_loss": ev["loss"],
        "compile_s": timing["compile_s"],
        "steps_per_s": timing["steps_per_s"],
        "wall_s": time.time() - t_start,
        "resumed": resumed,
        "checkpoint": os.path.join(ckpt.directory, str(step)),
    }
    if points is not None:
        summary["points"] = [
            {**p, "test_accuracy": float(a), "test_loss": float(lo)}
            for p, a, lo in zip(points, np.atleast_1d(ev["accuracy"]), np.atleast_1d(ev["loss"]), strict=True)
        ]
    summary = _jsonable(summary)
    if config.get("outputs", {}).get("predictions_png", False) and points is None:
        summary["predictions_png"] = save_predictions(
            trainer, state, data, os.path.join(workdir, "predictions.png")
        )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    summary["state"] = state
    return summary


def restore_model(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, dict, int]:
    """``(model, variables, step)`` of the latest checkpoint in ``workdir`` (for evaluation/explanation).

    Raises:
      ValueError: no checkpoint in ``workdir``; IncompatibleCheckpointError: written by another model.
    """
    trainer = Trainer(config)
    ckpt = Checkpoints(workdir, keep=int(config.train.keep_checkpoints))
    try:
        if ckpt.latest_step() is None:
            raise ValueError(f"--workdir: no checkpoint in {ckpt.directory}; train first (--mode train)")
        state = ckpt.restore(trainer.abstract_state(), trainer.meta())
    finally:
        ckpt.manager.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return trainer.model, jax.device_get(variables), int(state.step)


def load_split(config: ml_collections.ConfigDict, split: str, limit: int) -> dict[str, np.ndarray]:
    """The first ``limit`` examples of ``split`` (index order, no augmentation) as numpy arrays."""
    data = Data(config.data)
    batches, n = [], 0
    for batch in data.eval(split, min(limit, 256)):
        batches.append(batch)
        n += len(batch["label"])
        if n >= limit:
            break
    return {k: np.concatenate([b[k] for b in batches])[:limit] for k in batches[0]}


def save_predictions(trainer: Trainer, state: TrainState, data: Data, path: str, n: int = 16) -> str:
    """PNG grid of ``n`` test images with predicted / true labels (green: right, red: wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gbs = int(trainer.config.train.batch_size)
    batch = next(iter(data.eval("test", gbs)))
    padded = _pad(batch, gbs)
    logits, _ = jax.jit(trainer.model.apply)(
        {"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(padded["image"])
    )
    pred = np.asarray(jnp.argmax(logits, -1))[: min(n, len(batch["label"]))]
    images = np.asarray(batch["image"][: len(pred)], np.float32)
    lo, hi = images.min(axis=(1, 2, 3), keepdims=True), images.max(axis=(1, 2, 3), keepdims=True)
    images = (images - lo) / np.maximum(hi - lo, 1e-8)  # display only: undo any normalisation per image
    cols = 8
    rows = math.ceil(len(pred) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[: len(pred)]):
        ax.imshow(images[i])
        ok = pred[i] == batch["label"][i]
        ax.set_title(f"pred {pred[i]} / {batch['label'][i]}", fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
