"""Per-batch image transforms: random resized crops and flips (augmentation), and normalisation.

Pure numpy functions of a batch and explicit parameters, so the loader can make augmentation a
function of (seed, global step).
"""

import numpy as np

from jinterp.data.geometry import mask_bbox, part_landmarks

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def augment_params(
    rng: np.random.Generator, n: int, size: int, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)
) -> dict:
    """Random resized crop boxes (pixels: y0, x0, h, w) and flips for ``n`` square images of ``size``
    (crop area fraction in ``scale``, aspect ratio h/w log-uniform in ``ratio``, as Inception crops)."""
    area = rng.uniform(*scale, n) * size * size
    r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), n))
    h = np.clip(np.sqrt(area * r), 1, size)
    w = np.clip(np.sqrt(area / r), 1, size)
    y0 = rng.random(n) * (size - h)
    x0 = rng.random(n) * (size - w)
    flip = rng.random(n) < 0.5
    return {"box": np.stack([y0, x0, h, w], 1).astype(np.float64), "flip": flip}


def _sample_coords(box: np.ndarray, flip: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates (continuous, pixel-centre convention) of each output row / column."""
    t = (np.arange(size) + 0.5) / size
    ys = box[:, :1] + t[None] * box[:, 2:3] - 0.5
    tx = np.where(flip[:, None], t[None, ::-1], t[None])
    xs = box[:, 1:2] + tx * box[:, 3:4] - 0.5
    return ys, xs


def augment_batch(batch: dict, params: dict, bbox_from_mask: bool = True) -> dict:
    """Apply random resized crops and horizontal flips (``augment_params``) to a raw batch.

    Images are resampled bilinearly, masks by nearest neighbour on the same sampling grid, so every
    mask moves with its image; boxes and landmarks are transformed with the same map. With
    ``bbox_from_mask`` (PartsWorld, digits: the box is defined as the tight box of ``object_mask``) the box
    is recomputed from the cropped mask; landmarks are recomputed as centroids of the cropped part
    masks, a hidden part keeps its mapped landmark clipped to [0, 1].

    Args:
      batch: raw batch (uint8 ``image`` (N,S,S,3), optional masks, ``bbox``, ``landmarks``).
      params: from ``augment_params(rng, N, S)``.
      bbox_from_mask: see above (needs ``object_mask``).
    """
    image = batch["image"]
    n, size = image.shape[0], image.shape[1]
    box, flip = params["box"], params["flip"]
    ys, xs = _sample_coords(box, flip, size)
    b = np.arange(n)[:, None, None]
    y0 = np.clip(np.floor(ys), 0, size - 1).astype(np.int64)
    x0 = np.clip(np.floor(xs), 0, size - 1).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, size - 1), np.minimum(x0 + 1, size - 1)
    wy = np.clip(ys - y0, 0, 1)[:, :, None, None].astype(np.float32)
    wx = np.clip(xs - x0, 0, 1)[:, None, :, None].astype(np.float32)
    im = image.astype(np.float32)
    top = im[b, y0[:, :, None], x0[:, None, :]] * (1 - wx) + im[b, y0[:, :, None], x1[:, None, :]] * wx
    bot = im[b, y1[:, :, None], x0[:, None, :]] * (1 - wx) + im[b, y1[:, :, None], x1[:, None, :]] * wx
    out = dict(batch)
    out["image"] = np.clip(np.rint(top * (1 - wy) + bot * wy), 0, 255).astype(image.dtype)
    ny = np.clip(np.floor(ys + 0.5), 0, size - 1).astype(np.int64)[:, :, None]
    nx = np.clip(np.floor(xs + 0.5), 0, size - 1).astype(np.int64)[:, None, :]
    for k in ("object_mask", "part_masks", "disc_mask"):
        if k in batch:
            out[k] = batch[k][b, ny, nx]

    def to_crop(y, x):  # normalised point -> normalised point in the crop
        yc = (y * size - box[:, :1]) / box[:, 2:3]
        xc = (x * size - box[:, 1:2]) / box[:, 3:4]
        return yc, np.where(flip[:, None], 1 - xc, xc)

    if "bbox" in batch:
        bb = batch["bbox"].astype(np.float64)
        ya, xa = to_crop(bb[:, [0, 2]], bb[:, [1, 3]])
        ya, xa = np.sort(np.clip(ya, 0, 1), 1), np.sort(np.clip(xa, 0, 1), 1)
        geo = np.stack([ya[:, 0], xa[:, 0], ya[:, 1], xa[:, 1]], 1)
        geo = np.where((bb != 0).any(1, keepdims=True), geo, 0)
        use_mask = bbox_from_mask and "object_mask" in batch
        out["bbox"] = mask_bbox(out["object_mask"]) if use_mask else geo.astype(np.float32)
    if "landmarks" in batch:
        ly, lx = to_crop(
            batch["landmarks"][..., 0].astype(np.float64), batch["landmarks"][..., 1].astype(np.float64)
        )
        fallback = np.clip(np.stack([ly, lx], -1), 0, 1).astype(np.float32)
        out["landmarks"], out["part_visible"] = part_landmarks(out["part_masks"], fallback)
    return out


def normalize_images(images: np.ndarray, normalize="imagenet") -> np.ndarray:
    """uint8 images -> float32 network input.

    ``"imagenet"`` (default): x/255 then per-channel (x - mean) / std with the ImageNet statistics
    (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), the convention of torchvision weights, so models with
    imported weights and models trained here take the same input. ``"unit"``: x/255 in [0, 1].
    ``(mean, std)``: x/255 then (x - mean) / std. ``None``: the uint8 images unchanged.
    """
    if normalize is None:
        return images
    x = images.astype(np.float32) / np.float32(255)
    if isinstance(normalize, str):
        if normalize == "unit":
            return x
        if normalize == "imagenet":
            return (x - IMAGENET_MEAN) / IMAGENET_STD
        raise ValueError(f"normalize: expected 'imagenet', 'unit', None or (mean, std), got {normalize!r}")
    mean, std = (np.asarray(v, np.float32) for v in normalize)
    return (x - mean) / std


def denormalize_images(images: np.ndarray, normalize="imagenet") -> np.ndarray:
    """Inverse of ``normalize_images``: float32 images in [0, 1] (uint8 input is scaled by 1/255)."""
    x = np.asarray(images)
    if normalize is None or x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
    if isinstance(normalize, str):
        if normalize == "unit":
            return x.astype(np.float32)
        if normalize != "imagenet":
            raise ValueError(
                f"normalize: expected 'imagenet', 'unit', None or (mean, std), got {normalize!r}"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (np.asarray(v, np.float32) for v in normalize)
    return np.clip(x * std + mean, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- the loader
