"""XLA:CPU settings jinterp applies when it is imported: YNNPACK fusion off.

jax 0.10's XLA:CPU hands convolutions and dots to YNNPACK fusions by default. On this project's
reference CPU (2 cores, AVX-512) turning that off (``--xla_cpu_experimental_ynn_fusion_type=``, i.e. an
empty list of fusion types) made every measured workload as fast or faster, with identical outputs:
forward passes 1.0-2.6x (VGG16 224 px batch 8: 281 -> 107 ms/img), Score-CAM 1.5x, CRP 1.25x, a
vmapped 4-point training sweep 2.8x, plain train steps unchanged. It also avoids a YNNPACK miscompile
seen under ``jit`` + ``vmap`` (a conv with a constant all-ones kernel returned 0 or 1e29).

The flag is read when jax creates its CPU backend, so it is appended to ``XLA_FLAGS`` here, before
any jinterp module touches jax. Left alone when ``XLA_FLAGS`` already sets it (your choice wins) or
``JINTERP_KEEP_XLA_FLAGS=1``; if jax's backend already exists, a warning says how to apply it.
"""

import os
import sys
import warnings

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _backend_started() -> bool:
    """True once jax has created a backend: ``jax.extend.backend.get_backend`` caches each one it makes."""
    from jax.extend import backend

    cache_info = getattr(backend.get_backend, "cache_info", None)
    return cache_info is not None and cache_info().currsize > 0


def apply_defaults() -> None:
    """Append ``YNN_FLAG`` to ``XLA_FLAGS`` unless the user set it, opted out, or jax already started.

    ``import jinterp`` calls this once (``jinterp.apply_xla_cpu_defaults`` is the same function); set
    ``JINTERP_KEEP_XLA_FLAGS=1`` before importing jinterp to skip it, or put your own value of the flag
    in ``XLA_FLAGS`` (yours wins).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG.rstrip("=") in flags or os.environ.get("JINTERP_KEEP_XLA_FLAGS", "") not in ("", "0"):
        return
    if "jax" in sys.modules and _backend_started():
        import jax

        if jax.default_backend() == "cpu":
            warnings.warn(
                "jinterp: jax's CPU backend was created before jinterp was imported, so XLA:CPU's "
                "YNNPACK fusion stays on (convolutions up to 2.6x slower); import jinterp first or "
                f"set XLA_FLAGS={YNN_FLAG} (JINTERP_KEEP_XLA_FLAGS=1 silences this)",
                stacklevel=3,
            )
        return
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
