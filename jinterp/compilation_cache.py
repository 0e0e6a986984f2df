"""JAX's persistent compilation cache under a jinterp directory, on by default.

A notebook's first heatmap pays compilation (0.1-3.6 s per backbone and method on the 2-core CPU);
with the cache a second process loads the compiled programs from disk instead (ResNet18 Grad-CAM at
224 px: first call 0.72 s -> 0.33 s; what is left is mostly tracing the program in Python, 0.22 s,
which only an exported program could skip; ``benchmarks/first_call.py``). ``import jinterp``
calls :func:`enable`, which points ``jax_compilation_cache_dir`` at ``$JINTERP_CACHE_DIR/xla``
(default ``~/.cache/jinterp/xla``) and caches every program (``jax_persistent_cache_min_compile_time_secs
= 0``, ``jax_persistent_cache_min_entry_size_bytes = -1``: an explainer call also runs a few small
programs, which would otherwise each be compiled again). Entries are keyed by the program, the jax /
XLA versions, ``XLA_FLAGS`` and the device, so a stale entry is never used; the directory is not
size-bounded (``jax_compilation_cache_max_size``: bounding it makes every write scan the whole
directory, 60 ms at 2 000 entries); delete it to reclaim the space.

Opt out with ``JINTERP_COMPILATION_CACHE=0`` before importing jinterp. Your own settings win: a
``JAX_COMPILATION_CACHE_DIR`` (or ``jax_compilation_cache_dir`` set before the import) is left alone.
A directory that cannot be created or written leaves the cache off (jax would warn at every compile).
Processes sharing the directory never run a wrong program: jax writes each entry once, without a
lock, and a reader that races a writer gets a read error, which jax turns into a warning and a fresh
compile (the test suite gives each pytest-xdist worker its own directory for that reason).
"""

import os
import sys

OPT_OUT = "JINTERP_COMPILATION_CACHE"
DIR_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
OWNED = "JINTERP_OWNED_CACHE_DIR"  # the value of DIR_VARIABLE that jinterp set
SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


def cache_dir() -> str:
    """``$JINTERP_CACHE_DIR/xla``, default ``~/.cache/jinterp/xla``."""
    root = os.environ.get("JINTERP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jinterp")
    return os.path.join(root, "xla")


def enabled() -> bool:
    """False when ``JINTERP_COMPILATION_CACHE`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def _users(directory: str | None) -> bool:
    """True for a cache directory the user chose (set, and not the one jinterp set)."""
    return bool(directory) and directory != os.environ.get(OWNED)


def _target() -> str | None:
    """The directory to use: ``cache_dir()``, or None when opted out or not writable."""
    return cache_dir() if enabled() and _writable(cache_dir()) else None


def _set_environment() -> None:
    if _users(os.environ.get(DIR_VARIABLE)):
        return
    path = _target()
    if path is None:
        for name in (DIR_VARIABLE, OWNED):
            os.environ.pop(name, None)
        return
    os.environ[DIR_VARIABLE] = os.environ[OWNED] = path
    for name, value in SETTINGS.items():
        os.environ.setdefault(name.upper(), str(value))


def enable() -> None:
    """Turn the cache on (module doc) unless opted out or the user chose a cache directory.

    Before jax is imported this only sets jax's environment variables (``import jinterp`` stays
    cheap; ``JINTERP_OWNED_CACHE_DIR`` marks the directory as jinterp's, so a child process that
    inherits it applies its own ``JINTERP_*`` settings); afterwards it updates ``jax.config``, which
    applies from the next compilation.
    """
    if "jax" not in sys.modules:
        _set_environment()
        return
    import jax

    if _users(jax.config.jax_compilation_cache_dir):
        return
    path = _target()
    jax.config.update("jax_compilation_cache_dir", path)
    if path:
        for name, value in SETTINGS.items():
            jax.config.update(name, value)
