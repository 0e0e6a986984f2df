"""densenet121 paper recipes: {cnn, iccnn, hiccnn} (HICCNN §4, shared/seeds/000_*) and {sync, sync_no_sync}
(synchronization paper §IV-A5, shared/seeds/002_*); see ``configs/common.py`` for the exact numbers.

    python launch.py --config configs/densenet121.py:hiccnn --workdir runs/densenet121_hiccnn
    python launch.py --config configs/densenet121.py:sync,runlocal --workdir /tmp/densenet121_sync
    python launch.py --config configs/densenet121.py:iccnn,data=binary --workdir runs/densenet121_binary
"""

from configs import common


def get_config(arg: str | None = None):
    return common.paper("densenet121", arg)


def sweep(add, arg: str | None = None):
    """The variant's main loss weight x (0.5, 1, 2) around the paper value, two seeds (vmapped)."""
    common.loss_sweep(add, get_config(arg))
