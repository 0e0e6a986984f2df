"""PartsWorld generation and builder: determinism, mask geometry, class semantics, background independence."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.linear_model import LogisticRegression

from jinterp import data
from jinterp.data import parts_world as pw


@pytest.fixture(scope="module")
def small():
    cfg = data.make_config(train_size=400, test_size=80)
    return cfg, data.generate(cfg, "train")


def test_same_seed_identical_bytes_different_seed_differs():
    cfg = data.make_config(train_size=40, test_size=8, seed=3)
    a, b = data.generate(cfg, "train"), data.generate(cfg, "train")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    c = data.generate(cfg, "train", seed=4)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["object_mask"], c["object_mask"])
    t = data.generate(cfg, "test")  # the splits are independent streams
    assert not np.array_equal(a["image"][:8], t["image"])


def test_shapes_and_dtypes(small):
    cfg, d = small
    n, s = 400, cfg.image_size
    assert d["image"].shape == (n, s, s, 3) and d["image"].dtype == np.uint8
    assert d["part_masks"].shape == (n, s, s, 6) and d["part_masks"].dtype == bool
    assert d["object_mask"].shape == d["disc_mask"].shape == (n, s, s)
    assert (
        d["bbox"].shape == (n, 4) and d["landmarks"].shape == (n, 6, 2) and d["part_visible"].shape == (n, 6)
    )
    assert d["label"].min() == 0 and d["label"].max() == cfg.num_classes - 1


def test_masks_inside_image_and_object(small):
    _, d = small
    pm, obj = d["part_masks"], d["object_mask"]
    assert not np.any(pm & ~obj[..., None])  # every part inside the object
    assert np.array_equal(pm.any(-1), obj)  # the object is exactly its visible parts
    assert pm.sum(-1).max() == 1  # visible parts are disjoint
    # The whole bird lies inside the image: nothing touches the border.
    border = np.concatenate([obj[:, 0], obj[:, -1], obj[:, :, 0], obj[:, :, -1]], 1)
    assert not border.any()
    # Object size: 45-70 % of the width from tail to beak -> a clearly visible, not huge, object.
    frac = obj.mean((1, 2))
    assert 0.02 < frac.min() and frac.max() < 0.3
    # Head and body are always visible (occluders are thin branches); all parts visible most of the time.
    vis = d["part_visible"].mean(0)
    assert vis[0] == 1 and vis[1] == 1 and vis.min() > 0.85


def test_disc_mask_is_union_of_defining_parts(small):
    cfg, d = small
    classes = data.parts_world_classes(cfg)
    assert {c["parts"] for c in classes} == {("head", "tail", "wing")}
    for i in range(len(d["label"])):
        parts = classes[d["label"][i]]["parts"]
        union = np.zeros(d["object_mask"][i].shape, bool)
        for p in parts:
            union |= d["part_masks"][i][..., data.PART_NAMES.index(p)]
        np.testing.assert_array_equal(d["disc_mask"][i], union)
    assert d["disc_mask"].any((1, 2)).all()


def test_class_balance_and_fine_grained_pairs():
    for ncls, n in ((8, 400), (10, 1000), (32, 640)):
        cfg = data.make_config(num_classes=ncls, train_size=n, test_size=8)
        counts = np.bincount(pw._sample_params(cfg, "train", 0)["label"], minlength=ncls)
        assert np.all(np.abs(counts / (n / ncls) - 1) <= 0.1), counts
        classes = data.parts_world_classes(cfg)
        combos = [tuple(sorted(c["attributes"].items())) for c in classes]
        assert len(set(combos)) == ncls  # every class is a distinct attribute combination
        for c in classes:  # every class has a fine-grained neighbour differing in exactly one part
            diffs = [sum(c["attributes"][f] != o["attributes"][f] for f in c["attributes"]) for o in classes]
            assert 1 in diffs
    assert data.parts_world_classes(data.make_config(num_classes=32))[0]["parts"] == (
        "head",
        "tail",
        "wing",
        "beak",
    )


def test_non_defining_attribute_independent_of_class():
    # 8 classes use head, tail, wing; the beak shape is drawn per image, independently of the class.
    cfg = data.make_config(train_size=2400, test_size=8)
    p = pw._sample_params(cfg, "train", 0)
    table = np.zeros((8, 3))
    np.add.at(table, (p["label"], p["attrs"][:, 3]), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 36.1  # chi-square, 14 dof, p = 0.001
    # and the class attributes are what the class table says
    levels = np.array([[FACT.index(c["attributes"][f]) for f, FACT in zip(("head", "tail", "wing"),
                       (pw.FACTORS["head"], pw.FACTORS["tail"], pw.FACTORS["wing"]), strict=True)]
                       for c in data.parts_world_classes(cfg)])  # fmt: skip
    np.testing.assert_array_equal(p["attrs"][:, :3], levels[p["label"]])


def _colour_hist(images, keep, bins=4):
    q = (images // (256 // bins)).astype(np.int64)
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    feats = np.zeros((len(images), bins**3))
    for i in range(len(images)):
        feats[i] = np.bincount(code[i][keep[i]], minlength=bins**3)
    return feats / np.maximum(feats.sum(1, keepdims=True), 1)


def test_background_colours_do_not_predict_the_class():
    cfg = data.make_config(train_size=1600, test_size=800)
    tr, te = data.generate(cfg, "train"), data.generate(cfg, "test")

    def score(keep_tr, keep_te):
        clf = LogisticRegression(max_iter=2000, C=10.0)
        clf.fit(_colour_hist(tr["image"], keep_tr), tr["label"])
        return clf.score(_colour_hist(te["image"], keep_te), te["label"])

    background = score(~tr["object_mask"], ~te["object_mask"])
    assert background < 0.2, background  # chance 0.125; binomial sd at n=800 is 0.012
    # Positive control: the same probe on the object pixels sees the head colour and wing pattern.
    assert score(tr["object_mask"], te["object_mask"]) > 0.35


def test_landmarks_bbox_visibility(small):
    _, d = small
    assert np.isfinite(d["landmarks"]).all() and d["landmarks"].min() >= 0 and d["landmarks"].max() <= 1
    np.testing.assert_array_equal(d["part_visible"], d["part_masks"].any((1, 2)))
    s = d["image"].shape[1]
    for i in range(0, 400, 37):
        ys, xs = np.nonzero(d["object_mask"][i])
        np.testing.assert_allclose(
            d["bbox"][i], [ys.min() / s, xs.min() / s, (ys.max() + 1) / s, (xs.max() + 1) / s]
        )
        for k in np.flatnonzero(d["part_visible"][i]):
            ys, xs = np.nonzero(d["part_masks"][i][..., k])
            np.testing.assert_allclose(
                d["landmarks"][i, k], [(ys.mean() + 0.5) / s, (xs.mean() + 0.5) / s], atol=1e-5
            )


def test_hidden_part_landmark_is_its_projected_anchor():
    cfg = data.make_config(train_size=300, test_size=8)
    d = data.generate(cfg, "train")
    hidden = np.argwhere(~d["part_visible"])
    assert len(hidden) > 0  # branches do hide small parts sometimes
    for i, k in hidden[:10]:
        y, x = d["landmarks"][i, k]
        # the anchor lies inside the bounding box of the bird (a hidden part is behind the occluder)
        y0, x0, y1, x1 = d["bbox"][i]
        assert y0 - 0.15 <= y <= y1 + 0.15 and x0 - 0.15 <= x <= x1 + 0.15


def test_binary_variant():
    cfg = data.make_config(binary=True, train_size=60, test_size=8)
    d = data.generate(cfg, "train")
    assert cfg.num_classes == 2 and np.bincount(d["label"]).tolist() == [30, 30]
    has_obj = d["object_mask"].any((1, 2))
    np.testing.assert_array_equal(has_obj, d["label"] == 1)
    np.testing.assert_array_equal(d["disc_mask"], d["object_mask"])
    assert np.all(d["bbox"][d["label"] == 0] == 0)


def test_larger_images_and_many_classes():
    cfg = data.make_config(image_size=128, num_classes=32, train_size=64, test_size=8)
    d = data.generate(cfg, "train")
    assert d["image"].shape == (64, 128, 128, 3)
    frac = d["object_mask"].mean((1, 2))
    small = data.generate(data.make_config(num_classes=32, train_size=64, test_size=8), "train")
    np.testing.assert_allclose(frac.mean(), small["object_mask"].mean((1, 2)).mean(), rtol=0.1)  # scale-free


def test_centred_variant_fills_the_frame_around_the_centre():
    """``centred``: the object covers ~26 % of the frame (7 % by default) and its box is centred."""
    kw = dict(train_size=96, test_size=8)
    centred = data.generate(data.make_config(centred=True, **kw), "train")
    default = data.generate(data.make_config(**kw), "train")
    frac, frac0 = centred["object_mask"].mean((1, 2)), default["object_mask"].mean((1, 2))
    assert 0.18 < frac.mean() < 0.35 and frac0.mean() < 0.1, (frac.mean(), frac0.mean())
    body = centred["landmarks"][:, data.PART_NAMES.index("body")]
    off = np.abs(body - 0.5).max(-1)  # visible body pixels' centroid (occluders shift it) vs the centre
    assert np.median(off) < 0.06 and off.max() < 0.2, (np.median(off), off.max())
    np.testing.assert_array_equal(centred["label"], default["label"])  # same classes, other framing
    assert data.parts_world_config("parts_world/64px_8cls_seed2_centred").centred
    assert not data.parts_world_config("parts_world/64px_8cls_seed2").centred
    assert pw.config_name(seed=2, centred=True) == "64px_8cls_seed2_centred"


def test_config_errors():
    with pytest.raises(ValueError, match="num_classes"):
        data.make_config(num_classes=500)
    with pytest.raises(ValueError, match="unknown field"):
        data.make_config(colour="red")
    with pytest.raises(ValueError, match="split"):
        data.generate(data.make_config(train_size=4, test_size=4), "validation")


def test_builder_round_trip(tmp_path):
    cfg = data.make_config(train_size=24, test_size=8, seed=5)
    builder = data.PartsWorld(config=cfg, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    ds = builder.as_data_source()
    assert len(ds["train"]) == 24 and len(ds["test"]) == 8
    ref = data.generate(cfg, "test")
    for i in (0, 5, 7):  # record i is example i, byte-identical
        ex = ds["test"][i]
        for k, v in ex.items():
            assert np.asarray(v).tobytes() == ref[k][i].tobytes(), k
    # readable by name in this process (the builder is registered on import)
    src = tfds.data_source(f"parts_world/{cfg.name}", split="train", data_dir=str(tmp_path))
    assert len(src) == 24 and src[3]["part_masks"].dtype == bool
    assert builder.info.features["label"].names[0] == data.parts_world_classes(cfg)[0]["name"]
