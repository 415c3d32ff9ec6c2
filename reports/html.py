"""Result records -> one self-contained ``index.html`` (Jinja2, autoescaped; inline CSS and SVG).

The page, top to bottom: verdict and run summary; the failing cells at a glance; the matrix
op x (oracle, device, dtype) with regimes aggregated; one collapsible section per failing or
erroring cell with its evidence (first ``MAX_DETAILED``); near misses among passing cells;
kinks and skips grouped by reason; the environment.

Size is bounded by construction: the matrix is one short cell per (op, column); evidence is
drawn only for fail/error cells, at most MAX_DETAILED of them, with small arrays as numbers and
large ones as heatmaps of at most HEAT_SIDE x HEAT_SIDE, and heatmaps stop (with a note) once
PLOT_BUDGET bytes of SVG have been written.
"""
from __future__ import annotations

import math
import os
import shlex
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import evidence as ev
from . import svg
from .records import SOURCE_KEY, STATUSES, cell_id, counts, overall_verdict

MAX_DETAILED = 200     # failing cells with a full evidence section
OPEN_DETAILED = 3      # evidence sections expanded on load
HEAT_SIDE = 64         # heatmaps aggregate larger arrays to at most this many cells a side
PLOT_BUDGET = 2_500_000  # bytes of SVG for the whole page; beyond it, numbers only
MAX_SHOWN_ARRAYS = 3   # per failure: arrays compared in full (tables or heatmaps); others: one row
NEAR_MISSES = 15

_TEMPLATES = Path(__file__).parent / "templates"
_env: Environment | None = None

ORACLE_ORDER = {"torch": 0, "jax": 1, "numeric": 2}
DEVICE_ORDER = {"cpu": 0, "cuda": 1}
DTYPE_ORDER = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3}
DTYPE_SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}

BLAME_TEXT = {
    "reference": "the hand-derived gradient is wrong: the independent oracles agree with each "
                 "other and not with it",
    "precision": "a precision effect, not a wrong formula: the gap closes in float64",
    "unknown": "the sides do not tell a consistent story: no single side can be blamed",
}
PATTERN_TEXT = {
    "constant_factor": "reference = c × oracle for one constant c (a missing 1/N, a doubled term)",
    "sign_flip": "reference = −oracle (a sign error)",
    "transpose": "reference matches the oracle transposed (a missing or extra transpose)",
    "wrong_axis": "a reduction over the wrong axis",
    "missing_timestep": "a contribution is missing at one timestep (look at the error map)",
    "credit_at_ties": "the credit at tied elements is not a valid split (e.g. every tied "
                      "element gets the full gradient)",
    "zero_gradient": "the reference gradient is zero where the oracle's is not",
    "tf32": "TF32 on the GPU (--allow-tf32): float32 matmuls and convolutions keep 10 mantissa bits "
            "(relative error ~1e-3); the same oracle on the CPU agrees, so the derivation is not at fault",
}
KIND_TEXT = {"gradient": "gradients disagree", "forward": "the forwards already disagree",
             "nonfinite": "NaN/Inf on one side only"}


def _environment() -> Environment:
    global _env
    if _env is None:
        _env = Environment(loader=FileSystemLoader(str(_TEMPLATES)),
                           autoescape=select_autoescape(default=True, default_for_string=True),
                           trim_blocks=True, lstrip_blocks=True)
        _env.filters["num"] = fmt_num
        _env.filters["duration"] = fmt_duration
    return _env


# ---- formatting ------------------------------------------------------------------------------

def fmt_num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float, np.number)):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "−inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 0)}e}"


def fmt_duration(s) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _short(text, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt_value(v: float, digits: int) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "−inf"
    return f"{v:.{digits}g}"


# ---- the matrix ------------------------------------------------------------------------------

def _column_key(col):
    o, d, t = col
    return (ORACLE_ORDER.get(o, 9), o, DEVICE_ORDER.get(d, 9), d, DTYPE_ORDER.get(t, 9), t)


def _cell_status(recs: list[dict]) -> str:
    """The colour of a matrix cell (its regimes aggregated): error or fail if any regime has
    one; otherwise pass if any regime was checked and passed (kinks and skips in the others are
    marked, not coloured); otherwise kink; otherwise skip."""
    have = {r["status"] for r in recs}
    for st in ("error", "fail", "pass", "kink"):
        if st in have:
            return st
    return "skip"


def _build_matrix(records: list[dict], anchors: dict[str, str]) -> dict:
    columns = sorted({(r["oracle"], r["device"], r["dtype"]) for r in records}, key=_column_key)
    col_index = {c: i for i, c in enumerate(columns)}
    families: dict[str, dict[str, dict]] = {}
    for r in records:
        fam = r.get("family") or "other"
        ops = families.setdefault(fam, {})
        row = ops.setdefault(r["op"], {"op": r["op"], "source": None, "targets": [],
                                       "cells": [[] for _ in columns]})
        if r.get("source") and not row["source"]:
            row["source"] = r["source"]
        tgt = r.get("target")
        if tgt and tgt not in row["targets"]:
            row["targets"].append(tgt)
        row["cells"][col_index[(r["oracle"], r["device"], r["dtype"])]].append(r)

    out_families = []
    for fam, ops in families.items():
        rows = []
        for row in ops.values():
            cells = []
            for recs in row["cells"]:
                if not recs:
                    cells.append(None)
                    continue
                status = _cell_status(recs)
                c = counts(recs)
                wt = [r["worst_target"] for r in recs if r.get("worst_target") is not None]
                tip = "; ".join(
                    f"{r['regime']}: {r['status']}"
                    + (f" ({r.get('examples')} ex.)" if r.get("examples") is not None else "")
                    + (f", worst {fmt_num(r['worst_target'], 2)}× tol"
                       if r["status"] == "pass" and r.get("worst_target") is not None else "")
                    + (f": {_short(r.get('kink') or r.get('message'))}"
                       if r["status"] in ("kink", "skip") and (r.get("kink") or r.get("message"))
                       else "")
                    for r in recs)
                bad = [r for r in recs if r["status"] in ("fail", "error")]
                anchor = next((anchors[cell_id(r)] for r in bad if cell_id(r) in anchors), None)
                cells.append({
                    "status": status,
                    "examples": sum(int(r.get("examples") or 0) for r in recs),
                    "n": len(recs), "counts": c, "tip": tip, "anchor": anchor,
                    "n_bad": len(bad),
                    "marks": ("∿" if c["kink"] and status != "kink" else "")
                             + ("–" if c["skip"] and status != "skip" else ""),
                    "worst_target": max(wt) if wt else None,
                })
            rows.append({"op": row["op"], "source": row["source"],
                         "targets": [t for t in row["targets"] if t != f"{row['op']}_backward"],
                         "cells": cells,
                         "bad": any(c and c["status"] in ("fail", "error") for c in cells)})
        out_families.append({"name": fam, "rows": rows})
    # Header: oracle groups over (device, dtype) columns.
    groups = []
    for o, d, t in columns:
        if groups and groups[-1]["oracle"] == o:
            groups[-1]["span"] += 1
        else:
            groups.append({"oracle": o, "span": 1})
    return {"columns": [{"oracle": o, "device": d, "dtype": t,
                         "short": f"{d} {DTYPE_SHORT.get(t, t)}"} for o, d, t in columns],
            "groups": groups, "families": out_families}


# ---- one failing cell ------------------------------------------------------------------------

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
    view = {"name": name, "shape": tuple(a.shape), "dtype": str(a.dtype), "small": a.size <= ev.SMALL}
    if a.dtype.kind not in "biufc":
        view["small"] = False
        view["summary"] = f"{a.dtype} array"
        return view
    if view["small"]:
        view["table"] = _grid(a, lambda v: _fmt_value(float(v), 6) if a.dtype.kind == "f"
                              else str(v))
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
    lead = a.shape[:-1]
    rows = []
    for i, idx in enumerate(np.ndindex(*lead)):
        rows.append({"label": ",".join(map(str, idx)), "cells": [fmt(v) for v in a[idx]]})
    return {"rows": rows, "cols": [str(i) for i in range(a.shape[-1])]}


def _digits_for(c: ev.Comparison) -> int:
    """Enough significant digits that two values that differ beyond tolerance print differently."""
    rel = c.rel_err[c.beyond & np.isfinite(c.rel_err) & (c.rel_err > 0)]
    if rel.size == 0:
        return 6
    return int(min(17, max(6, math.ceil(-math.log10(float(rel.min()))) + 2)))


def _comparison_view(c: ev.Comparison, rec: dict, budget: dict, full: bool) -> dict:
    st = c.stats
    is_out = c.name == "out" or c.name.startswith("out/")
    label = f"forward ({c.name})" if is_out else f"grad[{c.name}]"
    if c.directional:
        label += f" along {c.ref.size} random directions"
    view = {"name": c.name, "label": label, "shape": c.shape, "stats": st,
            "directional": c.directional, "mode": None, "note": None}
    if not full:
        return view
    n = c.ref.size
    worst = st["worst_index"]
    layout_shape = (c.ref.size,) if c.directional else c.shape
    if n <= ev.SMALL:
        digits = _digits_for(c)
        mode = "list" if len(layout_shape) <= 1 else "grid"
        ref, ora = c.ref.reshape(layout_shape), c.oracle.reshape(layout_shape)
        err, beyond = c.abs_err.reshape(layout_shape), c.beyond.reshape(layout_shape)
        worst_t = tuple(worst) if worst is not None else None
        if mode == "list":
            rows = []
            for i in range(n):
                fi = (i,) if len(layout_shape) == 1 else ()
                rows.append({"label": str(i) if fi else "", "ref": _fmt_value(float(ref[fi]), digits),
                             "oracle": _fmt_value(float(ora[fi]), digits),
                             "err": fmt_num(float(err[fi]), 2), "beyond": bool(beyond[fi]),
                             "worst": worst_t is not None and tuple(worst_t) == fi})
            view["list"] = rows
        else:
            lead = layout_shape[:-1]
            rows = []
            for idx in np.ndindex(*lead):
                cells = []
                for j in range(layout_shape[-1]):
                    k = idx + (j,)
                    cells.append({"ref": _fmt_value(float(ref[k]), digits),
                                  "oracle": _fmt_value(float(ora[k]), digits),
                                  "err": fmt_num(float(err[k]), 2), "beyond": bool(beyond[k]),
                                  "worst": worst_t == k})
                rows.append({"label": ",".join(map(str, idx)), "cells": cells})
            view["grid"] = {"rows": rows, "cols": [str(j) for j in range(layout_shape[-1])]}
        view["mode"] = mode
    else:
        view["mode"] = "heat"
    # The |error| map, always; the value maps too when the arrays are too big for numbers.
    if budget["left"] <= 0:
        view["note"] = ("heatmaps omitted to keep the report small; the arrays are in the "
                        "counterexample file")
        if view["mode"] == "heat":
            view["mode"] = None
        return view
    (rows2, cols2), how = ev.layout_2d(layout_shape)
    err2, (fr, fc) = ev.block_reduce(ev.to_2d(c.abs_err.reshape(layout_shape)), HEAT_SIDE, "max")
    mark = ev.index_2d(worst, layout_shape)
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
                               label=f"|reference − oracle| of {label}"),
            "err_hi": hi}
    if view["mode"] == "heat":
        ref2, _ = ev.block_reduce(ev.to_2d(c.ref.reshape(layout_shape)), HEAT_SIDE, "mean")
        ora2, _ = ev.block_reduce(ev.to_2d(c.oracle.reshape(layout_shape)), HEAT_SIDE, "mean")
        both = np.concatenate([ref2[np.isfinite(ref2)], ora2[np.isfinite(ora2)]])
        vmax = float(np.abs(both).max()) if both.size else 1.0
        vmax = vmax or 1.0
        maps["ref"] = svg.heatmap(ref2, palette=svg.DIV, lo=-vmax, hi=vmax, mark=mark,
                                  separators=seps, label=f"reference {label}")
        maps["oracle"] = svg.heatmap(ora2, palette=svg.DIV, lo=-vmax, hi=vmax, mark=mark,
                                     separators=seps, label=f"oracle {label}")
        maps["vmax"] = vmax
    budget["left"] -= sum(len(v) for v in maps.values() if isinstance(v, str))
    maps.update(rows=rows2, cols=cols2, how=how if len(layout_shape) > 2 else None,
                agg=(fr, fc) if (fr, fc) != (1, 1) else None)
    view["maps"] = maps
    return view


def _evidence(rec: dict, cases_dir, out_dir: Path, budget: dict) -> dict:
    path = _case_path(rec, cases_dir, out_dir)
    if path is None:
        return {"available": False, "reason": "no counterexample file was recorded for this cell"}
    href = quote(Path(os.path.relpath(path, out_dir)).as_posix())
    case = ev.load_case(path)
    if case.error:
        return {"available": False, "href": href, "file": str(rec.get("counterexample")),
                "reason": f"{rec.get('counterexample')}: {case.error}"}
    comps, problems = ev.comparisons(case, rec)
    # In full (numbers or maps): the phase the record names and the arrays beyond tolerance;
    # the arrays that agree get one row each.
    primary = ev.phase_name(rec.get("phase"))
    views, shown = [], 0
    for c in comps:
        full = shown < MAX_SHOWN_ARRAYS and (c.name == primary or c.stats["beyond"] > 0)
        shown += full
        views.append(_comparison_view(c, rec, budget, full=full))
    return {
        "available": True, "href": href, "file": str(rec.get("counterexample")),
        "inputs": [_array_view(k, v) for k, v in case.inputs.items()],
        "params": [_array_view(k, v) for k, v in case.params.items()],
        "douts": [_array_view(f"dout[{k}]", v) for k, v in case.douts.items()],
        "comparisons": views, "problems": problems,
        "seed": case.meta.get("seed"),
    }


def _section(rec: dict, anchor: str, cases_dir, out_dir: Path, budget: dict, open_: bool) -> dict:
    blame = rec.get("blame")
    if blame and blame.startswith("oracle:"):
        blame_text = (f"one oracle is out: {blame.split(':', 1)[1]} disagrees with the reference "
                      f"and with the other oracles (the derivation is fine)")
    else:
        blame_text = BLAME_TEXT.get(blame or "", None)
    tri = rec.get("triangulation") or {}
    sides = [{"side": k, "verdict": v} for k, v in tri.items()
             if k != "agree_with_each_other" and isinstance(v, str)]
    evid = _evidence(rec, cases_dir, out_dir, budget)
    # Needed tolerances: the record's, else computed from the arrays.
    need_atol, need_rtol = rec.get("needed_atol"), rec.get("needed_rtol")
    if evid.get("comparisons") and (need_atol is None or need_rtol is None):
        first = evid["comparisons"][0]["stats"]
        need_atol = first["needed_atol"] if need_atol is None else need_atol
        need_rtol = first["needed_rtol"] if need_rtol is None else need_rtol
    ratio = None
    if evid.get("comparisons"):
        ratio = evid["comparisons"][0]["stats"].get("ratio")
    shapes = rec.get("shapes") or {k: list(v["shape"]) for k, v in
                                   ((a["name"], a) for a in evid.get("inputs", []))}
    return {
        "r": rec, "anchor": anchor, "open": open_, "id": cell_id(rec),
        "blame_text": blame_text, "sides": sides,
        "agree_each_other": tri.get("agree_with_each_other"),
        "pattern_text": PATTERN_TEXT.get(rec.get("pattern") or ""),
        "kind_text": KIND_TEXT.get(rec.get("kind") or ""),
        "ratio": ratio, "ratio_hint": _ratio_hint(ratio, shapes), "need_atol": need_atol, "need_rtol": need_rtol,
        "ev": evid,
    }


def _ratio_hint(ratio: float | None, shapes: dict) -> str | None:
    """Name a constant factor: −1, or an integer k (or 1/k) that is the size of some axis (a
    missing or extra 1/N is the commonest derivation bug)."""
    if ratio is None:
        return None
    if abs(ratio + 1) < 1e-6:
        return "−1: a sign flip"
    for value, fmt in ((abs(ratio), "{k}"), (1 / abs(ratio), "1/{k}")):
        k = round(value)
        if k >= 2 and abs(value - k) < 1e-6 * k:
            axes = [f"{name}.shape[{i}]" for name, shp in (shapes or {}).items()
                    if isinstance(shp, (list, tuple)) for i, n in enumerate(shp) if n == k]
            text = ("−" if ratio < 0 else "") + fmt.format(k=k)
            if axes:
                text += " = " + ("" if fmt == "{k}" else "1/") + ", ".join(axes[:3])
                text += (": an extra factor of that size (a missing 1/N)" if fmt == "{k}"
                         else ": divided by that size once too often")
            return text
    return None


def _priority(r: dict) -> int:
    """Order of the failure sections: wrong derivations first, then errors, then the rest."""
    if r["status"] == "fail" and r.get("blame") == "reference":
        return 0
    if r["status"] == "error":
        return 1
    if r["status"] == "fail" and r.get("blame") in (None, "unknown"):
        return 2
    if r["status"] == "fail" and str(r.get("blame", "")).startswith("oracle:"):
        return 3
    return 4


# ---- the page --------------------------------------------------------------------------------

def _summary(records: list[dict], run_meta: dict) -> dict:
    c = counts(records)
    cmd = run_meta.get("command")
    if isinstance(cmd, list):
        cmd = shlex.join(str(x) for x in cmd)
    flags = dict(run_meta.get("flags") or {})
    devices: dict[str, set] = {}
    for r in records:
        for k, v in (r.get("flags") or {}).items():
            flags.setdefault(k, v)
        if r.get("device_name"):
            devices.setdefault(r["device"], set()).add(str(r["device_name"]))
    return {
        "verdict": overall_verdict(records), "counts": c, "total": len(records),
        "examples": sum(int(r.get("examples") or 0) for r in records),
        "command": cmd, "seed": run_meta.get("seed"), "profile": run_meta.get("profile"),
        "started": run_meta.get("started"), "finished": run_meta.get("finished"),
        "duration": run_meta.get("duration_s"),
        "versions": run_meta.get("versions") or {},
        "cpu": run_meta.get("cpu"), "gpus": run_meta.get("gpus") or [],
        "flags": flags,
        "device_names": {k: sorted(v) for k, v in devices.items()},
        "ops": len({r["op"] for r in records}),
        "sources": sorted({r[SOURCE_KEY] for r in records if r.get(SOURCE_KEY)}),
    }


def _grouped_reasons(records: list[dict], status: str, limit: int = 40) -> list[dict]:
    groups: dict[str, list[str]] = {}
    for r in records:
        if r["status"] != status:
            continue
        reason = (r.get("kink") if status == "kink" else None) or r.get("message") or "(no reason given)"
        groups.setdefault(str(reason), []).append(cell_id(r))
    out = [{"reason": k, "n": len(v), "cells": v[:limit], "more": max(0, len(v) - limit)}
           for k, v in groups.items()]
    out.sort(key=lambda g: -g["n"])
    return out


def _glance(bad: list[dict], anchors: dict[str, str], max_links: int = 8) -> list[dict]:
    """One row per wrong derivation (op and target): its failing cells, blames, patterns."""
    groups: dict[tuple, list[dict]] = {}
    for r in bad:
        groups.setdefault((r["op"], r.get("target")), []).append(r)
    rows = []
    for (op, target), recs in groups.items():
        def tally(key):
            t: dict[str, int] = {}
            for r in recs:
                if r.get(key):
                    t[str(r[key])] = t.get(str(r[key]), 0) + 1
            return sorted(t.items(), key=lambda kv: -kv[1])
        rel = [r["max_rel_err"] for r in recs if r.get("max_rel_err") is not None]
        cells = [{"label": f"{r['oracle']} {r['device']} {DTYPE_SHORT.get(r['dtype'], r['dtype'])} "
                           f"{r['regime']}", "anchor": anchors.get(cell_id(r)), "status": r["status"]}
                 for r in recs]
        rows.append({
            "op": op, "target": target if target and target != f"{op}_backward" else None,
            "counts": counts(recs), "blames": tally("blame"), "patterns": tally("pattern"),
            "phases": tally("phase"), "max_rel": max(rel) if rel else None,
            "cells": cells[:max_links], "more": max(0, len(cells) - max_links),
            "message": recs[0].get("message") or "",
            "order": min(_priority(r) for r in recs),
        })
    rows.sort(key=lambda g: g["order"])
    return rows


# Every key of docs/result_record.md, so that a template never meets a missing one.
RECORD_KEYS = ("target", "op", "oracle", "device", "dtype", "regime", "status", "kind", "blame",
               "examples", "max_abs_err", "max_rel_err", "max_ulp", "pattern", "counterexample",
               "replay", "message", "id", "family", "source", "phase", "worst_index", "atol",
               "rtol", "tolerance_source", "needed_atol", "needed_rtol", "triangulation",
               "shapes", "params", "kink", "mutated", "device_name", "flags", "seconds",
               "worst_target")


def _normalise(rec: dict) -> dict:
    r = dict.fromkeys(RECORD_KEYS)
    r.update(rec)
    for key, empty in (("shapes", {}), ("params", {}), ("flags", {}), ("mutated", []),
                       ("message", "")):
        if r[key] is None:
            r[key] = empty
    return r


def build_context(records: list[dict], run_meta: dict, out_dir: Path, *, cases_dir=None) -> dict:
    records = [_normalise(r) for r in records]
    bad = [r for r in records if r["status"] in ("fail", "error")]
    order = {id(r): i for i, r in enumerate(records)}
    bad.sort(key=lambda r: (_priority(r), order[id(r)]))
    detailed, listed = bad[:MAX_DETAILED], bad[MAX_DETAILED:]
    anchors = {cell_id(r): f"f{i}" for i, r in enumerate(detailed)}
    budget = {"left": PLOT_BUDGET}
    sections = [_section(r, anchors[cell_id(r)], cases_dir, out_dir, budget, i < OPEN_DETAILED)
                for i, r in enumerate(detailed)]
    near = sorted((r for r in records if r["status"] == "pass" and r.get("worst_target") is not None),
                  key=lambda r: -float(r["worst_target"]))[:NEAR_MISSES]
    return {
        "s": _summary(records, run_meta), "meta": run_meta,
        "matrix": _build_matrix(records, anchors),
        "glance": _glance(bad, anchors),
        "sections": sections, "n_listed": len(listed),
        "near": near, "kinks": _grouped_reasons(records, "kink"),
        "skips": _grouped_reasons(records, "skip"),
        "statuses": STATUSES,
        "palette_seq": svg.gradient_css(svg.SEQ), "palette_div": svg.gradient_css(svg.DIV),
        "plots_trimmed": budget["left"] <= 0,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "MAX_DETAILED": MAX_DETAILED,
    }


def render_html(records: list[dict], run_meta: dict, out_dir, *, cases_dir=None) -> Path:
    """Render ``out_dir/index.html`` from result records and run metadata; return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = build_context(list(records), dict(run_meta or {}), out_dir, cases_dir=cases_dir)
    html = _environment().get_template("report.html.j2").render(**ctx)
    path = out_dir / "index.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)  # a reader (CI upload, browser) never sees a half-written page
    return path
