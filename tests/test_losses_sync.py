"""Synchronization losses (TNNLS'24 eq. 3-9) and HICCNN hierarchical loss (eq. 8-12)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads
from sklearn.metrics import adjusted_rand_score

from jinterp.losses import grouping, hierarchical, sync

H = W = 9  # odd: the centre cell is exactly (0.5, 0.5)


def cone(cy, cx, amp=20.0):
    """a_m = amp - dist_cells(x_m, c): log q is exactly -dist / tau (tau = one cell) up to a constant."""
    y, x = np.mgrid[0:H, 0:W]
    return amp - np.sqrt((y - cy) ** 2 + (x - cx) ** 2)


def as_map(*channels):
    return jnp.asarray(np.stack(channels, -1)[None], jnp.float32)


# ------------------------------------------------------------------------------------------ L_lac


def test_expected_positions_soft_argmax():
    a = np.zeros((H, W))
    a[2, 6] = 50.0
    pos = sync.expected_positions(as_map(a, cone(4, 4)))
    np.testing.assert_allclose(pos[0, 0], [2 / 8, 6 / 8], atol=1e-6)
    np.testing.assert_allclose(pos[0, 1], [0.5, 0.5], atol=1e-6)  # symmetric cone around the centre
    np.testing.assert_allclose(sync.coordinates(1, 3), [[0.5, 0.0], [0.5, 0.5], [0.5, 1.0]])


def test_lac_minimal_for_single_compact_peak():
    one = as_map(cone(4, 4))
    # At the cone q = p (eq. 4 = eq. 5), so L_lac = H(p), the minimum of the cross-entropy, and the
    # gradient (target held fixed) vanishes.
    logp = -np.sqrt(((sync.coordinates(H, W) - 0.5) ** 2).sum(-1)) * 8
    p = np.exp(logp - np.log(np.exp(logp).sum()))
    np.testing.assert_allclose(sync.lac_loss(one), -(p * np.log(p)).sum(), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(sync.lac_loss)(one), 0.0, atol=1e-6)
    two = as_map(np.maximum(cone(1, 1), cone(7, 7)))  # two separated peaks of the same shape
    flat = as_map(np.zeros((H, W)))
    wide = as_map(cone(4, 4) / 4)  # the same single peak, 4x too flat
    l_one, l_two, l_flat, l_wide = (float(sync.lac_loss(m)) for m in (one, two, flat, wide))
    assert l_one < l_wide < l_flat < l_two, (l_one, l_wide, l_flat, l_two)
    assert l_two - l_one > 1.0


def test_lac_gradient_is_q_minus_p_and_dead_channel():
    # With the eq. 4 target held fixed (stop-gradient), dL/da_m = (q_m - p_m) / (B * C) exactly.
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 5, 4, 3)))
    b, h, w, c = x.shape
    a = np.asarray(x, np.float64).reshape(b, h * w, c)
    q = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    coords = np.asarray(sync.coordinates(h, w), np.float64)
    xbar = np.einsum("bmc,md->bcd", q, coords)
    dist = np.linalg.norm(coords[None, :, None] - xbar[:, None], axis=-1)
    p = np.exp(-dist * 4) / np.exp(-dist * 4).sum(1, keepdims=True)  # tau = one cell = 1/4
    np.testing.assert_allclose(sync.lac_loss(x), -(p * np.log(q)).sum(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(sync.lac_loss)(x), ((q - p) / (b * c)).reshape(x.shape), atol=1e-6)
    dead = jnp.zeros((2, 5, 4, 3)).at[..., 0].set(1.0)
    assert np.all(np.isfinite(jax.grad(sync.lac_loss)(dead)))
    np.testing.assert_allclose(sync.lac_loss(dead), np.log(20.0), rtol=1e-6)  # uniform q: CE = log(hw)


# ------------------------------------------------------------------------------------------ L_sync


def numpy_sync(pos, eps):
    """Eq. 6-9 with explicit loops (per image, mean over filters and images)."""
    total = 0.0
    for p in pos:
        for i in range(len(p)):
            d = np.linalg.norm(p - p[i], axis=1)
            nb = np.flatnonzero(d <= eps)
            log_q = -d - np.log(np.exp(-d).sum())
            total -= log_q[nb].mean()
    return total / (pos.shape[0] * pos.shape[1])


def test_sync_matches_loops_pulls_neighbours_ignores_others():
    pos = np.array([[[0.5, 0.5], [0.5, 0.52], [0.9, 0.5], [0.1, 0.1]]], np.float32)
    np.testing.assert_allclose(
        sync.sync_loss_from_positions(jnp.asarray(pos)), numpy_sync(pos, 0.03), rtol=1e-5
    )
    np.testing.assert_array_equal(
        sync.neighbours(jnp.asarray(pos[0])),
        np.eye(4, dtype=bool) | np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0] * 4, [0] * 4], bool),
    )
    descent = -np.asarray(jax.grad(sync.sync_loss_from_positions)(jnp.asarray(pos)))[0]
    # Filters 0 and 1 (0.02 apart, eps = 0.03) are pulled towards each other ...
    assert descent[0] @ (pos[0, 1] - pos[0, 0]) > 0 and descent[1] @ (pos[0, 0] - pos[0, 1]) > 0
    # ... while a non-neighbour is only pushed away (eq. 9's log-sum-exp), never pulled.
    assert descent[0] @ (pos[0, 2] - pos[0, 0]) < 0
    assert descent[2] @ (pos[0, 0] - pos[0, 2]) < 0
    # Without neighbours, the pull vanishes: the gradient is the push term alone.
    far = pos.copy()
    far[0, 1] = [0.5, 0.6]
    push_only = lambda x: jnp.mean(jax.nn.logsumexp(-sync.pairwise_distances(x), axis=-1))
    np.testing.assert_allclose(
        jax.grad(sync.sync_loss_from_positions)(jnp.asarray(far)),
        jax.grad(push_only)(jnp.asarray(far)),
        atol=1e-6,
    )


def test_sync_loss_on_maps_finite_with_dead_and_coincident_filters():
    a = np.zeros((H, W))
    a[4, 4] = 30.0
    maps = jnp.asarray(np.stack([a, a, np.zeros((H, W)), cone(2, 2)], -1)[None], jnp.float32)  # 0, 1 coincide
    value, grad = jax.value_and_grad(sync.sync_loss)(maps)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    with jax.enable_x64(True):
        pos = jax.random.uniform(jax.random.key(3), (2, 5, 2), jnp.float64)
        check_grads(
            lambda p: sync.sync_loss_from_positions(p, 0.3),
            (pos,),
            order=1,
            modes=("rev",),
            atol=1e-5,
            rtol=1e-5,
        )


def test_modules_are_components_of_eps_graph():
    peaks = [(1, 1), (1, 1), (7, 2), (4, 7), (7, 2), (1, 1)]  # filters 0,1,5 | 2,4 | 3
    chans = []
    for cy, cx in peaks:
        a = np.zeros((H, W))
        a[cy, cx] = 40.0
        chans.append(a)
    maps = jnp.asarray(np.stack([np.stack(chans, -1)] * 3), jnp.float32)
    np.testing.assert_array_equal(sync.modules(maps), [0, 0, 1, 2, 1, 0])
    # Transitivity: a chain 0-1-2-3 with eps covering only consecutive links is one component.
    chain = jnp.abs(jnp.arange(4)[:, None] - jnp.arange(4)[None]) <= 1
    np.testing.assert_array_equal(sync.components(chain & ~jnp.eye(4, dtype=bool)), [0, 0, 0, 0])
    np.testing.assert_array_equal(sync.components(jnp.eye(3, dtype=bool)), [0, 1, 2])


# ------------------------------------------------------------------------------------------ L_hier


def hier_case():
    """Deep 2x2 maps: group 0 (channels 0, 1) fires on the left column, group 1 (2, 3) on the right.
    Shallow 4x4 maps, C_s = 4, subgroups {0, 1}, {2, 3} in both regions; B = 2 images.
    Left region: channels 0, 1 copy pattern f and 2, 3 copy pattern g (f, g orthogonal after centring);
    right region: all four channels copy f' (perfectly correlated across subgroups)."""
    deep = np.zeros((2, 2, 2, 4), np.float32)
    deep[:, :, 0, :2] = 1.0
    deep[:, :, 1, 2:] = 1.0
    sh = np.zeros((2, 4, 4, 4), np.float32)
    sh[0, 0, 0, :2] = sh[1, 1, 0, :2] = 1.0  # f, inside the left region (columns 0-1)
    sh[0, 2, 1, 2:] = sh[1, 3, 1, 2:] = 3.0  # g
    sh[0, 0, 3, :] = sh[1, 2, 3, :] = 2.0  # f', inside the right region (columns 2-3)
    return (
        jnp.asarray(deep),
        jnp.asarray(sh),
        jnp.array([0, 0, 1, 1]),
        jnp.array([[0, 0, 1, 1], [0, 0, 1, 1]]),
    )


def test_region_masks_analytic():
    deep, sh, groups, _ = hier_case()
    m = hierarchical.region_masks(deep, groups, 2, (4, 4))
    # Bilinear 2 -> 4 of columns [1, 0] gives [1, .75, .25, 0]; >= 0.5 keeps the left two columns.
    left = np.zeros((4, 4))
    left[:, :2] = 1
    np.testing.assert_array_equal(m[:, 0], np.stack([left, left]))
    np.testing.assert_array_equal(m[:, 1], np.stack([left[:, ::-1]] * 2))
    masked = hierarchical.masked_maps(m, sh)  # eq. 8
    np.testing.assert_array_equal(masked[0, ..., 3].sum(), 6.0)  # g survives in the left region only
    np.testing.assert_array_equal(masked[1, ..., 3].sum(), 4.0)  # f' survives in the right region only


def test_hier_loss_analytic():
    deep, sh, groups, sub = hier_case()
    masks = hierarchical.region_masks(deep, groups, 2, (4, 4))
    center, _ = hierarchical.update_center(jnp.zeros((2, 4, 4, 4)), jnp.array(0), deep, sh, groups, 2)
    np.testing.assert_allclose(center, hierarchical.masked_maps(masks, sh).mean(1))  # first EMA = batch mean
    # Left region: per subgroup within 4 * 2 = 8, all 8 + 4 * 1 = 12 -> ratio 2/3 for both.
    # Right region: all channels correlated: within 8, all 8 + 4 * 2 = 16 -> ratio 1/2 for both.
    ratios = np.array([[8 / 12, 8 / 12], [8 / 16, 8 / 16]]) * (1 - 1e-5 / np.array([[12], [16]]))
    # Weights: activation mass per filter of each (region, subgroup) cluster, normalised to sum 1.
    act = np.array([[2.0, 6.0], [4.0, 4.0]])
    expected = -(act / act.sum() * ratios).sum()
    got = hierarchical.hier_loss(deep, sh, groups, 2, sub, 2, center)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Gradients flow into the shallow map only, and stay finite although most masked entries are 0.
    g_deep, g_sh = jax.grad(lambda d, s: hierarchical.hier_loss(d, s, groups, 2, sub, 2, center), (0, 1))(
        deep, sh
    )
    assert np.all(g_deep == 0) and np.all(np.isfinite(g_sh))


def test_hier_recluster_recovers_planted_subgroups_per_region():
    # Left region: subgroups {0..3}, {4..7}; right region: {0, 2, 4, 6}, {1, 3, 5, 7}.
    key = jax.random.key(0)
    b = 16
    deep = np.zeros((b, 2, 2, 2), np.float32)
    deep[:, :, 0, 0] = 1.0
    deep[:, :, 1, 1] = 1.0
    base = np.asarray(jax.random.uniform(key, (b, 4, 4, 4)))
    sh = np.zeros((b, 4, 4, 8), np.float32)
    left_truth, right_truth = np.repeat([0, 1], 4), np.tile([0, 1], 4)
    sh[:, :, :2] = base[:, :, :2][..., left_truth]
    sh[:, :, 2:] = base[:, :, 2:, 2:][..., right_truth]
    sh += 0.05 * np.asarray(jax.random.uniform(jax.random.key(1), sh.shape))
    stats = hierarchical.init_stats(2, 8, (4, 4))
    stats = hierarchical.update_stats(stats, deep, sh, jnp.array([0, 1]), 2)
    sub = np.asarray(hierarchical.recluster(stats, 2, jax.random.key(2)))
    assert adjusted_rand_score(left_truth, sub[0]) == 1.0
    assert adjusted_rand_score(right_truth, sub[1]) == 1.0
    # Region statistics equal eq. 1 on the masked maps.
    masked = hierarchical.masked_maps(hierarchical.region_masks(deep, jnp.array([0, 1]), 2, (4, 4)), sh)
    direct = grouping.similarity(grouping.update_stats(grouping.init_stats(8, (4, 4)), masked[1]))
    np.testing.assert_allclose(grouping.similarity(jax.tree.map(lambda a: a[1], stats)), direct, atol=1e-5)
