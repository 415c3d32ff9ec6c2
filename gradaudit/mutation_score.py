"""The mutation score of `gradaudit mutate` (gradaudit/mutate.py): each child result classified
(killed, survived, equivalent, invalid), the score per function and operator, each survivor
explained, and the text the command prints."""
from __future__ import annotations


__all__ = ["classify", "explain", "render", "summarize"]


def _check_of(res: dict, passing: set) -> dict | None:
    """The first check that killed the mutant, among judges whose original passes; else any check."""
    checks = [(j, v["check"]) for j, v in res.get("judges", {}).items() if "check" in v and j in passing]
    for j, c in checks:
        if c.get("killed"):
            return dict(c, judge=j)
    return dict(checks[0][1], judge=checks[0][0]) if checks else None


def classify(res: dict, judges: list, passing: set) -> tuple[str, str]:
    """(status, reason) of one mutant's result."""
    if res is None:
        return "error", "no result"
    if res.get("internal_error"):
        return "error", res["internal_error"]
    if res.get("died"):
        return "invalid", f"the mutant {res['died']}"
    status = res.get("probe_status", "unprobed")
    if status == "invalid":
        p = next((v["probe"] for v in res["judges"].values() if v.get("probe")), {})
        return "invalid", f"raises or returns the wrong gradients on every input: {p.get('error')}"
    if status == "equivalent":
        return "equivalent", "the same gradient on every probe input"
    if status == "unprobed":
        return "error", "the original backward ran on none of the probe inputs"
    if not any(j in passing for j in judges):
        return "not_scored", "the original already fails the check"
    c = _check_of(res, passing)
    if c is None or c.get("internal_error"):
        return "error", (c or {}).get("internal_error", "not checked")
    return ("killed", (c.get("by") or {}).get("message", "")) if c["killed"] else ("survived", "")


def summarize(plan, items: list[dict], results: dict, profile: str) -> dict:
    originals = {}
    for it in items:
        if it["path"] is None:
            r = results.get(it["id"], {})
            for j, v in r.get("judges", {}).items():
                originals[j] = v.get("check", {})
    passing = {j for j, c in originals.items() if c and not c.get("killed") and not c.get("internal_error")}
    by_id = {m.id: (m, judges) for m, judges, _ in plan.mutants}
    counts = {"mutants": 0, "killed": 0, "equivalent": 0, "survived": 0, "invalid": 0}
    functions: dict = {}
    operators: dict = {}
    survivors, flagged, errors, not_scored, per_mutant = [], [], [], [], []
    for mid, (m, judges) in by_id.items():
        res = results.get(mid)
        status, reason = classify(res, judges, passing)
        counts["mutants"] += 1
        for table, key in ((functions, m.function), (operators, m.operator)):
            row = table.setdefault(key, {"mutants": 0, "killed": 0, "equivalent": 0, "survived": 0, "invalid": 0})
            row["mutants"] += 1
            if status in row:
                row[status] += 1
        if status in counts:
            counts[status] += 1
        entry = {"id": mid, "function": m.function, "operator": m.operator, "line": m.line,
                 "description": m.description, "status": status, "judges": judges}
        if status == "killed":
            c = _check_of(res, passing)
            entry["by"] = c.get("by")
        per_mutant.append(entry)
        if status == "survived":
            s = dict(entry, diff=m.diff, probe={j: v.get("probe") for j, v in res["judges"].items()},
                     check={j: {k: v["check"].get(k) for k in ("cells", "statuses", "regimes", "examples")}
                            for j, v in res["judges"].items() if "check" in v})
            s["why"] = explain(s, None)
            survivors.append(s)
        elif status == "equivalent":
            c = _check_of(res, passing)
            if c and c.get("killed"):
                flagged.append(dict(entry, diff=m.diff, by=c.get("by")))
        elif status == "error":
            errors.append(dict(entry, reason=reason))
        elif status == "not_scored":
            not_scored.append(entry)
    for row in [*functions.values(), *operators.values(), counts]:
        scored = row["killed"] + row["survived"]
        row["score"] = round(row["killed"] / scored, 4) if scored else None
    return {**counts, "score": counts["score"], "profile": profile, "subject": plan.label, "kind": plan.kind,
            "functions": functions, "operators": operators, "survivors": survivors, "equivalent_flagged": flagged,
            "originals_failing": sorted(set(originals) - passing), "not_scored": not_scored, "errors": errors,
            "results": per_mutant}


def explain(s: dict, explain_profile: str | None) -> str:
    """Why a survivor survived, from where the probe saw it differ and what the checks drew."""
    parts = []
    for j, p in (s.get("probe") or {}).items():
        if not p or p.get("status") != "differs":
            continue
        d_ci, n_ci = p["by_breadth"]["narrow"]
        d_full, n_full = p["by_breadth"]["full"]
        regimes = sorted(r for r, (d, n) in p["by_regime"].items() if d)
        ex = p.get("example") or {}
        where = f" under {j}" if len(s.get("probe") or {}) > 1 else ""
        if p.get("reshaped"):
            parts.append(f"on {p['reshaped']} of {p['ran']} probe inputs{where} it {p['error']}; the check's cs231n "
                         f"adapter reshapes the gradient into the expected layout, so the check never sees the "
                         f"wrong shape")
            continue
        if p["broken"] and not p["differs"] and not p["written"]:
            parts.append(f"raises on {p['broken']} of {p['ran']} probe inputs{where} ({p['error']}) and is right on "
                         f"the others; the check drew none of the inputs where it raises")
            continue
        if p["written"] and not p["differs"]:
            parts.append(f"same gradient{where}, but it writes into the upstream gradient on {p['written']} of "
                         f"{p['ran']} inputs, and the check did not flag the write")
            continue
        if p["max_rel"] < 1e-6 and p["differs"]:
            parts.append(f"differs{where} by at most {p['max_rel']:.1e} (relative), below what a float32 "
                         f"check can resolve")
            continue
        if d_ci == 0:
            parts.append(f"differs{where} only on geometries the ci profile does not draw ({d_full} of {n_full} "
                         f"full-breadth inputs, e.g. {'; '.join(p['geoms_differ'][:3])}); the ci profile draws "
                         f"{'; '.join(p['geoms_narrow'][:4])}")
        else:
            parts.append(f"differs{where} on {d_ci} of {n_ci} probe inputs of the ci geometries (e.g. "
                         f"{ex.get('regime')} regime, {ex.get('geometry')}, grad {','.join(ex.get('grads') or [])} "
                         f"off by {ex.get('rel', 0):.2g} relative), yet every example the check drew passed")
        if regimes and len(regimes) < len(p["by_regime"]):
            parts[-1] += f"; only in the {', '.join(regimes)} regime{'s' if len(regimes) > 1 else ''}"
    if explain_profile:
        got = s.get(f"{explain_profile}_profile")
        if got == "killed":
            by = s.get(f"{explain_profile}_by") or {}
            parts.append(f"a --profile {explain_profile} check kills it ({by.get('regime')} regime, {by.get('dtype')}, "
                         f"shapes {by.get('shapes')})")
        elif got == "survived":
            parts.append(f"a --profile {explain_profile} check does not kill it either")
    return "; ".join(parts) or "the probe saw no difference on its inputs"


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f} %"


def render(report: dict) -> str:
    lines = [f"gradaudit mutate {report['subject']} ({report['kind']}, {report['profile']} profile): "
             f"{report['mutants']} mutants — {report['killed']} killed, {report['survived']} survived, "
             f"{report['equivalent']} equivalent, {report['invalid']} invalid; "
             f"score {_pct(report['score'])} ({report['killed']} of {report['killed'] + report['survived']})"]
    for title, table in (("function", report["functions"]), ("operator", report["operators"])):
        width = max([len(title)] + [len(k) for k in table])
        lines.append("")
        lines.append(f"{title:<{width}}  mutants  killed  survived  equivalent  invalid  score")
        for k, r in table.items():
            lines.append(f"{k:<{width}}  {r['mutants']:>7}  {r['killed']:>6}  {r['survived']:>8}  "
                         f"{r['equivalent']:>10}  {r['invalid']:>7}  {_pct(r['score'])}")
    if report["survivors"]:
        lines += ["", f"survivors ({len(report['survivors'])}):"]
        for s in report["survivors"]:
            lines.append(f"  {s['id']} (line {s['line']}): {s['description']}")
            lines += ["    " + ln for ln in s["diff"].rstrip("\n").splitlines()]
            lines.append(f"    why: {s['why']}")
    if report["equivalent_flagged"]:
        lines += ["", "equivalent mutants the check flagged anyway "
                      "(a false alarm, or a difference only float32 shows):"]
        lines += [f"  {e['id']}: {e['description']} — {(e.get('by') or {}).get('message', '')[:200]}"
                  for e in report["equivalent_flagged"]]
    if report["originals_failing"]:
        lines += ["", f"not scored: the check already fails on the original {', '.join(report['originals_failing'])} "
                      f"({len(report['not_scored'])} mutants); fix those first"]
    if report["errors"]:
        lines += ["", f"gradaudit failed on {len(report['errors'])} mutants:"]
        lines += [f"  {e['id']}: {e['reason'][:300]}" for e in report["errors"][:20]]
    lines.append(f"\n{report.get('seconds', 0)} s")
    return "\n".join(lines)
