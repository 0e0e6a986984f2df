"""What a fidelity section gets (:class:`Context`) and returns (:class:`Section` of :class:`Row`).

A section re-runs one paper's protocol (or one group of them) and returns the rows of the headline
table (the paper's claim and number, ours, replicated or not, what was ruled out) plus its own
markdown body and figures. The runner (:mod:`jinterp.fidelity.runner`) stores each finished section as
``<workdir>/<name>/section.json`` and skips it on a rerun, so a killed run resumes section by section.
"""

import dataclasses
import json
import os
from collections.abc import Callable

import ml_collections
import numpy as np

REPLICATED = ("yes", "no", "partly")


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the headline table.

    Attributes:
      paper: seed id, e.g. ``"000"`` (HICCNN), ``"001"``, ``"002"``, ``"003"``, ``"004"``.
      claim: the paper's claim, in a few words (e.g. "HICCNN lowers inconsistency vs icCNN").
      paper_value: the paper's number(s), with table / figure (e.g. "Tab. I: 0.46 -> 0.61").
      ours: our number(s), mean ± std over seeds or a CI over images.
      replicated: ``"yes"``, ``"no"`` or ``"partly"``.
      note: where it does not replicate, which of protocol / run length / implementation was ruled
        out and how; otherwise what the number means.
    """

    paper: str
    claim: str
    paper_value: str
    ours: str
    replicated: str
    note: str = ""

    def __post_init__(self):
        if self.replicated not in REPLICATED:
            raise ValueError(f"replicated: expected one of {REPLICATED}, got {self.replicated!r}")


@dataclasses.dataclass
class Section:
    """A finished section: headline rows, a markdown body, figure paths relative to the section dir."""

    title: str
    rows: list[Row]
    body: str
    figures: list[str] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0

    def save(self, directory: str) -> str:
        path = os.path.join(directory, "section.json")
        record = {**dataclasses.asdict(self), "rows": [dataclasses.asdict(r) for r in self.rows]}
        with open(path, "w") as f:
            json.dump(record, f, indent=2, default=float)
        return path

    @classmethod
    def load(cls, directory: str) -> "Section | None":
        path = os.path.join(directory, "section.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            record = json.load(f)
        return cls(**{**record, "rows": [Row(**r) for r in record["rows"]]})


@dataclasses.dataclass
class Context:
    """What every section gets.

    Attributes:
      config: the run config (``configs/fidelity.py``); ``config.fidelity.*`` and ``config.evaluate.*``.
      workdir: this section's own directory (created), for checkpoints, caches and figures.
      model, variables: the shared pretrained plain CNN (the papers' post-hoc methods explain it).
      test: the evaluation images as numpy arrays (``image``, ``label``, ``part_masks``,
        ``object_mask``, ``disc_mask``, ``bbox``, ...), ``config.evaluate.num_images`` of the test split.
      load: ``load(split, n)`` -> the first ``n`` examples of a split as such a dict.
      base_workdir: the pretrained CNN's workdir (``train.init_from`` for fine-tuning variants).
      progress: ``progress(text)`` prints one progress line.
    """

    config: ml_collections.ConfigDict
    workdir: str
    model: object
    variables: dict
    test: dict[str, np.ndarray]
    load: Callable[[str, int], dict]
    base_workdir: str
    progress: Callable[[str], None] = print


def mean_std(values, digits: int = 3) -> str:
    """``"0.123 ± 0.004"`` over seeds (``±`` the sample std, ddof=1; one value: no ``±``)."""
    v = np.asarray(values, np.float64)
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"
