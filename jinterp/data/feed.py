"""Feeding a run: the data of a config, background prefetch, padding of short batches, device sharding.

>>> data = Data(config.data)                               # over jinterp.data.load (or any loader like it)
>>> batches = prefetch(data.train(64, start_step), lambda b: shard_batch(b, mesh))
>>> arrays = load_split(config.data, "test", 512)          # the first 512 test examples as numpy

Data order is a pure function of ``(config.data.seed, step)`` (the loader's contract), so a run resumed at
step ``s`` sees exactly the batches an uninterrupted run would.
"""

import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jinterp.data import loader, parts_world

LOADER_KEYS = ("name", "seed", "augment", "normalize", "data_dir")


def data_fields(cfg: ml_collections.ConfigDict) -> dict:
    """Data-set fields of ``config.data`` for the loader: all PartsWorld fields, else ``image_size`` only."""
    fields = {k: v for k, v in cfg.items() if k not in LOADER_KEYS and v not in (None, "")}
    if not cfg.name.startswith("parts_world"):
        fields = {k: v for k, v in fields.items() if k == "image_size"}
    return fields


def split_size(name: str, fields: dict, split: str, data_dir: str | None = None) -> int:
    """Number of examples of ``split``: PartsWorld's from its config, others from the source's metadata."""
    splits = loader.info(name, **fields).get("splits")
    if splits and split in splits:
        return splits[split]
    data_dir = data_dir or loader.default_data_dir()
    return len(loader.open_source(name, split, data_dir, fields.get("image_size"), {}))


class Data:
    """The training/eval data of a config, through ``jinterp.data.load`` (or any function like it).

    Args:
      cfg: ``config.data``: ``name``, ``seed`` (order and augmentation), ``augment``, ``normalize``,
        ``data_dir`` ('' = ``jinterp.data.default_data_dir()``), and data-set fields passed on to the
        loader (PartsWorld: ``image_size``, ``num_classes``, ``train_size``, ``test_size``, ``data_seed``).
      load: a function with the signature of ``jinterp.data.load`` (tests pass in-memory loaders).
      num_examples: ``num_examples(split) -> int`` (default: :func:`split_size`).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, load: Callable | None = None, num_examples=None):
        self.cfg = cfg
        self.name = cfg.name
        self.fields = data_fields(cfg)
        self.data_dir = os.path.abspath(os.path.expanduser(cfg.data_dir)) if cfg.get("data_dir") else None
        self._load = load or loader.load
        self._num_examples = num_examples or (
            lambda split: split_size(self.name, self.fields, split, self.data_dir)
        )

    def num_examples(self, split: str) -> int:
        return int(self._num_examples(split))

    def _common(self) -> dict:
        return dict(
            seed=int(self.cfg.seed),
            normalize=self.cfg.get("normalize", "imagenet"),
            data_dir=self.data_dir,
            **self.fields,
        )

    def train(self, batch_size: int, start_step: int, host_id: int = 0, host_count: int = 1) -> Iterator:
        """Shuffled, augmented, repeated batches from global step ``start_step`` on."""
        return self._load(
            self.name,
            "train",
            batch_size,
            start_step=start_step,
            augment=bool(self.cfg.get("augment", False)),
            host_id=host_id,
            host_count=host_count,
            **self._common(),
        )

    def ordered(
        self, split: str, batch_size: int, host_id: int = 0, host_count: int = 1, drop_remainder: bool = True
    ) -> Iterator[dict]:
        """One pass in index order, no augmentation: full batches (statistics for epoch hooks) or, with
        ``drop_remainder=False``, the whole split (last batch may be short)."""
        return self._load(
            self.name,
            split,
            batch_size,
            shuffle=False,
            repeat=False,
            drop_remainder=drop_remainder,
            augment=False,
            host_id=host_id,
            host_count=host_count,
            **self._common(),
        )


def num_classes(cfg: ml_collections.ConfigDict) -> int:
    """Number of classes of the data set of ``config.data``."""
    return int(loader.num_classes(cfg.name, **data_fields(cfg)))


def load_split(cfg: ml_collections.ConfigDict, split: str, limit: int) -> dict[str, np.ndarray]:
    """The first ``limit`` examples of ``split`` (index order, no augmentation) as numpy arrays."""
    batches, n = [], 0
    for batch in Data(cfg).ordered(split, min(limit, 256), drop_remainder=False):
        batches.append(batch)
        n += len(batch["label"])
        if n >= limit:
            break
    return {k: np.concatenate([b[k] for b in batches])[:limit] for k in batches[0]}


def parts_world_config_of(cfg: ml_collections.ConfigDict) -> parts_world.PartsWorldConfig:
    """The PartsWorld generator config that ``config.data`` names (class table, part names)."""
    return loader.parts_world_config(cfg.name, **data_fields(cfg))


def prefetch(iterator: Iterator, transform: Callable, size: int = 2) -> Iterator:
    """Yield ``transform(x)`` for ``x`` in ``iterator``, computed ``size`` items ahead in a thread.

    Loading and sharding the next batch overlaps the current step (numpy releases the GIL); the order
    is unchanged, so determinism is kept. An exception in the loader surfaces in the consumer.
    """
    items: queue.Queue = queue.Queue(maxsize=size)

    def worker():
        try:
            for x in iterator:
                items.put((True, transform(x)))
        except BaseException as e:  # surfaced in the consumer
            items.put((False, e))
        items.put((False, None))

    threading.Thread(target=worker, daemon=True).start()
    while True:
        ok, value = items.get()
        if not ok:
            if value is None:
                return
            raise value
        yield value


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> dict:
    """``image`` / ``label`` of a (possibly short) batch padded to ``size`` rows, with a ``valid`` mask."""
    n = len(batch["label"])
    out = {"image": batch["image"], "label": batch["label"].astype(np.int32), "valid": np.ones(n, np.float32)}
    if n < size:
        out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in out.items()}
    return out


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
    """Host-local numpy batch -> global jax arrays split over the ``data`` mesh axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def image_label(batch: Mapping[str, np.ndarray], extra: tuple[str, ...] = ()) -> dict:
    """The keys a train step reads: ``image``, ``label`` (as int32) and the ``extra`` ones (e.g. the
    ``object_mask`` an explanation loss needs); a missing one raises ValueError naming the batch keys."""
    missing = [k for k in extra if k not in batch]
    if missing:
        raise ValueError(f"batch: the losses need {missing}; this data set yields {sorted(batch)}")
    return {"image": batch["image"], "label": np.asarray(batch["label"]).astype(np.int32)} | {
        k: batch[k] for k in extra
    }
