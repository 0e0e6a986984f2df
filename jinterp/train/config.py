"""The run schema: every field a run reads with its default (and so its type), and its validation.

Configs (``configs/*.py``) start from :func:`default_config` and override fields; ``launch.py`` loads
them with ``lock_config=True``, so a command-line override of an unknown key or of the wrong type fails
there. :func:`validate_config` applies the same check (a locked copy of the schema, updated leaf by leaf)
to configs built in Python, plus the value checks a type cannot express.
"""

import math
import os

import ml_collections

from jinterp import backbones
from jinterp.checks import check_choice
from jinterp.data import feed

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "step", "exponential_step")
SWEEP_STRATEGIES = ("auto", "vmap", "map", "sequential")
NAN_POLICIES = ("stop", "skip")  # train.nan_policy (jinterp.train.actions.NonFiniteGuard)
# Sub-dicts whose keys are free-form (backbone constructor fields; loss specs, checked by build_losses).
FREE_FORM = ("model.kwargs", "losses")
POSITIVE_INTS = ("train.batch_size", "train.log_every", "train.eval_batch_size", "train.keep_checkpoints")


def default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default (and so its type); configs start from this."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init and dropout
    c.num_devices = 0  # data-parallel devices (0: all)
    c.distributed = False  # multi-host: start JAX's distributed runtime first (jinterp.train.parallel)
    c.coordinator_address = ""  # host:port of process 0 ('' = $JAX_COORDINATOR_ADDRESS or auto-detected)
    c.num_processes = 0  # 0 = $JAX_NUM_PROCESSES or auto-detected (SLURM, TPU pods, Open MPI, ...)
    c.process_id = -1  # -1 = $JAX_PROCESS_ID or auto-detected

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
    c.train.nan_policy = "stop"  # non-finite loss: stop (keep the last good checkpoint) | skip (the batch)
    c.train.init_from = ""  # workdir of a trained run: start from its params / batch_stats (fresh optimiser)

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

    _add_mode_fields(c)
    return c


def _add_mode_fields(c: ml_collections.ConfigDict) -> None:
    """The fields of launch.py's evaluate / explain / concepts modes."""
    # --mode evaluate / explain (launch.py): the trained model of the workdir on the test split.
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.methods = "grad_cam,grad_cam_pp,layer_cam,score_cam,cluster_cam"  # jinterp.explain specs
    c.evaluate.layer = ""  # '' = the model's last tappable layer
    c.evaluate.num_images = 512  # test images evaluated
    c.evaluate.num_explained = 64  # images explained per method

    # --mode concepts (launch.py): seed 001's protocol, jinterp.metrics.concepts_eval.evaluate_concepts.
    c.concepts = ml_collections.ConfigDict()
    c.concepts.num_images = 100
    c.concepts.layers = "conv4,conv6"  # CRP layers whose channels are clustered
    c.concepts.cams = "grad_cam,layer_cam,score_cam,cluster_cam"  # CAM baselines ('' for none)
    c.concepts.lam = 0.5  # eq. 4 weight of the map distance
    c.concepts.linkage = "ward"
    c.concepts.batch_images = 8


def _leaves(node, prefix: str = ""):
    """``(dotted path, value)`` of every leaf of a config, free-form sub-dicts left out."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in FREE_FORM:
            continue
        if isinstance(value, ml_collections.ConfigDict | dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError for a key :func:`default_config` lacks, a value of another type, or a bad value."""
    schema = default_config()
    schema.lock()
    for path, value in _leaves(config):
        try:
            expected = _get(schema, path)
            if isinstance(expected, ml_collections.ConfigDict) or isinstance(value, bool) != isinstance(
                expected, bool
            ):
                raise TypeError
            schema.update_from_flattened_dict({path: value})
        except (KeyError, AttributeError):
            raise ValueError(f"config: unknown key {path!r}") from None
        except TypeError:
            raise ValueError(f"config.{path}: expected {type(expected).__name__}, got {value!r}") from None
    check_choice("config.optimizer.name", config.optimizer.name, OPTIMIZERS)
    check_choice("config.schedule.name", config.schedule.name, SCHEDULES)
    check_choice("config.model.name", config.model.name, backbones.MODELS)
    check_choice("config.train.sweep_strategy", config.train.sweep_strategy, SWEEP_STRATEGIES)
    check_choice("config.train.nan_policy", config.train.get("nan_policy", "stop"), NAN_POLICIES)
    for path, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{path}: expected a finite number, got {value}")
    for path in POSITIVE_INTS:
        if _get(config, path) <= 0:
            raise ValueError(f"config.{path}: expected a positive integer, got {_get(config, path)}")
    if config.optimizer.lr <= 0:
        raise ValueError(f"config.optimizer.lr: expected > 0, got {config.optimizer.lr}")


def _get(config, path: str):
    node = config
    for key in path.split("."):
        node = node[key]
    return node


def num_classes(config: ml_collections.ConfigDict) -> int:
    """``config.model.num_classes`` if set (> 0), else the data set's (``jinterp.data.num_classes``)."""
    n = int(config.model.get("num_classes", 0) or 0)
    return n if n > 0 else feed.num_classes(config.data)


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """``train.steps`` if > 0, else ``train.epochs * steps_per_epoch``."""
    steps, epochs = int(config.train.get("steps", 0) or 0), float(config.train.get("epochs", 0) or 0)
    if steps <= 0 and epochs <= 0:
        raise ValueError(f"config.train: set steps > 0 or epochs > 0, got steps={steps} epochs={epochs}")
    return steps if steps > 0 else int(math.ceil(epochs * steps_per_epoch))


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
