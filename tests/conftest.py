"""Test-wide setup: four fake CPU devices for data-parallel tests (set before jax is imported), one
compilation cache directory per xdist worker, and jinterp imported first so its XLA:CPU defaults
(``jinterp.xla_cpu``) and compilation cache hold in every test, as for users."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# One persistent compilation cache directory per pytest-xdist worker (jinterp.compilation_cache): jax
# writes entries without a lock, so a worker reading an entry another worker is still writing would
# get a warning (an error where a test runs python -W error) and compile again.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _cache = os.environ.get("JINTERP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jinterp")
    os.environ["JINTERP_CACHE_DIR"] = os.path.join(_cache, f"pytest-{os.environ['PYTEST_XDIST_WORKER']}")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import jinterp  # noqa: E402,F401

# Property-based tests (tests/test_properties.py): few examples by default, more in CI (.ci/run).
settings.register_profile("default", max_examples=10, deadline=None, derandomize=True)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("default")


@pytest.fixture(scope="module")
def tiny_fidelity_model():
    """``(config, model, variables)``: the fidelity sections' tiny config and a seeded 3-class small_cnn."""
    import jax
    import jax.numpy as jnp

    from configs import fidelity as fidelity_config

    cfg = fidelity_config.get_config("tiny")
    model = jinterp.backbones.create("small_cnn", num_classes=3, **cfg.model.kwargs)
    return cfg, model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
