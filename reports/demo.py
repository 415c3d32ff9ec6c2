"""A synthetic run: result records, run.json and counterexample files shaped like the runner's.

For developing and testing the report without running the oracles (and for measuring it at
scale). ``write_demo(dir)`` writes a small run with one cell of every status and the classic
bugs (a missing 1/N, a transpose, a sign flip, a lost timestep, an exception, an oracle out, a
float32 precision gap); ``write_demo(dir, bulk=5000, bulk_failures=100)`` adds a thorough-sized
tail of mostly passing cells.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .records import new_record

# op -> family, as in docs/op_contract.md
CATALOGUE = {
    "add_gate": "scalar gates", "multiply_gate": "scalar gates", "max_gate": "scalar gates",
    "sigmoid_neuron": "scalar gates", "chain_rule_example": "scalar gates",
    "affine": "linear", "linear_column": "linear", "temporal_affine": "linear",
    "relu": "activations", "sigmoid": "activations", "tanh": "activations",
    "softmax": "softmax", "log_softmax": "softmax",
    "softmax_cross_entropy": "losses", "mse": "losses", "svm_hinge": "losses",
    "l2_regularization": "losses", "temporal_softmax_loss": "losses",
    "dropout": "regularisation", "conv2d": "convolution and pooling",
    "max_pool2d": "convolution and pooling", "avg_pool2d": "convolution and pooling",
    "rnn_step": "recurrent", "rnn": "recurrent", "rnn_softmax_sequence": "recurrent",
    "lstm_step": "recurrent", "lstm": "recurrent",
    "batchnorm": "normalisation", "layernorm": "normalisation", "embedding": "embedding",
    "mlp_sigmoid_mse": "networks", "two_layer_net": "networks",
}
ORACLES = ("torch", "jax", "numeric")
DEVICES = ("cpu", "cuda")
DTYPES = ("float64", "float32")
REGIMES = ("small", "overflow", "ties", "integers")  # bulk; the showcase uses others
TOL = {"float64": (1e-10, 1e-7), "float32": (1e-5, 1e-4)}
FLAGS = {"tf32_matmul": False, "tf32_cudnn": False, "jax_matmul_precision": "highest"}


def _base(op, oracle, device, dtype, regime, status, **kw) -> dict:
    cid = f"{op}-{oracle}-{device}-{dtype}-{regime}"
    atol, rtol = TOL[dtype]
    rec = new_record(
        target=f"{op}_backward", op=op, oracle=oracle, device=device, dtype=dtype, regime=regime, status=status,
        examples=100, id=cid, family=CATALOGUE.get(op, "other"),
        source="cs231n" if op not in ("rnn_softmax_sequence", "mlp_sigmoid_mse") else "seeds/003_731a6e23319abfde.txt §2",
        atol=atol, rtol=rtol, tolerance_source=f"policy: {dtype} default",
        device_name="NVIDIA H100 80GB HBM3" if device == "cuda" else "AMD EPYC 9454", flags=FLAGS, seconds=0.8)
    rec.update(kw)
    return rec


def _save_case(report_dir: Path, rec: dict, inputs: dict, ref: dict, oracle: dict,
               douts=(), params=None, dirs=None) -> None:
    cases = report_dir / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    arrays = {f"input/{k}": v for k, v in inputs.items()}
    arrays.update({f"param/{k}": v for k, v in (params or {}).items()})
    arrays.update({f"dout/{i}": v for i, v in enumerate(douts)})
    arrays.update({f"ref/{k}": v for k, v in ref.items()})
    arrays.update({f"oracle/{k}": v for k, v in oracle.items()})
    arrays.update({f"dirs/{k}": v for k, v in (dirs or {}).items()})
    meta = {k: rec[k] for k in ("op", "oracle", "device", "dtype", "regime")}
    meta.update(params=rec.get("params"), seed=1234)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(cases / f"{rec['id']}.npz", **arrays)
    rec["counterexample"] = f"cases/{rec['id']}.npz"
    rec["replay"] = f"gradaudit replay {rec['id']}"


def _fill_errors(rec: dict, name: str, ref: np.ndarray, ora: np.ndarray) -> None:
    err = np.abs(ref - ora)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    mag = np.abs(ora)
    rec.update(max_abs_err=float(err.max()),
               max_rel_err=float(np.max(err / np.maximum(mag, 1e-300))),
               max_ulp=float(np.max(err / np.spacing(mag.astype(rec["dtype"])))),
               phase=f"grad[{name}]" if name != "out" else "forward",
               worst_index=[int(i) for i in worst],
               needed_atol=float(np.max(err - rec["rtol"] * mag)),
               needed_rtol=float(np.max((err - rec["atol"]) / np.maximum(mag, 1e-300))))
    rec["message"] = (
        f"{rec['op']}: {rec['oracle']} {rec['phase']} {rec['dtype']} "
        f"{' '.join(f'{k}{tuple(v)}' for k, v in rec['shapes'].items())}: greatest absolute "
        f"difference {err.max():.3g} at index {tuple(int(i) for i in worst)} "
        f"(up to {rec['atol']:g} + {rec['rtol']:g}·|oracle| allowed)")


def _tri(blame: str) -> dict:
    if blame == "reference":
        return {"torch": "disagree", "jax": "disagree", "numeric": "disagree",
                "agree_with_each_other": True}
    if blame.startswith("oracle:"):
        out = blame.split(":", 1)[1]
        return {o: ("disagree" if o == out else "agree") for o in ORACLES} | {
            "agree_with_each_other": False}
    return {"torch": "disagree", "jax": "disagree", "numeric": "agree",
            "agree_with_each_other": False}


def showcase(report_dir: Path, rng: np.random.Generator) -> list[dict]:
    """The classic derivation bugs, one cell each, plus one cell of every other status."""
    recs = []

    # 1. softmax cross-entropy without the 1/N: constant factor N.
    N, C = 3, 5
    x = rng.normal(size=(N, C))
    y = np.array([1, 4, 0])
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    good = p.copy()
    good[np.arange(N), y] -= 1
    good /= N
    r = _base("softmax_cross_entropy", "torch", "cpu", "float64", "typical", "fail",
              kind="gradient", blame="reference", pattern="constant_factor",
              shapes={"x": [N, C], "y": [N]}, triangulation=_tri("reference"),
              target="softmax_loss")
    r["shapes"] = {"x": [N, C], "y": [N]}
    _save_case(report_dir, r, {"x": x}, {"x": good * N}, {"x": good}, douts=[np.array(1.0)],
               params={"y": y})
    _fill_errors(r, "x", good * N, good)
    recs.append(r)

    # 2. affine: dw computed as (dout.T @ x) reshaped, i.e. the transpose.
    x = rng.normal(size=(2, 4))
    dout = rng.normal(size=(2, 4))
    dw = x.T @ dout
    r = _base("affine", "jax", "cpu", "float64", "typical", "fail", kind="gradient",
              blame="reference", pattern="transpose", triangulation=_tri("reference"),
              shapes={"x": [2, 4], "w": [4, 4], "b": [4]})
    _save_case(report_dir, r, {"x": x, "w": rng.normal(size=(4, 4)), "b": rng.normal(size=4)},
               {"x": dout @ np.eye(4), "w": dw.T, "b": dout.sum(0)},
               {"x": dout @ np.eye(4), "w": dw, "b": dout.sum(0)}, douts=[dout])
    _fill_errors(r, "w", dw.T, dw)
    recs.append(r)

    # 3. conv2d with a large weight gradient: a sign flip in one filter.
    w_or = rng.normal(size=(8, 3, 5, 7))
    w_ref = w_or.copy()
    w_ref[2] *= -1
    r = _base("conv2d", "torch", "cuda", "float32", "typical", "fail", kind="gradient",
              blame="reference", pattern="sign_flip", triangulation=_tri("reference"),
              shapes={"x": [2, 3, 11, 9], "w": [8, 3, 5, 7], "b": [8]},
              params={"stride": 2, "pad": 1})
    _save_case(report_dir, r, {"x": rng.normal(size=(2, 3, 11, 9)).astype(np.float32),
                               "w": w_or.astype(np.float32), "b": np.zeros(8, np.float32)},
               {"w": w_ref.astype(np.float32)}, {"w": w_or.astype(np.float32)},
               douts=[rng.normal(size=(2, 8, 5, 3)).astype(np.float32)])
    _fill_errors(r, "w", w_ref, w_or)
    recs.append(r)

    # 4. rnn: BPTT misses the contribution at the last timestep.
    N, T, D = 2, 6, 4
    dx_or = rng.normal(size=(N, T, D))
    dx_ref = dx_or.copy()
    dx_ref[:, -1, :] = 0.3 * dx_or[:, -1, :]
    r = _base("rnn", "numeric", "cpu", "float64", "large", "fail", kind="gradient",
              blame="reference", pattern="missing_timestep", triangulation=_tri("reference"),
              shapes={"x": [N, T, D], "h0": [N, 5], "wx": [D, 5], "wh": [5, 5], "b": [5]},
              target="rnn_backward", mutated=["dout"])
    _save_case(report_dir, r, {"x": rng.normal(size=(N, T, D))}, {"x": dx_ref}, {"x": dx_or},
               douts=[rng.normal(size=(N, T, 5))])
    _fill_errors(r, "x", dx_ref, dx_or)
    recs.append(r)

    # 4b. softmax written naively: exp overflows in float32, NaN on the reference side only.
    x = np.array([[1.0, 2.0, 95.0], [0.5, -1.0, 3.0]], dtype=np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    g_or = (p * (dout - (dout * p).sum(1, keepdims=True))).astype(np.float32)
    g_ref = g_or.copy()
    g_ref[0] = np.nan
    r = _base("softmax", "torch", "cpu", "float32", "overflow", "fail", kind="nonfinite",
              blame="reference", triangulation=_tri("reference"), shapes={"x": [2, 3]},
              target="softmax_naive_backward")
    _save_case(report_dir, r, {"x": x}, {"x": g_ref}, {"x": g_or}, douts=[dout])
    r.update(max_abs_err=None, max_rel_err=None, max_ulp=None, phase="grad[x]", worst_index=[0, 0],
             message="softmax: torch grad[x] float32 x(2, 3): NaN at index (0, 0) on the "
                     "reference side only (3 non-finite elements; torch is finite)")
    recs.append(r)

    # 4c. conv2d against the numeric oracle on a large input: directional derivatives only.
    K = 6
    g_true = rng.normal(size=(4, 3, 3, 3))
    g_ref = g_true.copy()
    g_ref[:, :, 0, :] *= 0.5
    dirs = rng.normal(size=(K,) + g_true.shape)
    r = _base("conv2d", "numeric", "cpu", "float64", "large", "fail", kind="gradient",
              blame="reference", triangulation=_tri("reference"),
              shapes={"x": [2, 3, 13, 10], "w": [4, 3, 3, 3], "b": [4]},
              params={"stride": 1, "pad": 1})
    proj_true = dirs.reshape(K, -1) @ g_true.ravel()
    _save_case(report_dir, r, {"x": rng.normal(size=(2, 3, 13, 10)), "w": g_true,
                               "b": np.zeros(4)},
               {"w": g_ref}, {"w": proj_true}, douts=[rng.normal(size=(2, 4, 13, 10))],
               dirs={"w": dirs})
    proj_ref = dirs.reshape(K, -1) @ g_ref.ravel()
    err = np.abs(proj_ref - proj_true)
    r.update(max_abs_err=float(err.max()), max_rel_err=float(np.max(err / np.abs(proj_true))),
             phase="grad[w]", worst_index=[int(np.argmax(err))],
             message=f"conv2d: numeric grad[w] float64 x(2, 3, 13, 10) w(4, 3, 3, 3): "
                     f"directional derivative {int(np.argmax(err))} of {K} differs by "
                     f"{err.max():.3g} (up to 1e-10 + 1e-07·|numeric| allowed)")
    recs.append(r)

    # 5. lstm_step raised: the message is a user exception (escaped on the page).
    r = _base("lstm_step", "torch", "cpu", "float64", "typical", "error",
              shapes={"x": [3, 4], "prev_h": [3, 2], "prev_c": [3, 2]},
              message="lstm_step: grad[wx]: lstm_step_backward raised ValueError: operands could "
                      "not be broadcast together with shapes (3,8) (3,4) <in user code>")
    r["replay"] = f"gradaudit replay {r['id']}"
    recs.append(r)

    # 6. batchnorm float32: jax is out (the other oracles agree with the reference).
    g_or = rng.normal(size=(4, 6)).astype(np.float32)
    g_jax = g_or + rng.normal(scale=3e-3, size=g_or.shape).astype(np.float32)
    r = _base("batchnorm", "jax", "cuda", "float32", "large", "fail", kind="gradient",
              blame="oracle:jax", triangulation=_tri("oracle:jax"),
              shapes={"x": [4, 6], "gamma": [6], "beta": [6]}, params={"eps": 1e-5})
    _save_case(report_dir, r, {"x": rng.normal(size=(4, 6)).astype(np.float32)},
               {"x": g_or}, {"x": g_jax}, douts=[rng.normal(size=(4, 6)).astype(np.float32)])
    _fill_errors(r, "x", g_or, g_jax)
    recs.append(r)

    # 7. max_pool2d at a tie: kink.
    recs.append(_base("max_pool2d", "torch", "cpu", "float64", "kinks", "kink",
                      kink="tie in a 2×2 window: the reference routes the gradient to the first "
                           "maximum, torch splits it; both are valid subgradients",
                      message="max_pool2d: exact tie in window (0, 1, 2, 0)"))
    recs.append(_base("relu", "jax", "cpu", "float64", "kinks", "kink",
                      kink="x == 0: the reference's gradient 0 lies in the subdifferential [0, 1]"))
    # 8. a missing framework: skip.
    for dt in DTYPES:
        recs.append(_base("relu", "torch", "cuda", dt, "typical", "skip", examples=0,
                          message="cuda: no CUDA device visible to torch"))
    # 9. passing cells, one a near miss.
    recs.append(_base("relu", "torch", "cpu", "float64", "typical", "pass", worst_target=0.02,
                      max_abs_err=1e-17, max_rel_err=2e-16, max_ulp=1.0))
    recs.append(_base("layernorm", "torch", "cpu", "float32", "large", "pass", worst_target=0.83,
                      max_abs_err=4e-6, max_rel_err=8e-5, max_ulp=96.0))
    recs.append(_base("softmax_cross_entropy", "jax", "cpu", "float64", "typical", "fail",
                      kind="gradient", blame="reference", pattern="constant_factor",
                      triangulation=_tri("reference"), target="softmax_loss",
                      max_abs_err=0.41, max_rel_err=2.0, message="softmax_cross_entropy: jax "
                      "grad[x] float64 x(3, 5): greatest absolute difference 0.41 (see the torch "
                      "cell for the arrays)",
                      counterexample="cases/softmax_cross_entropy-jax-cpu-float64-typical.npz",
                      replay="gradaudit replay softmax_cross_entropy-jax-cpu-float64-typical"))
    return recs


def bulk(report_dir: Path, rng: np.random.Generator, n: int, n_fail: int) -> list[dict]:
    """n cells over the catalogue, n_fail of them failing with counterexample files of mixed
    sizes (small ones as numbers, large ones as heatmaps)."""
    recs = []
    cells = [(op, o, d, t, g) for op in CATALOGUE for o in ORACLES for d in DEVICES
             for t in DTYPES for g in REGIMES]
    fail_at = set(rng.choice(n, size=min(n_fail, n), replace=False).tolist())
    patterns = ("constant_factor", "sign_flip", "transpose", "wrong_axis", None)
    for i in range(n):
        op, o, d, t, g = cells[i % len(cells)]
        g = g if i < len(cells) else f"{g}{i // len(cells)}"
        if i in fail_at:
            shape = [(3, 4), (5,), (2, 3, 4, 5), (16, 40), (4, 3, 9, 11), (200,), (2, 7, 33)][i % 7]
            ora = rng.normal(size=shape)
            wrong = rng.random(shape) < 0.2
            wrong.flat[rng.integers(wrong.size)] = True
            ref = ora * (1 + wrong * (0.5 + rng.random(shape)))
            r = _base(op, o, d, t, g, "fail", kind="gradient", blame="reference",
                      pattern=patterns[i % len(patterns)], triangulation=_tri("reference"),
                      shapes={"x": list(shape)})
            _save_case(report_dir, r, {"x": rng.normal(size=shape)}, {"x": ref}, {"x": ora},
                       douts=[rng.normal(size=shape)])
            _fill_errors(r, "x", ref, ora)
        elif d == "cuda" and i % 11 == 0:
            r = _base(op, o, d, t, g, "skip", examples=0, message="cuda: no CUDA device")
        elif g.startswith("ties") and i % 5 == 0:
            r = _base(op, o, d, t, g, "kink", kink="input on a kink; reference subgradient valid")
        else:
            wt = float(rng.beta(1, 6))
            r = _base(op, o, d, t, g, "pass", worst_target=wt, max_rel_err=wt * TOL[t][1],
                      max_abs_err=wt * TOL[t][0], max_ulp=wt * 10)
        recs.append(r)
    return recs


def write_demo(report_dir, *, bulk_records: int = 0, bulk_failures: int = 0,
               seed: int = 0) -> list[dict]:
    """Write results.jsonl, run.json and cases/ under report_dir; return the records."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs = showcase(report_dir, rng)
    if bulk_records:
        recs += bulk(report_dir, rng, bulk_records, bulk_failures)
    with open(report_dir / "results.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    meta = {"command": ["gradaudit", "run", "--profile", "thorough" if bulk_records else "dev",
                        "--report", str(report_dir)],
            "seed": seed, "profile": "thorough" if bulk_records else "dev",
            "started": "2026-07-01T10:00:00", "finished": "2026-07-01T10:42:13",
            "duration_s": 2533.4,
            "versions": {"python": "3.11.9", "numpy": "2.4.6", "hypothesis": "6.155.2",
                         "torch": "2.9.0", "jax": "0.8.1"},
            "cpu": "AMD EPYC 9454 48-Core Processor", "gpus": ["NVIDIA H100 80GB HBM3"],
            "flags": FLAGS, "oracles": list(ORACLES), "devices": list(DEVICES),
            "dtypes": list(DTYPES), "ops": list(CATALOGUE)}
    (report_dir / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return recs
