"""The notebooks in notebooks/ run top to bottom (as a user would run them) and show what they claim.

Each notebook asserts what it shows in its own cells (a user sees those checks), and its last cell
prints one JSON line of headline numbers, which :data:`EXPECTED` and :data:`RELATIONS` check here:
a notebook whose checks were deleted, or whose demonstration stopped working (black images, a
model at chance, a broken conservation law), fails this test. Ranges were set from measured runs on
the project's 2-core CPU with margins for other machines (the measured value is in each comment).
Notebooks are stored without outputs (``test_saved_without_outputs``).
"""

import json
import math
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = pathlib.Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# notebook -> {headline key: (low, high)} (inclusive); every key must be in the notebook's JSON line.
EXPECTED = {
    "explain_cams.ipynb": {
        "accuracy": (0.8, 1.0),
        "rgb_min": (0.0, 0.1),
        "rgb_max": (0.5, 1.0),  # the images were rendered / 255 once, peaking at 0.004
        "heat_min": (0.0, 1.0),
        "heat_max": (0.0, 1.0),
        "pointing_grad_cam": (0.3, 1.0),
        "pointing_min": (0.2, 1.0),
        "pointing_random": (0.05, 0.3),
    },
    "relevance_and_concepts.ipynb": {
        "accuracy": (0.8, 1.0),
        "dense_conservation_err": (0.0, 1e-3),  # 7.7e-7: sum R_conv6 = z_t - b_t (epsilon at fc)
        "zplus_growth": (-1.0, 1e-6),  # -0.035: sum |R| never grows through z+ layers
        "flat_conservation_err": (0.0, 1e-3),  # 1.8e-6: the flat first layer conserves
        "lrp0_gxi_err": (0.0, 1e-3),  # 6.4e-5: LRP-0 = gradient x input
        "clrp_sum_err": (0.0, 1e-4),  # 7.4e-6: the signed CLRP map sums to zero
        "clrp_lrp_diff": (0.01, 1.0),  # 0.028: CLRP is not LRP
        "crp_sum_err": (0.0, 1e-4),  # 2.4e-7: conditional maps add up to the LRP map
        "crp_rel_err": (0.0, 1e-4),  # 5.2e-7: ... and their relevances to the layer's
        "concepts": (2, 96),  # 9 of 96 neurons
        "concept_min_neurons": (1, 96),
        "concept_trace_err": (0.0, 1e-4),  # a concept's map is its representative neuron's CRP map
    },
    "train_interpretable.ipynb": {
        "accuracy_ce": (0.8, 1.0),  # 0.918
        "accuracy_lac": (0.7, 1.0),  # 0.867
        "spread_ce": (0.0, 1.0),  # 0.326
        "spread_lac": (0.0, 1.0),  # 0.255
        "interp_object_ce": (0.0, 1.0),  # 0.534
        "interp_object_lac": (0.0, 1.0),  # 0.903
        "interp_ce": (0.0, 1.0),  # 0.143
        "interp_lac": (0.0, 1.0),  # 0.425
    },
    "clam.ipynb": {
        "accuracy": (0.8, 1.0),
        "strength1_err": (0.0, 1e-5),  # 1.8e-6: strength 1 reproduces LRP / CLRP
        "refined_change": (1e-3, 1.0),  # 0.118: the refinement moves the relevance ...
        "stronger_change": (1e-3, 10.0),  # 0.526: ... more at strength 2
        "fit_loss_drop": (1e-6, 1.0),  # 0.0032: fitting lowers the balanced contrastive loss
        "fit_distance_drop": (0.01, 1.0),  # 0.168: and the positive distance
        "same_class_conv6": (0.15, 1.0),  # 0.319: retrieval above chance (1/8)
        "same_class_conv4": (0.15, 1.0),  # 0.250
    },
    "evaluate_and_compare.ipynb": {
        "accuracy_random": (0.0, 0.3),  # 0.105
        "accuracy_step50": (0.0, 1.0),  # 0.531
        "accuracy_trained": (0.8, 1.0),  # 0.941
        "pointing_random_init": (0.0, 1.0),  # 0.273
        "pointing_trained": (0.3, 1.0),  # 0.484
        "pointing_random_point": (0.05, 0.3),  # 0.162
        "iou_random_init": (0.0, 1.0),  # 0.064
        "iou_trained": (0.2, 1.0),  # 0.358
    },
}
# notebook -> [(description, predicate of the headline dict)]: relations between headline values.
RELATIONS = {
    "explain_cams.ipynb": [
        (
            "Grad-CAM beats a random point by 0.15",
            lambda h: h["pointing_grad_cam"] > h["pointing_random"] + 0.15,
        ),
        ("every CAM beats a random point", lambda h: h["pointing_min"] > h["pointing_random"]),
    ],
    "clam.ipynb": [
        ("a stronger mask moves the relevance more", lambda h: h["stronger_change"] > h["refined_change"])
    ],
    "evaluate_and_compare.ipynb": [
        ("trained beats random on accuracy", lambda h: h["accuracy_trained"] > h["accuracy_random"] + 0.5),
        (
            "trained beats random on pointing",
            lambda h: h["pointing_trained"] > h["pointing_random_init"] + 0.1,
        ),
        ("trained beats random on IoU", lambda h: h["iou_trained"] > h["iou_random_init"] + 0.1),
    ],
    "train_interpretable.ipynb": [
        ("L_lac lowers the spread by 0.03", lambda h: h["spread_lac"] < h["spread_ce"] - 0.03),
        (
            "L_lac raises Interp (object) by 0.2",
            lambda h: h["interp_object_lac"] > h["interp_object_ce"] + 0.2,
        ),
        ("L_lac raises Interp (parts)", lambda h: h["interp_lac"] > h["interp_ce"] + 0.1),
    ],
}


def headline(notebook) -> dict:
    """The JSON object printed on the last line of the last code cell's stdout."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") for o in code[-1].get("outputs", []) if o.get("output_type") == "stream")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise AssertionError("the last code cell printed nothing; it should print the headline JSON line")
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise AssertionError(f"the last printed line is not JSON: {lines[-1]!r}") from None
    if not isinstance(value, dict):
        raise AssertionError(f"the headline should be a JSON object, got {value!r}")
    return value


def check_headline(name: str, values: dict) -> None:
    """Raise AssertionError naming every headline value outside its range or relation that fails."""
    problems = []
    for key, (low, high) in EXPECTED[name].items():
        if key not in values:
            problems.append(f"{key}: missing")
        elif not (isinstance(values[key], int | float) and math.isfinite(values[key])):
            problems.append(f"{key}: {values[key]!r} is not a finite number")
        elif not low <= values[key] <= high:
            problems.append(f"{key}: {values[key]} not in [{low}, {high}]")
    if not problems:
        problems += [description for description, holds in RELATIONS.get(name, []) if not holds(values)]
    assert not problems, f"{name}: " + "; ".join(problems)


def test_every_notebook_has_expectations():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.name for p in NOTEBOOKS} == set(EXPECTED), "add the new notebook's headline ranges to EXPECTED"
    assert set(RELATIONS) <= set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_saved_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before saving"
    assert any("assert " in c.source for c in code), "a notebook checks what it shows"
    assert "json.dumps" in code[-1].source, "the last cell prints the headline JSON line"


def test_check_headline_rejects_bad_values():
    """The checker can fail: a missing key, a value out of range, a non-number, a broken relation."""
    good = {key: (low + high) / 2 for key, (low, high) in EXPECTED["explain_cams.ipynb"].items()}
    good.update(pointing_grad_cam=0.6, pointing_min=0.4, pointing_random=0.15)
    check_headline("explain_cams.ipynb", good)
    for bad in (
        {k: v for k, v in good.items() if k != "accuracy"},
        {**good, "rgb_max": 0.004},
        {**good, "accuracy": float("nan")},
        {**good, "accuracy": "0.9"},
        {**good, "pointing_grad_cam": 0.31, "pointing_random": 0.2},
    ):
        with pytest.raises(AssertionError):
            check_headline("explain_cams.ipynb", bad)
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="done\n")]
    with pytest.raises(AssertionError, match="not JSON"):
        headline(nbformat.v4.new_notebook(cells=[cell]))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_holds(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # figures a notebook writes land in a temporary directory
    # Each notebook builds its PartsWorld split into its own directory (parallel workers never race on
    # one tfds build), writes its runs under tmp_path, and sees the machine's real devices, not the 4
    # fake ones of tests/conftest.py.
    monkeypatch.setenv("JINTERP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile workdirs go with tmp_path
    flags = os.environ.get("XLA_FLAGS", "").split()
    monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in flags if "force_host_platform_device_count" not in f))
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    values = headline(notebook)
    print(f"{path.name}: {json.dumps(values)}")
    check_headline(path.name, values)
