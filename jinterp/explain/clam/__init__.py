"""CLAM: class-wise layer-wise attribute layers that refine LRP relevance (seed 003).

A CLA-layer is attached to one tapped layer ``l`` of a frozen classifier (§3.1-3.2). It sees
P x P sub-features of that layer's map, normalised per position, with the class's Intrinsic Class
Pattern appended as one more channel; an add-on block of two 1x1 convolutions maps them to
``S'``; ``N`` learned attributes (``a x a x D'``, ``a < P``) are compared with every ``a x a``
window of ``S'`` by squared L2 distance per channel (eq. 2-3). Training (§3.3, eq. 1-5) takes,
for each image, the ``N`` patches where the explainer's relevance at ``l`` is highest, and pushes
distances down for the true class's ICP and up for a wrong class's ICP (balanced contrastive
loss, :mod:`.bcl`). Layers are trained one after another from the output side,
each on relevance already refined by the layers above it.

At explanation time (§3.4) each attribute picks the patch of the test map whose distance is
smallest; a P x P multiplicative mask (``strength`` at the centre, decaying to 1 at the border)
is placed there and the relevance arriving at ``l`` is multiplied by it before being propagated
further down. The distance profiles of the chosen patches also retrieve the training images
nearest to the explanation (example-based explanation, Fig. 4).

Our readings where the paper is silent are stated where they apply: normalisation before the
ICP is appended, a sigmoid closing the add-on block (as ProtoPNet's), masks of several
attributes combined by maximum (overlapping picks are "redundant", §4.2.2), and patch selection
by the minimum mean distance over windows, channels and attributes' own windows.

Modules: :mod:`.layers` (CLA-layer math, masks, gated relevance), :mod:`.bcl` (balanced contrastive
loss, Intrinsic Class Patterns), :mod:`.fitting` (:func:`fit`, optax), :mod:`.checkpoint` (Orbax
:func:`save` / :func:`load`), :mod:`.method` (the registered ``clam(checkpoint=...)`` explainer).
"""

from jinterp.explain.clam.bcl import balanced_contrastive_loss, intrinsic_class_patterns
from jinterp.explain.clam.checkpoint import load, save
from jinterp.explain.clam.fitting import fit, top_patches
from jinterp.explain.clam.layers import (
    ALPHA1_BETA0,
    BASES,
    ClaLayerConfig,
    Clam,
    attribute_profiles,
    base_relevance,
    extract_patches,
    init_layer,
    layer_mask,
    nearest_examples,
    normalize,
    paired_distances,
    patch_origins,
    patch_scores,
    project,
    relevance,
    window_distances,
)
from jinterp.explain.clam.method import clam

__all__ = [
    "ALPHA1_BETA0",
    "BASES",
    "ClaLayerConfig",
    "Clam",
    "attribute_profiles",
    "balanced_contrastive_loss",
    "base_relevance",
    "clam",
    "extract_patches",
    "fit",
    "init_layer",
    "intrinsic_class_patterns",
    "layer_mask",
    "load",
    "nearest_examples",
    "normalize",
    "paired_distances",
    "patch_origins",
    "patch_scores",
    "project",
    "relevance",
    "save",
    "top_patches",
    "window_distances",
]
