"""Result records -> one self-contained ``index.html`` (Jinja2, autoescaped; inline CSS and SVG).

The page, top to bottom: verdict and run summary; the failing cells at a glance; the matrix
op x (oracle, device, dtype) with regimes aggregated; one collapsible section per failing or
erroring cell with its evidence (first ``MAX_DETAILED``); near misses among passing cells;
kinks and skips grouped by reason; the environment.

Size is bounded by construction: the matrix is one short cell per (op, column); evidence is
drawn only for fail/error cells, at most MAX_DETAILED of them, with small arrays as numbers and
large ones as heatmaps of at most evidence.HEAT_SIDE a side, and heatmaps stop (with a note) once
PLOT_BUDGET bytes of SVG have been written.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import svg
from .evidence import case_evidence
from .findings import GROUP_TITLES, GROUPS, group, hazard_text, headline, replay_command
from .records import SOURCE_KEY, STATUSES, counts, normalise, overall_verdict, record_id
from .text import fmt_duration, fmt_num, short

__all__ = ["MAX_DETAILED", "build_context", "render_html"]

MAX_DETAILED = 200     # failing cells with a full evidence section
OPEN_DETAILED = 3      # evidence sections expanded on load
PLOT_BUDGET = 2_500_000  # bytes of SVG for the whole page; beyond it, numbers only
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
                    + (f": {short(r.get('kink') or r.get('message'))}"
                       if r["status"] in ("kink", "skip") and (r.get("kink") or r.get("message"))
                       else "")
                    for r in recs)
                bad = [r for r in recs if r["status"] in ("fail", "error")]
                anchor = next((anchors[record_id(r)] for r in bad if record_id(r) in anchors), None)
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
    evid = case_evidence(rec, cases_dir, out_dir, budget)
    verdict = evid.get("verdict") or {}
    return {
        "r": rec, "anchor": anchor, "open": open_, "id": record_id(rec),
        "blame_text": blame_text, "sides": sides,
        "agree_each_other": tri.get("agree_with_each_other"),
        # the pattern's sentence (properties.patterns' one table), as the judge wrote it into the record
        "explanation": rec.get("explanation"),
        "replay": replay_command(rec, out_dir),
        "group": group(rec),
        "kind_text": KIND_TEXT.get(rec.get("kind") or ""),
        # the judge's words for its verdict, and the constant factor it found: shown as they are
        "why": verdict.get("why") or [], "factor": verdict.get("factor"),
        "ev": evid,
    }


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
        groups.setdefault(str(reason), []).append(record_id(r))
    out = [{"reason": k, "n": len(v), "cells": v[:limit], "more": max(0, len(v) - limit)}
           for k, v in groups.items()]
    out.sort(key=lambda g: -g["n"])
    return out


def _glance(bad: list[dict], anchors: dict[str, str], max_links: int = 8) -> list[dict]:
    """One row per finding of a derivation (group, op and target): its cells, blames, patterns; the
    wrong ones first, then the unstable ones, then the warnings."""
    groups: dict[tuple, list[dict]] = {}
    for r in bad:
        groups.setdefault((group(r), r["op"], r.get("target")), []).append(r)
    rows = []
    for (grp, op, target), recs in groups.items():
        def tally(key):
            t: dict[str, int] = {}
            for r in recs:
                if r.get(key):
                    t[str(r[key])] = t.get(str(r[key]), 0) + 1
            return sorted(t.items(), key=lambda kv: -kv[1])
        rel = [r["max_rel_err"] for r in recs if r.get("max_rel_err") is not None]
        cells = [{"label": f"{r['oracle']} {r['device']} {DTYPE_SHORT.get(r['dtype'], r['dtype'])} "
                           f"{r['regime']}", "anchor": anchors.get(record_id(r)), "status": r["status"]}
                 for r in recs]
        rows.append({
            "op": op, "target": target if target and target != f"{op}_backward" else None,
            "counts": counts(recs), "blames": tally("blame"), "patterns": tally("pattern"),
            "phases": tally("phase"), "max_rel": max(rel) if rel else None,
            "cells": cells[:max_links], "more": max(0, len(cells) - max_links),
            "message": recs[0].get("message") or "", "headline": headline(recs[0]),
            "hazards": sorted({hazard_text(h) for r in recs for h in (r.get("hazards") or [])}),
            "group": grp, "title": GROUP_TITLES[grp],
            "order": (GROUPS.index(grp), min(_priority(r) for r in recs)),
        })
    rows.sort(key=lambda g: g["order"])
    return rows


def build_context(records: list[dict], run_meta: dict, out_dir: Path, *, cases_dir=None) -> dict:
    records = [normalise(r) for r in records]
    bad = [r for r in records if group(r) is not None]  # wrong, then unstable, then warnings
    order = {id(r): i for i, r in enumerate(records)}
    bad.sort(key=lambda r: (GROUPS.index(group(r)), _priority(r), order[id(r)]))
    detailed, listed = bad[:MAX_DETAILED], bad[MAX_DETAILED:]
    anchors = {record_id(r): f"f{i}" for i, r in enumerate(detailed)}
    budget = {"left": PLOT_BUDGET}
    sections = [_section(r, anchors[record_id(r)], cases_dir, out_dir, budget, i < OPEN_DETAILED)
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
