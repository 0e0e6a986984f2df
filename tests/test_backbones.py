"""Backbones: torch parity on imported weights, tap shapes, hook-free gradients, errors."""

import io

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import jinterp as ji
from tests import torch_refs

NUM_CLASSES = 10


def _images(n, size, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _parity(name, size, n):
    torch_model = torch_refs.build(name, NUM_CLASSES)
    variables = ji.backbones.from_torch(name, torch_model.state_dict())
    model = ji.backbones.create(name, num_classes=NUM_CLASSES)
    x = _images(n, size)
    with torch.no_grad():
        ref = torch_model(torch_refs.to_nchw(x)).numpy()
    logits, _ = jax.jit(model.apply)(variables, x)
    return np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn", "resnet18", "resnet50", "densenet121"])
def test_logits_match_torch_at_224(name):
    assert _parity(name, 224, 1) < 1e-4


@pytest.mark.parametrize("name", sorted(ji.backbones.MODELS))
def test_logits_match_torch_at_small_size(name):
    # 48 px is not a multiple of 32: exercises floor-mode pooling and adaptive pooling up-sampling.
    assert _parity(name, 48 if name != "small_cnn" else 40, 2) < 1e-4


EXPECTED_SHAPES = {
    "vgg16": {"conv1_1": (224, 64), "conv4_3": (28, 512), "conv5_3": (14, 512), "pool5": (7, 512)},
    "resnet18": {"conv1": (112, 64), "layer1.1": (56, 64), "layer3": (14, 256), "layer4": (7, 512)},
    "resnet50": {"layer3": (14, 1024), "layer4": (7, 2048)},
    "densenet121": {
        "conv0": (112, 64),
        "denseblock3": (14, 1024),
        "transition3": (7, 512),
        "features": (7, 1024),
    },
    "small_cnn": {"conv1": (112, 32), "conv4": (56, 64), "conv6": (28, 128)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_out_holds_every_layer_with_documented_shape(name):
    model = ji.backbones.create(name, num_classes=7)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    (logits, out), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    assert list(ji.backbones.layer_names(model)) == list(out) or set(out) == set(
        ji.backbones.layer_names(model)
    )
    assert logits.shape == (2, 7)
    for layer, (side, channels) in EXPECTED_SHAPES[name].items():
        assert out[layer].shape == (2, side, side, channels), layer


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_conv_init_is_torchvisions_kaiming_fan_out(name):
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), zero conv bias; flax's
    # default lecun_normal would be sqrt(1 / fan_in): 2x smaller std where channels stay, and the
    # from-scratch VGG16 recipe sits at chance level for longer.
    model = ji.backbones.create(name, num_classes=4)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    flat = traverse_util.flatten_dict(params)
    kernels = {p: v for p, v in flat.items() if p[-2:] == ("conv", "kernel") and v.size > 4096}
    assert len(kernels) >= 12
    for path, kernel in kernels.items():
        kh, kw, _, out = kernel.shape
        expected = np.sqrt(2 / (kh * kw * out))
        np.testing.assert_allclose(float(jnp.std(kernel)), expected, rtol=0.1, err_msg=str(path))
    biases = [v for p, v in flat.items() if p[-2:] == ("conv", "bias")]
    assert all(not np.any(np.asarray(b)) for b in biases)


def test_layer_names_are_in_execution_order():
    assert ji.backbones.layer_names(ji.backbones.create("resnet18"))[:4] == (
        "conv1",
        "layer1.0",
        "layer1.1",
        "layer1",
    )
    vgg = ji.backbones.layer_names(ji.backbones.create("vgg11"))
    assert vgg == (
        "conv1_1",
        "conv2_1",
        "conv3_1",
        "conv3_2",
        "conv4_1",
        "conv4_2",
        "conv5_1",
        "conv5_2",
        "pool5",
    )


def _small_setup(seed=0):
    model = ji.backbones.create("small_cnn", num_classes=5)
    x = _images(3, 32, seed)
    variables = model.init(jax.random.key(seed), x)
    # non-trivial BN statistics so eval-mode BN is really exercised
    stats = jax.tree.map(
        lambda a: a + 0.3 * jax.random.uniform(jax.random.key(1), a.shape), variables["batch_stats"]
    )
    return model, {"params": variables["params"], "batch_stats": stats}, x


def _upper_small_cnn(variables, conv5_map):
    """conv6 + BN + ReLU + GAP + fc written directly in jax.lax: an independent split of the model."""
    p, s = variables["params"], variables["batch_stats"]
    y = jax.lax.conv_general_dilated(
        conv5_map,
        p["conv6"]["conv"]["kernel"],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    bn, st = p["conv6"]["bn"], s["conv6"]["bn"]
    y = (y - st["mean"]) / jnp.sqrt(st["var"] + 1e-5) * bn["scale"] + bn["bias"]
    y = jax.nn.relu(y).mean(axis=(1, 2))
    return y @ p["fc"]["kernel"] + p["fc"]["bias"]


def test_feature_grads_match_grad_of_split_model():
    model, variables, x = _small_setup()
    targets = jnp.array([0, 3, 1])
    logits, maps, grads = ji.backbones.feature_grads(model, variables, x, targets, ["conv5", "conv6"])
    np.testing.assert_allclose(logits, model.apply(variables, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_upper_small_cnn(variables, maps["conv5"]), logits, rtol=1e-4, atol=1e-4)

    def score(fmap):
        return jnp.take_along_axis(_upper_small_cnn(variables, fmap), targets[:, None], 1).sum()

    expected = jax.grad(score)(maps["conv5"])
    np.testing.assert_allclose(grads["conv5"], expected, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(expected).max()) > 0
    # d logit / d conv6 map = W_fc[:, target] / (h*w), independent of the map
    h, w = maps["conv6"].shape[1:3]
    kernel = variables["params"]["fc"]["kernel"]
    np.testing.assert_allclose(
        grads["conv6"],
        jnp.broadcast_to(kernel.T[targets][:, None, None, :] / (h * w), grads["conv6"].shape),
        rtol=1e-5,
    )


def test_feature_grads_match_torch_autograd_on_resnet():
    torch_model = torch_refs.build("resnet18", NUM_CLASSES)
    variables = ji.backbones.from_torch("resnet18", torch_model.state_dict())
    model = ji.backbones.create("resnet18", num_classes=NUM_CLASSES)
    x = _images(2, 64, seed=3)
    targets = np.array([4, 7])
    _, maps, grads = ji.backbones.feature_grads(model, variables, x, targets, ["layer3.1", "layer4"])
    captured = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            captured[name] = output

        return hook

    torch_model.layer3[1].register_forward_hook(keep("layer3.1"))
    torch_model.layer4.register_forward_hook(keep("layer4"))
    logits = torch_model(torch_refs.to_nchw(x))
    logits[torch.arange(2), torch.from_numpy(targets)].sum().backward()
    for layer in ("layer3.1", "layer4"):
        ref_map = captured[layer].detach().numpy().transpose(0, 2, 3, 1)
        ref_grad = captured[layer].grad.numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(maps[layer], ref_map, atol=1e-4 * np.abs(ref_map).max())
        np.testing.assert_allclose(grads[layer], ref_grad, atol=1e-4 * np.abs(ref_grad).max())


def test_feature_grads_does_not_retrace(monkeypatch):
    """A second call with new values of the same shapes reuses the compiled program (fails if it traces)."""
    chex.clear_trace_counter()
    fn = ji.backbones.taps._feature_grads.__wrapped__
    monkeypatch.setattr(
        ji.backbones.taps,
        "_feature_grads",
        jax.jit(chex.assert_max_traces(fn, n=1), static_argnums=(0, 4, 5)),
    )
    model, variables, x = _small_setup()
    ji.backbones.feature_grads(model, variables, x, jnp.array([0, 1, 2]), ["conv4"])
    ji.backbones.feature_grads(model, variables, x + 1.0, jnp.array([2, 2, 0]), ["conv4"])


def test_per_image_gradients_are_independent_of_batch_mates():
    model, variables, x = _small_setup()
    _, _, g_batch = ji.backbones.feature_grads(model, variables, x, jnp.array([0, 3, 1]), ["conv3"])
    _, _, g_single = ji.backbones.feature_grads(model, variables, x[1:2], jnp.array([3]), ["conv3"])
    np.testing.assert_allclose(g_batch["conv3"][1:2], g_single["conv3"], rtol=1e-5, atol=1e-7)


def test_train_mode_batchnorm_matches_torch():
    torch_model = torch_refs.build("small_cnn", NUM_CLASSES).train()
    variables = ji.backbones.from_torch("small_cnn", torch_model.state_dict())
    model = ji.backbones.create("small_cnn", num_classes=NUM_CLASSES)
    x = _images(4, 32)
    (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    ref = torch_model(torch_refs.to_nchw(x)).detach().numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4 * np.abs(ref).max())
    before = variables["batch_stats"]["conv1"]["bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["conv1"]["bn"]["mean"], before)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("vgg11", {}), ("vgg11_bn", {"head": "gap"}), ("resnet18", {}), ("small_cnn", {})],
)
def test_to_torch_loads_strictly_and_reproduces_logits(name, kwargs):
    model = ji.backbones.create(name, num_classes=NUM_CLASSES, **kwargs)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 48, 48, 3)))
    # non-trivial BN statistics, so a swapped mean/var or scale/bias would show in the logits
    leaves, tree = jax.tree.flatten(variables.get("batch_stats", {}))
    keys = jax.random.split(jax.random.key(2), max(len(leaves), 1))
    stats = [0.5 + jax.random.uniform(k, v.shape) for k, v in zip(keys, leaves, strict=False)]
    variables = {**variables, **({"batch_stats": jax.tree.unflatten(tree, stats)} if leaves else {})}
    state = ji.backbones.to_torch(model, variables)
    torch_model = torch_refs.build(name, NUM_CLASSES, **kwargs)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = _images(2, 48)
    with torch.no_grad():
        ref = torch_model(torch_refs.to_nchw(x)).numpy()
    logits, _ = jax.jit(model.apply)(variables, x)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    back = ji.backbones.from_torch(model, state)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))
    with pytest.raises(ValueError, match="variables: do not match"):
        ji.backbones.to_torch(ji.backbones.create("small_cnn", num_classes=3), variables)


def test_load_state_dict_npz_and_torch_weights_only(tmp_path):
    torch_model = torch_refs.build("small_cnn", NUM_CLASSES)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    np.savez(tmp_path / "w.npz", **state)
    torch.save(torch_model.state_dict(), tmp_path / "w.pt")
    for path in (tmp_path / "w.npz", tmp_path / "w.pt"):
        loaded = ji.backbones.load_state_dict(path)
        v = ji.backbones.from_torch("small_cnn", loaded)
        np.testing.assert_array_equal(v["params"]["fc"]["kernel"], state["fc.weight"].T)
    with pytest.raises(ValueError, match="path"):
        ji.backbones.load_state_dict(tmp_path / "w.pkl")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"name.*vgg16.*resnet18"):
        ji.backbones.create("vgg17")
    model, variables, x = _small_setup()
    t = jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match="images.*rank-4"):
        ji.backbones.feature_grads(model, variables, x[0], t, ["conv4"])
    with pytest.raises(ValueError, match="images.*3 channels"):
        ji.backbones.feature_grads(model, variables, x[..., :1], t, ["conv4"])
    with pytest.raises(ValueError, match="images.*>= 16"):
        ji.backbones.feature_grads(model, variables, x[:, :8, :8], t, ["conv4"])
    with pytest.raises(ValueError, match=r"layers.*'conv9'.*conv1"):
        ji.backbones.feature_grads(model, variables, x, t, ["conv9"])
    with pytest.raises(ValueError, match=r"targets.*\[0, 5\)"):
        ji.backbones.feature_grads(model, variables, x, jnp.array([0, 1, 5]), ["conv4"])
    with pytest.raises(ValueError, match=r"targets.*\(3,\)"):
        ji.backbones.feature_grads(model, variables, x, jnp.array([0, 1]), ["conv4"])


def test_state_dict_errors_name_the_keys():
    state = torch_refs.build("small_cnn", NUM_CLASSES).state_dict()
    missing = {k: v for k, v in state.items() if k != "features.3.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['features.3.weight'\]"):
        ji.backbones.from_torch("small_cnn", missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        ji.backbones.from_torch("small_cnn", {**state, "extra.weight": np.zeros(3)})
    wrong = dict(state)
    wrong["features.0.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"'features.0.weight' has shape \(32, 3, 5, 5\)"):
        ji.backbones.from_torch("small_cnn", wrong)


def test_torch_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(Exception, match="(?i)weights only|unsupported|global"):
        ji.backbones.load_state_dict(tmp_path / "evil.pt")
