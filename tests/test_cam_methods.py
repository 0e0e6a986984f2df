"""CAM family: registry and specs, analytic cases (CAM, Cluster-CAM), invariances, bad input, retracing."""

import dataclasses
import functools
from typing import ClassVar

import chex
import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp as ji
from jinterp.backbones import Backbone
from jinterp.explain import pipeline

CAM_METHODS = [
    "cam", "grad_cam", "grad_cam_pp", "smooth_grad_cam_pp", "xgrad_cam", "hires_cam", "layer_cam",
    "eigen_cam", "score_cam", "ablation_cam", "group_cam", "cluster_cam",
]  # fmt: skip


@pytest.fixture(scope="module")
def small():
    model = ji.backbones.create("small_cnn", num_classes=5, widths=(8, 8, 16, 16, 32, 32))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    return model, variables, x, jnp.array([0, 2, 4])


def test_registry_lists_every_cam_with_metadata():
    assert set(CAM_METHODS) <= set(ji.explain.METHODS)
    m = ji.explain.METHODS
    assert m["score_cam"].passes(512) == (513, 0)
    assert m["cluster_cam"].passes(512) == (7, 0)
    assert m["cluster_cam"].passes(512, clusters=3) == (4, 0)
    assert m["grad_cam"].passes(512) == (1, 1) and m["grad_cam"].needs_gradients
    assert not m["ablation_cam"].needs_gradients and m["group_cam"].passes(512) == (34, 1)


def test_spec_parsing_is_literal_only():
    assert ji.explain.parse('score_cam(layer="conv5_3", batch=64)') == (
        "score_cam",
        {"layer": "conv5_3", "batch": 64},
    )
    assert ji.explain.parse("grad_cam(layer=['a', 'b'])") == ("grad_cam", {"layer": ("a", "b")})
    assert ji.explain.parse(" eigen_cam ") == ("eigen_cam", {})
    for bad in ['grad_cam(layer=open("x"))', "grad_cam('conv5_3')", "grad_cam(**d)", "a.b()", "grad_cam("]:
        with pytest.raises(ValueError, match="spec"):
            ji.explain.parse(bad)
    with pytest.raises(ValueError, match="unknown method 'gradcam'.*grad_cam"):
        ji.explain.get("gradcam")
    with pytest.raises(ValueError, match="unknown option .layers.*valid"):
        ji.explain.get("grad_cam(layers='x')")
    with pytest.raises(ValueError, match="score"):
        ji.explain.get("score_cam(score='prob')")


def trace_counted(monkeypatch, method: str) -> str:
    """Register ``method`` again as ``<method>_counted``, its function wrapped in ``chex.assert_max_traces``.

    ``ji.explain.explain`` jits the factory's function once per spec; with the wrapper inside that jit, a
    second trace (a retrace on a call with the same shapes) raises AssertionError.
    """
    m = ji.explain.METHODS[method]

    @functools.wraps(m.factory)  # keeps the signature: options are validated as for the original
    def factory(**options):
        return chex.assert_max_traces(m.factory(**options), n=1)

    name = f"{method}_counted"
    monkeypatch.setitem(ji.explain.METHODS, name, dataclasses.replace(m, name=name, factory=factory))
    return name


@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_method_gives_scaled_maps_without_retrace(small, method, monkeypatch):
    model, variables, x, t = small
    chex.clear_trace_counter()
    spec = f"{trace_counted(monkeypatch, method)}(layer='conv4')"
    h = ji.explain.explain(spec, model, variables, x, t)
    h2 = ji.explain.explain(spec, model, variables, x + 0.1, t[::-1])  # same shapes: no retrace
    assert h.shape == (3, 32, 32) and h.dtype == jnp.float32
    for a in (h, h2):
        a = np.asarray(a)
        top = a.max(axis=(1, 2))  # 0 only when ReLU kills a whole map
        assert np.isfinite(a).all() and a.min() >= 0 and top.max() > 1 - 1e-5
        assert np.all((np.abs(top - 1) < 1e-5) | (top == 0))
    if method in ("grad_cam", "eigen_cam"):  # the un-jitted pure function agrees (eager is slow)
        spec = f"{method}(layer='conv4')"
        np.testing.assert_allclose(ji.explain.get(spec)(model, variables, x, t), h, atol=1e-4)


FAST_DEAD = {"grad_cam", "eigen_cam", "score_cam", "ablation_cam", "group_cam"}


@pytest.mark.parametrize(
    "method", [m if m in FAST_DEAD else pytest.param(m, marks=pytest.mark.slow) for m in CAM_METHODS]
)
def test_dead_layer_gives_zero_heatmap(small, method):
    model, variables, x, t = small
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: -10 * jnp.ones_like(v) if "conv6" in str(p) and "bias" in str(p) else v, variables
    )  # BN bias -10: conv6 is ReLU(negative) = 0 everywhere
    _, out = model.apply(params, x)
    assert float(jnp.abs(out["conv6"]).max()) == 0
    h = np.asarray(ji.explain.explain(f"{method}(layer='conv6')", model, params, x, t))
    assert np.isfinite(h).all() and np.abs(h).max() == 0


def test_bad_input_raises(small):
    model, variables, x, t = small
    with pytest.raises(ValueError, match="layer.*conv9.*conv6"):
        ji.explain.explain("grad_cam(layer='conv9')", model, variables, x, t)
    with pytest.raises(ValueError, match="targets.*shape"):
        ji.explain.explain("grad_cam", model, variables, x, t[:2])
    with pytest.raises(ValueError, match=r"targets.*\[0, 5\)"):
        ji.explain.explain("score_cam", model, variables, x, jnp.array([0, 1, 5]))
    with pytest.raises(ValueError, match="images.*rank-4"):
        ji.explain.explain("grad_cam", model, variables, x[0], t[:1])
    with pytest.raises(ValueError, match="images"):
        ji.explain.get("ablation_cam")(model, variables, x[..., :1], t)
    with pytest.raises(ValueError, match="clusters"):
        ji.explain.explain("cluster_cam(layer='conv1', clusters=9)", model, variables, x, t)
    with pytest.raises(ValueError, match="beta"):
        ji.explain.explain("cluster_cam(beta=2.0)", model, variables, x, t)


def test_default_layer_is_last_spatial_layer(small):
    model, variables, x, t = small
    assert pipeline.default_layer(model) == "conv6"
    assert pipeline.default_layer(ji.backbones.create("vgg16")) == "pool5"
    assert pipeline.default_layer(ji.backbones.create("resnet18")) == "layer4"
    a = ji.explain.explain("grad_cam", model, variables, x, t)
    np.testing.assert_array_equal(a, ji.explain.explain("grad_cam(layer='conv6')", model, variables, x, t))


def test_cam_equals_classifier_weights_on_gap_head(small):
    """CAM eq. 1-2 re-derived from the Dense kernel: sum_k W[k, c] A_k, ReLU, cv2 resize, scaling."""
    model, variables, x, t = small
    _, out = model.apply(variables, x)
    w = np.asarray(variables["params"]["fc"]["kernel"])[:, np.asarray(t)].T  # (N, C)
    low = np.maximum(np.einsum("nhwc,nc->nhw", np.asarray(out["conv6"]), w), 0)
    ref = []
    for m in low:
        m = (m - m.min()) / (m.max() - m.min() + 1e-7)
        m = cv2.resize(m.astype(np.float32), (32, 32))
        ref.append((m - m.min()) / (m.max() - m.min() + 1e-7))
    h = ji.explain.explain("cam(layer='conv6')", model, variables, x, t)
    np.testing.assert_allclose(h, np.stack(ref), atol=1e-5)


def test_smooth_grad_cam_pp_without_noise_is_grad_cam_pp(small):
    model, variables, x, t = small
    a = ji.explain.explain("smooth_grad_cam_pp(layer='conv5', std=0.0, samples=2)", model, variables, x, t)
    b = ji.explain.explain("grad_cam_pp(layer='conv5')", model, variables, x, t)
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = ji.explain.explain("smooth_grad_cam_pp(layer='conv5')", model, variables, x, t)
    assert np.abs(np.asarray(c) - np.asarray(b)).max() > 1e-3


@pytest.mark.slow
def test_score_cam_paper_variant_options(small):
    """Baseline subtraction leaves the channel softmax unchanged (a per-image constant) but changes
    un-softmaxed weights; the softmax score changes the result."""
    model, variables, x, t = small
    e = ji.explain.explain
    a = e("score_cam(layer='conv5')", model, variables, x, t)
    np.testing.assert_allclose(
        e("score_cam(layer='conv5', baseline=True)", model, variables, x, t), a, atol=1e-5
    )
    b = e("score_cam(layer='conv5', channel_softmax=False, score='softmax')", model, variables, x, t)
    c = e(
        "score_cam(layer='conv5', channel_softmax=False, score='softmax', baseline=True)",
        model,
        variables,
        x,
        t,
    )
    assert np.abs(np.asarray(b) - np.asarray(c)).max() > 1e-3


# ------------------------------------------------------------------- Cluster-CAM, analytic model

BLOCKS = {
    "tl": (slice(0, 2), slice(0, 2)),
    "br": (slice(2, 4), slice(2, 4)),
    "tr": (slice(0, 2), slice(2, 4)),
}
SEEN = []  # images that went through the constructed model (counted by a host callback)


class Quadrants(Backbone):
    """Input side a multiple of 4 (tests use 16 px); layer ``feat`` (4x4x6) = mean brightness of
    each cell of a 4x4 grid times a fixed block pattern: channels 0-1 the top-left 2x2 cells, 2-3
    bottom-right, 4-5 top-right (scales 1, 1.1), i.e. three known clusters. Logit 0 = sum of the
    top-left quadrant - sum of the bottom-right; logit 1 = its negative."""

    num_classes: int = 2
    min_size: ClassVar[int] = 16

    @nn.compact
    def __call__(self, x):
        jax.debug.callback(lambda v: SEEN.append(np.size(v)), x[:, 0, 0, 0])
        out = {}
        n, h, w, _ = x.shape
        cell = x.mean(-1).reshape(n, 4, h // 4, 4, w // 4).mean((2, 4))
        pats = np.zeros((4, 4, 6), np.float32)
        for k, name in enumerate(["tl", "tl", "br", "br", "tr", "tr"]):
            pats[(*BLOCKS[name], k)] = 1.1 if k % 2 else 1.0
        self.tap("feat", cell[..., None] * pats, out)
        s = x[:, : h // 2, : w // 2].sum((1, 2, 3)) - x[:, h // 2 :, w // 2 :].sum((1, 2, 3))
        return jnp.stack([s, -s], -1), out


def test_cluster_cam_analytic():
    model, variables = Quadrants(), {}
    x = jnp.ones((2, 16, 16, 3))
    t = jnp.array([0, 1])
    SEEN.clear()
    d = ji.explain.cluster_cam_details(model, variables, x, t, clusters=3, beta=0.5, score="logit")
    jax.block_until_ready(d)
    labels = np.asarray(d["labels"])
    for lab in labels:  # the three known clusters, in some order
        assert (
            lab[0] == lab[1] and lab[2] == lab[3] and lab[4] == lab[5] and len({lab[0], lab[2], lab[4]}) == 3
        )
    # eq. 18-19 re-derived: cluster mean map, cv2 upsampling, min-max, masked score.
    for i in range(2):
        for q in range(3):
            members = labels[i] == q
            fbar = np.zeros((4, 4), np.float32)
            name = ["tl", "br", "tr"][int(np.argmax(members)) // 2]
            fbar[BLOCKS[name]] = 1.05  # mean of scales 1 and 1.1
            np.testing.assert_allclose(d["cluster_maps"][i, q], fbar, atol=1e-6)
            m = cv2.resize(fbar, (16, 16))
            m = (m - m.min()) / (m.max() - m.min() + 1e-8)
            y = 3 * (m[:8, :8].sum() - m[8:, 8:].sum()) * (1 if i == 0 else -1)
            np.testing.assert_allclose(d["scores"][i, q], y, rtol=1e-5)
    # eq. 20-21: image 0 (logit 0) keeps top-left, cuts bottom-right; image 1 the reverse.
    assert d["base"][0] == labels[0][0] and d["scissors"][0] == labels[0][2]
    assert d["base"][1] == labels[1][2] and d["scissors"][1] == labels[1][0]
    # eq. 22 -> ReLU keeps only the base block: the heatmap is the scaled, upsampled base map.
    for i, name in enumerate(["tl", "br"]):
        f = np.zeros((4, 4), np.float32)
        f[BLOCKS[name]] = 1
        ref = cv2.resize(f, (16, 16))
        np.testing.assert_allclose(d["heatmap"][i], ref / ref.max(), atol=1e-5)
    np.testing.assert_allclose(d["unmasked_score"], [0.0, 0.0], atol=1e-4)
    # Forward passes: 1 unmasked + Q masked per image, as METHODS states.
    assert sum(SEEN) == 2 * ji.explain.METHODS["cluster_cam"].passes(6, clusters=3)[0]
    spec = "cluster_cam(clusters=3, method='spectral', beta=0.5, score='logit')"
    h = ji.explain.explain(spec, model, variables, x, t)
    np.testing.assert_allclose(h, d["heatmap"], atol=1e-5)


def test_cluster_cam_spectral_graphs_are_eq12_on_ssim_and_eq11_on_eq17():
    """'spectral': A = exp(-(d / median d)^2) where SSIM > theta (eq. 12, sigma in units of the median
    distance); 'spectral_normalized': A = exp(-(1 - exp(-d)) / sigma) where exp(-d) > theta (eq. 17, 11)."""
    from jinterp.explain import masking
    from jinterp.ops.clustering import ssim_matrix

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (6, 64)).astype(np.float32)  # 6 maps of 8 x 8, already in [0, 1]
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    s = np.asarray(ssim_matrix(jnp.asarray(x.reshape(6, 8, 8))))
    med = np.median(d[~np.eye(6, dtype=bool)])
    theta = float(np.median(s))  # cuts about half of the edges
    ours = masking._spectral_affinity(jnp.asarray(x), "spectral", 2.0, theta, (8, 8))
    np.testing.assert_allclose(ours, np.where(s > theta, np.exp(-((d / (2.0 * med)) ** 2)), 0.0), atol=1e-5)
    assert 0 < np.sum(np.asarray(ours) == 0) < 36
    old = masking._spectral_affinity(jnp.asarray(x), "spectral_normalized", 0.5, 0.01, (8, 8))
    np.testing.assert_allclose(
        old, np.where(np.exp(-d) > 0.01, np.exp(-(1 - np.exp(-d)) / 0.5), 0.0), atol=1e-5
    )


# ------------------------------------------------------------------ Group-CAM, NumPy re-derivation


def _kornia_blur_np(img, k=51, s=50.0):
    x = np.arange(k) - k // 2
    g = np.exp(-(x**2) / (2 * s**2))
    g = g / g.sum()
    p = np.pad(img, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    p = np.apply_along_axis(lambda v: np.convolve(v, g, "valid"), 0, p)
    return np.apply_along_axis(lambda v: np.convolve(v, g, "valid"), 1, p)


def test_group_cam_matches_reference_code_steps(small):
    """wofmanaf/Group-CAM ``groupcam.py`` re-derived in NumPy, one image and group at a time."""
    model, variables, x, t = small
    h = ji.explain.explain("group_cam(layer='conv5', groups=8)", model, variables, x, t)
    _, maps, grads = ji.backbones.feature_grads(model, variables, x, t, "conv5")
    a = np.asarray(maps["conv5"]) * np.asarray(grads["conv5"]).mean((1, 2), keepdims=True)
    probs = lambda z: np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(z)[None])[0][0]))  # noqa: E731
    checked = 0
    for i in range(3):
        img = np.asarray(x[i])
        blur = _kornia_blur_np(img)
        base = probs(blur)[t[i]]
        total = np.zeros((32, 32))
        for chunk in np.split(a[i], 8, axis=-1):  # torch.chunk(8) of 32 channels
            s = np.maximum(chunk.sum(-1), 0)
            s = np.where(s > np.percentile(s, 70), s, 0)
            s = cv2.resize(s.astype(np.float32), (32, 32))
            if s.max() == s.min():
                continue
            m = (s - s.min()) / (s.max() - s.min())
            total += (probs(img * m[..., None] + blur * (1 - m[..., None]))[t[i]] - base) * m
        total = np.maximum(total, 0)
        if total.max() == total.min():  # the reference returns None; jinterp a zero map
            np.testing.assert_array_equal(h[i], 0)
            continue
        checked += 1
        np.testing.assert_allclose(h[i], (total - total.min()) / (total.max() - total.min()), atol=1e-4)
    assert checked >= 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["score_cam", "cluster_cam"])
def test_masking_memory_is_bounded_by_batch(small, method):
    """XLA's temporary buffers grow with ``batch`` (masked copies in flight), not with channels x images."""
    model, variables, x, t = small
    x = jnp.concatenate([x] * 4)  # 12 images x 32 channels = 384 masked copies for Score-CAM
    t = jnp.concatenate([t] * 4)

    def temp_bytes(batch):
        fn = ji.explain.jitted(f"{method}(layer='conv5', batch={batch})")
        return fn.lower(model, variables, x, t).compile().memory_analysis().temp_size_in_bytes

    small_b, large_b = temp_bytes(2), temp_bytes(64)
    assert small_b < large_b / 2
