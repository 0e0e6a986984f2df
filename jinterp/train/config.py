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
    c.data.centred = False  # PartsWorld: object-centred crops (the papers' protocol; parts_world.py)
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
    c.outputs.report = False  # --mode train: then evaluate (config.evaluate) -> evaluation/report.md

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
    _add_concept_fidelity_fields(c.concepts)

    # --mode fidelity, seed 004 section (jinterp.fidelity.cluster_cam): Tables 1-2 and the sweeps.
    c.cluster_cam_eval = ml_collections.ConfigDict()
    c.cluster_cam_eval.num_images = 200  # reported test images (the first of the section's test set)
    c.cluster_cam_eval.select_images = 100  # held-out images choosing beta / Q (next test images, or train)
    c.cluster_cam_eval.baselines = (
        "grad_cam,grad_cam_pp,smooth_grad_cam_pp,xgrad_cam,ablation_cam,score_cam,group_cam"
    )
    c.cluster_cam_eval.betas = "0,0.25,0.5,0.75,1"  # eq. 22 balance factors (0.5 and 1 always added)
    c.cluster_cam_eval.clusters = "2,3,4,5,6,7,8"  # Q (Fig. 6; 6 always added)
    c.cluster_cam_eval.spectral_images = 100  # images of the spectral sweeps (first reported ones)
    c.cluster_cam_eval.spectral_k = 5  # eigenvectors K of the spectral Q sweep (Q - 1 at Q = 6)
    c.cluster_cam_eval.eigenvectors = "1,2,3,5,8"  # K of the spectral K sweep at Q = 6 (Fig. 7)
    c.cluster_cam_eval.batch = 50  # images per explainer call
    c.cluster_cam_eval.bootstrap = 2000  # resamples of the 95 % intervals

    # CLAM (seed 003): jinterp.fidelity.clam (the fidelity section and --mode clam).
    c.clam = ml_collections.ConfigDict()
    c.clam.layers = "conv4,conv6"  # CLA-layers by tapped layer name
    c.clam.num_attributes = 4  # N per layer (A.1 nb_attrs)
    c.clam.patch = 3  # P (sz_patches)
    c.clam.attr = 2  # A < P (sz_attrs)
    c.clam.hidden = 32  # D' of the add-on block
    c.clam.strength_out = 1.3  # mask centre at the layer nearest the output (A.1: 1.2-1.4)
    c.clam.strength_in = 1.15  # ... at the layer farthest from it (A.1: 1.1-1.15), linear between
    c.clam.alpha = 0.05  # BCL eq. 5 (A.1: 0.01-0.1)
    c.clam.beta = 0.5  # BCL eq. 4 (A.1: 0.5-0.6)
    c.clam.fit_base = "clrp"  # explainer whose layer relevance picks the training patches (eq. 1)
    c.clam.num_train = 2000  # training images the CLA-layers are fitted on
    c.clam.epochs = 100  # per layer (A.1: at most 100)
    c.clam.patience = 5  # early stopping on the mean positive distance (A.1)
    c.clam.batch_size = 32
    c.clam.num_images = 200  # correctly classified test images evaluated
    c.clam.lerf_steps = 25  # LeRF steps (seed 003: 100 steps of 200 px at 224 px = 39.9 %)
    c.clam.lerf_fraction = 0.4  # pixels removed at the last step
    c.clam.ablation_strengths = "1.0,2.0"  # CLRP+CLAM re-run with every mask centre at these values
    c.clam.bank_size = 500  # training images searched for examples (Fig. 4)
    c.clam.num_examples = 3  # training images shown per layer
    c.clam.seed = 0

    # --mode fidelity (launch.py): the papers' claims re-run, jinterp.fidelity.run_fidelity.
    c.fidelity = ml_collections.ConfigDict()
    c.fidelity.sections = "training,concepts,clam,cluster_cam,explanation_loss"  # fidelity.SECTIONS
    c.fidelity.variants = "cnn,iccnn,hiccnn,lac,sync,sync_no_lac"  # jinterp.fidelity.training.VARIANTS
    c.fidelity.seeds = "0,1,2"  # fine-tuning seeds (data order and dropout) per variant
    c.fidelity.pretrain_steps = 1000  # the shared plain CNN every variant starts from
    c.fidelity.finetune_steps = 300  # per variant and seed, from the pretrained checkpoint
    c.fidelity.finetune_lr = 1e-3  # the same optimiser for every variant (warm-up + cosine)
    c.fidelity.probe_every = 100  # checkpoints measured for the mechanical-job curves
    c.fidelity.num_groups = 8  # icCNN / HICCNN groups of the deep layer
    c.fidelity.shallow_layer = "conv4"  # HICCNN's shallow layer; the deep one is evaluate.layer
    c.fidelity.report_dir = ""  # also copy fidelity.md and its figures here (e.g. docs)
    c.fidelity.rrr_method = "grad_cam"  # explanation_loss section: RightReasons method
    c.fidelity.rrr_weights = "0.1,0.3,1,3"  # its weights; one chosen on held-out test images
    c.fidelity.rrr_select_images = 256  # held-out test images after the reported ones choosing it
    c.fidelity.report_name = "fidelity"  # <report_dir>/<report_name>.md and <report_dir>/<report_name>/


def _add_concept_fidelity_fields(c: ml_collections.ConfigDict) -> None:
    """``config.concepts`` fields of the fidelity seed 001 section (jinterp.fidelity.concepts): DCNE's
    protocol, Table 1, Fig. 3."""
    c.num_neurons = 300  # per-class global top-k by class-mean relevance (DCNE select_neurons)
    c.k_range = "2,30"  # silhouette search range of the default setting (jinterp's default)
    c.map_reading = "signed"  # maps eq. 2 compares (jinterp.metrics.concepts_dcne.MAP_READINGS)
    c.relevance_images = 200  # train images whose class means select the neurons
    c.select_images = 100  # the next train images, choosing the setting (never the test ones)
    c.neuron_counts = "50,100,300"  # candidates, each varied alone from the default setting
    c.lams = "0,0.25,0.5,0.75,1"
    c.linkages = "ward,average,complete,single"
    c.k_ranges = "2-30,2-50,5-30,10-50"
    c.map_readings = "signed,positive,minmax"
    c.max_maps = 50  # a chosen setting has at most this many concepts on average (§4.3: "< 50")
    c.nmf_components = 10  # DCNE's NMF baseline (run_dcne.sh: 3, 7, 10)
    c.paper_cams = "grad_cam,hires_cam,grad_cam_pp,xgrad_cam,layer_cam,fullgrad"  # Table 1
    c.bootstrap = 2000  # resamples of the 95 % intervals


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
