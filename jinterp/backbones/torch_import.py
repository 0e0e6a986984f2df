"""torchvision-layout state dicts <-> Flax variables, and safe loading of weight files.

Conv weights OIHW <-> HWIO, Linear (out, in) <-> (in, out), BatchNorm weight/bias/running stats,
and VGG's first classifier layer re-ordered between torch's NCHW flatten and our NHWC flatten.
Every key is accounted for: missing, unexpected or wrongly shaped entries raise ValueError.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp.backbones import densenet, resnet, small, vgg

# Buffers torch keeps that carry no weights.
IGNORED_SUFFIXES = ("num_batches_tracked",)

_TORCH_NAMES = {
    vgg.VGG: vgg.torch_names,
    resnet.ResNet: resnet.torch_names,
    densenet.DenseNet: densenet.torch_names,
    small.SmallCNN: small.torch_names,
}

# Dense layers whose torch input was flattened from an NCHW (C, H, W) map.
_NCHW_FLATTENED = {(vgg.VGG, "fc6"): (512, 7, 7)}


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    # copy: jax may alias host memory, and torch updates BN buffers in place
    return np.array(value, copy=True)


def _convert(collection: str, leaf: str, value: np.ndarray, nchw: tuple[int, int, int] | None) -> np.ndarray:
    if collection == "params" and leaf == "kernel":
        if value.ndim == 4:
            return value.transpose(2, 3, 1, 0)
        if nchw is not None:
            out = value.shape[0]
            value = value.reshape(out, *nchw).transpose(0, 2, 3, 1).reshape(out, -1)
        return value.T
    return value


def _convert_back(
    collection: str, leaf: str, value: np.ndarray, nchw: tuple[int, int, int] | None
) -> np.ndarray:
    """Inverse of :func:`_convert`: a Flax leaf in torch layout."""
    if collection != "params" or leaf != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    value = value.T
    if nchw is not None:
        c, h, w = nchw
        value = value.reshape(value.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(value.shape[0], -1)
    return value


def _torch_key(collection: str, leaf: str, prefix: str) -> str:
    suffix = {
        ("params", "kernel"): "weight",
        ("params", "bias"): "bias",
        ("params", "scale"): "weight",
        ("batch_stats", "mean"): "running_mean",
        ("batch_stats", "var"): "running_var",
    }[(collection, leaf)]
    return f"{prefix}.{suffix}"


def _entries(model) -> list[tuple[tuple[str, ...], str, tuple[int, int, int] | None, tuple[int, ...]]]:
    """``(flax path, torch key, nchw, shape)`` per variable of ``model`` (shapes traced, no weights
    created); ``nchw``: the (C, H, W) a Dense input was flattened from in torch, or None."""
    names = _TORCH_NAMES[type(model)](model)
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    entries = []
    for path, leaf in traverse_util.flatten_dict(template).items():
        collection, *modules, name = path
        module = "/".join(modules)
        key = _torch_key(collection, name, names[module])
        entries.append((path, key, _NCHW_FLATTENED.get((type(model), module)), tuple(leaf.shape)))
    return entries


def from_torch(name_or_model, state_dict: dict, num_classes: int | None = None, **kwargs) -> dict:
    """Convert a torchvision-layout ``state_dict`` to jinterp variables.

    Args:
      name_or_model: a backbone name (see ``jinterp.backbones.MODELS``) or a created model.
      state_dict: mapping key -> torch tensor or numpy array (``torch_model.state_dict()``, or
        :func:`load_state_dict` of a file).
      num_classes: classifier width; inferred from the state dict when omitted.
      **kwargs: further ``create`` options when a name is given.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` as jnp arrays.
    """
    from jinterp.backbones import create  # the registry imports this module

    state = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
    if isinstance(name_or_model, str):
        if num_classes is None:
            num_classes = _infer_num_classes(name_or_model, state)
        model = create(name_or_model, num_classes=num_classes, **kwargs)
    else:
        model = name_or_model
    entries = _entries(model)
    keys = {key for _, key, _, _ in entries}
    missing = sorted(k for k in keys if k not in state)
    unexpected = sorted(set(state) - keys)
    if missing or unexpected:
        raise ValueError(
            f"state_dict: does not match {type(model).__name__}; missing keys {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )
    flat = {}
    for path, key, nchw, shape in entries:
        value = _convert(path[0], path[-1], state[key], nchw)
        if value.shape != shape:
            raise ValueError(
                f"state_dict: {key!r} has shape {state[key].shape}, which converts to {value.shape}; "
                f"expected {shape} for {'/'.join(path)}"
            )
        flat[path] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(flat)


def to_torch(model, variables: dict) -> dict[str, np.ndarray]:
    """jinterp variables -> a torchvision-layout state dict of numpy arrays (inverse of :func:`from_torch`).

    For using weights trained here in torch tools (Captum, pytorch-grad-cam, zennit):
    ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`` loads strictly
    (BatchNorm's ``num_batches_tracked`` buffers are included as 0).

    Args:
      model: the created backbone the variables belong to.
      variables: ``{"params": ..., "batch_stats": ...}`` (e.g. ``restore_model``'s).
    """
    entries = _entries(model)
    shapes = {path: shape for path, _, _, shape in entries}
    flat = traverse_util.flatten_dict(dict(variables))
    missing = sorted("/".join(p) for p in shapes if p not in flat)
    unexpected = sorted("/".join(p) for p in flat if p not in shapes)
    wrong = sorted(f"{'/'.join(p)} {tuple(flat[p].shape)} != {shapes[p]}"
                   for p in shapes if p in flat and tuple(flat[p].shape) != shapes[p])  # fmt: skip
    if missing or unexpected or wrong:
        raise ValueError(
            f"variables: do not match {type(model).__name__}; missing {missing[:20]}, "
            f"unexpected {unexpected[:20]}, wrong shapes {wrong[:20]}"
        )
    state = {}
    for path, key, nchw, _ in entries:
        value = _convert_back(path[0], path[-1], np.asarray(flat[path], np.float32), nchw)
        state[key] = np.array(value, copy=True, order="C")  # writable: torch.from_numpy warns otherwise
        if key.endswith(".running_mean"):
            state[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
    return state


def _infer_num_classes(name: str, state: dict) -> int:
    from jinterp.backbones import create

    model = create(name)
    names = _TORCH_NAMES[type(model)](model)
    head = [m for m in names if m in ("fc", "fc8", "classifier")][0]
    key = f"{names[head]}.weight"
    if key not in state:
        raise ValueError(f"state_dict: no classifier weight {key!r}; pass num_classes explicitly")
    return int(state[key].shape[0])


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load weights without executing pickled code: ``.npz``, ``.safetensors`` or ``.pt/.pth``.

    ``.pt``/``.pth`` files go through ``torch.load(weights_only=True)`` (needs the ``torch`` extra).
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    if path.endswith((".pt", ".pth")):
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.numpy() for k, v in state.items()}
    raise ValueError(f"path: expected a .npz, .safetensors, .pt or .pth file, got {path!r}")
