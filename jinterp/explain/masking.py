"""Gradient-free (and masked-input) CAMs: Ablation-CAM, Group-CAM, Cluster-CAM (Score-CAM: ``score_cam``).

Each is one compiled program. Masked inputs are built on device chunk by chunk (``batch`` bounds
memory) and scores stay on device (no host sync per score). Ablation-CAM perturbs the explained
layer through the backbone's tap (``perturbations`` collection): ablating channel k of layer l is
the perturbation ``-A_k`` on that channel, exact, and under ``vmap`` over perturbations with the
image unbatched, the layers below l are computed once per image, not once per channel.
Equation numbers refer to Cluster-CAM (Feng et al. 2024, seed 004).
"""

import functools
import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import check_choice, check_int, check_number
from jinterp.explain import pipeline
from jinterp.explain.registry import register
from jinterp.ops import resize
from jinterp.ops.blur import gaussian_blur_reflect
from jinterp.ops.clustering import kmeans, spectral_clustering, spectral_clustering_unnormalized, ssim_matrix


def _check_positive(argument: str, value: int) -> None:
    check_int(argument, value, low=1)


# ------------------------------------------------------------------------------------ Ablation-CAM


MAX_UNROLLED_CHUNKS = 16


def _map_chunks(fn, chunks: jax.Array) -> jax.Array:
    """``jax.lax.map(fn, chunks)``, unrolled when there are at most ``MAX_UNROLLED_CHUNKS``: inside a
    while loop XLA:CPU runs the head's large dots ~2x slower (VGG16 Ablation-CAM at 224 px: 1.6 s
    looped vs 0.8 s unrolled), and a few unrolled copies of the network above a layer compile fast."""
    if chunks.shape[0] > MAX_UNROLLED_CHUNKS:
        return jax.lax.map(fn, chunks)
    return jnp.stack([fn(chunks[i]) for i in range(chunks.shape[0])])


def ablation_scores(model, variables, images, targets, layer, maps, *, batch, score):
    """Score of each image with each channel of ``layer`` ablated: (N, C).

    PGC's ablation value: 0 when the image's map has minimum 0 (post-ReLU maps), else
    ``min - 1e7``. Channels run in chunks of ``batch`` (``lax.map``); within a chunk the ablations
    are a ``vmap`` over perturbations with the image unbatched, so the network below ``layer`` is
    evaluated once per image (chunks: :func:`_map_chunks`).
    """
    n, h, w, c = maps.shape
    sfn = pipeline.score_fn(score)
    lo = maps.min(axis=(1, 2, 3))
    value = jnp.where(lo == 0, 0.0, lo - 1e7)
    b = min(batch, c)
    chunks = -(-c // b)
    ks = jnp.minimum(jnp.arange(chunks * b), c - 1).reshape(chunks, b)  # tail repeats the last channel

    def chunk(kk):
        onehot = jax.nn.one_hot(kk, c, dtype=maps.dtype)

        def per_image(image, a, v, t):
            def one(e):
                delta = e * (v - a)  # replaces channel k by the ablation value, others untouched
                logits, _ = pipeline.forward(model, variables, image[None], {layer: delta[None]})
                return sfn(logits, t[None])[0]

            return jax.vmap(one)(onehot)

        return jax.vmap(per_image)(images, maps, value, targets)

    scores = _map_chunks(chunk, ks)  # (chunks, N, b)
    return jnp.moveaxis(scores, 1, 0).reshape(n, chunks * b)[:, :c]


@register(
    "ablation_cam",
    needs_gradients=False,
    forward_passes=lambda channels: channels + 1,
    backward_passes=0,
    doc="Ablation-CAM (Desai & Ramaswamy 2020), eq. 7; C passes above the layer + 1",
)
def ablation_cam(layer: pipeline.Layer = None, batch: int = 128, score: str = "logit"):
    """Ablation-CAM, eq. 7: ``w_k = (S_c - S_c,k) / S_c`` with ``S_c,k`` the score when channel k of
    the layer is ablated; heat = ReLU(sum_k w_k A_k). Reproduces pytorch-grad-cam's
    ``AblationCAM`` (ratio_channels_to_ablate=1, logit score, same ablation value) but only
    re-runs the network above the layer.

    Args:
      layer: layer name(s); default :func:`jinterp.explain.pipeline.default_layer`.
      batch: ablated copies per pass (bounds memory). Large chunks pay off: the network above the
        layer is re-read once per chunk (VGG16's 400 MB ``fc6``: 2.1 s at 32, 0.74 s at 128 on
        this CPU at 224 px).
      score: ``'logit'`` (PGC) or ``'softmax'``.
    """
    _check_positive("batch", batch)
    check_choice("score", score, pipeline.SCORES)

    def fn(model, variables, images, targets):
        layers, logits, out = pipeline.forward_layers(model, variables, images, targets, layer)
        s = pipeline.score_fn(score)(logits, targets)[:, None]
        cams = []
        for k in layers:
            ablated = ablation_scores(model, variables, images, targets, k, out[k], batch=batch, score=score)
            # A zero score (e.g. a dead network) would give 0/0: no evidence, zero weights.
            w = jnp.where(s != 0, (s - ablated) / jnp.where(s != 0, s, 1.0), 0.0)
            cams.append(pipeline.weighted_sum(out[k], w))
        return pipeline.finish(cams, images.shape[1:3])

    return fn


# --------------------------------------------------------------------------------------- Group-CAM


@register(
    "group_cam",
    needs_gradients=True,
    forward_passes=lambda groups: groups + 2,
    backward_passes=1,
    doc="Group-CAM (Zhang et al. 2021), reference code wofmanaf/Group-CAM",
)
def group_cam(
    layer: pipeline.Layer = None,
    groups: int = 32,
    percentile: float = 70.0,
    blur_kernel: int = 51,
    blur_sigma: float = 50.0,
    batch: int = 16,
):
    """Group-CAM as its reference code (``cam/groupcam.py``) computes it.

    1. Gradient-weighted maps ``alpha_k A_k`` (alpha = spatial mean of d logit / d A_k).
    2. ``groups`` contiguous channel blocks (``torch.chunk``), summed per block; ReLU; values at or
       below the block's ``percentile``-th percentile zeroed; bilinear upsampling; min-max.
    3. Each group mask M_g mixes the input with its blur: ``x M_g + blur(x) (1 - M_g)``
       (kornia Gaussian, 51 px, sigma 50); score ``p_c(mixed) - p_c(blur(x))`` (softmax).
    4. Heat = ReLU(sum_g score_g M_g), min-max. A constant group mask scores 0 (the code skips it).

    Args:
      layer: layer name(s); default :func:`jinterp.explain.pipeline.default_layer`; several layers
        are averaged after per-layer scaling.
      groups, percentile, blur_kernel, blur_sigma: reference-code defaults; validated: ints >= 1,
        ``percentile`` in [0, 100], ``blur_sigma`` > 0.
      batch: mixed images per forward pass.
    """
    for name, v in (("groups", groups), ("blur_kernel", blur_kernel), ("batch", batch)):
        _check_positive(name, v)
    check_number("percentile", percentile, 0.0, 100.0)
    check_number("blur_sigma", blur_sigma, 0.0, open_low=True)

    def fn(model, variables, images, targets):
        from jinterp.backbones import feature_grads

        pipeline.check_inputs(model, images, targets)
        layers = pipeline.resolve_layers(model, layer)
        _, maps, grads = feature_grads(model, variables, images, targets, layers)
        size = images.shape[1:3]
        blurred = gaussian_blur_reflect(images, blur_kernel, blur_sigma)
        base_logits, _ = pipeline.forward(model, variables, blurred)
        base = pipeline.softmax_score(base_logits, targets)
        heats = []
        for k in layers:
            a = maps[k] * grads[k].mean(axis=(1, 2), keepdims=True)
            c = a.shape[-1]
            size_g = -(-c // groups)
            g_idx = np.arange(c) // size_g
            grouped = jax.nn.relu(jnp.einsum("nhwc,cg->nghw", a, jnp.asarray(np.eye(g_idx.max() + 1)[g_idx])))
            thr = jnp.percentile(grouped, percentile, axis=(2, 3), keepdims=True)
            grouped = jnp.where(grouped > thr, grouped, 0.0)
            n, g = grouped.shape[:2]

            def mixed_score(pair, grouped=grouped, g=g):
                i, j = pair // g, pair % g
                up = resize.upsample(grouped[i, j], size)
                lo, hi = up.min(), up.max()
                scale = jnp.where(hi > lo, 1.0 / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
                mask = (up - lo) * scale  # 0 for a constant map: mixed = blur, score 0
                x = images[i] * mask[..., None] + blurred[i] * (1 - mask[..., None])
                logits, _ = pipeline.forward(model, variables, x[None])
                return pipeline.softmax_score(logits, targets[i][None])[0] - base[i], lo, scale

            pairs = jnp.arange(n * g)
            score, lo, scale = (
                r.reshape(n, g) for r in jax.lax.map(mixed_score, pairs, batch_size=min(batch, n * g))
            )
            # sum_g score_g M_g with M_g = (U(G_g) - lo_g) scale_g; U is linear and keeps constants, so
            # the sum is taken at the layer's resolution and upsampled once (no (N, G, H, W) buffer).
            a = score * scale
            low = jnp.einsum("nghw,ng->nhw", grouped, a) - (a * lo).sum(1)[:, None, None]
            heats.append(pipeline.minmax(jax.nn.relu(resize.upsample(low, size))))
        return pipeline.minmax(jnp.mean(jnp.stack(heats), axis=0))

    return fn


# ------------------------------------------------------------------------------------- Cluster-CAM


SPECTRAL_METHODS = ("spectral", "spectral_normalized")


def _spectral_affinity(x, method, sigma, theta, shape):
    """Weighted adjacency of the C maps ``x`` (C, h*w), already scaled by the image's largest activation.

    ``'spectral'``, the paper's §3.1 as written: S = SSIM of the maps (eq. 10 with SSIM, data range 1),
    ``A = exp(-d^2 / sigma^2)`` where ``S > theta``, else 0 (eq. 12), d the Euclidean distance of the
    maps. The paper leaves sigma's scale open; here it is in units of the median pairwise distance of
    the image's maps (``sigma = 1``: ``exp(-(d / median d)^2)``), so the graph does not depend on the
    activation scale. ``'spectral_normalized'`` (jinterp's earlier variant): eq. 17's
    ``S = exp(-||F_i - F_j||)`` put into eq. 11, ``A = exp(-(1 - S) / sigma)`` where ``S > theta``.
    """
    d = jnp.sqrt(jnp.maximum(jnp.sum((x[:, None] - x[None]) ** 2, -1), 0.0))
    if method == "spectral_normalized":
        s = jnp.exp(-d)
        return jnp.where(s > theta, jnp.exp(-(1 - s) / sigma), 0.0)
    s = ssim_matrix(x.reshape(-1, *shape), data_range=1.0)
    off = ~jnp.eye(x.shape[0], dtype=bool)
    med = jnp.nanmedian(jnp.where(off, d, jnp.nan))
    scale = sigma * jnp.where(med > 0, med, 1.0)
    return jnp.where(s > theta, jnp.exp(-((d / scale) ** 2)), 0.0)


def _cluster_labels(maps, clusters, method, key, iters, n_init, sigma, theta, eigenvectors):
    """Cluster the C channel maps of one image ((h, w, C)) into ``clusters`` groups; (C,) labels."""
    x = maps.reshape(-1, maps.shape[-1]).T  # (C, h*w): one point per channel map
    if method == "kmeans":
        return kmeans(x, clusters, key, iters=iters, n_init=n_init).labels
    # Maps scaled by the image's largest activation (the paper leaves the scale open; without it
    # exp(-||F_i - F_j||) underflows for any real layer, and SSIM needs a data range).
    x = x / jnp.maximum(x.max(), 1e-12)
    affinity = _spectral_affinity(x, method, sigma, theta, maps.shape[:2])
    if method == "spectral_normalized":  # normalised Laplacian (eq. 14), NJW / sklearn embedding
        return spectral_clustering(affinity, clusters, key, iters=iters, n_init=n_init)
    # L = D - A (eq. 13), eigenvectors u_2 .. u_{K+1} (eq. 15-16), k-means of their rows.
    return spectral_clustering_unnormalized(
        affinity, clusters, key, eigenvectors=eigenvectors, iters=iters, n_init=n_init
    )


def _check_cluster_options(method, score, beta, seed=0, sigma=1.0, theta=0.0, **positive) -> None:
    check_choice("method", method, ("kmeans", *SPECTRAL_METHODS))
    check_choice("score", score, pipeline.SCORES)
    for name, v in positive.items():
        _check_positive(name, v)
    check_number("beta", beta, 0.0, 1.0)
    check_int("seed", seed, low=0)
    check_number("sigma", sigma, 0.0, open_low=True)
    check_number("theta", theta, 0.0, 1.0, open_high=True)


def _representative_maps(maps, clusters, method, seed, iters, n_init, sigma, theta, eigenvectors=0):
    """Steps 1-2 (eq. 18): per-image cluster labels (N, C) of the maps, the clusters' mean maps
    (N, Q, h, w) and their sizes (N, Q)."""
    keys = jax.random.split(jax.random.key(seed), maps.shape[0])
    labels = jax.vmap(
        lambda m, k: _cluster_labels(m, clusters, method, k, iters, n_init, sigma, theta, eigenvectors)
    )(maps, keys)
    onehot = jax.nn.one_hot(labels, clusters, dtype=maps.dtype)  # (N, C, Q)
    counts = onehot.sum(1)
    cluster_maps = jnp.einsum("nhwc,ncq->nqhw", maps, onehot) / jnp.maximum(counts, 1.0)[:, :, None, None]
    return labels, cluster_maps, counts


def _masked_scores(model, variables, images, targets, masks, sfn, batch):
    """Step 3 (eq. 19): ``S_c(mask_q * X)`` for every image and cluster mask (N, Q, H, W) -> (N, Q)."""
    n, clusters = masks.shape[:2]

    def masked_score(pair):
        i, q = pair // clusters, pair % clusters
        logits_q, _ = pipeline.forward(model, variables, (images[i] * masks[i, q][..., None])[None])
        return sfn(logits_q, targets[i][None])[0]

    pairs = jnp.arange(n * clusters)
    return jax.lax.map(masked_score, pairs, batch_size=min(batch, n * clusters)).reshape(n, clusters)


def _cluster_cam_details(model, variables, images, targets, **options):
    """Cluster-CAM (Feng et al. 2024, eq. 17-22) with its intermediates (one layer); traceable.

    ``options``: those of :func:`cluster_cam` (its signature holds the defaults).

    1. Per image, the C maps F_n of ``layer`` are clustered into Q = ``clusters`` groups:
       k-means on the flattened maps (Euclidean distance, §3.1; k-means++ seeding from
       ``jax.random.key(seed)``, best of ``n_init``); ``method='spectral'``, §3.1 as written: SSIM
       similarity (eq. 10), eq. 12 adjacency, unnormalised L = D - A (eq. 13), the ``eigenvectors``
       K smoothest eigenvectors u_2..u_{K+1} (eq. 15-16; 0 means Q - 1), k-means of their rows into
       Q clusters (:func:`_spectral_affinity` for sigma, theta); or ``'spectral_normalized'``,
       jinterp's earlier variant (eq. 17 into eq. 11, normalised Laplacian eq. 14, Q eigenvectors).
    2. Representative maps ``F~_q`` = mean of the cluster's maps (eq. 18).
    3. Scores ``y_q = S_c(U(F~_q) ∘ X)`` (eq. 19), Q forward passes. ``normalize=True`` min-max
       scales the upsampled map first, as Score-CAM's H_n (eq. 9); the paper's eq. 19 writes the
       raw map, whose scale would make the score depend on the activation magnitude.
    4. Cognition-base ``F~_{argmax y}`` and cognition-scissors ``F~_{argmin y}`` (eq. 20-21);
       ``H = beta F~_base - (1 - beta) F~_scissors`` (eq. 22), then the shared pipeline (ReLU,
       upsample, scale).

    Defaults (the paper fixes Q = 6 for its timing, gives no beta and calls S_c "the predicted
    score"): Q = 6, ``beta = 1`` (the base map alone) and softmax scores, chosen by measurement.
    On four trained PartsWorld small_cnn models (cnn / icCNN / HICCNN / sync, conv6, 64 test images)
    the confidence average drop (lower is better) was 0.159 / 0.223 / 0.201 / 0.164 against
    Score-CAM's 0.181 / 0.246 / 0.218 / 0.212 (so the default drops the paper's cognition-scissors
    term; docs/fidelity.md re-measures it); with ``beta=0.5, score="logit"`` it was 0.266 /
    0.307 / 0.292 / 0.272. Subtracting the scissors map (``beta < 1``) raised the drop
    monotonically on every model (200-setting sweep: beta, Q in 4..16, k-means/spectral,
    normalize, score); ``beta`` stays an option for the paper's full eq. 22.

    Returns:
      dict with ``heatmap`` (N, H, W), ``labels`` (N, C) cluster of each channel, ``cluster_maps``
      (N, Q, h, w) = F~, ``masks`` (N, Q, H, W), ``scores`` (N, Q) = y, ``base`` and ``scissors``
      (N,) cluster indices, ``unmasked_score`` (N,) = S_c(X), ``layer``.
    """
    o = types.SimpleNamespace(**{**CLUSTER_CAM_DEFAULTS, **options})
    clusters = o.clusters
    _check_cluster_options(
        o.method, o.score, o.beta, o.seed, o.sigma, o.theta, clusters=clusters, batch=o.batch,
        n_init=o.n_init, iters=o.iters,
    )  # fmt: skip
    layers, logits, out = pipeline.forward_layers(model, variables, images, targets, o.layer)
    if len(layers) != 1:
        raise ValueError(f"layer: Cluster-CAM explains one layer, got {list(layers)}")
    maps = out[layers[0]]
    c = maps.shape[-1]
    if clusters > c:
        raise ValueError(f"clusters: expected at most {c} (channels of {layers[0]!r}), got {clusters}")
    size = images.shape[1:3]
    sfn = pipeline.score_fn(o.score)

    if o.eigenvectors < 0 or o.eigenvectors > c - 1:
        raise ValueError(f"eigenvectors: expected 0 (Q - 1) or 1..{c - 1} got {o.eigenvectors}")
    labels, cluster_maps, counts = _representative_maps(
        maps, clusters, o.method, o.seed, o.iters, o.n_init, o.sigma, o.theta, o.eigenvectors
    )
    up = resize.upsample(cluster_maps, size)
    masks = pipeline.minmax(up, eps=1e-8) if o.normalize else up
    scores = _masked_scores(model, variables, images, targets, masks, sfn, o.batch)
    # An empty cluster has no map: it can be neither base nor scissors.
    empty = counts == 0
    base = jnp.argmax(jnp.where(empty, -jnp.inf, scores), axis=1)
    scissors = jnp.argmin(jnp.where(empty, jnp.inf, scores), axis=1)
    pick = jax.vmap(lambda m, q: m[q])
    heat = o.beta * pick(cluster_maps, base) - (1 - o.beta) * pick(cluster_maps, scissors)
    return {
        "heatmap": pipeline.finish([heat], size),
        "labels": labels,
        "cluster_maps": cluster_maps,
        "masks": masks,
        "scores": scores,
        "base": base,
        "scissors": scissors,
        "unmasked_score": sfn(logits, targets),
    }


@functools.partial(jax.jit, static_argnums=(0, 4))
def _cluster_cam_jit(model, variables, images, targets, options: tuple):
    return _cluster_cam_details(model, variables, images, targets, **dict(options))


def cluster_cam_details(model, variables, images, targets, **options) -> dict:
    """Cluster-CAM heatmaps and intermediates, jitted (options as :func:`cluster_cam`).

    Returns the dict of :func:`_cluster_cam_details`.
    """
    pipeline.check_inputs(model, images, targets)
    unknown = set(options) - set(CLUSTER_CAM_DEFAULTS)
    if unknown:
        raise ValueError(f"options: unknown {sorted(unknown)}; expected some of {list(CLUSTER_CAM_DEFAULTS)}")
    if isinstance(options.get("layer"), list):
        options["layer"] = tuple(options["layer"])
    static = tuple(sorted(options.items()))
    return _cluster_cam_jit(model, variables, jnp.asarray(images, jnp.float32), jnp.asarray(targets), static)


@register(
    "cluster_cam",
    needs_gradients=False,
    forward_passes=lambda clusters: clusters + 1,
    backward_passes=0,
    doc="Cluster-CAM (Feng et al. 2024), eq. 17-22; Q + 1 passes",
)
def cluster_cam(
    layer: pipeline.Layer = None,
    clusters: int = 6,
    beta: float = 1.0,
    method: str = "kmeans",
    normalize: bool = True,
    score: str = "softmax",
    seed: int = 0,
    iters: int = 100,
    n_init: int = 10,
    sigma: float = 1.0,
    theta: float = 0.0,
    eigenvectors: int = 0,
    batch: int = 16,
):
    """Cluster-CAM heatmaps; see :func:`cluster_cam_details` (same options) for the method and
    its intermediates (cluster maps, scores, cognition-base / -scissors)."""
    options = dict(locals())
    _check_cluster_options(
        method, score, beta, seed, sigma, theta, clusters=clusters, batch=batch, n_init=n_init, iters=iters
    )
    check_int("eigenvectors", eigenvectors, low=0)

    def fn(model, variables, images, targets):
        return _cluster_cam_details(model, variables, images, targets, **options)["heatmap"]

    return fn


CLUSTER_CAM_DEFAULTS = {k: p.default for k, p in inspect.signature(cluster_cam).parameters.items()}
