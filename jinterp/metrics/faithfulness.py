"""Faithfulness of heatmaps: confidence drop / increase and deletion / insertion curves.

Everything runs on device: the (masked or perturbed) images are built inside ``jax.lax.map`` and
scored in chunks of ``batch_size`` through ``apply_fn(images) -> logits`` (a pure callable, e.g.
``lambda x: model.apply(variables, x)[0]``). The compiled program is cached per ``apply_fn`` object:
reuse the same callable to avoid recompiling.

Masking convention (as torch-cam's ``ClassificationMetric``): the explanation image is
``images * heatmap`` on exactly the array ``apply_fn`` receives. If ``apply_fn`` takes normalised
inputs (torch-cam, Score-CAM), the implicit baseline is the data-set mean colour; if it normalises
internally, the baseline is black.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.checks import (
    check_choice,
    check_images,
    check_int,
    check_number,
    check_same_shape,
    check_targets,
)
from jinterp.metrics._common import check_maps
from jinterp.ops.blur import gaussian_blur_edge


def _probs_fn(apply_fn):
    return lambda x: jax.nn.softmax(apply_fn(x[None])[0].astype(jnp.float32))


@partial(jax.jit, static_argnames=("apply_fn", "batch_size", "has_targets"))
def _confidence(apply_fn, images, heatmaps, targets, batch_size, has_targets, eps):
    probs = _probs_fn(apply_fn)
    p_all = jax.lax.map(probs, images, batch_size=batch_size)
    o_all = jax.lax.map(probs, images * heatmaps[..., None], batch_size=batch_size)
    t = targets if has_targets else jnp.argmax(p_all, -1)
    p = jnp.take_along_axis(p_all, t[:, None], -1)[:, 0]
    o = jnp.take_along_axis(o_all, t[:, None], -1)[:, 0]
    return {
        "average_drop": jnp.mean(jax.nn.relu(p - o) / (p + eps)),
        "drop_signed": jnp.mean((p - o) / (p + eps)),
        "drop_absolute": jnp.mean(jax.nn.relu(p - o)),
        "increase": jnp.mean((o > p).astype(jnp.float32)),
        "p_image": p,
        "p_explanation": o,
        "targets": t,
    }


def _num_classes(apply_fn, images) -> int:
    """Width of ``apply_fn``'s logits, from its shapes only (``jax.eval_shape``, no FLOPs)."""
    probe = jax.ShapeDtypeStruct((1, *np.shape(images)[1:]), jnp.float32)
    return int(jax.eval_shape(apply_fn, probe).shape[-1])


def _check_inputs(apply_fn, images, heatmaps, targets, batch_size):
    """Images (N, H, W, 3) finite, N >= 1; heatmaps (N, H, W) finite; targets (N,) integers in
    [0, classes of ``apply_fn``); ``batch_size`` an int >= 1."""
    check_images(images)
    check_maps("heatmaps", heatmaps, 3, "(N, H, W)")
    check_same_shape("heatmaps", heatmaps, np.shape(images)[:3], "images' (N, H, W)")
    if targets is not None:
        check_targets(targets, np.shape(images)[0], _num_classes(apply_fn, images))
    check_int("batch_size", batch_size, low=1)


def confidence_change(
    apply_fn, images: jax.Array, heatmaps: jax.Array, targets: jax.Array | None = None, batch_size: int = 64
) -> dict:
    """Confidence drop and increase when the model sees only the explanation ``images * heatmap``.

    With ``p`` the softmax probability of the target class on the image and ``o`` on the explanation
    image (seed 004 eq. 23, Grad-CAM++ §6):

    * ``average_drop`` = mean ``relu(p - o) / p``: Grad-CAM++'s "Average Drop", torch-cam's
      ``avg_drop`` (relative, clipped at 0). Multiply by 100 for the papers' percentages.
    * ``drop_signed`` = mean ``(p - o) / p``: seed 004 eq. 23 read literally (no clipping).
    * ``drop_absolute`` = mean ``max(p - o, 0)``: pytorch-grad-cam's ``DropInConfidence`` with a softmax
      target (not divided by p, so not comparable with ``average_drop``).
    * ``increase`` = fraction of images with ``o > p`` (seed 004 "increase number", torch-cam
      ``conf_increase``).

    Args:
      apply_fn: pure ``images (B, H, W, C) -> logits (B, classes)``.
      images: (N, H, W, 3) inputs in the convention ``apply_fn`` expects.
      heatmaps: (N, H, W) saliency in [0, 1].
      targets: (N,) classes; default the argmax prediction on the image (torch-cam).
      batch_size: images per forward chunk.

    Returns:
      dict with the four scalars and per-image ``p_image``, ``p_explanation``, ``targets``.
    """
    _check_inputs(apply_fn, images, heatmaps, targets, batch_size)
    has_targets = targets is not None
    t = jnp.asarray(targets, jnp.int32) if has_targets else jnp.zeros(np.shape(images)[0], jnp.int32)
    return _confidence(
        apply_fn,
        jnp.asarray(images, jnp.float32),
        jnp.asarray(heatmaps, jnp.float32),
        t,
        int(batch_size),
        has_targets,
        1e-7,
    )


def gaussian_blur(images: jax.Array, sigma: float = 5.0, size: int = 11) -> jax.Array:
    """RISE's blur substrate (edge border, 11 px, σ = 5): :func:`jinterp.ops.blur.gaussian_blur_edge`
    on (N, H, W, C) real images; validated: ``sigma`` finite > 0, ``size`` an int >= 1."""
    check_images(images, channels=None)
    check_number("sigma", sigma, 0.0, open_low=True)
    check_int("size", size, low=1)
    return gaussian_blur_edge(jnp.asarray(images, jnp.float32), float(sigma), size)


@partial(
    jax.jit,
    static_argnames=("apply_fn", "batch_size", "has_targets", "insertion", "morf", "pps", "n_steps", "blur"),
)
def _curve(
    apply_fn,
    images,
    heatmaps,
    targets,
    constant,
    batch_size,
    has_targets,
    insertion,
    morf,
    pps,
    n_steps,
    blur,
    sigma,
):
    n, h, w, _ = images.shape
    probs = _probs_fn(apply_fn)
    if not has_targets:
        targets = jnp.argmax(jax.lax.map(probs, images, batch_size=batch_size), -1)
    flat = heatmaps.reshape(n, h * w)
    order = jnp.argsort(-flat if morf else flat, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1).reshape(n, h, w)
    substrate = gaussian_blur_edge(images, sigma) if blur else jnp.full_like(images, constant)
    counts = jnp.minimum(jnp.arange(n_steps + 1) * pps, h * w)

    def score(idx):
        i, s = idx // (n_steps + 1), idx % (n_steps + 1)
        changed = (ranks[i] < counts[s])[..., None]
        x = (
            jnp.where(changed, images[i], substrate[i])
            if insertion
            else jnp.where(changed, substrate[i], images[i])
        )
        p = probs(x)
        return p[targets[i]], jnp.argmax(p) == targets[i]

    prob, correct = jax.lax.map(score, jnp.arange(n * (n_steps + 1)), batch_size=batch_size)
    prob = prob.reshape(n, n_steps + 1)
    correct = correct.reshape(n, n_steps + 1).astype(jnp.float32)
    frac = counts / (h * w)
    auc = jnp.trapezoid(prob, frac, axis=-1)
    return {
        "fractions": frac,
        "prob": prob,
        "correct": correct,
        "curve": prob.mean(0),
        "accuracy_curve": correct.mean(0),
        "auc": auc,
        "auc_mean": auc.mean(),
        "targets": targets,
    }


def perturbation_curve(
    apply_fn,
    images: jax.Array,
    heatmaps: jax.Array,
    targets: jax.Array | None = None,
    mode: str = "deletion",
    order: str = "morf",
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    substrate: str | None = None,
    constant: float = 0.0,
    blur_sigma: float = 5.0,
    batch_size: int = 64,
) -> dict:
    """Deletion / insertion curves (RISE, Petsiuk et al. 2018; seed 003 §4.3.2 "perturbing LeRF").

    Pixels are ranked by the heatmap (``order="morf"``: most relevant first; ``"lerf"``: least relevant
    first). Step s changes the ``s * pixels_per_step`` first-ranked pixels: deletion replaces them by the
    substrate, insertion starts from the substrate and restores them. All ``N * (n_steps + 1)`` images are
    built and scored on device in ``lax.map`` chunks.

    Args:
      apply_fn: pure ``images -> logits``.
      images: (N, H, W, 3); heatmaps: (N, H, W).
      targets: (N,) classes; default the argmax prediction on the clean image.
      mode: "deletion" or "insertion".
      order: "morf" or "lerf".
      pixels_per_step: pixels changed per step (an int >= 1); default ``ceil(H*W / 32)``. Seed 003 uses
        200 px at 224².
      n_steps: number of steps (an int in [1, H*W]); default enough to change every pixel. Seed 003: 100
        steps of 200 px.
      substrate: "constant" (``constant``, RISE deletion default) or "blur" (Gaussian σ=``blur_sigma``
        > 0, RISE insertion default); default per mode as in RISE.
      batch_size: forward chunk.

    Returns:
      dict with ``fractions`` (S+1,) of changed pixels, ``prob`` / ``correct`` (N, S+1) target
      probability / correctness, mean ``curve`` and ``accuracy_curve`` (S+1,), per-image ``auc`` (N,)
      (trapezoid over the fractions, so a partial sweep integrates over [0, last fraction]) and
      ``auc_mean``. Deletion-MoRF: lower is better; insertion-MoRF and deletion-LeRF: higher is better.
    """
    _check_inputs(apply_fn, images, heatmaps, targets, batch_size)
    check_choice("mode", mode, ("deletion", "insertion"))
    check_choice("order", order, ("morf", "lerf"))
    substrate = substrate or ("constant" if mode == "deletion" else "blur")
    check_choice("substrate", substrate, ("constant", "blur"))
    check_number("constant", constant)
    check_number("blur_sigma", blur_sigma, 0.0, open_low=True)
    n, h, w, _ = np.shape(images)
    pps = -(-h * w // 32) if pixels_per_step is None else check_int("pixels_per_step", pixels_per_step, 1)
    steps = -(-h * w // pps) if n_steps is None else check_int("n_steps", n_steps, 1, h * w)
    has_targets = targets is not None
    t = jnp.asarray(targets, jnp.int32) if has_targets else jnp.zeros(n, jnp.int32)
    return _curve(
        apply_fn,
        jnp.asarray(images, jnp.float32),
        jnp.asarray(heatmaps, jnp.float32),
        t,
        float(constant),
        int(batch_size),
        has_targets,
        mode == "insertion",
        order == "morf",
        pps,
        steps,
        substrate == "blur",
        float(blur_sigma),
    )
