"""CRP: zennit-crp parity on identical VGG16 weights, partition of relevance over channels, chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jinterp.backbones as B
from jinterp.explain import crp as C
from jinterp.explain import explain, lrp

torch = pytest.importorskip("torch")
import tests.torch_refs as torch_refs  # noqa: E402  (installs the torchvision stand-in)


@pytest.mark.slow
def test_conditional_heatmaps_match_zennit_crp_vgg16():
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import VGGCanonizer

    tm = torch_refs.build("vgg16", num_classes=10, seed=0)
    model, v = B.create("vgg16", num_classes=10), B.from_torch("vgg16", tm.state_dict())
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    t = int(np.asarray(model.apply(v, x)[0]).argmax())
    _, _, all_rel = C.conditional_heatmaps(model, v, x, np.array([t]), "conv5_3", [0], abs_norm=True)
    chans = np.argsort(-np.abs(np.asarray(all_rel[0])))[:4]  # channels that carry relevance
    heat, rel, _ = C.conditional_heatmaps(model, v, x, np.array([t]), "conv5_3", chans, batch_size=3)

    attr, comp = CondAttribution(tm), EpsilonPlusFlat(canonizers=[VGGCanonizer()])
    xt = torch_refs.to_nchw(x).requires_grad_()
    conds = [{"features.28": [int(c)], "y": [t]} for c in chans]
    ref = attr(xt.repeat(len(chans), 1, 1, 1), conds, comp).heatmap.detach().numpy()
    ours = np.asarray(heat[0])
    for k in range(len(chans)):
        assert np.abs(ours[k] - ref[k]).max() < 1e-4 * np.abs(ref[k]).max()
    full = attr(torch_refs.to_nchw(x).requires_grad_(), [{"y": [t]}], comp, record_layer=["features.28"])
    want = ChannelConcept().attribute(full.relevances["features.28"], abs_norm=True).numpy()[0]
    np.testing.assert_allclose(np.asarray(all_rel[0]), want, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(np.asarray(rel[0]), want[chans], atol=1e-4 * np.abs(want).max())


@pytest.fixture(scope="module")
def small():
    model = B.create("small_cnn", num_classes=4, widths=(8, 8, 12), strides=(2, 1, 2))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    return model, model.init(jax.random.key(0), jnp.asarray(x)), x, np.array([1, 3])


def test_channel_heatmaps_partition_the_lrp_relevance(small):
    # Masks over all channels partition the relevance at the layer, and the lower backward is linear,
    # so the conditional input relevances must add up to the plain LRP input relevance.
    model, v, x, t = small
    heat, rel, all_rel = C.conditional_heatmaps(model, v, x, t, "conv2", None, batch_size=3, abs_norm=False)
    full = lrp.lrp_relevance(model, v, x, t, layers=("conv2",))
    np.testing.assert_allclose(
        heat.sum(1), full.input.sum(-1), rtol=1e-4, atol=1e-5 * np.abs(full.input).max()
    )
    np.testing.assert_allclose(all_rel, full.layers["conv2"].sum((1, 2)), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(rel, all_rel, rtol=1e-6)
    normed = C.channel_scores(full.layers["conv2"], abs_norm=True)
    np.testing.assert_allclose(np.abs(normed).sum(-1), 1.0, rtol=1e-5)


def test_per_image_channels_and_chunking_agree(small):
    model, v, x, t = small
    chans = np.array([[0, 5, 7], [2, 2, 6]])
    heat, rel, all_rel = C.conditional_heatmaps(model, v, x, t, "conv3", chans, batch_size=2)
    one, _, _ = C.conditional_heatmaps(model, v, x[1:], t[1:], "conv3", [6], batch_size=1)
    np.testing.assert_allclose(heat[1, 2], one[0, 0], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(heat[1, 0], heat[1, 1], rtol=0, atol=0)
    np.testing.assert_allclose(rel, np.take_along_axis(np.asarray(all_rel), chans, 1), rtol=1e-6)
    h = np.asarray(explain('crp(layer="conv3")', model, v, x, t))
    assert h.shape == (2, 32, 32) and h.min() >= 0 and h.max() <= 1


def test_vmapped_chunks_equal_one_channel_at_a_time_on_vgg():
    # Regression: XLA:CPU's YNNPACK fusion miscompiled the vmapped Flat-rule transpose (an all-ones
    # kernel) on VGG, giving 0 or 1e29 where one channel at a time was right.
    model = B.create("vgg11", num_classes=5)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    v = model.init(jax.random.key(0), x)
    t = np.array([2])
    chans = [1, 2, 3, 4, 5]
    chunked, _, _ = C.conditional_heatmaps(model, v, x, t, "conv3_1", chans, batch_size=5)
    single, _, _ = C.conditional_heatmaps(model, v, x, t, "conv3_1", chans, batch_size=1)
    assert np.abs(single).max() > 0
    np.testing.assert_allclose(chunked, single, rtol=1e-4, atol=1e-5 * float(np.abs(single).max()))


def test_dead_channels_are_skipped_exactly(small):
    # Channels without relevance at the layer have exactly zero heatmaps, wherever they sit in a chunk.
    model, v, x, t = small
    bn = v["params"]["conv3"]["bn"]
    dead = np.array([0, 3, 4, 5, 6, 7, 11])  # BN scale 0, bias < 0: ReLU output 0 for every input
    bn = {"scale": bn["scale"].at[dead].set(0.0), "bias": bn["bias"].at[dead].set(-1.0)}
    v = {**v, "params": {**v["params"], "conv3": {**v["params"]["conv3"], "bn": bn}}}
    heat, _, all_rel = C.conditional_heatmaps(model, v, x, t, "conv3", None, batch_size=2, abs_norm=False)
    assert np.all(np.asarray(all_rel)[:, dead] == 0) and np.all(np.asarray(all_rel)[:, [1, 2]] != 0)
    peak = np.abs(np.asarray(heat)).max((2, 3))
    assert np.all(peak[:, dead] == 0) and np.all(peak[:, [1, 2, 8, 9, 10]] > 0)
    full = lrp.lrp_relevance(model, v, x, t, layers=("conv3",))
    np.testing.assert_allclose(
        heat.sum(1), full.input.sum(-1), rtol=1e-4, atol=1e-5 * np.abs(full.input).max()
    )


def test_bad_channels_and_layers(small):
    model, v, x, t = small
    with pytest.raises(ValueError, match=r"channels: indices must lie in \[0, 12\)"):
        C.conditional_heatmaps(model, v, x, t, "conv3", [12])
    with pytest.raises(ValueError, match="conv1"):
        C.conditional_heatmaps(model, v, x, t, "conv7", [0])
    with pytest.raises(ValueError, match="channels: expected shape"):
        C.conditional_heatmaps(model, v, x, t, "conv3", np.zeros((3, 2), int))


def test_bfloat16_weights_are_explained_in_float32(small):
    """A bfloat16 model (mixed-precision training): LRP and CRP run their rules on the weights cast up
    to float32 (``lrp.rule_variables``), so they equal the float32 run of the same rounded weights
    exactly, instead of failing on a bfloat16 x float32 convolution."""
    model, v, x, t = small
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), v)
    rounded = jax.tree.map(lambda a: a.astype(jnp.float32), half)
    got = C.conditional_heatmaps(model, half, x.astype(jnp.bfloat16), t, "conv2", [0, 5])
    want = C.conditional_heatmaps(
        model, rounded, x.astype(jnp.bfloat16).astype(jnp.float32), t, "conv2", [0, 5]
    )
    for g, w in zip(got, want, strict=True):
        assert g.dtype == jnp.float32
        np.testing.assert_array_equal(g, w)
    lrp_half = lrp.lrp_relevance(model, half, x, t).input
    np.testing.assert_array_equal(lrp_half, lrp.lrp_relevance(model, rounded, x, t).input)
