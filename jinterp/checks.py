"""Input validation shared by every public function: clear ValueErrors, never a silent NaN.

Every check raises ``ValueError`` naming the argument, what was expected and what was received.

* arrays: :func:`check_images` (real numeric (N, H, W, C), N >= 1, no NaN / inf), :func:`check_targets`
  (one integer class per image, in range), :func:`check_finite`, :func:`check_same_shape`;
* scalars and options: :func:`check_int`, :func:`check_number` (finite, in a range), :func:`check_bool`,
  :func:`check_choice`, :func:`check_sequence` (non-empty), :func:`check_type` (a value against a type
  annotation such as ``int | None`` or ``tuple[str, ...]``; what spec strings are checked with).

Value checks run on the host on concrete values; under ``jax.jit`` (tracers) only the static checks
(shapes, dtypes) apply. The finiteness test of a ``jax.Array`` is one ``isfinite`` reduction on its
device (one scalar comes back); a NumPy array is tested in place.
"""

import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

INT_LIMIT = 2**31  # integer options must fit int32 (jax's default integer)


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def _got(value) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_choice(argument: str, value, valid: Iterable[str]) -> None:
    """Raise ValueError if ``value`` is not one of ``valid`` (listing the valid ones)."""
    valid = list(valid)
    try:
        ok = any(value is v or (type(value) is type(v) and value == v) for v in valid)
    except (TypeError, ValueError):  # an array compared element-wise
        ok = False
    if not ok:
        raise ValueError(f"{argument}: unknown value {value!r}; expected one of {valid}")


def check_int(argument: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int; raise unless it is an integer (not a bool) in ``[low, high]`` and int32."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{argument}: expected an int, got {_got(value)}")
    value = int(value)
    lo = -INT_LIMIT if low is None else low
    hi = INT_LIMIT - 1 if high is None else high
    if not lo <= value <= hi:
        raise ValueError(f"{argument}: expected an int in [{lo}, {hi}], got {value}")
    return value


def check_number(
    argument: str, value, low: float | None = None, high: float | None = None, *, open_low: bool = False,
    open_high: bool = False,
) -> float:  # fmt: skip
    """``value`` as a float; raise unless it is a finite real number (not a bool) within the bounds
    (``open_low`` / ``open_high`` exclude the bound itself)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{argument}: expected a number, got {_got(value)}")
    if not _finite_float(value):
        raise ValueError(f"{argument}: expected a finite number, got {value}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{argument}: expected a finite number, got {value}")
    bad_low = low is not None and (value <= low if open_low else value < low)
    bad_high = high is not None and (value >= high if open_high else value > high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = (
            f"{'(' if open_low or low is None else '['}{lo}, {hi}{')' if open_high or high is None else ']'}"
        )
        raise ValueError(f"{argument}: expected a value in {interval}, got {value}")
    return value


def check_bool(argument: str, value) -> bool:
    """Raise unless ``value`` is a bool (``True`` / ``False``, or a NumPy bool)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{argument}: expected True or False, got {_got(value)}")
    return bool(value)


def check_sequence(argument: str, value, min_len: int = 1) -> tuple:
    """``value`` as a tuple; raise unless it is a list / tuple / 1-D array with >= ``min_len`` items."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence | np.ndarray | jax.Array):
        raise ValueError(f"{argument}: expected a sequence, got {_got(value)}")
    if np.ndim(value) > 1:
        raise ValueError(f"{argument}: expected a 1-D sequence, got shape {np.shape(value)}")
    if len(value) < min_len:
        raise ValueError(f"{argument}: expected at least {min_len} item(s), got {len(value)}")
    return tuple(value)


def _dtype(argument: str, value) -> np.dtype:
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return np.dtype(dtype)
    try:
        return np.asarray(value).dtype
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise ValueError(
            f"{argument}: expected a rectangular numeric array, got {type(value).__name__}"
        ) from e


def check_real(argument: str, value) -> np.dtype:
    """Raise unless ``value`` is an array (or nested list) of real numbers (not complex, bool, text);
    bfloat16 counts as a float (``jnp.issubdtype``; numpy does not know it)."""
    dtype = _dtype(argument, value)
    if dtype == np.bool_ or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"{argument}: expected real numbers (int or float dtype), got dtype {dtype}")
    return dtype


def check_images(
    images, argument: str = "images", min_size: int = 1, channels: int | None = 3, finite: bool = True
) -> None:
    """Images must be (N, H, W, C) real numbers with N >= 1, H, W >= min_size, C == channels and (when
    ``finite`` and concrete) no NaN or inf. H and W may differ. A NumPy or jax array, not a nested list."""
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        raise ValueError(
            f"{argument}: expected a NumPy or jax array (N, H, W, C), got {type(images).__name__}"
        )
    check_real(argument, images)
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
    if finite:
        check_finite(argument, images)


def check_targets(
    targets, num_images: int, num_classes: int | None = None, argument: str = "targets"
) -> None:
    """Targets are one int class index per image: shape (N,), values in [0, num_classes)."""
    dtype = _dtype(argument, targets)
    shape = np.shape(targets)
    if shape != (num_images,):
        raise ValueError(f"{argument}: expected shape ({num_images},) (one class per image), got {shape}")
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{argument}: expected integer class indices, got dtype {dtype}")
    if is_concrete(targets):
        t = np.asarray(targets)
        high = num_classes if num_classes is not None else INT_LIMIT
        if t.size and (t.min() < 0 or t.max() >= high):
            raise ValueError(
                f"{argument}: class indices must lie in [0, {high}), got min {t.min()} max {t.max()}"
            )


def check_same_shape(argument: str, value, expected: Sequence[int], expected_name: str) -> None:
    """Raise if ``value`` does not have the shape of ``expected_name``."""
    if tuple(np.shape(value)) != tuple(expected):
        raise ValueError(
            f"{argument}: expected shape {tuple(expected)} (as {expected_name}), got {np.shape(value)}"
        )


def check_finite(argument: str, value) -> None:
    """Raise if a concrete array holds NaN or inf (one reduction on the array's device)."""
    if not is_concrete(value):
        return
    if isinstance(value, jax.Array):
        if not jnp.issubdtype(value.dtype, jnp.inexact) or bool(jnp.isfinite(value).all()):
            return
        value = np.asarray(value)
    else:
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.inexact) or np.isfinite(value).all():
            return
    n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
    first = np.argwhere(~np.isfinite(value))[0].tolist()
    raise ValueError(
        f"{argument}: contains NaN or inf values ({n_nan} NaN, {n_inf} inf, first at index {first}); "
        "expected finite values"
    )


# ------------------------------------------------------------------------------ type annotations


def describe_type(annotation) -> str:
    """A readable name of a type annotation: ``int | None``, ``tuple[str, ...]``."""
    if annotation is type(None) or annotation is None:
        return "None"
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(describe_type(a) for a in args)
    origin = typing.get_origin(annotation)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else describe_type(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _finite_float(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        return False


def matches_type(value, annotation) -> bool:
    """Whether ``value`` is of ``annotation``: classes, ``X | Y``, ``tuple[X, ...]``, ``Sequence[X]``,
    ``list[X]``, ``dict``; ``int`` excludes bools and must fit int32, ``float`` takes finite ints and
    floats. ``typing.Any`` and unannotated parameters match everything."""
    if annotation is typing.Any or annotation is None and value is None:
        return True
    if annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        return any(matches_type(value, a) for a in args)
    if annotation is bool:
        return isinstance(value, bool | np.bool_)
    if annotation is int:
        return (
            isinstance(value, numbers.Integral)
            and not isinstance(value, bool)
            and -INT_LIMIT <= value < INT_LIMIT
        )
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and _finite_float(value)
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        if not isinstance(value, tuple | list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches_type, value, args))
        return not args or all(matches_type(v, args[0]) for v in value)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return isinstance(value, Mapping)
    return isinstance(annotation, type) and isinstance(value, annotation)


def check_type(argument: str, value, annotation) -> None:
    """Raise ValueError unless ``value`` matches the type ``annotation`` (see :func:`matches_type`)."""
    if not matches_type(value, annotation):
        raise ValueError(f"{argument}: expected {describe_type(annotation)}, got {_got(value)}")
