"""PartsWorld: a generated data set of composite birds whose class is carried by parts only.

Every image holds one bird (parts: body, head, beak, tail, wing, legs) drawn in an object frame that is
randomly scaled (45-70 % of the image width from tail tip to beak tip), rotated (+-25 deg), flipped and
placed, with colour jitter, an optional occluding branch in front, on a textured background with clutter
blobs (half of them in the head colours, so colour alone does not give the class away).

A class is a combination of part attributes (head colour, tail shape, wing pattern, beak shape). The
attributes that no class uses are drawn at random for every image, and background, pose, body colour and
occluders are drawn independently of the class: a correct explanation of a class must land on the parts
of ``disc_mask``. Classes are enumerated in mixed radix over the used attributes, so many class pairs
differ in exactly one part (fine-grained pairs).

All per-example random parameters are drawn for the whole split from ``np.random.default_rng([seed,
split_id])``; the pixels of each chunk of examples (texture noise) from ``default_rng([seed, split_id,
chunk, 1])``. Rendering is vectorised over a chunk (no Python loop over examples or pixels).
"""

import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jinterp.data.geometry import mask_bbox, part_landmarks

PART_NAMES = ("body", "head", "beak", "tail", "wing", "legs")
NUM_PARTS = len(PART_NAMES)
_PART = {n: i for i, n in enumerate(PART_NAMES)}
SPLIT_IDS = {"train": 0, "test": 1}

# Attribute factors in the order they are added as the number of classes grows: (part, levels).
FACTORS = {
    "head": ("red", "blue", "yellow", "green"),
    "tail": ("fan", "pointed", "forked"),
    "wing": ("plain", "striped", "tipped"),
    "beak": ("cone", "needle", "hook"),
}
_FACTOR_ORDER = ("head", "tail", "wing", "beak")
# Levels per factor at each growth stage; the smallest stage with >= num_classes combinations is used.
_STAGES = (
    (2, 1, 1, 1),
    (2, 2, 1, 1),
    (2, 2, 2, 1),
    (2, 2, 2, 2),
    (3, 2, 2, 2),
    (4, 2, 2, 2),
    (4, 3, 2, 2),
    (4, 3, 3, 2),
    (4, 3, 3, 3),
)
MAX_CLASSES = int(np.prod(_STAGES[-1]))

HEAD_RGB = np.array([[215, 30, 30], [30, 70, 225], [240, 210, 20], [25, 165, 50]], np.float32)
# Neutral body colours (low saturation so they are never mistaken for a head colour).
_BODY_RGB = np.array(
    [[125, 95, 65], [150, 150, 145], [205, 195, 170], [95, 85, 80], [175, 150, 120]], np.float32
)
_BG_RGB = np.array(
    [[95, 130, 70], [140, 120, 85], [150, 180, 205], [120, 120, 115], [175, 165, 125], [70, 100, 85]],
    np.float32,
)
_BEAK_RGB = np.array([[60, 55, 50], [210, 175, 110], [120, 100, 80]], np.float32)

# Part anchors in the object frame (x forward towards the beak, y down): landmark of a hidden part.
_ANCHORS = np.array(
    [[0.0, 0.0], [-0.32, 0.52], [-0.3, 0.82], [-0.02, -0.75], [-0.05, -0.05], [0.45, 0.02]], np.float32
)  # (y, x) per part
_LENGTH = 2.05  # tail tip to beak tip, object units


@dataclasses.dataclass
class PartsWorldConfig(tfds.core.BuilderConfig):
    """A PartsWorld variant.

    Attributes:
      image_size: square image side in pixels (64 default; 128, 224 for paper-scale backbones).
      num_classes: number of attribute combinations (2 .. MAX_CLASSES = 108); ignored when ``binary``.
      binary: single-category variant: label 1 = a bird is present, 0 = background only (as the
        single-category PASCAL-Part setting of HICCNN).
      train_size, test_size: examples per split.
      seed: generation seed; same seed -> identical bytes.
      centred: object-centred crops as the papers use (seed 002: VOC-Part objects > 50x50; CUB crops):
        tail-to-beak 100-125 % of the width (tips may leave the frame), body centre within 5 % of
        the image centre; object area 26 % of the frame instead of 7 % (500 test images, 64 px).
    """

    image_size: int = 64
    num_classes: int = 8
    binary: bool = False
    train_size: int = 8000
    test_size: int = 2000
    seed: int = 0
    centred: bool = False

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"image_size: expected >= 32 pixels, got {self.image_size}")
        if not self.binary and not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes: expected 2..{MAX_CLASSES}, got {self.num_classes}")
        for field in ("train_size", "test_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}: expected >= 1 examples, got {getattr(self, field)}")
        if self.binary:
            self.num_classes = 2


def config_name(
    image_size=64, num_classes=8, binary=False, train_size=8000, test_size=2000, seed=0, centred=False
) -> str:
    """Canonical name: ``64px_8cls``, ``128px_binary``, ``64px_8cls_n800-200_seed3``, ``_centred``."""
    name = f"{image_size}px_" + ("binary" if binary else f"{num_classes}cls")
    if (train_size, test_size) != (8000, 2000):
        name += f"_n{train_size}-{test_size}"
    if seed:
        name += f"_seed{seed}"
    if centred:
        name += "_centred"
    return name


def make_config(**kwargs) -> PartsWorldConfig:
    """A ``PartsWorldConfig`` named by ``config_name`` (unknown keyword -> ValueError)."""
    fields = {f.name for f in dataclasses.fields(PartsWorldConfig)} - {
        f.name for f in dataclasses.fields(tfds.core.BuilderConfig)
    }
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"PartsWorld config: unknown field(s) {unknown}; expected some of {sorted(fields)}")
    return PartsWorldConfig(name=config_name(**kwargs), **kwargs)


def _levels(config: PartsWorldConfig) -> tuple[int, ...]:
    if config.binary:
        return (1, 1, 1, 1)
    return next(s for s in _STAGES if np.prod(s) >= config.num_classes)


def _class_table(config: PartsWorldConfig) -> np.ndarray:
    """(num_classes, 4) attribute level per factor (head, tail, wing, beak); head varies fastest."""
    levels = _levels(config)
    combos = [c[::-1] for c in itertools.product(*[range(n) for n in levels[::-1]])]
    return np.array(combos[: config.num_classes], np.int64)


def parts_world_classes(config: PartsWorldConfig) -> list[dict]:
    """Describe the classes: which attributes and parts define each one.

    Returns:
      One dict per label: ``{"label", "name", "attributes": {part: level}, "parts": tuple of part names}``.
      ``parts`` are the parts whose attribute distinguishes classes (the union whose mask is
      ``disc_mask``); for the binary variant, class 1 ("bird") is defined by all parts, class 0 by none.
    """
    if config.binary:
        return [
            {"label": 0, "name": "no bird", "attributes": {}, "parts": ()},
            {"label": 1, "name": "bird", "attributes": {}, "parts": PART_NAMES},
        ]
    levels = _levels(config)
    used = tuple(f for f, n in zip(_FACTOR_ORDER, levels, strict=True) if n > 1)
    out = []
    for label, row in enumerate(_class_table(config)):
        attrs = {f: FACTORS[f][row[i]] for i, f in enumerate(_FACTOR_ORDER) if f in used}
        name = " ".join(f"{v}-{f}" for f, v in attrs.items())
        out.append({"label": label, "name": name, "attributes": attrs, "parts": used})
    return out


def _disc_parts(config: PartsWorldConfig) -> np.ndarray:
    """(num_classes, P) bool: which parts define each class."""
    table = np.zeros((config.num_classes, NUM_PARTS), bool)
    for c in parts_world_classes(config):
        table[c["label"], [_PART[p] for p in c["parts"]]] = True
    return table


def split_size(config: PartsWorldConfig, split: str) -> int:
    if split not in SPLIT_IDS:
        raise ValueError(f"split: unknown PartsWorld split {split!r}; expected one of {list(SPLIT_IDS)}")
    return config.train_size if split == "train" else config.test_size


def _chunk_size(image_size: int) -> int:
    # Fixed per image size (the texture noise of a chunk depends on it): ~2 M pixels per chunk.
    return max(8, (1 << 21) // (image_size * image_size))


def _u(rng, n, lo, hi):
    return rng.uniform(lo, hi, n).astype(np.float32)


def _sample_params(config: PartsWorldConfig, split: str, seed: int) -> dict:
    """Per-example scene parameters for a whole split (cheap: a few numbers per example)."""
    n = split_size(config, split)
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    S = float(config.image_size)
    # Exactly balanced labels in random order.
    label = rng.permutation(np.arange(n) % config.num_classes).astype(np.int64)
    attrs = np.stack([rng.integers(0, len(FACTORS[f]), n) for f in _FACTOR_ORDER], 1)
    if not config.binary:
        levels = _levels(config)
        table = _class_table(config)
        for i, nl in enumerate(levels):
            if nl > 1:  # class-defining factor: taken from the class; the others stay random
                attrs[:, i] = table[label, i]
    present = label == 1 if config.binary else np.ones(n, bool)
    frac = _u(rng, n, 1.0, 1.25) if config.centred else _u(rng, n, 0.45, 0.70)
    scale = frac * S / _LENGTH  # pixels per object unit
    reach = 1.15 * scale + 1  # radius around the body centre that holds the whole bird (+1 px)
    # Centred: the body centre within 5 % of the image centre (the bird may touch the frame, as a crop).
    margin = np.full(n, 0.45 * S, np.float32) if config.centred else np.minimum(reach, S / 2)
    p = {
        "label": label,
        "attrs": attrs,
        "present": present,
        "scale": scale,
        "theta": _u(rng, n, -25, 25) * np.float32(np.pi / 180),
        "flip": np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32),
        "cy": (margin + rng.random(n) * (S - 2 * margin)).astype(np.float32),
        "cx": (margin + rng.random(n) * (S - 2 * margin)).astype(np.float32),
    }
    # Object colours: neutral body, darker wing and tail, jittered head colour.
    mix = rng.dirichlet(np.ones(len(_BODY_RGB)) * 0.3, n).astype(np.float32)
    body = mix @ _BODY_RGB
    p["body_rgb"] = body
    p["tail_rgb"] = body * _u(rng, n, 0.65, 0.85)[:, None]
    p["wing_rgb"] = body * _u(rng, n, 0.55, 0.75)[:, None]
    p["mark_rgb"] = np.where((body.mean(1) > 130)[:, None], [[25, 25, 30]], [[240, 238, 225]]).astype(
        np.float32
    )
    p["head_rgb"] = np.clip(
        HEAD_RGB[attrs[:, 0]] * _u(rng, n, 0.85, 1.1)[:, None] + rng.normal(0, 10, (n, 3)), 0, 255
    ).astype(np.float32)
    p["beak_rgb"] = _BEAK_RGB[rng.integers(0, len(_BEAK_RGB), n)] + rng.normal(0, 8, (n, 3)).astype(
        np.float32
    )
    p["legs_rgb"] = (np.array([[80, 60, 45]], np.float32) + rng.normal(0, 10, (n, 3))).astype(np.float32)
    p["stripe_phase"] = _u(rng, n, 0, 1)
    # Background: base colour, low-frequency colour field, grain, clutter blobs.
    mix = rng.dirichlet(np.ones(len(_BG_RGB)) * 0.5, n).astype(np.float32)
    p["bg_rgb"] = mix @ _BG_RGB
    p["bg_field"] = rng.normal(0, 28, (n, 5, 5, 3)).astype(np.float32)
    p["grain_freq"] = _u(rng, n, 0.15, 0.6)
    p["grain_dir"] = _u(rng, n, 0, np.pi)
    p["grain_amp"] = _u(rng, n, 0, 14)
    k = 7
    p["blob_on"] = rng.random((n, k)) < rng.uniform(0.3, 1.0, (n, 1))
    p["blob_y"] = (rng.random((n, k)) * S).astype(np.float32)
    p["blob_x"] = (rng.random((n, k)) * S).astype(np.float32)
    p["blob_a"] = (rng.uniform(0.03, 0.12, (n, k)) * S).astype(np.float32)
    p["blob_b"] = (rng.uniform(0.03, 0.12, (n, k)) * S).astype(np.float32)
    p["blob_t"] = rng.uniform(0, np.pi, (n, k)).astype(np.float32)
    head_levels = max(_levels(config)[0], 2)
    blob_head = HEAD_RGB[rng.integers(0, head_levels, (n, k))] * rng.uniform(0.85, 1.1, (n, k, 1))
    blob_rand = rng.uniform(20, 235, (n, k, 3))
    p["blob_rgb"] = np.where(rng.random((n, k, 1)) < 0.5, blob_head, blob_rand).astype(np.float32)
    # Occluder: a branch in front of the bird in half of the images.
    p["occ_on"] = rng.random(n) < 0.5
    p["occ_angle"] = _u(rng, n, 0, np.pi)
    p["occ_offset"] = _u(rng, n, -0.7, 0.7)  # object units from the body centre
    p["occ_width"] = _u(rng, n, 0.09, 0.17)
    p["occ_rgb"] = np.array([[85, 65, 40]], np.float32) + rng.normal(0, 12, (n, 3)).astype(np.float32)
    return p


def _take(p: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in p.items()}


def _tri(x, y, v):
    """Inside the triangle with vertices v (3, 2) as (x, y) in object units, either orientation."""
    d = [
        (x - v[i][0]) * (v[(i + 1) % 3][1] - v[i][1]) - (y - v[i][1]) * (v[(i + 1) % 3][0] - v[i][0])
        for i in range(3)
    ]
    return ((d[0] >= 0) & (d[1] >= 0) & (d[2] >= 0)) | ((d[0] <= 0) & (d[1] <= 0) & (d[2] <= 0))


def _ellipse(x, y, cx, cy, a, b, angle=0.0):
    dx, dy = x - cx, y - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _shapes(ox, oy, attrs):
    """Amodal part shapes (B, H, W) bool in the object frame, plus wing-local x for the patterns."""
    tail_lvl, wing_lvl, beak_lvl = (attrs[:, i, None, None] for i in (1, 2, 3))
    body = _ellipse(ox, oy, 0.0, 0.0, 0.52, 0.3)
    head = _ellipse(ox, oy, 0.52, -0.32, 0.23, 0.23)
    cone = _tri(ox, oy, [(0.66, -0.43), (0.66, -0.21), (0.93, -0.32)])
    needle = _tri(ox, oy, [(0.66, -0.38), (0.66, -0.26), (1.08, -0.32)])
    hook = _tri(ox, oy, [(0.64, -0.44), (0.70, -0.24), (0.90, -0.12)])
    beak = np.where(beak_lvl == 0, cone, np.where(beak_lvl == 1, needle, hook))
    # Tails pointing backwards (-x): a wide fan, a long narrow spike, or a swallow fork.
    dx, dy = -(ox + 0.3), oy + 0.02
    r2 = dx * dx + dy * dy
    fan = (r2 <= 0.68**2) & (dx >= 0.6 * np.sqrt(r2))
    pointed = _tri(ox, oy, [(-0.35, -0.09), (-0.35, 0.09), (-1.12, 0.0)])
    forked = _tri(ox, oy, [(-0.35, -0.12), (-0.45, 0.06), (-1.05, -0.42)]) | _tri(
        ox, oy, [(-0.35, 0.12), (-0.45, -0.06), (-1.05, 0.42)]
    )
    tail = np.where(tail_lvl == 0, fan, np.where(tail_lvl == 1, pointed, forked))
    wing_angle = -0.2
    wing = _ellipse(ox, oy, -0.08, -0.06, 0.42, 0.18, wing_angle)
    wx = np.cos(wing_angle) * (ox + 0.08) + np.sin(wing_angle) * (oy + 0.06)
    legs = ((np.abs(ox + 0.08) <= 0.06) | (np.abs(ox - 0.14) <= 0.06)) & (oy >= 0.2) & (oy <= 0.62)
    return {"body": body, "head": head, "beak": beak, "tail": tail, "wing": wing, "legs": legs}, wx, wing_lvl


def _render(p: dict, size: int, rng: np.random.Generator) -> dict:
    """Render a chunk of scenes (vectorised over examples and pixels)."""
    n = len(p["label"])
    grid = (np.arange(size, dtype=np.float32) + 0.5)[None, :]
    Y, X = grid.T[None], grid[None]  # (1, S, 1), (1, 1, S)
    col = lambda a: a[:, None, None]
    # Background: base colour + bilinear-upsampled 5x5 colour field + oriented grain + clutter blobs.
    t = np.linspace(0, 4, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int64), 3)
    w = t - i0
    up = np.zeros((size, 5), np.float32)
    up[np.arange(size), i0] = 1 - w
    up[np.arange(size), i0 + 1] += w
    field = np.matmul(np.matmul(up, p["bg_field"].transpose(0, 3, 1, 2)), up.T).transpose(0, 2, 3, 1)
    along = np.cos(col(p["grain_dir"])) * X + np.sin(col(p["grain_dir"])) * Y
    grain = col(p["grain_amp"]) * np.sin(along * col(p["grain_freq"]) * np.float32(2 * np.pi))
    img = p["bg_rgb"][:, None, None, :] + field + grain[..., None]
    for k in range(p["blob_on"].shape[1]):  # 7 blobs, each vectorised over the chunk
        e = _ellipse(X, Y, col(p["blob_x"][:, k]), col(p["blob_y"][:, k]), col(p["blob_a"][:, k]),
                     col(p["blob_b"][:, k]), col(p["blob_t"][:, k]))  # fmt: skip
        e &= col(p["blob_on"][:, k])
        img = np.where(e[..., None], p["blob_rgb"][:, k, None, None, :], img)
    # Object frame: undo translation, rotation, scale, flip.
    c, s = np.cos(col(p["theta"])), np.sin(col(p["theta"]))
    dx, dy = X - col(p["cx"]), Y - col(p["cy"])
    ox = (c * dx + s * dy) / col(p["scale"]) * col(p["flip"])
    oy = (-s * dx + c * dy) / col(p["scale"])
    shapes, wx, wing_lvl = _shapes(ox, oy, p["attrs"])
    present = col(p["present"])
    ids = np.full((n, size, size), -1, np.int8)
    shade = np.clip(1.08 - 0.25 * (oy + 0.3), 0.75, 1.15)[..., None]
    for name in ("tail", "legs", "body", "wing", "head", "beak"):  # painter's order, back to front
        m = shapes[name] & present
        ids[m] = _PART[name]
        rgb = p[f"{name}_rgb"][:, None, None, :] * shade
        if name == "wing":
            period = 0.26
            stripe = ((wx / period + col(p["stripe_phase"])) % 1.0) < 0.5
            mark = np.where(wing_lvl == 1, stripe, (wing_lvl == 2) & (wx < -0.12))
            rgb = np.where(mark[..., None], p["mark_rgb"][:, None, None, :], rgb)
        if name == "head":  # an eye: dark dot, part of the head
            eye = _ellipse(ox, oy, 0.58, -0.37, 0.055, 0.055)
            rgb = np.where(eye[..., None], np.float32(20), rgb)
        img = np.where(m[..., None], rgb, img)
    # Branch occluder in front of everything (it hides parts, it is not part of the object).
    ca, sa = np.cos(col(p["occ_angle"])), np.sin(col(p["occ_angle"]))
    dist = np.abs(-sa * ox + ca * oy - col(p["occ_offset"]))
    occ = (dist <= col(p["occ_width"])) & col(p["occ_on"])
    ids[occ] = -1
    img = np.where(occ[..., None], p["occ_rgb"][:, None, None, :] * shade, img)
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return {"image": image, "ids": ids}


def _annotations(p: dict, ids: np.ndarray, disc_table: np.ndarray) -> dict:
    size = ids.shape[1]
    part_masks = ids[..., None] == np.arange(NUM_PARTS, dtype=np.int8)
    object_mask = ids >= 0
    disc = disc_table[p["label"]]  # (n, P)
    disc_mask = np.any(part_masks & disc[:, None, None, :], axis=-1)
    c, s = np.cos(p["theta"])[:, None], np.sin(p["theta"])[:, None]
    ay, ax = _ANCHORS[None, :, 0] * p["scale"][:, None], _ANCHORS[None, :, 1] * p["scale"][:, None]
    ax = ax * p["flip"][:, None]
    anchors = np.stack(
        [(p["cy"][:, None] + s * ax + c * ay) / size, (p["cx"][:, None] + c * ax - s * ay) / size], -1
    )
    landmarks, visible = part_landmarks(part_masks, np.clip(anchors, 0, 1).astype(np.float32))
    return {
        "part_masks": part_masks,
        "object_mask": object_mask,
        "disc_mask": disc_mask,
        "bbox": mask_bbox(object_mask),
        "landmarks": landmarks,
        "part_visible": visible,
    }


def iter_chunks(config: PartsWorldConfig, split: str, seed: int | None = None) -> Iterator[dict]:
    """Yield consecutive chunks of a split as dicts of numpy arrays (see ``generate`` for the keys)."""
    seed = config.seed if seed is None else seed
    params = _sample_params(config, split, seed)
    disc_table = _disc_parts(config)
    n, step = len(params["label"]), _chunk_size(config.image_size)
    for ci, start in enumerate(range(0, n, step)):
        p = _take(params, slice(start, start + step))
        rng = np.random.default_rng([seed, SPLIT_IDS[split], ci, 1])
        r = _render(p, config.image_size, rng)
        yield {"image": r["image"], "label": p["label"], **_annotations(p, r["ids"], disc_table)}


def generate(config: PartsWorldConfig, split: str, seed: int | None = None) -> dict[str, np.ndarray]:
    """Generate a whole split in memory.

    Args:
      config: a ``PartsWorldConfig`` (e.g. ``make_config(num_classes=16, train_size=500)``).
      split: "train" or "test" (independent random streams).
      seed: overrides ``config.seed``.

    Returns:
      ``image`` (N,H,W,3) uint8, ``label`` (N,) int64, ``part_masks`` (N,H,W,P) bool (visible pixels,
      disjoint, order ``PART_NAMES``), ``object_mask`` (N,H,W) bool, ``disc_mask`` (N,H,W) bool,
      ``bbox`` (N,4) float32, ``landmarks`` (N,P,2) float32 (y, x) in [0, 1], ``part_visible`` (N,P) bool.
    """
    chunks = list(iter_chunks(config, split, seed))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _features(config: PartsWorldConfig) -> tfds.features.FeaturesDict:
    s, T = config.image_size, tfds.features.Tensor
    raw, zlib = tfds.features.Encoding.BYTES, tfds.features.Encoding.ZLIB
    return tfds.features.FeaturesDict(
        {
            "image": T(shape=(s, s, 3), dtype=np.uint8, encoding=raw),
            "label": tfds.features.ClassLabel(names=[c["name"] for c in parts_world_classes(config)]),
            "part_masks": T(shape=(s, s, NUM_PARTS), dtype=np.bool_, encoding=zlib),
            "object_mask": T(shape=(s, s), dtype=np.bool_, encoding=zlib),
            "disc_mask": T(shape=(s, s), dtype=np.bool_, encoding=zlib),
            "bbox": T(shape=(4,), dtype=np.float32),
            "landmarks": T(shape=(NUM_PARTS, 2), dtype=np.float32),
            "part_visible": T(shape=(NUM_PARTS,), dtype=np.bool_, encoding=raw),
        }
    )


class PartsWorld(tfds.core.GeneratorBasedBuilder):
    """tfds builder of PartsWorld; build offline with ``file_format="array_record"``, read with
    ``as_data_source()`` (no TensorFlow needed). Any ``PartsWorldConfig`` can be passed as ``config=``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        make_config(),
        make_config(num_classes=16),
        make_config(num_classes=32),
        make_config(binary=True),
        make_config(image_size=128),
        make_config(image_size=128, num_classes=32),
        make_config(image_size=224),
        make_config(image_size=224, binary=True),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 resolves this through the `importlib_resources` backport, which it only declares
        # for Python < 3.9; the file path is all it needs.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_features(self.builder_config),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # record i is example i of `generate` (labels are already shuffled)
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated, nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_IDS}

    def _generate_examples(self, split):
        start = 0
        for chunk in iter_chunks(self.builder_config, split):
            for i in range(len(chunk["label"])):
                yield start + i, {k: v[i] for k, v in chunk.items()}
            start += len(chunk["label"])
