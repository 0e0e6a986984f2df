"""torchvision-layout state dicts <-> Flax variables, and safe loading of weight files.

Conv weights OIHW <-> HWIO, Linear (out, in) <-> (in, out), BatchNorm weight/bias/running stats,
and VGG's first classifier layer re-ordered between torch's NCHW flatten and our NHWC flatten.
Every key is accounted for: missing, unexpected or wrongly shaped entries raise ValueError.
"""

import json
import os
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp.backbones import densenet, resnet, small, vgg
from jinterp.checks import check_int, check_real

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


def _to_numpy(key: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    check_real(f"state_dict[{key!r}]", value)
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

    Raises:
      ValueError: ``state_dict`` is not a mapping of str keys to real arrays, ``num_classes`` is not an
        int >= 1, or a key is missing, unexpected or of the wrong shape (naming it).
    """
    from jinterp.backbones import create  # the registry imports this module

    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
        raise ValueError(
            f"state_dict: expected a mapping of str keys to arrays (torch_model.state_dict() or "
            f"load_state_dict(path)), got {type(state_dict).__name__}"
        )
    state = {k: _to_numpy(k, v) for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
    if isinstance(name_or_model, str):
        if num_classes is None:
            num_classes = _infer_num_classes(name_or_model, state)
        check_int("num_classes", num_classes, low=1)
        model = create(name_or_model, num_classes=num_classes, **kwargs)
    elif num_classes is not None:
        raise ValueError("num_classes: give it only with a backbone name (a created model has its own)")
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
    if key not in state or np.ndim(state[key]) != 2 or state[key].shape[0] < 1:
        raise ValueError(f"state_dict: no (classes, features) classifier weight {key!r}; pass num_classes")
    return int(state[key].shape[0])


# safetensors dtype tags (https://github.com/huggingface/safetensors, "format" in its README).
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file as numpy arrays, read here (8-byte little-endian header length, a JSON
    header of ``{name: {dtype, shape, data_offsets}}``, the raw bytes): no dependency, nothing executed.
    ``BF16`` tensors come back as float32. Raises ValueError naming ``path`` if the file is malformed."""
    import ml_dtypes

    with open(path, "rb") as f:
        blob = f.read()
    try:
        (n,) = np.frombuffer(blob[:8], "<u8") if len(blob) >= 8 else (None,)
        if n is None or 8 + int(n) > len(blob):
            raise ValueError(f"header length {n} for a file of {len(blob)} bytes")
        header = json.loads(blob[8 : 8 + int(n)])
        data = memoryview(blob)[8 + int(n) :]
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            tag, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            dtype = np.dtype(ml_dtypes.bfloat16) if tag == "BF16" else np.dtype(_SAFETENSORS_DTYPES[tag])
            if not 0 <= start <= end <= len(data) or (end - start) != dtype.itemsize * int(np.prod(shape)):
                raise ValueError(f"tensor {name!r}: byte range [{start}, {end}) does not hold {shape} {tag}")
            array = np.frombuffer(data[start:end], dtype).reshape(shape)
            out[name] = array.astype(np.float32) if tag == "BF16" else array.copy()
        return out
    except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"path: {path!r} is not a valid .safetensors file ({type(e).__name__}: {e})") from e


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load weights without executing pickled code: ``.npz``, ``.safetensors`` or ``.pt/.pth``.

    ``.npz`` is read with ``allow_pickle=False``, ``.safetensors`` by :func:`read_safetensors` (no extra
    package), ``.pt``/``.pth`` through ``torch.load(weights_only=True)`` (needs the ``torch`` extra:
    ``pip install -e '.[torch]'``). A missing, empty, truncated or malformed file raises ValueError
    naming it.
    """
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path.endswith((".npz", ".safetensors", ".pt", ".pth")):
        raise ValueError(f"path: expected a .npz, .safetensors, .pt or .pth file, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"path: no weight file at {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"path: {path!r} is empty (0 bytes)")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise ValueError(f"path: {path!r} is not a readable .npz file ({type(e).__name__}: {e})") from e
    try:
        import torch
    except ImportError as e:
        raise ValueError(
            f"path: reading {path!r} needs torch (pip install -e '.[torch]'), or convert it to .npz / "
            ".safetensors"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... for a bad file
        raise ValueError(f"path: {path!r} is not a readable torch file ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"path: {path!r} holds a {type(state).__name__}, expected a state dict")
    return {k: _to_numpy(k, v) for k, v in state.items()}
