"""Issue 19 regression cases: every bad input to the public API is a ValueError naming the argument,
never a raw error from inside jax / numpy / zipfile and never a silent NaN.

Setup as in the issue: ``small_cnn``, 32 px, 2 images. Almost every case fails during validation, before
anything is compiled, so the file runs in seconds.
"""

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jinterp as ji
import jinterp.metrics as jm

METHODS = sorted(m for m in ji.explain.METHODS if m != "clam")  # clam needs a trained checkpoint


@pytest.fixture(scope="module")
def setup():
    model = ji.backbones.create("small_cnn", num_classes=10)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(jax.random.key(1), x)
    return model, variables, np.asarray(x), np.array([1, 3])


def _nan(x, value=np.nan):
    x = np.array(x)
    x[1, 5, 7, 2] = value
    return x


# ----------------------------------------------------------------------------------------- explain


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", METHODS)
def test_non_finite_pixel_is_refused_by_every_method(setup, name, value):
    model, variables, x, t = setup
    with pytest.raises(
        ValueError, match="images: contains NaN or inf values .*first at index \\[1, 5, 7, 2\\]"
    ):
        ji.explain.explain(name, model, variables, _nan(x, value), t)


@pytest.mark.parametrize("backbone", ["vgg11", "resnet18"])
def test_non_finite_pixel_is_refused_on_vgg_and_resnet(backbone):
    model = ji.backbones.create(backbone, num_classes=4)
    x = _nan(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="images: contains NaN"):
        ji.explain.explain("grad_cam", model, {}, x, np.array([0, 1]))


@pytest.mark.parametrize("name", METHODS)
def test_float_list_targets_and_complex_images_are_clear_errors(setup, name):
    model, variables, x, _ = setup
    with pytest.raises(ValueError, match="targets: expected integer class indices, got dtype float64"):
        ji.explain.explain(name, model, variables, x, [0.0, 1.0])
    with pytest.raises(ValueError, match="images: expected real numbers .* got dtype complex"):
        ji.explain.explain(name, model, variables, x.astype(np.complex64), [0, 1])


@pytest.mark.parametrize("name", ["lrp", "clrp", "sglrp", "crp"])
@pytest.mark.parametrize(
    "images, targets, message",
    [
        (np.zeros((32, 32, 3)), [0], "images: expected a rank-4"),
        (np.zeros((2, 32, 32, 4)), [0, 1], "images: expected 3 channels"),
        (np.zeros((2, 32, 32, 3)), [0, 1, 2], "targets: expected shape \\(2,\\)"),
        (np.zeros((2, 32, 32, 3)), [0.5, 1.0], "targets: expected integer"),
        (_nan(np.zeros((2, 32, 32, 3))), [0, 1], "images: contains NaN"),
    ],
)
def test_raw_relevance_functions_validate_their_inputs(setup, name, images, targets, message):
    model, variables, _, _ = setup
    fn = ji.explain.get(name)
    with pytest.raises(ValueError, match=message):
        fn(model, variables, jnp.asarray(images, jnp.float32) if np.ndim(images) == 4 else images, targets)


def test_raw_functions_check_shapes_under_jit(setup):
    model, variables, x, _ = setup
    fn = jax.jit(ji.explain.get("lrp"), static_argnums=0)
    with pytest.raises(ValueError, match="targets: expected shape \\(2,\\)"):
        fn(model, variables, x, jnp.array([0, 1, 2]))


def test_crp_on_a_non_square_image(setup):
    model, variables, _, t = setup
    x = jax.random.normal(jax.random.key(2), (2, 32, 48, 3))
    heat = ji.explain.explain("crp", model, variables, x, t)
    assert heat.shape == (2, 32, 48) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1


BAD_SPECS = [
    ("grad_cam(layer=5)", "option 'layer' of 'grad_cam': expected str | tuple"),
    ("grad_cam(layer=1.5)", "option 'layer'"),
    ("grad_cam(layer=True)", "option 'layer'"),
    ("grad_cam(layer={'conv6'})", "option 'layer' .* got \\{'conv6'\\} \\(set\\)"),
    ("layer_cam(layer=('conv6', 3))", "option 'layer'"),
    ("smooth_grad_cam_pp(samples=-1)", "samples: expected an int in \\[1,"),
    ("smooth_grad_cam_pp(samples=0)", "samples: expected an int in \\[1,"),
    ("smooth_grad_cam_pp(samples=1.5)", "option 'samples' of 'smooth_grad_cam_pp': expected int"),
    ("smooth_grad_cam_pp(samples='4')", "option 'samples'"),
    ("smooth_grad_cam_pp(samples=None)", "option 'samples'"),
    ("smooth_grad_cam_pp(std='x')", "option 'std'"),
    ("smooth_grad_cam_pp(std=-0.1)", "std: expected a value in \\[0.0, inf\\)"),
    ("smooth_grad_cam_pp(seed=1180591620717411303424)", "option 'seed'"),  # 2**70
    ("group_cam(percentile='x')", "option 'percentile'"),
    ("group_cam(percentile=None)", "option 'percentile'"),
    ("group_cam(percentile=150)", "percentile: expected a value in \\[0.0, 100.0\\]"),
    ("group_cam(blur_sigma='x')", "option 'blur_sigma'"),
    ("group_cam(blur_sigma=0)", "blur_sigma: expected a value in \\(0.0, inf\\)"),
    ("cluster_cam(beta='x')", "option 'beta'"),
    ("cluster_cam(beta=None)", "option 'beta'"),
    ("cluster_cam(beta=1.5)", "beta: expected a value in \\[0.0, 1.0\\]"),
    ("cluster_cam(seed='x')", "option 'seed'"),
    ("crp(channel='x')", "option 'channel' of 'crp': expected int | None"),
    ("crp(channel=(1, 2))", "option 'channel'"),
    ("crp(channel=-1)", "channel: expected an int in \\[0,"),
    ("lrp(composite='epsilon_gamma_box', low='x')", "option 'low' of 'lrp': expected float"),
    ("lrp(composite='epsilon_gamma_box', low=2.0)", "high: expected a value in \\(2.0, inf\\)"),
    ("lrp(gamma=float('nan'))", "spec: option 'gamma' must be a literal"),
    ("clrp(low=())", "option 'low' of 'clrp'"),
    ("sglrp(variant=1)", "option 'variant' of 'sglrp': expected str"),
    ("score_cam(batch=0)", "batch: expected an int in \\[1,"),
    ("score_cam(channel_softmax=1)", "option 'channel_softmax' of 'score_cam': expected bool"),
    ("grad_cam(layer='conv6', layer='conv5')", "option 'layer' is given twice"),
    ("grad_cam(layers='conv6')", "unknown option 'layers' for 'grad_cam'"),
    ("clam", "'clam' needs option\\(s\\) \\['checkpoint'\\]"),
    ("clam(checkpoint=3)", "option 'checkpoint' of 'clam': expected str"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS)
def test_spec_option_types_and_ranges(spec, message):
    with pytest.raises(ValueError, match=message):
        ji.explain.get(spec)


@pytest.mark.parametrize("channel", [128, 999])
def test_crp_channel_beyond_the_layer_is_an_error_not_a_zero_map(setup, channel):
    model, variables, x, t = setup
    with pytest.raises(
        ValueError, match=f"channel: expected an int in \\[0, 128\\) for layer 'conv6', got {channel}"
    ):
        ji.explain.explain(f"crp(channel={channel})", model, variables, x, t)


def test_factories_called_directly_check_layers(setup):
    model, variables, x, t = setup
    for bad in (5, 1.5, True, {"conv6"}):
        with pytest.raises(ValueError, match="layer: expected a layer name or a list of names"):
            ji.explain.cam.grad_cam(layer=bad)(model, variables, x, t)


def test_check_finite_opt_out(setup):
    model, variables, x, t = setup
    heat = ji.explain.explain("grad_cam", model, variables, x, t, check_finite=False)
    assert heat.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="check_finite: expected True or False"):
        ji.explain.explain("grad_cam", model, variables, x, t, check_finite="no")


# ----------------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def apply_fn(setup):
    model, variables, _, _ = setup
    return lambda x: model.apply(variables, x)[0]


def _heat():
    return np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)


def _mask():
    m = np.zeros((2, 32, 32), np.float32)
    m[:, 8:20, 8:20] = 1
    return m


def _nan_mask():
    m = _mask()
    m[1, 5, 7] = np.nan
    return m


METRIC_CASES = {
    "confidence NaN image": (lambda f, x: jm.confidence_change(f, _nan(x), _heat()), "images: contains NaN"),
    "deletion inf image": (
        lambda f, x: jm.perturbation_curve(f, _nan(x, np.inf), _heat()),
        "images: contains",
    ),
    "METRICS entry NaN image": (
        lambda f, x: jm.compute(
            "insertion", {"apply_fn": f, "images": _nan(x), "heatmaps": _heat(), "targets": np.array([0, 1])}
        ),
        "images: contains NaN",
    ),  # fmt: skip
    "blur sigma 0": (lambda f, x: jm.gaussian_blur(x, sigma=0.0), "sigma: expected a value in \\(0.0"),
    "curve blur sigma 0": (
        lambda f, x: jm.perturbation_curve(f, x, _heat(), substrate="blur", blur_sigma=0.0),
        "blur_sigma: expected a value in \\(0.0",
    ),
    "targets out of range": (
        lambda f, x: jm.confidence_change(f, x, _heat(), targets=[0, 99]),
        "targets: class indices must lie in \\[0, 10\\)",
    ),
    "relevance_mass NaN mask": (
        lambda f, x: jm.relevance_mass(_heat(), _nan_mask()),
        "masks: contains NaN",
    ),
    "energy NaN mask": (
        lambda f, x: jm.energy_pointing_game(_heat(), _nan_mask()),
        "masks: contains NaN",
    ),
    "energies empty": (
        lambda f, x: jm.energy_pointing_game(_heat(), _mask(), energies=()),
        "energies: expected at least 1 item",
    ),
    "energies > 1": (
        lambda f, x: jm.energy_pointing_game(_heat(), _mask(), energies=(0.5, 2.0)),
        "energies: expected a value in \\(0.0, 1.0\\]",
    ),
    "pointing N=0": (lambda f, x: jm.pointing_game(np.zeros((0, 8, 8)), np.zeros((0, 8, 8))), "N >= 1"),
    "mass N=0": (lambda f, x: jm.relevance_mass(np.zeros((0, 8, 8)), np.zeros((0, 8, 8))), "N >= 1"),
    "energy N=0": (lambda f, x: jm.energy_pointing_game(np.zeros((0, 8, 8)), np.zeros((0, 8, 8))), "N >= 1"),
    "filter_interpretability N=0": (
        lambda f, x: jm.filter_interpretability(np.zeros((0, 4, 4, 8)), np.zeros((0, 16, 16, 2))),
        "maps: expected a non-empty",
    ),
    "filter_thresholds N=0": (
        lambda f, x: jm.filter_thresholds(np.zeros((0, 4, 4, 8))),
        "maps: expected a non-empty",
    ),
    "mean_max_iou no thresholds": (
        lambda f, x: jm.mean_max_iou(np.ones((2, 3, 8, 8)), np.ones((2, 2, 8, 8)), thresholds=()),
        "thresholds: expected at least 1 item",
    ),
    "pruning no steps": (
        lambda f, x: jm.pruning_curve(lambda im, k: f(im), x, np.array([0, 1]), np.ones(8), n_pruned=[]),
        "n_pruned: expected at least 1 item",
    ),
    "pruning scalar importance": (
        lambda f, x: jm.pruning_curve(lambda im, k: f(im), x, np.array([0, 1]), np.float32(1.0)),
        "importance: expected a rank-1",
    ),
    "confidence batch -1": (
        lambda f, x: jm.confidence_change(f, x, _heat(), batch_size=-1),
        "batch_size: expected an int",
    ),
    "confidence batch 0": (
        lambda f, x: jm.confidence_change(f, x, _heat(), batch_size=0),
        "batch_size: expected an int",
    ),
    "curve n_steps -1": (
        lambda f, x: jm.perturbation_curve(f, x, _heat(), n_steps=-1),
        "n_steps: expected an int",
    ),
    "curve pixels_per_step 0": (
        lambda f, x: jm.perturbation_curve(f, x, _heat(), pixels_per_step=0),
        "pixels_per_step: expected an int in \\[1,",
    ),
    "complex heatmaps": (
        lambda f, x: jm.pointing_game(_heat().astype(np.complex64), _mask()),
        "heatmaps: expected real numbers",
    ),
    "masks out of [0, 1]": (
        lambda f, x: jm.pointing_game(_heat(), 2 * _mask()),
        "masks: expected values in \\[0, 1\\]",
    ),
}


@pytest.mark.parametrize("case", sorted(METRIC_CASES))
def test_metric_bad_inputs(setup, apply_fn, case):
    fn, message = METRIC_CASES[case]
    with pytest.raises(ValueError, match=message):
        fn(apply_fn, setup[2])


# ----------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def state_dict():
    model = ji.backbones.create("small_cnn", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return ji.backbones.to_torch(model, variables)


@pytest.mark.parametrize("num_classes", [0, -1, True, 2.5, "10"])
def test_from_torch_num_classes(state_dict, num_classes):
    with pytest.raises(ValueError, match="num_classes: expected an int"):
        ji.backbones.from_torch("small_cnn", state_dict, num_classes=num_classes)


@pytest.mark.parametrize("bad", [[1, 2], None, "weights.pth", 3, {1: np.zeros(3)}])
def test_from_torch_state_dict_type(bad):
    with pytest.raises(ValueError, match="state_dict: expected a mapping of str keys"):
        ji.backbones.from_torch("small_cnn", bad)


def test_from_torch_non_numeric_entry(state_dict):
    bad = {**state_dict, "conv1.0.weight": "x"}
    with pytest.raises(ValueError, match="state_dict\\['conv1.0.weight'\\]|state_dict: "):
        ji.backbones.from_torch("small_cnn", bad)


def _write_safetensors(path, arrays):
    tags = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("float16"): "F16"}
    header, offset, blobs = {}, 0, []
    for k, v in arrays.items():
        b = np.ascontiguousarray(v).tobytes()
        header[k] = {
            "dtype": tags[v.dtype],
            "shape": list(v.shape),
            "data_offsets": [offset, offset + len(b)],
        }
        offset += len(b)
        blobs.append(b)
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_safetensors_loads_without_the_package(state_dict, tmp_path):
    path = tmp_path / "w.safetensors"
    _write_safetensors(path, state_dict)
    loaded = ji.backbones.load_state_dict(path)
    assert sorted(loaded) == sorted(state_dict)
    for k in state_dict:
        np.testing.assert_array_equal(loaded[k], state_dict[k])
    variables = ji.backbones.from_torch("small_cnn", loaded)
    assert variables["params"]["fc"]["kernel"].shape[-1] == 10


def _truncated_npz(path, state_dict):
    np.savez(path, **state_dict)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


WEIGHT_FILES = {
    "truncated.npz": (_truncated_npz, "is not a readable .npz file"),
    "empty.npz": (lambda p, sd: open(p, "wb").close(), "is empty \\(0 bytes\\)"),
    "empty.safetensors": (lambda p, sd: open(p, "wb").close(), "is empty"),
    "garbage.safetensors": (lambda p, sd: open(p, "wb").write(b"\xff" * 40), "not a valid .safetensors"),
    "short.safetensors": (lambda p, sd: open(p, "wb").write(b"\x01\x00"), "not a valid .safetensors"),
    "missing.npz": (lambda p, sd: None, "no weight file at"),
    "weights.bin": (lambda p, sd: open(p, "wb").write(b"x"), "expected a .npz, .safetensors"),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_FILES))
def test_bad_weight_files_name_the_file(state_dict, tmp_path, name):
    make, message = WEIGHT_FILES[name]
    path = str(tmp_path / name)
    make(path, state_dict)
    with pytest.raises(ValueError, match=message) as e:
        ji.backbones.load_state_dict(path)
    assert name in str(e.value)


def _clam_arrays_only(path):
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            os.path.abspath(path), args=ocp.args.Composite(arrays=ocp.args.StandardSave({"icp": np.zeros(3)}))
        )


@pytest.mark.parametrize("kind", ["empty dir", "garbage file", "missing config", "not a path"])
def test_bad_clam_checkpoints_are_one_value_error_naming_the_path(tmp_path, kind):
    path = tmp_path / "clam_ckpt"
    if kind == "empty dir":
        path.mkdir()
    elif kind == "garbage file":
        path.write_bytes(b"\x00junk" * 10)
    elif kind == "missing config":
        _clam_arrays_only(path)
    spec = f'clam(checkpoint="{path}")' if kind != "not a path" else "clam(checkpoint=['a'])"
    with pytest.raises(ValueError, match="clam_ckpt|option 'checkpoint'") as e:
        ji.explain.get(spec)
    assert "\n" not in str(e.value)
