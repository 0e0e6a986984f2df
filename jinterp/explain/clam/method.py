"""The registered ``clam`` explainer: CLAM-refined relevance heatmaps from a saved checkpoint."""

from jinterp.explain import lrp, pipeline, rules
from jinterp.explain.clam.checkpoint import load
from jinterp.explain.clam.layers import ALPHA1_BETA0, _explain
from jinterp.explain.registry import register


def clam(checkpoint: str, composite: lrp.Composite = ALPHA1_BETA0):
    """Registry factory: CLAM-refined relevance heatmaps from a CLAM saved with :func:`save`.

    The heatmap is the positive part of the channel-summed input relevance scaled per image to
    [0, 1] (``jinterp.explain.lrp.to_heatmap``). ``checkpoint`` must be a directory written by
    :func:`save` (a missing, empty or foreign one raises ValueError naming it); ``fn``'s inputs are
    checked as :func:`jinterp.explain.lrp.lrp`'s.
    """
    trained = load(checkpoint)
    # spec options arrive hashable: a {kind: rule} dict as a tuple of pairs
    comp = rules.composite(dict(composite) if isinstance(composite, tuple) else composite)

    def fn(model, variables, images, targets):
        pipeline.check_inputs(model, images, targets)
        return lrp.to_heatmap(_explain(model, variables, trained, images, targets, comp))

    return fn


register(
    "clam", clam, needs_gradients=True, forward_passes=1,
    backward_passes=lambda checkpoint: 1 if load(checkpoint).base == "lrp" else 2,
    doc="CLAM (seed 003): LRP / CLRP / SGLRP relevance refined by trained class-wise layer-wise attributes",
)  # fmt: skip
