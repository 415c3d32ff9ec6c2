"""The evidence behind one failing cell, from its saved case (reports.cases), as the page shows it:
every array compared side by side, its error element by element, and the judge's verdict on each
element (its error beyond the error the judge allowed: `allowed/<name>` in the case). Nothing is
judged here. Errors are never fatal to the report: an unreadable case shows as "not available".
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import svg
from .cases import SavedCase, read_case
from .records import SOURCE_KEY
from .text import fmt_num, fmt_value

__all__ = ["HEAT_SIDE", "MAX_SHOWN_ARRAYS", "SMALL", "ArrayEvidence", "array_evidence", "block_reduce",
           "case_evidence", "compared", "index_2d", "layout_2d", "phase_name", "to_2d"]

SMALL = 64  # at most this many elements: shown as numbers, not as a heatmap
HEAT_SIDE = 64  # heatmaps aggregate larger arrays to at most this many cells a side
MAX_SHOWN_ARRAYS = 3  # per failure: arrays compared in full (tables or heatmaps); others: one row


def phase_name(phase: str | None) -> str | None:
    """``grad[w]`` -> ``w``; ``forward`` -> ``out``; anything else -> None."""
    if not phase:
        return None
    if phase == "forward":
        return "out"
    m = re.fullmatch(r"grad\[(.+)\]", phase)
    return m.group(1) if m else None


@dataclass
class ArrayEvidence:
    """One array as the judge compared it: the reference's and the oracle's values (directional
    derivatives along dirs/<name> for the numeric oracle on large inputs), their error, and the
    judge's verdict per element (`beyond`; None where the judge did not compare this array)."""
    name: str
    ref: np.ndarray  # float64
    oracle: np.ndarray
    abs_err: np.ndarray  # |ref - oracle|, +inf where exactly one side is non-finite
    rel_err: np.ndarray  # abs_err / max(|oracle|, atol): never divided by ~0; inf where one side is non-finite
    beyond: np.ndarray | None  # the judge's: error > allowed, or NaN/Inf on one side only
    stats: dict
    directional: bool = False
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


def array_evidence(name: str, ref: np.ndarray, oracle: np.ndarray, *, dtype: str | None,
                   dirs: np.ndarray | None = None, allowed: np.ndarray | None = None,
                   judged: dict | None = None, rtol: float | None = None) -> ArrayEvidence | str:
    """One array's evidence, or a string saying why the two sides cannot be put side by side.
    `allowed` and `judged` are the judge's (the case's): what it allowed per element, its ratio and
    worst element; `rtol` the record's. Relative errors are against max(|oracle|, atol) and ULPs in the
    spacing at max(|oracle|, atol/rtol), as the judge's figures (properties/compare.py): an element
    next to 0 is never divided by ~0."""
    shape = tuple(np.shape(ref))
    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(oracle, dtype=np.float64)
    if dirs is not None:
        d = np.asarray(dirs, dtype=np.float64)
        if d.shape[1:] != r.shape or o.shape != d.shape[:1]:
            return (f"directions of shape {d.shape} do not fit a gradient of shape {r.shape} "
                    f"and {o.shape} directional derivatives")
        with np.errstate(all="ignore"):
            r = d.reshape(d.shape[0], -1) @ r.reshape(-1)  # as the judge projected it
    if r.shape != o.shape:
        return f"shapes differ: reference {r.shape}, oracle {o.shape}"
    with np.errstate(all="ignore"):
        mism = _nonfinite_mismatch(r, o)
        both_finite = np.isfinite(r) & np.isfinite(o)
        abs_err = np.where(both_finite, np.abs(r - o), 0.0)
        judged_err = abs_err
        abs_err = np.where(mism, np.inf, abs_err)
        mag = np.where(np.isfinite(o), np.abs(o), 0.0)
        atol, ulp_floor = _floors(mag, allowed if np.shape(allowed) == r.shape else None, rtol, dtype)
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.maximum(mag, atol))
        beyond = None
        if allowed is not None and np.shape(allowed) == r.shape:
            beyond = mism | (judged_err > np.asarray(allowed, dtype=np.float64))
        ulp = None
        if dtype in ("float32", "float64", "float16"):
            sp = np.spacing(np.maximum(mag, ulp_floor).astype(dtype)).astype(np.float64)
            ulp = np.where(both_finite, abs_err / sp, np.where(mism, np.inf, 0.0))
    judged = judged or {}
    worst = judged.get("worst_index")
    if worst is None and abs_err.size:
        worst = [int(i) for i in np.unravel_index(int(np.argmax(np.where(np.isnan(abs_err), -1, abs_err))),
                                                  abs_err.shape)]
    stats = {
        "n": int(abs_err.size), "beyond": int(beyond.sum()) if beyond is not None else None,
        "nonfinite": int(mism.sum()), "abs": _quantiles(abs_err.ravel()), "rel": _quantiles(rel_err.ravel()),
        "ulp": _quantiles(ulp.ravel()) if ulp is not None else None, "worst_index": worst,
        "ratio": judged.get("ratio"),
    }
    return ArrayEvidence(name=name, ref=r, oracle=o, abs_err=abs_err, rel_err=rel_err, beyond=beyond,
                         stats=stats, directional=dirs is not None, shape=shape)


def _floors(mag: np.ndarray, allowed, rtol, dtype) -> tuple[float, float]:
    """(atol, atol/rtol) of the judge's tolerance for this array: read back from what it allowed
    (allowed = atol + rtol |expected|); without it, the rounding of the array's largest element."""
    top = float(mag.max(initial=0.0))
    eps = float(np.finfo(dtype if dtype in ("float16", "float32", "float64") else "float64").eps)
    atol = 0.0
    if allowed is not None and rtol:
        left = np.asarray(allowed, np.float64) - float(rtol) * mag
        left = left[np.isfinite(left)]
        atol = max(float(left.min()), 0.0) if left.size else 0.0
    if atol <= 0:
        atol = eps * top
    tiny = float(np.finfo(np.float64).tiny)
    return max(atol, tiny), max(atol / float(rtol) if rtol else top, tiny)


def compared(case: SavedCase, rec: dict, *, limit: int = 8) -> tuple[list[ArrayEvidence], list[str]]:
    """Every array present on both sides, the record's phase first, then those beyond tolerance."""
    out, problems = [], []
    for name in case.ref:
        if name not in case.oracle:
            continue
        try:
            c = array_evidence(name, case.ref[name], case.oracle[name], dtype=rec.get("dtype"),
                               dirs=case.dirs.get(name), allowed=case.allowed.get(name),
                               judged=case.judged.get(name), rtol=rec.get("rtol"))
        except (TypeError, ValueError) as exc:  # e.g. a non-numeric array: say so, go on
            c = f"cannot be compared ({type(exc).__name__}: {exc})"
        if isinstance(c, str):
            problems.append(f"{name}: {c}")
        else:
            out.append(c)
    primary = phase_name(rec.get("phase"))

    def key(c: ArrayEvidence):
        worst = c.stats["abs"]["max"]
        return (c.name != primary, -((c.stats["beyond"] or 0) > 0), -(worst if worst is not None else -1.0))
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


# ---- the section's views -------------------------------------------------------------------------

def _case_path(rec: dict, cases_dir, out_dir: Path) -> Path | None:
    ce = rec.get("counterexample")
    if not ce:
        return None
    ce_path = Path(str(ce))
    candidates = []
    if cases_dir is not None:
        candidates.append(Path(cases_dir) / ce_path.name)
    if rec.get(SOURCE_KEY):
        candidates.append(Path(rec[SOURCE_KEY]) / ce_path)
    candidates.append(out_dir / ce_path)
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def _array_view(name: str, a: np.ndarray) -> dict:
    a = np.asarray(a)
    view = {"name": name, "shape": tuple(a.shape), "dtype": str(a.dtype), "small": a.size <= SMALL}
    if a.dtype.kind not in "biufc":
        view["small"] = False
        view["summary"] = f"{a.dtype} array"
        return view
    if view["small"]:
        view["table"] = _grid(a, lambda v: fmt_value(float(v), 6) if a.dtype.kind == "f" else str(v))
    else:
        with np.errstate(all="ignore"):
            f = a[np.isfinite(a)] if a.dtype.kind == "f" else a
            view["summary"] = (f"min {fmt_num(f.min())}, max {fmt_num(f.max())}, "
                               f"mean {fmt_num(f.mean())}" if f.size else "no finite values")
            if a.dtype.kind == "f" and f.size != a.size:
                view["summary"] += f", {a.size - f.size} non-finite"
    return view


def _grid(a: np.ndarray, fmt) -> dict:
    """A small array as rows of cells: 0-d/1-d as one row, n-d as (leading axes) x last axis."""
    if a.ndim <= 1:
        flat = a.reshape(-1)
        return {"rows": [{"label": "", "cells": [fmt(v) for v in flat]}],
                "cols": [str(i) for i in range(flat.size)] if a.ndim == 1 else [""]}
    rows = [{"label": ",".join(map(str, idx)), "cells": [fmt(v) for v in a[idx]]} for idx in np.ndindex(*a.shape[:-1])]
    return {"rows": rows, "cols": [str(i) for i in range(a.shape[-1])]}


def _beyond(c: ArrayEvidence) -> np.ndarray:
    return c.beyond if c.beyond is not None else np.zeros(c.abs_err.shape, bool)


def _digits_for(c: ArrayEvidence) -> int:
    """Enough significant digits that two values that differ beyond tolerance print differently."""
    rel = c.rel_err[_beyond(c) & np.isfinite(c.rel_err) & (c.rel_err > 0)]
    if rel.size == 0:
        return 6
    return int(min(17, max(6, math.ceil(-math.log10(float(rel.min()))) + 2)))


def _numbers(c: ArrayEvidence, layout_shape: tuple, worst) -> dict:
    """A small array's values side by side: a list (0-d, 1-d) or a grid."""
    digits = _digits_for(c)
    ref, ora = c.ref.reshape(layout_shape), c.oracle.reshape(layout_shape)
    err, beyond = c.abs_err.reshape(layout_shape), _beyond(c).reshape(layout_shape)
    worst_t = tuple(worst) if worst is not None else None

    def cell(k):
        return {"ref": fmt_value(float(ref[k]), digits), "oracle": fmt_value(float(ora[k]), digits),
                "err": fmt_num(float(err[k]), 2), "beyond": bool(beyond[k]), "worst": worst_t == k}
    if len(layout_shape) <= 1:
        keys = [(i,) for i in range(c.ref.size)] if layout_shape else [()]
        return {"mode": "list", "list": [dict(cell(k), label=str(k[0]) if k else "") for k in keys]}
    rows = [{"label": ",".join(map(str, idx)), "cells": [cell(idx + (j,)) for j in range(layout_shape[-1])]}
            for idx in np.ndindex(*layout_shape[:-1])]
    return {"mode": "grid", "grid": {"rows": rows, "cols": [str(j) for j in range(layout_shape[-1])]}}


def _maps(c: ArrayEvidence, label: str, layout_shape: tuple, worst, values: bool) -> dict:
    """The |error| heatmap, and the two sides' value maps when the arrays are too big for numbers."""
    (rows2, cols2), how = layout_2d(layout_shape)
    err2, (fr, fc) = block_reduce(to_2d(c.abs_err.reshape(layout_shape)), HEAT_SIDE, "max")
    mark = index_2d(worst, layout_shape)
    if mark is not None:
        mark = (mark[0] // fr, mark[1] // fc)
    seps = None
    if fr == 1 and fc == 1:
        if len(layout_shape) == 4:
            seps = (layout_shape[2], layout_shape[3])
        elif len(layout_shape) == 3:
            seps = (layout_shape[1], 0)
    finite = err2[np.isfinite(err2)]
    hi = float(finite.max()) if finite.size else 1.0
    maps = {"err": svg.heatmap(err2, palette=svg.SEQ, lo=0.0, hi=hi, mark=mark, separators=seps,
                               label=f"|reference − oracle| of {label}"), "err_hi": hi}
    if values:
        ref2, _ = block_reduce(to_2d(c.ref.reshape(layout_shape)), HEAT_SIDE, "mean")
        ora2, _ = block_reduce(to_2d(c.oracle.reshape(layout_shape)), HEAT_SIDE, "mean")
        both = np.concatenate([ref2[np.isfinite(ref2)], ora2[np.isfinite(ora2)]])
        vmax = (float(np.abs(both).max()) if both.size else 1.0) or 1.0
        maps["ref"] = svg.heatmap(ref2, palette=svg.DIV, lo=-vmax, hi=vmax, mark=mark, separators=seps,
                                  label=f"reference {label}")
        maps["oracle"] = svg.heatmap(ora2, palette=svg.DIV, lo=-vmax, hi=vmax, mark=mark, separators=seps,
                                     label=f"oracle {label}")
        maps["vmax"] = vmax
    maps.update(rows=rows2, cols=cols2, how=how if len(layout_shape) > 2 else None,
                agg=(fr, fc) if (fr, fc) != (1, 1) else None)
    return maps


def _comparison_view(c: ArrayEvidence, budget: dict, full: bool) -> dict:
    label = f"forward ({c.name})" if re.fullmatch(r"out\d*", c.name) else f"grad[{c.name}]"
    if c.directional:
        label += f" along {c.ref.size} random directions"
    view = {"name": c.name, "label": label, "shape": c.shape, "stats": c.stats,
            "directional": c.directional, "mode": None, "note": None}
    if not full:
        return view
    worst = c.stats["worst_index"]
    layout_shape = (c.ref.size,) if c.directional else c.shape
    view.update(_numbers(c, layout_shape, worst) if c.ref.size <= SMALL else {"mode": "heat"})
    if budget["left"] <= 0:
        view["note"] = "heatmaps omitted to keep the report small; the arrays are in the counterexample file"
        if view["mode"] == "heat":
            view["mode"] = None
        return view
    view["maps"] = _maps(c, label, layout_shape, worst, values=view["mode"] == "heat")
    budget["left"] -= sum(len(v) for v in view["maps"].values() if isinstance(v, str))
    return view


def case_evidence(rec: dict, cases_dir, out_dir: Path, budget: dict) -> dict:
    """What the page shows of a failing cell's saved case; `budget` (bytes of SVG left) is spent."""
    path = _case_path(rec, cases_dir, out_dir)
    if path is None:
        return {"available": False, "reason": "no counterexample file was recorded for this cell"}
    href = quote(Path(os.path.relpath(path, out_dir)).as_posix())
    case = read_case(path)
    if case.error:
        return {"available": False, "href": href, "file": str(rec.get("counterexample")),
                "reason": f"{rec.get('counterexample')}: {case.error}"}
    comps, problems = compared(case, rec)
    # In full (numbers or maps): the phase the record names and the arrays beyond tolerance;
    # the arrays that agree get one row each.
    primary = phase_name(rec.get("phase"))
    views, shown = [], 0
    for c in comps:
        full = shown < MAX_SHOWN_ARRAYS and (c.name == primary or (c.stats["beyond"] or 0) > 0)
        shown += full
        views.append(_comparison_view(c, budget, full=full))
    return {
        "available": True, "href": href, "file": str(rec.get("counterexample")),
        "inputs": [_array_view(k, v) for k, v in case.inputs.items()],
        "params": [_array_view(k, v) for k, v in case.params.items()],
        "douts": [_array_view(f"dout[{i}]", v) for i, v in enumerate(case.douts)],
        "comparisons": views, "problems": problems, "verdict": case.verdict,
        "seed": case.meta.get("seed"),
    }
