"""Static sign analysis of a jaxpr: which values are provably non-negative for *every* input.

LRP's z+ / alpha-beta rules need one linear map and one transpose per share when a layer's input
is non-negative (``a^- = 0``), and two of each otherwise. Whether an input is non-negative is a
property of the network (it follows a ReLU, a max-pool of one, a concatenation of such), so it is
decided once at trace time by walking the jaxpr forward, instead of testing on device per call.

The analysis is conservative: an operation it does not know makes its output "unknown", which only
costs speed (the general rule is used), never correctness.
"""

import jax
import numpy as np
from jax.extend import core

# Outputs are non-negative when every (array) operand is.
_PRESERVING = {
    "add", "mul", "div", "min", "reshape", "transpose", "broadcast_in_dim", "squeeze",
    "expand_dims", "slice", "dynamic_slice", "concatenate", "copy", "copy_p", "convert_element_type",
    "reduce_sum", "reduce_max", "reduce_min", "reduce_window_sum", "dot_general", "conv_general_dilated",
    "stop_gradient", "sqrt", "rsqrt", "cumsum", "name", "optimization_barrier", "reduce_precision",
}  # fmt: skip
# Outputs are non-negative whatever the operands.
_ALWAYS = {"abs", "exp", "logistic", "square", "exp2"}


def _literal_nonneg(x) -> bool:
    return isinstance(x, core.Literal) and bool(np.all(np.asarray(x.val) >= 0))


def _const_signs(closed) -> list[bool]:
    """Signs of a closed jaxpr's constants, read from their values (abstract ones are unknown)."""
    out = []
    for c in closed.consts:
        try:
            out.append(bool(np.all(np.asarray(c) >= 0)))
        except (TypeError, jax.errors.TracerArrayConversionError):
            out.append(False)
    return out


def _sub_jaxpr(eqn):
    """The inner (closed) jaxpr of a call-like equation (jit, custom_jvp_call, custom_vjp_call, remat)."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if inner is not None:
            return inner
    return None


def _window_has_data(eqn) -> bool:
    """A max-pool window that lies wholly in the (-inf) padding would output -inf."""
    pads, dims = eqn.params.get("padding", ()), eqn.params.get("window_dimensions", ())
    return all(lo < d and hi < d for (lo, hi), d in zip(pads, dims, strict=True))


def nonneg_outputs(closed, nonneg_inputs, names: dict | None = None) -> list[bool]:
    """Per output of ``closed`` (a ``ClosedJaxpr`` or ``Jaxpr``): provably >= 0, given which inputs
    are (``nonneg_inputs``, bools); constants are judged by their values.

    ``names`` (optional dict) is filled with ``{name: bool}`` for every ``checkpoint_name``-marked
    value met on the way, which is how callers ask about intermediate values.
    """
    jaxpr = closed.jaxpr if isinstance(closed, core.ClosedJaxpr) else closed
    sign = dict(zip(jaxpr.invars, nonneg_inputs, strict=True))
    if isinstance(closed, core.ClosedJaxpr):
        sign.update(zip(jaxpr.constvars, _const_signs(closed), strict=True))

    def known(x):
        return _literal_nonneg(x) if isinstance(x, core.Literal) else sign.get(x, False)

    for eqn in jaxpr.eqns:
        name, ins = eqn.primitive.name, [known(x) for x in eqn.invars]
        inner = _sub_jaxpr(eqn)
        if inner is not None:
            n_in = len((inner.jaxpr if isinstance(inner, core.ClosedJaxpr) else inner).invars)
            outs = nonneg_outputs(inner, ins[len(ins) - n_in :], names)
        elif name == "max":
            outs = [any(ins)] * len(eqn.outvars)
        elif name == "integer_pow":
            outs = [eqn.params["y"] % 2 == 0 or all(ins)]
        elif name == "pad":
            outs = [ins[0] and ins[1]]  # operand and padding value
        elif name == "select_n":
            outs = [all(ins[1:])]  # the cases; the predicate does not matter
        elif name == "reduce_window_max":
            outs = [all(ins) and _window_has_data(eqn)]
        elif name in _ALWAYS:
            outs = [True] * len(eqn.outvars)
        elif name in _PRESERVING:
            outs = [all(ins)] * len(eqn.outvars)
        else:
            outs = [False] * len(eqn.outvars)
        if name == "name" and names is not None:
            names[eqn.params["name"]] = outs[0]
        sign.update(zip(eqn.outvars, outs, strict=True))
    return [known(x) for x in jaxpr.outvars]


def nonneg_names(fun, nonneg_args, *args) -> dict:
    """Trace ``fun(*args)`` and return ``{name: provably >= 0}`` for its ``checkpoint_name`` marks.

    ``nonneg_args``: one bool per positional argument (applied to all of its leaves).
    """
    closed = jax.make_jaxpr(fun)(*args)
    flags = [
        flag for arg, flag in zip(args, nonneg_args, strict=True) for _ in jax.tree_util.tree_leaves(arg)
    ]
    names: dict = {}
    nonneg_outputs(closed, flags, names)
    return names
