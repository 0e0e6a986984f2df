"""Seeded fuzz of jinterp's public API (issue 19): bad and edge inputs must give a ValueError or a valid,
finite result; never a raw error, a silent NaN or a hang.

    python benchmarks/fuzz.py [--cases 1200] [--seed 0]

Surface (``small_cnn``, 32 px, 1-2 images): explain specs with random option values and random images /
targets, the METRICS entries and the localisation / faithfulness functions with random heatmaps, masks and
options, ``from_torch`` / ``load_state_dict`` with random state dicts and damaged files. Each case is
classified as ``clear error`` (ValueError), ``valid`` (finite output), ``crash`` (any other exception),
``silent NaN`` (non-finite output) or ``hang`` (over ``--timeout`` s). Prints the crashes and NaNs found and
one summary line. Not part of the test suite (a few minutes on a laptop CPU).
"""

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jinterp as ji  # noqa: E402
import jinterp.metrics as jm  # noqa: E402

MODEL = ji.backbones.create("small_cnn", num_classes=10)
VARIABLES = MODEL.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
APPLY = jax.jit(lambda x: MODEL.apply(VARIABLES, x)[0])
SPECIAL = [np.nan, np.inf, -np.inf]
VALUES = [
    -1,
    0,
    1,
    2,
    3,
    1.5,
    0.5,
    -0.5,
    150,
    2**70,
    "x",
    "",
    None,
    True,
    False,
    (),
    ("conv6",),
    "conv6",
    "conv1",
    "conv9",
    ["conv4", "conv6"],
    {"conv6"},
    {"a": 1},
    "epsilon_gamma_box",
    "softmax",
    "kmeans",
]
CHEAP_OPTIONS = {  # option names per method; values from VALUES (plus the method's own valid ones)
    "cam": ["layer"],
    "grad_cam": ["layer"],
    "grad_cam_pp": ["layer"],
    "xgrad_cam": ["layer"],
    "hires_cam": ["layer"],
    "layer_cam": ["layer"],
    "eigen_cam": ["layer", "sign"],
    "smooth_grad_cam_pp": ["layer", "samples", "std", "seed"],
    "score_cam": ["layer", "batch", "score", "channel_softmax", "baseline", "align_corners"],
    "ablation_cam": ["layer", "batch", "score"],
    "group_cam": ["layer", "groups", "percentile", "blur_kernel", "blur_sigma", "batch"],
    "cluster_cam": [
        "layer",
        "clusters",
        "beta",
        "method",
        "normalize",
        "score",
        "seed",
        "iters",
        "n_init",
        "sigma",
        "theta",
        "batch",
    ],
    "lrp": ["composite", "init", "low", "high", "gamma"],
    "clrp": ["composite", "variant", "low", "high", "gamma"],
    "sglrp": ["composite", "variant", "low", "high", "gamma"],
    "crp": ["layer", "channel", "composite"],
    "clam": ["checkpoint"],
}
SLOW = {"score_cam", "ablation_cam", "group_cam", "cluster_cam", "smooth_grad_cam_pp", "sglrp", "clrp"}


class Hang(Exception):
    pass


def pick(rng, options, p=None):
    """One of ``options`` as the Python object itself (``rng.choice`` would make an array of them)."""
    return options[rng.choice(len(options), p=p)]


def _images(rng):
    kind = pick(
        rng,
        ["ok"] * 4
        + [
            "constant",
            "nan",
            "inf",
            "rank",
            "channels",
            "empty",
            "complex",
            "bool",
            "uint8",
            "nonsquare",
            "tiny",
            "list",
        ],
    )
    n = int(rng.integers(1, 3))
    shape = {
        "rank": (n, 32, 32),
        "channels": (n, 32, 32, 1),
        "empty": (0, 32, 32, 3),
        "nonsquare": (n, 32, 40, 3),
        "tiny": (n, 8, 8, 3),
    }.get(kind, (n, 32, 32, 3))
    x = rng.normal(size=shape).astype(np.float32)
    if kind == "constant":
        x[:] = pick(rng, [0.0, 1.0, -2.0])
    if kind in ("nan", "inf"):
        x.reshape(-1)[rng.integers(x.size)] = np.nan if kind == "nan" else pick(rng, [np.inf, -np.inf])
    if kind == "complex":
        x = x.astype(np.complex64)
    if kind == "bool":
        x = x > 0
    if kind == "uint8":
        x = (np.abs(x) * 50).astype(np.uint8)
    if kind == "list":
        x = x.tolist()
    return x


def _targets(rng, n):
    kind = pick(rng, ["ok"] * 4 + ["float", "floatlist", "range", "neg", "length", "2d", "none", "str"])
    t = rng.integers(0, 10, max(n, 1))
    return {
        "ok": t,
        "float": t.astype(np.float32),
        "floatlist": [float(v) for v in t],
        "range": t + 10,
        "neg": -t - 1,
        "length": np.r_[t, t],
        "2d": t[:, None],
        "none": None,
        "str": "0",
    }[kind]


def _spec(rng, name):
    keys = [k for k in CHEAP_OPTIONS[name] if rng.random() < 0.4]
    options = {k: VALUES[rng.integers(len(VALUES))] for k in keys}
    # keep accepted expensive options small: big valid ints are slow, not wrong
    for k in ("samples", "groups", "clusters", "iters", "n_init", "batch"):
        if isinstance(options.get(k), int) and not isinstance(options.get(k), bool) and options[k] > 4:
            options[k] = 2
    if rng.random() < 0.05:
        return f"{name}(layer='conv6', layer='conv4')"
    return ji.explain.format_spec(name, options)


def case_explain(rng):
    name = pick(rng, sorted(CHEAP_OPTIONS))
    spec = _spec(rng, name)
    if name in SLOW and rng.random() < 0.7:  # mostly the validation path for the expensive methods
        fn = lambda: ji.explain.get(spec)  # noqa: E731
        return f"get({spec})", fn
    x = _images(rng)
    t = _targets(rng, np.shape(x)[0] if np.ndim(x) else 1)
    how = pick(rng, ["explain", "raw"])
    if how == "raw":
        return f"get({spec})(..)", lambda: ji.explain.get(spec)(MODEL, VARIABLES, x, t)
    return f"explain({spec})", lambda: ji.explain.explain(spec, MODEL, VARIABLES, x, t)


def _heat(rng, n=2, size=32):
    kind = pick(rng, ["ok"] * 3 + ["zero", "const", "nan", "neg", "rank", "empty", "complex"])
    h = rng.random((n, size, size)).astype(np.float32)
    return {
        "ok": h,
        "zero": 0 * h,
        "const": 0 * h + 0.3,
        "neg": -h,
        "rank": h[0],
        "empty": h[:0],
        "complex": h.astype(np.complex64),
        "nan": np.where(h > 0.99, np.nan, h),
    }[kind]


def _mask(rng, n=2, size=32):
    kind = pick(rng, ["ok"] * 3 + ["bool", "nan", "range", "shape", "emptyimg", "allempty"])
    m = np.zeros((n, size, size), np.float32)
    m[:, 8:20, 6:18] = 1
    if kind == "bool":
        return m > 0
    if kind == "nan":
        m[0, 1, 1] = np.nan
    if kind == "range":
        m = m * 2 - 0.5
    if kind == "shape":
        m = m[:, :16]
    if kind == "emptyimg":
        m[0] = 0
    if kind == "allempty":
        m[:] = 0
    return m


def case_metric(rng):
    name = pick(
        rng,
        [
            "pointing_game",
            "relevance_mass",
            "energy_pointing_game",
            "localization_iou",
            "confidence_change",
            "perturbation_curve",
            "gaussian_blur",
            "mean_max_iou",
            "filter_thresholds",
            "filter_interpretability",
            "pruning_curve",
            "compute",
        ],
    )
    h, m = _heat(rng), _mask(rng)
    empty = pick(rng, ["error", "ignore", "x"])
    opt = VALUES[rng.integers(len(VALUES))]
    x = _images(rng) if rng.random() < 0.4 else rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    t = _targets(rng, 2)
    calls = {
        "pointing_game": lambda: jm.pointing_game(h, m, tolerance=pick(rng, [0, 2, opt]), empty=empty),
        "relevance_mass": lambda: jm.relevance_mass(h, m, empty=empty),
        "energy_pointing_game": lambda: jm.energy_pointing_game(
            h, m, energies=pick(rng, [(0.5,), (), (0.0,), (1.5,), (0.1, 0.9)]), empty=empty
        ),
        "localization_iou": lambda: jm.localization_iou(h, m, k_std=pick(rng, [1.0, opt]), empty=empty),
        "confidence_change": lambda: jm.confidence_change(
            APPLY, x, h, targets=t if rng.random() < 0.7 else None, batch_size=pick(rng, [64, 1, 0, -1, opt])
        ),
        "perturbation_curve": lambda: jm.perturbation_curve(
            APPLY,
            x,
            h,
            targets=t,
            mode=pick(rng, ["deletion", "insertion", "x"]),
            pixels_per_step=pick(rng, [None, 128, 0, -1, opt]),
            n_steps=pick(rng, [None, 4, 0, -1]),
            substrate=pick(rng, [None, "blur", "constant"]),
            blur_sigma=pick(rng, [5.0, 0.0, -1.0, opt]),
        ),
        "gaussian_blur": lambda: jm.gaussian_blur(x, sigma=pick(rng, [5.0, 0.0, -2.0, np.nan, opt])),
        "mean_max_iou": lambda: jm.mean_max_iou(
            np.repeat(h[:, None], 2, 1) if np.ndim(h) == 3 else h,
            np.repeat(m[:, None], 2, 1),
            thresholds=pick(rng, [(0, 50), (), (np.nan,)]),
        ),
        "filter_thresholds": lambda: jm.filter_thresholds(
            rng.normal(size=(int(rng.integers(0, 3)), 4, 4, 8)), top_quantile=pick(rng, [0.3, 0.0, 2.0, opt])
        ),
        "filter_interpretability": lambda: jm.filter_interpretability(
            np.abs(rng.normal(size=(int(rng.integers(0, 3)), 4, 4, 8))),
            np.repeat(m[..., None], 2, -1)[:2, :16, :16] if np.ndim(m) == 3 else m,
            phi=pick(rng, [0.2, 2.0, opt]),
        ),
        "pruning_curve": lambda: jm.pruning_curve(
            lambda im, k: APPLY(im),
            x,
            t,
            pick(rng, [np.ones(8), np.float32(1), np.ones((2, 2))]),
            n_pruned=pick(rng, [None, [], [0, 3], [9], [-1]]),
        ),
        "compute": lambda: jm.compute(
            pick(rng, ["confidence_change", "deletion", "pointing_game", "relevance_mass", "nope"]),
            {"apply_fn": APPLY, "images": x, "heatmaps": h, "targets": t, "disc_mask": m, "object_mask": m},
        ),
    }
    return name, calls[name]


def case_weights(rng, tmp):
    sd = ji.backbones.to_torch(MODEL, VARIABLES)
    kind = pick(rng, ["ok", "num_classes", "type", "missing", "shape", "value", "file"])
    if kind == "num_classes":
        nc = pick(rng, [0, -1, True, 2.5, "10", None, 10])
        return f"from_torch(num_classes={nc!r})", lambda: ji.backbones.from_torch(
            "small_cnn", sd, num_classes=nc
        )
    if kind == "type":
        bad = [list(sd), None, "w.pth", 3, {1: np.zeros(1)}][rng.integers(5)]
        return f"from_torch({type(bad).__name__})", lambda: ji.backbones.from_torch("small_cnn", bad)
    if kind == "missing":
        bad = dict(list(sd.items())[1:])
        return "from_torch(missing key)", lambda: ji.backbones.from_torch("small_cnn", bad)
    if kind == "shape":
        k = list(sd)[rng.integers(len(sd))]
        bad = {**sd, k: np.zeros((3,) * max(np.ndim(sd[k]), 1))}
        return f"from_torch(shape {k})", lambda: ji.backbones.from_torch("small_cnn", bad)
    if kind == "value":
        k = list(sd)[rng.integers(len(sd))]
        bad = {**sd, k: pick(rng, ["x", None, np.array(["a"])])}
        return f"from_torch(value {k})", lambda: ji.backbones.from_torch("small_cnn", bad)
    if kind == "file":
        ext = pick(rng, [".npz", ".safetensors", ".pth", ".bin"])
        path = os.path.join(tmp, f"w{rng.integers(1 << 30)}{ext}")
        how = pick(rng, ["empty", "garbage", "truncated", "missing", "ok"])
        if ext == ".npz" and how in ("ok", "truncated"):
            np.savez(path, **sd)
            if how == "truncated":
                data = open(path, "rb").read()
                open(path, "wb").write(data[: int(len(data) * rng.random())])
        elif how == "empty":
            open(path, "wb").close()
        elif how in ("garbage", "truncated", "ok"):
            open(path, "wb").write(rng.integers(0, 256, int(rng.integers(1, 400)), np.uint8).tobytes())
        return f"load_state_dict({how}{ext})", lambda: ji.backbones.load_state_dict(path)
    return "from_torch(ok)", lambda: ji.backbones.from_torch("small_cnn", sd)


def _finite(out) -> bool:
    leaves = jax.tree.leaves(out, is_leaf=lambda v: isinstance(v, np.ndarray | jax.Array))
    for v in leaves:
        if isinstance(out, dict) and any(v is out.get(k) for k in ("per_image",)):
            continue  # documented: NaN marks the images / features a score ignores ("valid" / "present")
        if isinstance(v, jax.Array | np.ndarray | float | np.floating):
            a = np.asarray(v)
            if np.issubdtype(a.dtype, np.inexact):
                # ignored images score NaN by contract ("valid" says which)
                valid = out.get("valid") if isinstance(out, dict) else None
                if valid is not None and a.ndim >= 1 and a.shape[0] == np.shape(valid)[0]:
                    a = a[np.asarray(valid)]
                if not np.isfinite(a).all():
                    return False
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=120)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    counts = {"clear errors": 0, "valid": 0, "crashes": 0, "silent NaN": 0, "hangs": 0}
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Hang()))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            family = pick(rng, ["explain", "metric", "weights"], p=[0.5, 0.35, 0.15])
            label, fn = (
                case_explain(rng)
                if family == "explain"
                else case_metric(rng)
                if family == "metric"
                else case_weights(rng, tmp)
            )
            signal.alarm(args.timeout)
            try:
                out = fn()
                out = jax.block_until_ready(out) if not callable(out) else out
                outcome = "valid" if callable(out) or _finite(out) else "silent NaN"
            except ValueError:
                outcome = "clear errors"
            except Hang:
                outcome = "hangs"
            except Exception:
                outcome = "crashes"
                print(f"[{i}] CRASH {label}:\n{traceback.format_exc()[-1500:]}", flush=True)
            finally:
                signal.alarm(0)
            if outcome == "silent NaN":
                print(f"[{i}] SILENT NaN {label}", flush=True)
            counts[outcome] += 1
    c = counts
    print(f"({time.time() - t0:.0f} s, seed {args.seed})")
    print(
        f"{args.cases} cases: {c['clear errors']} clear errors, {c['valid']} valid, {c['crashes']} crashes, "
        f"{c['silent NaN']} silent NaN, {c['hangs']} hangs"
    )
    return 1 if c["crashes"] or c["silent NaN"] or c["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
