"""One numpy batch loader for PartsWorld, sklearn digits and tfds catalog sets (see the package docstring).

Batch order and augmentation are pure functions of (seed, global step), so a resumed run
(``start_step``) and any number of hosts see exactly the data of one uninterrupted single-host run.
"""

import math
import os
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jinterp.data import parts_world as pw
from jinterp.data.geometry import mask_bbox
from jinterp.data.transforms import augment_batch, augment_params, normalize_images
from jinterp.ops.resize import interp_matrix

NAMES = ("parts_world", "parts_world_binary", "digits", "caltech_birds2011", "voc", "imagenet2012")
# jinterp name -> (tfds name, number of classes)
CATALOG = {
    "caltech_birds2011": ("caltech_birds2011", 200),
    "voc": ("voc/2012", 20),
    "imagenet2012": ("imagenet2012", 1000),
}
_CONFIG_RE = re.compile(r"^(\d+)px_(?:binary|(\d+)cls)(?:_n(\d+)-(\d+))?(?:_seed(\d+))?(_centred)?$")


def default_data_dir() -> str:
    """``$JINTERP_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (the tfds default)."""
    return os.environ.get("JINTERP_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _split_name(name: str) -> tuple[str, str | None]:
    base, _, variant = name.partition("/")
    if base not in NAMES:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {list(NAMES)}")
    if variant and not base.startswith("parts_world"):
        raise ValueError(f"name: {base!r} takes no '/<config>' suffix, got {name!r}")
    return base, variant or None


def parts_world_config(name: str = "parts_world", **config) -> pw.PartsWorldConfig:
    """The ``PartsWorldConfig`` for a loader name (``parts_world[/<config name>]`` or ``parts_world_binary``)
    plus config fields; fields given as keywords override those parsed from the config name."""
    base, variant = _split_name(name)
    kwargs = {}
    if variant:
        m = _CONFIG_RE.match(variant)
        if not m:
            raise ValueError(
                f"name: cannot parse PartsWorld config {variant!r}; expected e.g. '64px_8cls', "
                "'128px_binary', '64px_32cls_n800-200_seed3'"
            )
        size, ncls, ntr, nte, seed, centred = m.groups()
        kwargs["centred"] = bool(centred)
        kwargs["image_size"] = int(size)
        if ncls is None:
            kwargs["binary"] = True
        else:
            kwargs["num_classes"] = int(ncls)
        if ntr is not None:
            kwargs.update(train_size=int(ntr), test_size=int(nte))
        if seed is not None:
            kwargs["seed"] = int(seed)
    if base == "parts_world_binary":
        kwargs["binary"] = True
    if "data_seed" in config:
        config = dict(config)
        config["seed"] = config.pop("data_seed")
    kwargs.update({k: v for k, v in config.items() if v is not None})
    return pw.make_config(**kwargs)


def num_classes(name: str, **config) -> int:
    """Number of classes of a data set (PartsWorld: of the config given by the name / keywords)."""
    return info(name, **config)["num_classes"]


def info(name: str, **config) -> dict:
    """Static facts about a data set without reading it: num_classes, image_size, keys, and for
    PartsWorld split sizes, part names and the class table (``parts_world_classes``)."""
    base, _ = _split_name(name)
    if base.startswith("parts_world"):
        cfg = parts_world_config(name, **config)
        return {
            "num_classes": cfg.num_classes,
            "image_size": cfg.image_size,
            "splits": {"train": cfg.train_size, "test": cfg.test_size},
            "part_names": pw.PART_NAMES,
            "classes": pw.parts_world_classes(cfg),
            "keys": _PW_KEYS,
            "config": cfg,
        }
    if base == "digits":
        return {"num_classes": 10, "image_size": config.get("image_size") or 32, "keys": _DIGITS_KEYS}
    keys = {"caltech_birds2011": _CUB_KEYS, "voc": _VOC_KEYS, "imagenet2012": ("image", "label", "index")}[
        base
    ]
    return {"num_classes": CATALOG[base][1], "image_size": config.get("image_size") or 224, "keys": keys}


_PW_KEYS = (
    "image",
    "label",
    "index",
    "object_mask",
    "part_masks",
    "disc_mask",
    "bbox",
    "landmarks",
    "part_visible",
)
_DIGITS_KEYS = ("image", "label", "index", "object_mask", "bbox")
_CUB_KEYS = ("image", "label", "index", "object_mask", "bbox")
_VOC_KEYS = ("image", "label", "labels", "index", "bbox")


# --------------------------------------------------------------------------- sources: index -> raw arrays


class _PartsWorldSource:
    bbox_from_mask = True

    def __init__(self, cfg: pw.PartsWorldConfig, split: str, data_dir: str):
        pw.split_size(cfg, split)  # validates the split name
        # tfds refuses a config object named like a predefined one: pass predefined configs by name.
        config = cfg.name if cfg.name in pw.PartsWorld.builder_configs else cfg
        builder = pw.PartsWorld(config=config, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare()
        self.ds = builder.as_data_source()[split]
        self.num_classes = cfg.num_classes

    def __len__(self):
        return len(self.ds)

    def get(self, idx: np.ndarray) -> dict:
        rows = self.ds.__getitems__([int(i) for i in idx])
        out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        out["label"] = out["label"].astype(np.int32)
        return out


class _DigitsSource:
    """scikit-learn's bundled 8x8 digits (1797 images), bilinearly upsampled, grey -> 3 channels.
    Split: a fixed permutation (default_rng(0)), first 80 % "train", rest "test"."""

    bbox_from_mask = True

    def __init__(self, split: str, image_size: int):
        from sklearn.datasets import load_digits

        if split not in ("train", "test"):
            raise ValueError(f"split: unknown digits split {split!r}; expected one of ['train', 'test']")
        d = load_digits()
        perm = np.random.default_rng(0).permutation(len(d.target))
        cut = int(0.8 * len(perm))
        sel = perm[:cut] if split == "train" else perm[cut:]
        # Bilinear upsampling of 8x8 with pixel-centre alignment: out = U @ img @ U^T.
        u = interp_matrix(8, image_size, compute_dtype="float32")
        grey = np.matmul(np.matmul(u, d.images[sel].astype(np.float32) / 16.0), u.T)
        self.image = np.repeat(np.clip(np.rint(grey * 255), 0, 255).astype(np.uint8)[..., None], 3, -1)
        self.object_mask = grey > 0.25
        self.label = d.target[sel].astype(np.int32)
        self.num_classes = 10

    def __len__(self):
        return len(self.label)

    def get(self, idx: np.ndarray) -> dict:
        mask = self.object_mask[idx]
        return {
            "image": self.image[idx],
            "label": self.label[idx],
            "object_mask": mask,
            "bbox": mask_bbox(mask),
        }


class _CatalogSource:
    """A tfds catalog set read with ``tfds.data_source`` (array_record files prepared locally), each
    example resized (shorter side -> image_size) and centre-cropped so batches stack; masks with nearest
    neighbour on their own grid (mock data and some real files give masks of another shape)."""

    bbox_from_mask = False

    def __init__(self, name: str, split: str, data_dir: str, image_size: int):
        self.name, (self.tfds_name, self.num_classes) = name, CATALOG[name]
        self.size = image_size
        try:
            self.ds = tfds.data_source(self.tfds_name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types (missing files, TFRecord-only, bad split)
            try:
                where = str(tfds.builder(self.tfds_name, data_dir=data_dir).data_dir)
            except Exception:
                where = os.path.join(data_dir, self.tfds_name)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            raise ValueError(
                f"name: catalog data set {name!r} (tfds {self.tfds_name!r}, split {split!r}) is not "
                f"available locally: tfds looked in {where} ({reason}). Nothing can be downloaded here. "
                "Provide it by preparing it where the source files are available with "
                f"`tfds build {self.tfds_name} --file_format=array_record --data_dir DIR` (imagenet2012 "
                "needs its tar files in DIR/downloads/manual), copy DIR here and pass data_dir=DIR or set "
                "$JINTERP_DATA_DIR."
            ) from e

    def __len__(self):
        return len(self.ds)

    def _crop_box(self, shape) -> np.ndarray:
        """Normalised centre square [y0, x0, y1, x1] of an image of ``shape``."""
        h, w = shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) / 2 / h, (w - s) / 2 / w
        return np.array([y0, x0, 1 - y0, 1 - x0], np.float32)

    def _resize(self, arr: np.ndarray, box: np.ndarray, nearest: bool) -> np.ndarray:
        from PIL import Image

        h, w = arr.shape[:2]
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        px = (box[1] * w, box[0] * h, box[3] * w, box[2] * h)
        resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
        return np.asarray(img.resize((self.size, self.size), resample=resample, box=px))

    def _bbox(self, b: np.ndarray, box: np.ndarray) -> np.ndarray:
        hw = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
        return np.clip((np.asarray(b, np.float32) - np.tile(box[:2], 2)) / hw, 0, 1)

    def _one(self, ex: dict) -> dict:
        image = np.asarray(ex["image"])
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, -1)
        box = self._crop_box(image.shape)
        out = {"image": self._resize(image, box, nearest=False), "label": np.int32(ex.get("label", 0))}
        if self.name == "caltech_birds2011":
            mask = np.asarray(ex["segmentation_mask"])
            # CUB segmentations are grey levels (annotator agreement); object = majority (>= 128).
            out["object_mask"] = self._resize(mask, box, nearest=True) >= 128
            out["bbox"] = self._bbox(ex["bbox"], box)
        elif self.name == "voc":
            objs = ex["objects"]
            n = min(len(objs["label"]), len(objs["bbox"]))
            labels = np.zeros(self.num_classes, np.float32)
            present = np.asarray(ex["labels"], np.int64)
            labels[present[(present >= 0) & (present < self.num_classes)]] = 1
            if n:
                b = np.asarray(objs["bbox"][:n], np.float32)
                k = int(np.argmax(np.abs((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))))
                out["label"] = np.int32(np.asarray(objs["label"])[k] % self.num_classes)
                out["bbox"] = self._bbox(b[k], box)
            else:
                out["label"] = np.int32(np.argmax(labels))
                out["bbox"] = np.zeros(4, np.float32)
            out["labels"] = labels
        return out

    def get(self, idx: np.ndarray) -> dict:
        # One record at a time: examples are decoded and resized one by one anyway (variable shapes).
        rows = [self._one(self.ds[int(i)]) for i in idx]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# --------------------------------------------------------------------------- augmentation and normalisation


def open_source(name: str, split: str, data_dir: str, image_size: int | None, config: dict):
    base, _ = _split_name(name)
    if base.startswith("parts_world"):
        return _PartsWorldSource(parts_world_config(name, image_size=image_size, **config), split, data_dir)
    if config:
        raise ValueError(
            f"{name}: unexpected keyword(s) {sorted(config)}; only PartsWorld takes config fields"
        )
    if base == "digits":
        return _DigitsSource(split, image_size or 32)
    return _CatalogSource(base, split, data_dir, image_size or 224)


def batch_indices(
    n: int, batch_size: int, step: int, *, seed: int, shuffle: bool, drop_remainder: bool
) -> np.ndarray:
    """Example indices of global batch ``step``: a pure function of (seed, step) (see module docstring)."""
    steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    epoch, j = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return order[j * batch_size : (j + 1) * batch_size]


def load(
    name: str,
    split: str,
    batch_size: int,
    *,
    data_dir: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = True,
    drop_remainder: bool = True,
    augment: bool = False,
    normalize="imagenet",
    image_size: int | None = None,
    host_id: int = 0,
    host_count: int = 1,
    start_step: int = 0,
    **config,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterate over numpy batches of a data set (keys and shapes: see the ``jinterp.data`` docstring).

    Args:
      name: one of ``NAMES``; ``"parts_world/<config>"`` (e.g. ``"parts_world/128px_32cls"``) selects a
        PartsWorld config, which is built into ``data_dir`` on first use.
      split: "train" / "test" (PartsWorld, digits) or a tfds split of a catalog set.
      batch_size: global batch size over all hosts; must be divisible by ``host_count``.
      data_dir: tfds data directory (default ``default_data_dir()``).
      shuffle: permute each epoch with ``np.random.default_rng([seed, epoch])``.
      seed: seed of the order and of the augmentation.
      repeat: iterate forever (epoch after epoch); False stops after the epoch containing ``start_step``.
      drop_remainder: drop the last incomplete batch of each epoch.
      augment: random resized crop (area 35-100 %, aspect 3/4-4/3) + horizontal flip, drawn from
        ``default_rng([seed, step, 1])``; masks, boxes and landmarks follow the images.
      normalize: see ``normalize_images`` (default ImageNet mean/std after scaling to [0, 1]).
      image_size: output side; PartsWorld generates at this size (default 64), catalog sets resize to it
        (default 224), digits upsample to it (default 32).
      host_id, host_count: this host yields rows ``[host_id * b, (host_id + 1) * b)`` of every global
        batch, ``b = batch_size // host_count``.
      start_step: first global step to yield (resume).
      **config: PartsWorld config fields ``num_classes``, ``binary``, ``train_size``, ``test_size`` and
        ``data_seed`` (the generation seed, config field ``seed``; ``seed`` here is the loader's).

    Returns:
      An iterator of dicts of numpy arrays.
    """
    if not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if host_count < 1 or not 0 <= host_id < host_count:
        raise ValueError(
            f"host_id, host_count: expected 0 <= host_id < host_count, got {host_id}, {host_count}"
        )
    if batch_size % host_count:
        raise ValueError(f"batch_size: expected a multiple of host_count={host_count}, got {batch_size}")
    if start_step < 0:
        raise ValueError(f"start_step: expected >= 0, got {start_step}")
    normalize_images(np.zeros((1, 1, 1, 3), np.uint8), normalize)  # validate early
    source = open_source(name, split, data_dir or default_data_dir(), image_size, config)
    n = len(source)
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"batch_size: {batch_size} is larger than split {split!r} of {name!r} ({n} examples) with "
            "drop_remainder=True, so no batch would be produced; use a smaller batch or drop_remainder=False"
        )
    steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    return _iterate(source, n, batch_size, steps_per_epoch, seed, shuffle, repeat, drop_remainder, augment,
                    normalize, host_id, host_count, start_step)  # fmt: skip


def _iterate(
    source,
    n,
    batch_size,
    steps_per_epoch,
    seed,
    shuffle,
    repeat,
    drop_remainder,
    augment,
    normalize,
    host_id,
    host_count,
    start_step,
):
    step = start_step
    last = None if repeat else (start_step // steps_per_epoch + 1) * steps_per_epoch
    while last is None or step < last:
        idx = batch_indices(n, batch_size, step, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder)
        rows = np.array_split(np.arange(len(idx)), host_count)[host_id]
        batch = source.get(idx[rows])
        if augment:
            params = augment_params(np.random.default_rng([seed, step, 1]), len(idx), batch["image"].shape[1])
            params = {k: v[rows] for k, v in params.items()}
            batch = augment_batch(batch, params, bbox_from_mask=source.bbox_from_mask)
        batch["image"] = normalize_images(batch["image"], normalize)
        batch["index"] = idx[rows].astype(np.int64)
        yield batch
        step += 1
