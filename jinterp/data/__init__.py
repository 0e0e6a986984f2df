"""Data: the PartsWorld tfds builder (ground-truth parts) and one numpy batch loader for every data set.

Loader (training and evaluation code should only use this)::

    from jinterp import data
    it = data.load(
        name,                      # one of data.NAMES; "parts_world/<config>" picks a config
        split,                     # "train" | "test" (catalog sets: their tfds split names)
        batch_size,                # GLOBAL batch size; each host yields batch_size // host_count
        *,
        data_dir=None,             # default $JINTERP_DATA_DIR, else ~/tensorflow_datasets
        shuffle=True,              # epoch e is permuted by np.random.default_rng([seed, e])
        seed=0,
        repeat=True,               # False: a single pass over the split (from start_step)
        drop_remainder=True,       # False: the last batch of an epoch may be smaller
        augment=False,             # random resized crop + h-flip; masks/boxes/landmarks kept aligned
        normalize="imagenet",      # "imagenet" | "unit" | None | (mean, std): see `normalize_images`
        image_size=None,           # output side; default 64 (PartsWorld), 224 (catalog), 32 (digits)
        host_id=0, host_count=1,   # per-host sharding of each global batch
        start_step=0,              # resume: the batches an uninterrupted run would yield from this step on
        **config,                  # PartsWorld: num_classes, binary, train_size, test_size, data_seed
    ) -> Iterator[dict[str, np.ndarray]]

Batch order is a pure function of (seed, step): global step ``s`` of an epoch of ``n_steps`` batches
takes positions ``[j*B, (j+1)*B)`` with ``j = s % n_steps`` of the permutation of epoch ``s // n_steps``;
augmentation parameters come from ``np.random.default_rng([seed, s, 1])`` for the whole global batch
before the host slice is taken, so the data do not depend on ``host_count`` or on resuming.

Batch keys (B = per-host batch, H = W = image size, P = 6 parts ``PART_NAMES``):

    image         (B, H, W, 3) float32, normalised (uint8 when normalize=None)
    label         (B,)         int32
    index         (B,)         int64  example index in the split (for debugging / joining)
    object_mask   (B, H, W)    bool   visible object pixels
    part_masks    (B, H, W, P) bool   visible pixels of each part (disjoint; subset of object_mask)
    disc_mask     (B, H, W)    bool   union of the part masks that define the class
    bbox          (B, 4)       float32 [ymin, xmin, ymax, xmax] in [0, 1], tight box of object_mask
                                      (all zeros when there is no object)
    landmarks     (B, P, 2)    float32 (y, x) in [0, 1]: centroid of the visible part pixels; for a hidden
                                      part the projected anchor of where the part would be (never NaN)
    part_visible  (B, P)       bool   the part has at least one visible pixel

``caltech_birds2011`` yields image, label, index, object_mask (from the segmentation), bbox; ``voc``
yields image, label (class of the largest object), labels (B, 20) multi-hot float32, index, bbox (largest
object); ``imagenet2012`` and ``digits`` yield image, label, index (digits also object_mask and bbox
from the ink).

Other public names: ``NAMES``, ``num_classes(name, **config)``, ``info(name, **config)``,
``PART_NAMES``, ``PartsWorldConfig``, ``PartsWorld`` (tfds builder), ``generate(config, split, seed)``,
``parts_world_classes(config)``, ``normalize_images``, ``denormalize_images``, ``augment_batch``,
``example_batch`` (a few PartsWorld test examples in memory, for figures).
"""

import numpy as np

from jinterp.data.geometry import mask_bbox, part_landmarks
from jinterp.data.loader import (
    CATALOG,
    NAMES,
    batch_indices,
    default_data_dir,
    info,
    load,
    num_classes,
    parts_world_config,
)
from jinterp.data.parts_world import (
    MAX_CLASSES,
    PART_NAMES,
    PartsWorld,
    PartsWorldConfig,
    generate,
    make_config,
    parts_world_classes,
)
from jinterp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_batch,
    augment_params,
    denormalize_images,
    normalize_images,
)


def example_batch(
    name: str = "parts_world",
    image_size: int | None = None,
    num_classes: int | None = None,
    num: int = 16,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``num`` PartsWorld test examples generated in memory (no tfds build), sorted by label, and the
    class names (label -> name), e.g. for ``jinterp.viz.save_examples_grid(batch, path, class_names=names)``.

    Args:
      name: ``parts_world[/<config>]`` or ``parts_world_binary`` (as :func:`load`).
      image_size, num_classes: override the config's (None: keep).
      num: examples (the test split of a config with ``test_size=num``).
      seed: generation seed (``data_seed``).

    Returns:
      ``(batch, class_names)``: the keys of :func:`generate` (``image`` uint8), stably sorted by label so
      fine-grained neighbours (one part apart) sit side by side.
    """
    if int(num) < 1:
        raise ValueError(f"num: expected a positive number of examples, got {num}")
    cfg = parts_world_config(name, image_size=image_size, num_classes=num_classes, data_seed=seed)
    cfg = make_config(
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
        binary=cfg.binary,
        train_size=1,
        test_size=int(num),
        seed=cfg.seed,
    )
    batch = generate(cfg, "test")
    order = np.argsort(batch["label"], kind="stable")
    return {k: v[order] for k, v in batch.items()}, [c["name"] for c in parts_world_classes(cfg)]


__all__ = [
    "CATALOG",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_CLASSES",
    "NAMES",
    "PART_NAMES",
    "PartsWorld",
    "PartsWorldConfig",
    "augment_batch",
    "augment_params",
    "batch_indices",
    "default_data_dir",
    "denormalize_images",
    "example_batch",
    "generate",
    "info",
    "load",
    "make_config",
    "mask_bbox",
    "normalize_images",
    "num_classes",
    "part_landmarks",
    "parts_world_classes",
    "parts_world_config",
]
