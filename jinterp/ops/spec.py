"""Spec strings shared by every registry: ``'score_cam(layer="conv5_3", batch=64)'`` <-> (name, options).

A spec is a bare name or a call with keyword arguments whose values are Python literals. It is
parsed with :mod:`ast` (``ast.literal_eval`` per value); nothing is ever evaluated. Lists become
tuples, so options are hashable (static jit arguments, frozen dataclass fields).

>>> parse('score_cam(layer="conv5_3", batch=64)')
('score_cam', {'layer': 'conv5_3', 'batch': 64})
>>> format_spec("grad_cam", {"layer": "conv4"})
"grad_cam(layer='conv4')"
>>> with_options("grad_cam", accepted=("layer",), layer="conv4", batch=8)
"grad_cam(layer='conv4')"

:func:`bind` is what registries call: a spec's options checked against the factory's signature
(unknown, repeated or missing options) and each value against the parameter's type annotation
(:func:`jinterp.checks.check_type`; an unannotated parameter with a bool / int / float / str default
takes that type), defaults filled in.
"""

import ast
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

from jinterp.checks import check_type


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """``'score_cam(layer="conv5_3", batch=64)'`` -> ``("score_cam", {"layer": "conv5_3", "batch": 64})``.

    Accepts a bare name or a call with keyword arguments whose values are literals (numbers,
    strings, tuples/lists, None, booleans). Raises ValueError otherwise, and for an option given twice.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"spec: expected a string such as 'grad_cam(layer=\"conv5_3\")', got {type(spec).__name__}"
        )
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"spec: cannot parse {spec!r}: {e.msg}") from e
    if isinstance(node, ast.Name):
        return node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"spec: expected 'name' or 'name(key=value, ...)', got {spec!r}")
    if node.args:
        raise ValueError(f"spec: options must be keyword arguments (key=value), got {spec!r}")
    options = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"spec: '**' is not allowed in {spec!r}")
        if kw.arg in options:
            raise ValueError(f"spec: option {kw.arg!r} is given twice in {spec!r}")
        try:
            value = ast.literal_eval(kw.value)
        except ValueError as e:
            raise ValueError(f"spec: option {kw.arg!r} must be a literal in {spec!r}") from e
        options[kw.arg] = tuple(value) if isinstance(value, list) else value
    return node.func.id, options


def format_spec(name: str, options: dict[str, Any]) -> str:
    """Inverse of :func:`parse`: ``format_spec(*parse(s))`` parses back to the same name and options."""
    if not options:
        return name
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


def with_options(spec: str, accepted: Iterable[str] | None = None, **defaults) -> str:
    """``spec`` with each of ``defaults`` added where the spec leaves it out.

    Options the spec sets win; with ``accepted`` (option names), defaults outside it are dropped; a
    default of None is treated as "no default". ``with_options('sync', layer="conv4")`` ->
    ``"sync(layer='conv4')"``.
    """
    name, options = parse(spec)
    accepted = None if accepted is None else set(accepted)
    for key, value in defaults.items():
        if value is not None and key not in options and (accepted is None or key in accepted):
            options[key] = value
    return format_spec(name, options)


def check_options(argument: str, name: str, options: dict[str, Any], valid: Iterable[str]) -> None:
    """Raise ValueError naming the first of ``options`` that is not in ``valid``, and the valid ones."""
    valid = list(valid)
    for key in options:
        if key not in valid:
            raise ValueError(f"{argument}: unknown option {key!r} for {name!r}; valid options: {valid}")


def _option_type(param: inspect.Parameter, hints: dict):
    if param.name in hints:
        return hints[param.name]
    if isinstance(param.default, bool | int | float | str):
        return type(param.default)
    return typing.Any


def bind(argument: str, name: str, factory: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """``factory``'s options with defaults, updated by ``options``, each checked against the signature.

    Raises ValueError (naming ``argument``, the option, the expected type and the value) for an option
    the factory has no parameter for, a missing required option, or a value whose type does not match
    the parameter's annotation (e.g. ``layer=5`` for ``layer: str | None``, ``samples='4'`` for ``int``).
    """
    sig = inspect.signature(factory)
    params = sig.parameters
    check_options(argument, name, options, params)
    hints = typing.get_type_hints(factory)
    for key, value in options.items():
        check_type(f"{argument}: option {key!r} of {name!r}", value, _option_type(params[key], hints))
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in options]
    if missing:
        raise ValueError(f"{argument}: {name!r} needs option(s) {missing}, e.g. {name}({missing[0]}=...)")
    return {k: options.get(k, p.default) for k, p in params.items()}
