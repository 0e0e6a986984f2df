"""Input validation shared by every public function: clear ValueErrors, never a silent NaN.

Checks run on the host on concrete values; under ``jax.jit`` (tracers) only static shape
checks apply, value checks are skipped.
"""

from collections.abc import Iterable, Sequence

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_choice(argument: str, value, valid: Iterable[str]) -> None:
    """Raise ValueError if ``value`` is not one of ``valid`` (listing the valid ones)."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"{argument}: unknown value {value!r}; expected one of {valid}")


def check_images(images, argument: str = "images", min_size: int = 1, channels: int | None = 3) -> None:
    """Images must be (N, H, W, C) floats with H, W >= min_size and C == channels."""
    shape = np.shape(images)
    if len(shape) != 4:
        raise ValueError(f"{argument}: expected a rank-4 (N, H, W, C) array, got shape {shape}")
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"{argument}: expected {channels} channels in the last axis (NHWC), got shape {shape}"
        )
    if shape[1] < min_size or shape[2] < min_size:
        raise ValueError(f"{argument}: expected height and width >= {min_size}, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{argument}: expected at least one image, got shape {shape}")


def check_targets(
    targets, num_images: int, num_classes: int | None = None, argument: str = "targets"
) -> None:
    """Targets are one int class index per image: shape (N,), values in [0, num_classes)."""
    shape = np.shape(targets)
    if shape != (num_images,):
        raise ValueError(f"{argument}: expected shape ({num_images},) (one class per image), got {shape}")
    if not np.issubdtype(np.asarray(targets).dtype if is_concrete(targets) else targets.dtype, np.integer):
        raise ValueError(f"{argument}: expected integer class indices, got dtype {targets.dtype}")
    if num_classes is not None and is_concrete(targets):
        t = np.asarray(targets)
        if t.size and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(
                f"{argument}: class indices must lie in [0, {num_classes}), got min {t.min()} max {t.max()}"
            )


def check_same_shape(argument: str, value, expected: Sequence[int], expected_name: str) -> None:
    """Raise if ``value`` does not have the shape of ``expected_name``."""
    if tuple(np.shape(value)) != tuple(expected):
        raise ValueError(
            f"{argument}: expected shape {tuple(expected)} (as {expected_name}), got {np.shape(value)}"
        )


def check_finite(argument: str, value) -> None:
    """Raise if a concrete array holds NaN or inf."""
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{argument}: contains NaN or inf values")
