"""jinterp: interpretable CNNs on JAX/Flax.

Subpackages are imported lazily (``ji.explain`` loads on first access), so importing jinterp
is cheap and a notebook only pays for what it uses. Importing it calls :func:`apply_xla_cpu_defaults`
(``jinterp.xla_cpu``: measured faster convolutions on CPU) before jax creates its backend;
``JINTERP_KEEP_XLA_FLAGS=1`` skips that. It also turns on JAX's persistent compilation cache under
``~/.cache/jinterp/xla`` (:mod:`jinterp.compilation_cache`; ``JINTERP_CACHE_DIR`` moves it,
``JINTERP_COMPILATION_CACHE=0`` opts out), so a new process's first heatmap skips compilation.
"""

import importlib

from jinterp import compilation_cache, xla_cpu

apply_xla_cpu_defaults = xla_cpu.apply_defaults
apply_xla_cpu_defaults()
compilation_cache.enable()

__version__ = "0.1.0"

_SUBPACKAGES = ("ops", "backbones", "data", "losses", "explain", "metrics", "train", "sweep", "viz")


def __getattr__(name):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"jinterp.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'jinterp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
