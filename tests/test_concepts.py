"""Concise concepts: planted clusters recovered, silhouette picks their count, eq. 6 representative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

import jinterp.backbones as B
from jinterp import viz
from jinterp.explain import concepts as K


def _planted(n_per=(5, 6, 4), size=16, seed=0):
    """Maps = a blob at one of three places (+ noise); relevance levels differ per cluster."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres, levels = [(3, 3), (12, 4), (8, 12)], [1.0, 0.5, 0.2]
    maps, rel, truth = [], [], []
    for c, n in enumerate(n_per):
        blob = np.exp(-((yy - centres[c][0]) ** 2 + (xx - centres[c][1]) ** 2) / 6.0)
        for _ in range(n):
            maps.append(blob * rng.uniform(0.5, 2.0) + 0.02 * rng.normal(size=blob.shape))
            rel.append(levels[c] + 0.02 * rng.normal())
            truth.append(c)
    return np.array(maps, np.float32), np.array(rel), np.array(truth)


@pytest.mark.parametrize("linkage", K.LINKAGES)
def test_planted_clusters_recovered_with_count_and_representative(linkage):
    maps, rel, truth = _planted()
    neurons = [("layer", i) for i in range(len(maps))]
    out = K.cluster(maps, rel, neurons, lam=0.5, linkage=linkage, k_range=(2, 8))
    assert adjusted_rand_score(truth, out.labels) == 1.0
    assert len(out) == 3 and max(out.silhouettes, key=out.silhouettes.get) == 3
    for c, members in enumerate(out.neurons):
        idx = [i for _, i in members]
        assert out.representatives[c] == ("layer", idx[int(np.argmax(rel[idx]))])  # eq. 6
        np.testing.assert_array_equal(out.maps[c], maps[idx[int(np.argmax(rel[idx]))]])
    assert sorted(i for m in out.neurons for _, i in m) == list(range(len(maps)))  # each neuron traced once


@pytest.mark.parametrize("linkage", K.LINKAGES)
def test_lambda_one_is_plain_euclidean_clustering(linkage):
    maps, _, _ = _planted(seed=3)
    rel = np.random.default_rng(0).normal(size=len(maps))  # must not matter at lam=1
    out = K.cluster(maps, rel, [("l", i) for i in range(len(maps))], lam=1.0, linkage=linkage, k_range=(4, 4))
    unit = maps / np.abs(maps).reshape(len(maps), -1).max(1)[:, None, None]
    ref = AgglomerativeClustering(n_clusters=4, linkage=linkage).fit_predict(unit.reshape(len(maps), -1))
    assert adjusted_rand_score(ref, out.labels) == 1.0


def test_weighted_distance_terms():
    maps = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    rel = np.array([0.0, 1.0, 4.0])
    d = K.weighted_distance(maps, rel, lam=0.25)
    de = np.array([[0, 5, 1], [5, 0, np.sqrt(18)], [1, np.sqrt(18), 0]]) / 5
    wd = np.abs(rel[:, None] - rel[None]) / 4
    np.testing.assert_allclose(d, 0.25 * de + 0.75 * wd)
    with pytest.raises(ValueError, match="lam"):
        K.weighted_distance(maps, rel, lam=1.5)
    with pytest.raises(ValueError, match="linkage"):
        K.cluster(maps, rel, [("l", i) for i in range(3)], linkage="median")


def test_concise_concepts_end_to_end_and_plot(tmp_path):
    model = B.create("small_cnn", num_classes=3, widths=(6, 8), strides=(2, 2))
    x = np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32)
    v = model.init(jax.random.key(0), jnp.asarray(x[None]))
    out = K.concise_concepts(model, v, x, 1, ["conv1", "conv2"], k_range=(2, 6), top_k=10)
    assert sum(len(n) for n in out.neurons) == 10 and 2 <= len(out) <= 6
    base = K.crp_top_k(model, v, x, 1, ["conv1", "conv2"], k=10)
    assert sorted(base.all_neurons) == sorted(out.all_neurons)  # same global top-10 neurons
    assert np.all(np.diff(base.relevances) <= 0)
    fig = viz.plot_concepts(out, x)
    assert len(fig.get_axes()) >= len(out) + 1
    assert [ax.get_title() for ax in fig.axes[: len(out) + 1]] == ["image"] + [
        f"{layer}:{ch} (+{len(n) - 1})\nR={r:.3g}"
        for (layer, ch), n, r in zip(out.representatives, out.neurons, out.relevances, strict=True)
    ]
    first = fig.axes[1].get_images()  # the image, then the concept's positive map scaled to max 1
    assert len(first) == 2 and first[1].get_array().max() == pytest.approx(1.0)
    np.testing.assert_allclose(
        first[1].get_array(), np.maximum(out.maps[0], 0) / np.maximum(out.maps[0], 0).max()
    )
    path = viz.save_figure(fig, tmp_path / "concepts.png", dpi=100)
    assert (tmp_path / "concepts.png").stat().st_size > 1000 and path.endswith(".png")
