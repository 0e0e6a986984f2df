"""Examples grid: overlay colours are exact, the PNG is written and shows the data."""

import numpy as np

from jinterp import data, viz


def test_part_overlay_colours():
    image = np.full((4, 4, 3), 0.5, np.float32)
    masks = np.zeros((4, 4, 6), bool)
    masks[0, 0, 1] = True  # head
    masks[1, 1, 4] = True  # wing
    out = viz.part_overlay(image, masks, alpha=1.0)
    np.testing.assert_allclose(out[0, 0], viz.PART_COLORS[1])
    np.testing.assert_allclose(out[1, 1], viz.PART_COLORS[4])
    grey = out[2, 2]
    np.testing.assert_allclose(grey, grey[0])  # uncovered pixels are grey
    assert len({tuple(c) for c in viz.PART_COLORS}) == 6


def test_save_examples_grid(tmp_path):
    cfg = data.make_config(train_size=8, test_size=4)
    batch = data.generate(cfg, "train")
    names = [c["name"] for c in data.parts_world_classes(cfg)]
    fig = viz.plot_examples(batch, class_names=names, num=8, ncols=4)
    assert len(fig.axes) == 16  # image + overlay per example
    assert fig.axes[0].get_title().startswith(f"{batch['label'][0]}: {names[batch['label'][0]].split()[0]}")
    path = viz.save_examples_grid(batch, str(tmp_path / "grid.png"), class_names=names, num=8, ncols=4)
    import matplotlib.image

    png = matplotlib.image.imread(path)
    assert png.shape[0] > 200 and png.shape[1] > 400 and png[..., :3].std() > 0.05
    # normalised float batches are drawn after undoing the normalisation
    norm = dict(batch, image=data.normalize_images(batch["image"]))
    fig2 = viz.plot_examples(norm, normalize="imagenet", num=2)
    shown = fig2.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(shown, batch["image"][0] / 255, atol=1e-5)
