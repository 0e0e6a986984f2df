"""resnet18 paper recipes: {cnn, iccnn, hiccnn} (HICCNN §4, shared/seeds/000_*) and {sync, sync_no_sync}
(synchronization paper §IV-A5, shared/seeds/002_*); see ``configs/common.py`` for the exact numbers.

    python launch.py --config configs/resnet18.py:hiccnn --workdir runs/resnet18_hiccnn
    python launch.py --config configs/resnet18.py:sync,runlocal --workdir /tmp/resnet18_sync
    python launch.py --config configs/resnet18.py:iccnn,data=binary --workdir runs/resnet18_binary
"""

from configs import common


def get_config(arg: str | None = None):
    return common.paper("resnet18", arg)


def sweep(add, arg: str | None = None):
    """The variant's main loss weight x (0.5, 1, 2) around the paper value, two seeds (vmapped)."""
    common.loss_sweep(add, get_config(arg))
