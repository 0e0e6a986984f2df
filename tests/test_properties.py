"""Property-based tests (hypothesis): random images, targets, masks and spec strings give either a
ValueError naming the argument or a finite result in range; never a raw error from inside jax / numpy.

Bounded so the default suite stays fast (profile ``default`` in conftest.py: few examples); ``.ci/run``
uses ``--hypothesis-profile=ci`` (more examples). Validation failures cost no compilation; the shapes
that pass are few and fixed, so each compiles once.
"""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jinterp as ji
import jinterp.metrics as jm

MODEL = ji.backbones.create("small_cnn", num_classes=10)
VARIABLES = MODEL.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
FAST = ["grad_cam", "layer_cam", "eigen_cam", "lrp", "crp"]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30]


@st.composite
def images(draw):
    """(N, H, W, C) arrays: mostly valid 32 px float32, else a wrong rank / channel count / dtype,
    N = 0, a constant image, or NaN / inf pixels."""
    kind = draw(st.sampled_from(["ok", "ok", "constant", "special", "rank", "channels", "empty", "dtype"]))
    n = draw(st.integers(1, 2))
    shape = {"rank": (n, 32, 32), "channels": (n, 32, 32, 4), "empty": (0, 32, 32, 3)}.get(
        kind, (n, 32, 32, 3)
    )
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    if kind == "constant":
        x[:] = draw(st.sampled_from([0.0, 1.0, -3.0]))
    if kind == "special":
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(SPECIAL[:3]))
    if kind == "dtype":
        x = x.astype(draw(st.sampled_from([np.complex64, np.bool_, np.uint8, np.float64])))
    return x


@st.composite
def targets_for(draw, n):
    kind = draw(st.sampled_from(["ok", "ok", "float", "range", "length", "list"]))
    t = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), np.int32)
    if kind == "float":
        return t.astype(np.float32)
    if kind == "range":
        t[0] = draw(st.sampled_from([-1, 10, 2**40 % 2**31]))
    if kind == "length":
        return np.concatenate([t, t])
    if kind == "list":
        return t.tolist()
    return t


def _finite_in_unit_range(heat, shape):
    heat = np.asarray(heat)
    assert heat.shape == shape and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6


@pytest.mark.parametrize("name", FAST)
@given(data=st.data())
def test_explain_is_a_clear_error_or_a_finite_heatmap(name, data):
    x = data.draw(images())
    t = data.draw(targets_for(max(np.shape(x)[0], 1)))
    try:
        heat = ji.explain.explain(name, MODEL, VARIABLES, x, t)
    except ValueError as e:
        assert str(e).split(":")[0] in ("images", "targets"), e
        return
    _finite_in_unit_range(heat, np.shape(x)[:3])


OPTION_VALUES = [
    -1,
    0,
    1,
    2,
    3,
    1.5,
    0.5,
    -0.5,
    150,
    "x",
    None,
    True,
    (),
    ("conv6",),
    "conv6",
    "conv9",
    [1, 2],
]
OPTIONS = {
    "smooth_grad_cam_pp": ["layer", "samples", "std", "seed"],
    "group_cam": ["layer", "groups", "percentile", "blur_kernel", "blur_sigma", "batch"],
    "cluster_cam": ["layer", "clusters", "beta", "method", "seed", "iters", "n_init", "sigma", "theta"],
    "score_cam": ["layer", "batch", "score", "channel_softmax", "baseline"],
    "lrp": ["composite", "init", "low", "high", "gamma"],
    "clrp": ["composite", "variant", "low", "high"],
    "crp": ["layer", "channel", "composite"],
    "eigen_cam": ["layer", "sign"],
}


@given(
    name=st.sampled_from(sorted(OPTIONS)),
    data=st.data(),
)
def test_spec_strings_with_random_options_are_clear_errors_or_usable(name, data):
    keys = data.draw(st.lists(st.sampled_from(OPTIONS[name]), max_size=3, unique=True))
    options = {k: data.draw(st.sampled_from(OPTION_VALUES)) for k in keys}
    spec = ji.explain.format_spec(name, options)
    try:
        ji.explain.get(spec)
    except ValueError as e:
        assert str(e), spec
        return
    # accepted: the options are of the annotated types (the registry re-checks them the same way)
    ji.explain.method(spec)


@st.composite
def masks(draw):
    kind = draw(st.sampled_from(["ok", "ok", "bool", "empty_ok", "nan", "range", "shape"]))
    m = np.zeros((2, 16, 16), np.float32)
    m[:, 4:10, 4:10] = 1
    if kind == "bool":
        m = m.astype(bool)
    if kind == "empty_ok":
        m[0] = 0
    if kind == "nan":
        m[1, 2, 3] = np.nan
    if kind == "range":
        m = m * 3
    if kind == "shape":
        m = m[:, :8]
    return m


@given(heat=st.sampled_from(["random", "zero", "constant", "nan", "negative"]), mask=masks())
def test_localisation_metrics_are_clear_errors_or_finite(heat, mask):
    h = {"random": np.random.default_rng(0).random((2, 16, 16)), "zero": np.zeros((2, 16, 16)),
         "constant": np.full((2, 16, 16), 0.5), "negative": -np.random.default_rng(1).random((2, 16, 16)),
         "nan": np.where(np.eye(16)[None] > 0, np.nan, 0.5) * np.ones((2, 16, 16))}[heat]  # fmt: skip
    for fn in (jm.pointing_game, jm.relevance_mass, jm.energy_pointing_game, jm.localization_iou):
        try:
            out = fn(h, mask, empty="ignore")
        except ValueError as e:
            assert str(e).split(":")[0] in ("heatmaps", "masks"), e
            continue
        assert np.isfinite(np.asarray(out["mean"])), (fn.__name__, heat)
