"""The papers' claims re-run on PartsWorld: ``launch.py --mode fidelity`` -> ``fidelity.md`` + figures.

    python launch.py --config configs/fidelity.py --workdir runs/fidelity --mode fidelity        # CPU scale
    python launch.py --config configs/fidelity.py:paper --workdir runs/fidelity_paper --mode fidelity
    python launch.py --config configs/fidelity.py:tiny --workdir /tmp/f --mode fidelity          # seconds

Protocol (issue 13 / 14; ``jinterp.fidelity``): object-centred PartsWorld crops (``data.centred``: the
bird covers ~26 % of the frame, against ~7 % in the default set; the papers crop objects), one plain CNN
trained first (``fidelity.pretrain_steps``, standing in for the papers' ImageNet-pretrained backbones),
then every training variant continued from that checkpoint (``train.init_from``) for
``fidelity.finetune_steps`` with the same optimiser and data order per seed, evaluated at the deep layer
the losses act on.

CPU scale: ``small_cnn`` widened and with strides (2, 1, 2, 1, 1, 1), so the deep layer ``conv6`` is
16 x 16 at 64 px (VGG16's conv5_3 is 14 x 14 at 224 px) and the network has 336 channels (CRP-300 means
something). ``paper``: VGG16 at 224 px on the same centred data, the papers' optimisers and lengths, for
an accelerator.
"""

from configs import common

CPU_KWARGS = {"widths": (16, 32, 32, 64, 64, 128), "strides": (2, 1, 2, 1, 1, 1)}


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, scale="cpu", binary=False)
    if a.scale not in ("cpu", "paper", "tiny"):
        raise ValueError(f"config argument: scale expected cpu, paper or tiny, got {a.scale!r}")
    c = common.base()
    c.data.name = "parts_world_binary" if a.binary else "parts_world"
    c.data.num_classes = 2 if a.binary else 8
    c.data.centred = True
    c.fidelity.report_name = "fidelity_binary" if a.binary else "fidelity"
    if a.binary:  # HICCNN's single-category task: its variants (the sync paper evaluates 8+ classes)
        c.fidelity.variants = "cnn,iccnn,hiccnn"
    c.model.name = "small_cnn"
    c.model.kwargs = dict(CPU_KWARGS)
    c.data.image_size = 64
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.checkpoint_every = 100
    c.train.hook_batches = 16
    c.evaluate.layer = "conv6"
    c.evaluate.num_images = 256
    c.fidelity.shallow_layer = "conv4"
    if a.scale == "paper":
        c.model.name = "vgg16"
        c.model.kwargs = {}
        c.data.image_size = 224
        c.evaluate.layer = "conv5_3"
        c.fidelity.shallow_layer = "conv4_3"
        c.fidelity.pretrain_steps = 20000
        c.fidelity.finetune_steps = 10000
        c.fidelity.probe_every = 1000
        c.concepts.layers = "conv3_3,conv4_3,conv5_3"
        c.clam.layers = "conv4_3,conv5_3"
    elif a.scale == "tiny":  # the end-to-end test: every section on mock sizes, seconds
        c.model.kwargs = {"widths": (8, 8, 16, 16, 16, 16), "strides": (2, 1, 2, 1, 1, 1)}
        c.data.train_size, c.data.test_size = 128, 64
        c.train.batch_size = 16
        c.train.log_every = 5
        c.train.hook_batches = 2
        c.train.eval_batch_size = 32
        c.schedule.warmup_steps = 2
        c.evaluate.num_images = 32
        c.evaluate.num_explained = 8
        c.fidelity.pretrain_steps = 8
        c.fidelity.finetune_steps = 4
        c.fidelity.probe_every = 2
        c.fidelity.seeds = "0,1"
        c.fidelity.num_groups = 2
        c.concepts.num_images = 8
        c.concepts.relevance_images, c.concepts.select_images, c.concepts.bootstrap = 8, 8, 200
        c.concepts.neuron_counts, c.concepts.lams, c.concepts.linkages = "10,300", "0.5,1", "ward,average"
        c.concepts.k_ranges, c.concepts.map_readings = "2-30,5-30", "signed,positive"
        c.concepts.nmf_components, c.concepts.paper_cams = 3, "grad_cam,fullgrad"
        c.cluster_cam_eval.num_images, c.cluster_cam_eval.select_images = 16, 8
        c.cluster_cam_eval.spectral_images, c.cluster_cam_eval.batch = 8, 8
        c.cluster_cam_eval.clusters, c.cluster_cam_eval.betas = "2,6", "0.5,1"
        c.cluster_cam_eval.spectral_k, c.cluster_cam_eval.eigenvectors = 2, "1,2"
        c.cluster_cam_eval.bootstrap = 200
        c.clam.num_train, c.clam.epochs, c.clam.num_images = 32, 3, 16
        c.clam.lerf_steps, c.clam.bank_size, c.clam.hidden = 4, 32, 8
        c.fidelity.rrr_weights, c.fidelity.rrr_select_images = "0.3,1", 16
    c.concepts.layers = c.concepts.layers if a.scale == "paper" else "conv2,conv4,conv6"
    return c
