"""The evidence behind one failing cell, read from its ``cases/<id>.npz`` (NumPy only).

Array names (docs/result_record.md): ``input/<name>``, ``param/<name>``, ``dout/<i>``,
``ref/<name>`` (``ref/out`` is the forward), ``oracle/<name>``, ``dirs/<name>`` (numeric oracle
on large inputs: ``oracle/<name>`` then holds directional derivatives along those directions),
and ``meta`` (0-d string array holding JSON).

Errors here are never fatal to the report: a missing or unreadable file gives a ``Case`` with
``error`` set, which the page shows as "counterexample not available".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SMALL = 64  # at most this many elements: shown as numbers, not as a heatmap


@dataclass
class Case:
    path: Path
    error: str | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    douts: dict[str, np.ndarray] = field(default_factory=dict)
    ref: dict[str, np.ndarray] = field(default_factory=dict)
    oracle: dict[str, np.ndarray] = field(default_factory=dict)
    dirs: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def load_case(path: Path) -> Case:
    case = Case(path=path)
    try:
        with np.load(path, allow_pickle=False) as z:
            groups = {"input": case.inputs, "param": case.params, "dout": case.douts,
                      "ref": case.ref, "oracle": case.oracle, "dirs": case.dirs}
            for key in z.files:
                if key == "meta":
                    try:
                        meta = json.loads(str(z[key][()]))
                        case.meta = meta if isinstance(meta, dict) else {}
                    except (ValueError, TypeError):
                        case.meta = {}
                    continue
                group, _, name = key.partition("/")
                if group in groups and name:
                    groups[group][name] = z[key]
    except FileNotFoundError:
        case.error = "file not found"
    except Exception as exc:  # a corrupt zip, a pickled array, a truncated write: all the same to a reader
        case.error = f"unreadable ({type(exc).__name__}: {exc})"
    return case


def phase_name(phase: str | None) -> str | None:
    """``grad[w]`` -> ``w``; ``forward`` -> ``out``; anything else -> None."""
    if not phase:
        return None
    if phase == "forward":
        return "out"
    m = re.fullmatch(r"grad\[(.+)\]", phase)
    return m.group(1) if m else None


@dataclass
class Comparison:
    """Reference vs oracle for one array, elementwise, with the statistics the page shows."""
    name: str
    ref: np.ndarray          # float64, the compared values (directional derivatives for dirs)
    oracle: np.ndarray
    abs_err: np.ndarray      # |ref - oracle|, +inf where exactly one side is non-finite
    rel_err: np.ndarray      # abs_err / |oracle|; 0 where both are 0, inf where only oracle is 0
    beyond: np.ndarray       # bool: abs_err > atol + rtol * |oracle|
    stats: dict
    directional: bool = False  # True: values are directional derivatives along dirs/<name>
    shape: tuple = ()


def _nonfinite_mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = np.isfinite(a), np.isfinite(b)
    same_special = (~fa & ~fb) & ((np.isnan(a) & np.isnan(b)) | (a == b))
    return (~fa | ~fb) & ~same_special


def _quantiles(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"max": None, "mean": None, "p50": None, "p90": None, "p99": None}
    with np.errstate(all="ignore"):
        # "lower": an actual element, so an inf in the tail does not turn a quantile into nan.
        q = np.quantile(x, [0.5, 0.9, 0.99], method="lower")
        return {"max": float(x.max()), "mean": float(x.mean()), "p50": float(q[0]),
                "p90": float(q[1]), "p99": float(q[2])}


def compare(name: str, ref: np.ndarray, oracle: np.ndarray, *, atol: float, rtol: float,
            dtype: str | None, dirs: np.ndarray | None = None) -> Comparison | str:
    """Elementwise comparison, or a string saying why the two cannot be compared."""
    shape = tuple(np.shape(ref))
    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(oracle, dtype=np.float64)
    directional = False
    if dirs is not None:
        d = np.asarray(dirs, dtype=np.float64)
        if d.shape[1:] != r.shape or o.shape != d.shape[:1]:
            return (f"directions of shape {d.shape} do not fit a gradient of shape {r.shape} "
                    f"and {o.shape} directional derivatives")
        with np.errstate(all="ignore"):
            r = d.reshape(d.shape[0], -1) @ r.reshape(-1)
        directional = True
    if r.shape != o.shape:
        return f"shapes differ: reference {r.shape}, oracle {o.shape}"
    with np.errstate(all="ignore"):
        mism = _nonfinite_mismatch(r, o)
        both_finite = np.isfinite(r) & np.isfinite(o)
        abs_err = np.where(both_finite, np.abs(r - o), 0.0)
        abs_err = np.where(mism, np.inf, abs_err)
        mag = np.abs(o)
        rel_err = np.where(abs_err == 0, 0.0, np.where(mag > 0, abs_err / mag, np.inf))
        beyond = mism | (both_finite & (abs_err > atol + rtol * mag))
        ulp = None
        if dtype in ("float32", "float64", "float16"):
            sp = np.spacing(np.abs(o).astype(dtype)).astype(np.float64)
            ulp = np.where(both_finite, abs_err / sp, np.where(mism, np.inf, 0.0))
        # Smallest tolerances that would have passed (the other one as applied).
        need_atol = float(np.max(np.where(both_finite, abs_err - rtol * mag, abs_err), initial=0.0))
        need_rtol = float(np.max(np.where(mag > 0, (abs_err - atol) / mag,
                                          np.where(abs_err > atol, np.inf, 0.0)), initial=0.0))
    worst = None
    if abs_err.size:
        flat = int(np.argmax(np.where(np.isnan(abs_err), -1, abs_err)))
        worst = [int(i) for i in np.unravel_index(flat, abs_err.shape)]
    stats = {
        "n": int(abs_err.size), "beyond": int(beyond.sum()), "nonfinite": int(mism.sum()),
        "abs": _quantiles(abs_err.ravel()), "rel": _quantiles(rel_err.ravel()),
        "ulp": _quantiles(ulp.ravel()) if ulp is not None else None,
        "worst_index": worst, "needed_atol": max(need_atol, 0.0), "needed_rtol": max(need_rtol, 0.0),
        "ratio": _constant_ratio(r, o),
    }
    return Comparison(name=name, ref=r, oracle=o, abs_err=abs_err, rel_err=rel_err, beyond=beyond,
                      stats=stats, directional=directional, shape=shape)


def _constant_ratio(r: np.ndarray, o: np.ndarray) -> float | None:
    """The median of ref/oracle over elements where both are clearly non-zero, if it is constant
    (a missing 1/N, a doubled term, a sign flip); None otherwise."""
    with np.errstate(all="ignore"):
        ok = np.isfinite(r) & np.isfinite(o) & (np.abs(o) > 1e-12) & (np.abs(r) > 1e-12)
        if ok.sum() < 2:
            return None
        q = r[ok] / o[ok]
        med = float(np.median(q))
        if med != 0 and np.all(np.abs(q - med) <= 1e-3 * abs(med)) and abs(med - 1) > 1e-3:
            return med
    return None


def comparisons(case: Case, rec: dict, *, limit: int = 8) -> tuple[list[Comparison], list[str]]:
    """Every array present on both sides, worst (or the record's phase) first."""
    atol = float(rec.get("atol") or 0.0)
    rtol = float(rec.get("rtol") or 0.0)
    out, problems = [], []
    for name in case.ref:
        if name not in case.oracle:
            continue
        try:
            c = compare(name, case.ref[name], case.oracle[name], atol=atol, rtol=rtol,
                        dtype=rec.get("dtype"), dirs=case.dirs.get(name))
        except (TypeError, ValueError) as exc:  # e.g. a non-numeric array: say so, go on
            c = f"cannot be compared ({type(exc).__name__}: {exc})"
        if isinstance(c, str):
            problems.append(f"{name}: {c}")
        else:
            out.append(c)
    primary = phase_name(rec.get("phase"))

    def key(c: Comparison):
        worst = c.stats["abs"]["max"]
        return (c.name != primary, -(c.stats["beyond"] > 0), -(worst if worst is not None else -1.0))
    out.sort(key=key)
    return out[:limit], problems


# ---- laying an n-d array out in two dimensions ---------------------------------------------

def layout_2d(shape: tuple) -> tuple[tuple[int, int], str]:
    """How an array of this shape is drawn: (rows, cols), and a sentence saying how.

    0-d: 1x1; 1-d: one row; 2-d: as is; 3-d (A, B, C): rows A*B, cols C; 4-d (N, C, H, W):
    a mosaic of H x W tiles, one per (n, c), n down and c across; more: rows are the leading
    axes flattened, cols the last axis.
    """
    s = tuple(int(x) for x in shape)
    if len(s) == 0:
        return (1, 1), "a scalar"
    if len(s) == 1:
        return (1, s[0]), "one row, left to right along axis 0"
    if len(s) == 2:
        return s, "rows: axis 0, columns: axis 1"
    if len(s) == 4:
        n, c, h, w = s
        return (n * h, c * w), (f"a mosaic of {h}×{w} tiles (axes 2, 3), one per index of "
                                f"axis 0 (down, {n}) and axis 1 (across, {c})")
    rows = int(np.prod(s[:-1]))
    lead = ", ".join(str(i) for i in range(len(s) - 1))
    return (rows, s[-1]), (f"rows: axes {lead} flattened (blocks of {s[-2]} rows per index of "
                           f"axis {len(s) - 3}), columns: axis {len(s) - 1}")


def to_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 4:
        n, c, h, w = a.shape
        return a.transpose(0, 2, 1, 3).reshape(n * h, c * w)
    (rows, cols), _ = layout_2d(a.shape)
    return a.reshape(rows, cols)


def index_2d(index, shape: tuple) -> tuple[int, int] | None:
    if index is None:
        return None
    s = tuple(shape)
    idx = tuple(int(i) for i in index)
    if len(idx) != len(s) or any(not 0 <= i < n for i, n in zip(idx, s)):
        return None
    if len(s) == 0:
        return (0, 0)
    if len(s) == 1:
        return (0, idx[0])
    if len(s) == 4:
        n, c, h, w = idx
        return (n * s[2] + h, c * s[3] + w)
    return (int(np.ravel_multi_index(idx[:-1], s[:-1])) if len(s) > 1 else 0, idx[-1])


def block_reduce(a2: np.ndarray, max_side: int, how: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Shrink a 2-D array to at most max_side x max_side by blocks: ``max`` (|error|: the worst
    stays visible; +inf, a non-finite mismatch, stays +inf) or ``mean`` (values; NaN marks a
    block holding a non-finite value)."""
    a2 = np.asarray(a2, dtype=np.float64)
    rows, cols = a2.shape
    fr, fc = -(-rows // max_side), -(-cols // max_side)
    if fr == 1 and fc == 1:
        if how == "max":
            return a2, (1, 1)
        return np.where(np.isfinite(a2), a2, np.nan), (1, 1)
    pr, pc = -(-rows // fr) * fr, -(-cols // fc) * fc
    padded = np.zeros((pr, pc))
    valid = np.zeros((pr, pc), dtype=bool)
    padded[:rows, :cols] = a2
    valid[:rows, :cols] = True

    def blocks(x):
        return x.reshape(pr // fr, fr, pc // fc, fc).transpose(0, 2, 1, 3).reshape(pr // fr, pc // fc, -1)
    v, ok = blocks(padded), blocks(valid)
    with np.errstate(all="ignore"):
        if how == "max":
            return np.max(np.where(ok, v, -np.inf), axis=-1), (fr, fc)
        fin = ok & np.isfinite(v)
        mean = np.sum(np.where(fin, v, 0.0), axis=-1) / np.maximum(fin.sum(axis=-1), 1)
        bad = np.any(ok & ~np.isfinite(v), axis=-1)
        return np.where(bad, np.nan, mean), (fr, fc)
