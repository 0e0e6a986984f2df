"""The papers' headline claims re-run under their protocols on PartsWorld (``launch.py --mode fidelity``).

:func:`run_fidelity` pre-trains one plain CNN, runs each section of :data:`SECTIONS` and writes
``fidelity.md``: ``training`` (seed 000 HICCNN and seed 002 synchronization: every variant fine-tuned
from the shared CNN, 3 seeds), ``concepts`` (seed 001), ``clam`` (seed 003), ``cluster_cam`` (seed 004),
``explanation_loss`` (right for the right reasons, Ross et al. 2017: heatmaps onto the object at equal
accuracy).
A section is a function ``run(Context) -> Section`` (:mod:`.section`); the runner stores each finished
one, so a killed run resumes where it stopped.
"""

from jinterp.fidelity.runner import SECTIONS, pretrain_config, run_fidelity
from jinterp.fidelity.section import Context, Row, Section

__all__ = ["SECTIONS", "Context", "Row", "Section", "pretrain_config", "run_fidelity"]
