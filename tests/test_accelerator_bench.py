"""``benchmarks/accelerator.py --small`` runs every workload on the CPU and prints its one table."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ["forward", "grad_cam", "score_cam", "cluster_cam", "lrp", "crp"]
WORKLOADS += [f"train {loss}" for loss in ("ce", "iccnn", "hiccnn", "sync", "rrr")]


@pytest.mark.slow
def test_small_run_prints_every_row():
    script = os.path.join(ROOT, "benchmarks", "accelerator.py")
    result = subprocess.run(
        [sys.executable, script, "--small", "--repeats", "1"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "matmul peak: bf16" in result.stdout
    rows = [
        line.split(" | ")
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    table = {(r[0].strip("| "), r[3]): r for r in rows[1:]}
    assert set(table) == {(w, d) for w in WORKLOADS for d in ("bf16", "f32")}
    for row in table.values():
        compile_s, ms = float(row[4]), float(row[5])
        assert compile_s > 0 and ms > 0, row
        assert float(row[6].lstrip("~")) > 0, row  # achieved TFLOP/s from XLA's cost analysis
