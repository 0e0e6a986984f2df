"""Loader: batch contract, seeded order, resume, host sharding, aligned augmentation, catalog sets, errors."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jinterp import data
from jinterp.data import loader

PW = dict(train_size=96, test_size=40, data_seed=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    next(data.load("parts_world", "train", 8, data_dir=d, **PW))  # builds once
    return d


def _take(it, n):
    return list(itertools.islice(it, n))


def test_batch_contract(data_dir):
    b = next(data.load("parts_world", "train", 16, data_dir=data_dir, **PW))
    want = {
        "image": ((16, 64, 64, 3), np.float32),
        "label": ((16,), np.int32),
        "index": ((16,), np.int64),
        "object_mask": ((16, 64, 64), bool),
        "part_masks": ((16, 64, 64, 6), bool),
        "disc_mask": ((16, 64, 64), bool),
        "bbox": ((16, 4), np.float32),
        "landmarks": ((16, 6, 2), np.float32),
        "part_visible": ((16, 6), bool),
    }
    assert set(b) == set(want)
    for k, (shape, dtype) in want.items():
        assert b[k].shape == shape and b[k].dtype == dtype, k
    # the rows are the generated examples of the split, images normalised with ImageNet mean / std
    ref = data.generate(data.parts_world_config("parts_world", **PW), "train")
    raw = ref["image"][b["index"]].astype(np.float32) / 255
    np.testing.assert_allclose(b["image"], (raw - data.IMAGENET_MEAN) / data.IMAGENET_STD, atol=1e-5)
    np.testing.assert_array_equal(b["label"], ref["label"][b["index"]])
    np.testing.assert_array_equal(b["part_masks"], ref["part_masks"][b["index"]])
    u = next(data.load("parts_world", "train", 16, data_dir=data_dir, normalize=None, **PW))
    assert u["image"].dtype == np.uint8
    np.testing.assert_allclose(data.denormalize_images(b["image"]), u["image"] / 255, atol=1e-5)


def test_epoch_order_is_seeded_permutation(data_dir):
    batches = _take(
        data.load("parts_world", "test", 12, data_dir=data_dir, repeat=False, drop_remainder=False, **PW), 99
    )
    assert [len(b["index"]) for b in batches] == [12, 12, 12, 4]
    idx = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(idx, np.random.default_rng([0, 0]).permutation(40))
    other = next(data.load("parts_world", "test", 12, data_dir=data_dir, seed=1, **PW))["index"]
    assert not np.array_equal(other, idx[:12])
    plain = next(data.load("parts_world", "test", 12, data_dir=data_dir, shuffle=False, **PW))["index"]
    np.testing.assert_array_equal(plain, np.arange(12))
    # drop_remainder: 3 batches per epoch, the next epoch uses the permutation of epoch 1
    rep = _take(data.load("parts_world", "test", 12, data_dir=data_dir, **PW), 4)
    np.testing.assert_array_equal(rep[3]["index"], np.random.default_rng([0, 1]).permutation(40)[:12])


def test_resume_gives_identical_batches(data_dir):
    kw = dict(data_dir=data_dir, augment=True, seed=7, **PW)
    full = _take(data.load("parts_world", "train", 32, **kw), 7)  # crosses two epoch boundaries (3 per epoch)
    resumed = _take(data.load("parts_world", "train", 32, start_step=4, **kw), 3)
    for a, b in zip(full[4:], resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_host_sharding_partitions_the_global_batch(data_dir):
    kw = dict(data_dir=data_dir, augment=True, seed=3, **PW)
    whole = _take(data.load("parts_world", "train", 16, **kw), 3)
    parts = [_take(data.load("parts_world", "train", 16, host_id=h, host_count=2, **kw), 3) for h in range(2)]
    for s in range(3):
        for k in whole[s]:
            np.testing.assert_array_equal(whole[s][k], np.concatenate([parts[0][s][k], parts[1][s][k]]))


def _ramp_batch(size=64, n=6):
    """Synthetic images whose red/green channels encode the source row/column (linear ramps, exactly
    reproduced by bilinear resampling) and a known rectangle mask."""
    r = np.arange(size)
    image = np.zeros((n, size, size, 3), np.uint8)
    image[..., 0] = (r * 4)[None, :, None]
    image[..., 1] = (r * 4)[None, None, :]
    rect = (r[:, None] >= 20) & (r[:, None] < 44) & (r[None, :] >= 8) & (r[None, :] < 30)
    masks = np.broadcast_to(rect, (n, size, size)).copy()
    return {
        "image": image,
        "object_mask": masks,
        "part_masks": masks[..., None],
        "bbox": data.mask_bbox(masks),
        "landmarks": np.full((n, 1, 2), 0.5, np.float32),
    }


def test_augmentation_moves_masks_with_images():
    batch = _ramp_batch()
    params = data.augment_params(np.random.default_rng(0), 6, 64)
    params["flip"][:3] = [True, False, True]
    out = data.augment_batch(batch, params)
    # decode each output pixel's source position from the ramps: the mask must be the rectangle there
    src_y, src_x = out["image"][..., 0] / 4.0, out["image"][..., 1] / 4.0
    inside = (src_y >= 20) & (src_y < 44) & (src_x >= 8) & (src_x < 30)
    near_edge = (np.minimum(np.abs(src_y - 19.5), np.abs(src_y - 43.5)) < 1) | (
        np.minimum(np.abs(src_x - 7.5), np.abs(src_x - 29.5)) < 1
    )
    assert np.all((out["object_mask"] == inside) | near_edge)
    assert out["object_mask"].any()
    # flipped examples have the column ramp decreasing, others increasing
    dx = np.diff(out["image"][..., 1].astype(int), axis=2).mean((1, 2))
    np.testing.assert_array_equal(dx < 0, params["flip"])
    # boxes and landmarks are recomputed from the moved masks
    np.testing.assert_allclose(out["bbox"], data.mask_bbox(out["object_mask"]))
    lm, vis = data.part_landmarks(out["part_masks"], np.zeros((6, 1, 2), np.float32))
    np.testing.assert_allclose(out["landmarks"], lm)
    np.testing.assert_array_equal(out["part_visible"], vis)


def test_augmentation_identity_and_pure_flip_are_exact():
    batch = _ramp_batch(n=2)
    ident = {"box": np.array([[0, 0, 64, 64]] * 2, float), "flip": np.array([False, True])}
    out = data.augment_batch(batch, ident)
    np.testing.assert_array_equal(out["image"][0], batch["image"][0])
    np.testing.assert_array_equal(out["image"][1], batch["image"][1][:, ::-1])
    np.testing.assert_array_equal(out["object_mask"][1], batch["object_mask"][1][:, ::-1])
    y0, x0, y1, x1 = batch["bbox"][1]
    np.testing.assert_allclose(out["bbox"][1], [y0, 1 - x1, y1, 1 - x0], atol=1e-6)
    # the geometric box transform (catalog sets) agrees with the mask-derived one
    geo = data.augment_batch(batch, ident, bbox_from_mask=False)["bbox"]
    np.testing.assert_allclose(geo, out["bbox"], atol=1e-6)
    # a crop of the top-left quadrant at 2x: output pixel i samples source (i + 0.5) / 2 - 0.5
    quad = {"box": np.array([[0, 0, 32, 32]] * 2, float), "flip": np.array([False, False])}
    q = data.augment_batch(batch, quad)
    src = np.clip((np.arange(64) + 0.5) / 2 - 0.5, 0, None)
    np.testing.assert_allclose(q["image"][0, :, 0, 0], np.rint(src * 4), atol=1)
    np.testing.assert_array_equal(
        q["object_mask"][0], np.repeat(np.repeat(batch["object_mask"][0][:32, :32], 2, 0), 2, 1)
    )


def test_augmented_parts_world_batches_stay_consistent(data_dir):
    b = next(data.load("parts_world", "train", 32, data_dir=data_dir, augment=True, normalize=None, **PW))
    assert not np.any(b["part_masks"] & ~b["object_mask"][..., None])
    np.testing.assert_array_equal(b["part_masks"].any(-1), b["object_mask"])
    np.testing.assert_array_equal(b["part_visible"], b["part_masks"].any((1, 2)))
    assert np.isfinite(b["landmarks"]).all() and b["landmarks"].min() >= 0 and b["landmarks"].max() <= 1
    plain = next(data.load("parts_world", "train", 32, data_dir=data_dir, normalize=None, **PW))
    np.testing.assert_array_equal(b["index"], plain["index"])
    assert not np.array_equal(b["image"], plain["image"])


def test_binary_and_named_configs(tmp_path):
    b = next(data.load("parts_world_binary", "train", 8, data_dir=str(tmp_path), train_size=16, test_size=8))
    np.testing.assert_array_equal(b["object_mask"].any((1, 2)), b["label"] == 1)
    assert data.num_classes("parts_world_binary") == 2
    cfg = data.parts_world_config("parts_world/128px_32cls_n800-200_seed3")
    assert (cfg.image_size, cfg.num_classes, cfg.train_size, cfg.test_size, cfg.seed) == (
        128,
        32,
        800,
        200,
        3,
    )
    assert (
        data.num_classes("parts_world/64px_16cls") == 16
        and data.num_classes("parts_world", num_classes=24) == 24
    )
    assert data.info("parts_world")["splits"] == {"train": 8000, "test": 2000}


def test_digits():
    it = data.load("digits", "train", 32, image_size=32, normalize="unit", shuffle=False)
    b = next(it)
    assert b["image"].shape == (32, 32, 32, 3) and b["object_mask"].shape == (32, 32, 32)
    from sklearn.datasets import load_digits

    d = load_digits()
    sel = np.random.default_rng(0).permutation(len(d.target))[:32]
    np.testing.assert_array_equal(b["label"], d.target[sel])
    # independent reference: PIL's bilinear upsampling (pixel-centre aligned, edges clamped)
    from PIL import Image

    for i in range(3):
        ref = np.asarray(
            Image.fromarray(d.images[sel[i]].astype(np.float32) / 16).resize((32, 32), Image.BILINEAR)
        )
        np.testing.assert_allclose(b["image"][i, ..., 0], ref, atol=1 / 255 + 1e-4)
        np.testing.assert_array_equal(b["image"][i, ..., 0], b["image"][i, ..., 2])
    n_train = sum(
        len(x["label"]) for x in data.load("digits", "train", 100, repeat=False, drop_remainder=False)
    )
    n_test = sum(
        len(x["label"]) for x in data.load("digits", "test", 100, repeat=False, drop_remainder=False)
    )
    assert n_train + n_test == 1797 and data.num_classes("digits") == 10


def test_catalog_example_geometry():
    """Resize + centre crop of a wide image; the mask (another shape) and the box land where expected."""
    src = loader._CatalogSource.__new__(loader._CatalogSource)
    src.name, src.tfds_name, src.num_classes, src.size = "caltech_birds2011", "caltech_birds2011", 200, 40
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:30, 30:50] = 255  # object in the middle third horizontally
    mask = np.zeros((20, 40, 1), np.uint8)  # half resolution, as real/mock masks may be
    mask[5:15, 15:25] = 255
    bbox = np.array([0.25, 0.375, 0.75, 0.625], np.float32)  # [ymin, xmin, ymax, xmax] of the object
    out = src._one({"image": image, "segmentation_mask": mask, "bbox": bbox, "label": 7})
    assert out["image"].shape == (40, 40, 3) and out["label"] == 7
    # centre crop keeps columns 20..60: the object sits at rows 10..30, cols 10..30 of the output
    expect = np.zeros((40, 40), bool)
    expect[10:30, 10:30] = True
    np.testing.assert_array_equal(out["object_mask"], expect)
    np.testing.assert_array_equal(out["image"][..., 0] > 127, expect)
    np.testing.assert_allclose(out["bbox"], [0.25, 0.25, 0.75, 0.75], atol=1e-6)


@pytest.mark.parametrize("name", ["caltech_birds2011", "voc", "imagenet2012"])
def test_catalog_sets_with_mock_data(name, tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        batches = list(data.load(name, "train", 4, data_dir=str(tmp_path), image_size=48, augment=True,
                                 repeat=False, drop_remainder=False))  # fmt: skip
    assert [len(b["label"]) for b in batches] == [4, 2]
    b = batches[0]
    assert b["image"].shape == (4, 48, 48, 3) and b["image"].dtype == np.float32
    assert set(b) == set(data.info(name)["keys"])
    assert (
        b["label"].dtype == np.int32 and b["label"].min() >= 0 and b["label"].max() < data.num_classes(name)
    )
    if "object_mask" in b:
        assert b["object_mask"].shape == (4, 48, 48) and b["object_mask"].dtype == bool
    if "bbox" in b:
        assert b["bbox"].min() >= 0 and b["bbox"].max() <= 1
    if "labels" in b:
        assert b["labels"].shape == (4, 20) and set(np.unique(b["labels"])) <= {0.0, 1.0}


def test_bad_input(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'birds'.*parts_world.*caltech_birds2011"):
        data.load("birds", "train", 8)
    for bs in (0, -4):
        with pytest.raises(ValueError, match="batch_size"):
            data.load("parts_world", "train", bs, data_dir=data_dir, **PW)
    with pytest.raises(ValueError, match=r"batch_size: 41 is larger than split 'test'.*40"):
        data.load("parts_world", "test", 41, data_dir=data_dir, **PW)
    assert (
        len(
            next(data.load("parts_world", "test", 41, data_dir=data_dir, drop_remainder=False, **PW))["label"]
        )
        == 40
    )
    with pytest.raises(ValueError, match="host_count"):
        data.load("parts_world", "train", 9, data_dir=data_dir, host_count=2, **PW)
    with pytest.raises(ValueError, match="split"):
        data.load("parts_world", "validation", 8, data_dir=data_dir, **PW)
    with pytest.raises(ValueError, match="normalize"):
        data.load("parts_world", "train", 8, data_dir=data_dir, normalize="zscore", **PW)
    with pytest.raises(ValueError, match="unknown field"):
        data.load("parts_world", "train", 8, data_dir=data_dir, colour="red")
    missing = str(tmp_path / "empty")
    with pytest.raises(
        ValueError, match=r"not available locally: tfds looked in .*empty.*caltech_birds2011.*tfds build"
    ):
        data.load("caltech_birds2011", "train", 8, data_dir=missing)
