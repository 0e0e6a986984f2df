"""One host of the two-process training test (``tests/test_multiprocess.py``): 2 fake CPU devices,
JAX's distributed runtime on 127.0.0.1, the tiny config of ``tests/test_train.py``.

    python -m tests.multiprocess_worker PROCESS_ID PORT WORKDIR OUT_NPZ [STALL_AT]
"""

import os
import sys


def main(process_id: int, port: int, workdir: str, out: str, stall_at: int | None) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    import numpy as np

    from jinterp import train
    from tests.test_train import MemoryData, tiny_config_run

    cfg = tiny_config_run(
        distributed=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    summary = train.train_and_evaluate(cfg, workdir, data=MemoryData(stall_at=stall_at).data(cfg.data))
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    if process_id == 0:
        params = jax.tree_util.tree_leaves_with_path(jax.device_get(summary["state"].params))
        np.savez(out, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in params})


if __name__ == "__main__":
    pid, port, workdir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    main(pid, port, workdir, out, int(sys.argv[5]) if len(sys.argv) > 5 else None)
