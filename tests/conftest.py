"""Test-wide setup: four fake CPU devices for data-parallel tests (set before jax is imported), and
jinterp imported first so its XLA:CPU defaults (``jinterp.xla_cpu``) hold in every test, as for users."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jinterp  # noqa: E402,F401
