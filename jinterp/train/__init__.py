"""Training: a pure, data-parallel train step, Orbax checkpoints with exact resume, and the loop.

>>> trainer = Trainer(config)                        # model, optimiser, losses, mesh of a config
>>> state = trainer.init_state()                     # TrainState, replicated over the ``data`` mesh axis
>>> state, metrics = trainer.train_step(state, batch)   # jitted once, state donated
>>> summary = train_and_evaluate(config, workdir)    # the whole job (what ``launch.py --mode train`` runs)

Modules, one concern each (flax ``examples/imagenet``, big_vision ``train.py``): :mod:`.config` (the run
schema and its validation), :mod:`.optim` (optimisers, schedules), :mod:`.state` (``TrainState``, sweep
points), :mod:`.step` (the pure train / eval steps), :mod:`.parallel` (mesh, multi-host, sweep
strategies), :mod:`.checkpoint` (Orbax), :mod:`.trainer` (the compiled pieces of one run),
:mod:`.recluster` (between-epoch icCNN / HICCNN re-clustering), :mod:`.actions` (logging, budget,
evaluation, checkpoints as periodic actions), :mod:`.loop` (``train_and_evaluate``).
"""

from jinterp.data.feed import Data, load_split, shard_batch
from jinterp.train.checkpoint import (
    Checkpoints,
    IncompatibleCheckpointError,
    UnreadableCheckpointError,
    checkpoint_steps,
    restore_loss_state,
    restore_variables,
)
from jinterp.train.config import (
    OPTIMIZERS,
    SCHEDULES,
    SWEEP_STRATEGIES,
    check_workdir,
    default_config,
    num_classes,
    total_steps,
    validate_config,
)
from jinterp.train.loop import predict, restore_model, train_and_evaluate
from jinterp.train.optim import lr_factor, make_optimizer
from jinterp.train.parallel import make_mesh, over_points, resolve_sweep_strategy
from jinterp.train.state import VMAPPABLE, TrainState, is_vmappable
from jinterp.train.step import cross_entropy, make_eval_step, make_train_step
from jinterp.train.trainer import Trainer, build_losses

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SWEEP_STRATEGIES",
    "VMAPPABLE",
    "Checkpoints",
    "Data",
    "IncompatibleCheckpointError",
    "TrainState",
    "Trainer",
    "build_losses",
    "check_workdir",
    "checkpoint_steps",
    "cross_entropy",
    "default_config",
    "is_vmappable",
    "load_split",
    "lr_factor",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "num_classes",
    "over_points",
    "predict",
    "resolve_sweep_strategy",
    "restore_model",
    "restore_loss_state",
    "restore_variables",
    "shard_batch",
    "total_steps",
    "UnreadableCheckpointError",
    "train_and_evaluate",
    "validate_config",
]
