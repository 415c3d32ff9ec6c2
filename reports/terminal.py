"""A compact plain-text summary for the terminal (and CI logs): the counts, then one line per user
function and finding — wrong first, then unstable, then warnings — each ending with what it means
(the pattern's sentence, never cut), and the verdict on the last line.

Every string of a record may come from someone else (a user's function name, an exception message,
a results file given to `gradaudit report`): each goes through `text.clean` before it is printed."""
from __future__ import annotations

from .findings import GROUP_TITLES, GROUPS, group, hazard_text, headline
from .records import STATUSES, counts, overall_verdict
from .text import clean

__all__ = ["terminal_summary"]

_COLOURS = {"pass": "32", "fail": "31", "error": "35", "skip": "33", "kink": "36", "unstable": "33",
            "warning": "33"}
_LABEL = {"unstable": "UNSTABLE", "warning": "WARN"}


def _c(text: str, status: str, color: bool) -> str:
    return f"\x1b[{_COLOURS[status]}m{text}\x1b[0m" if color and status in _COLOURS else text


def _s(value) -> str:
    """A record's field as printed: escaped, on one line."""
    return clean(value, 200)


def _axis(rs: list[dict], key: str) -> str:
    return ",".join(dict.fromkeys(_s(r.get(key)) for r in rs))


def _why(rs: list[dict]) -> str:
    if all(r["status"] == "error" for r in rs):
        return "error"
    first = next(r for r in rs if r["status"] != "error") if any(r["status"] != "error" for r in rs) else rs[0]
    pattern = next((r["pattern"] for r in rs if r.get("pattern")), None)
    return f"blame={_s(first.get('blame') or '?')}" + (f" pattern={_s(pattern)}" if pattern else "")


def _line(grp: str, target: str, op: str, rs: list[dict], width: int, color: bool) -> str:
    if grp == "fail":
        status = "error" if all(r["status"] == "error" for r in rs) else "fail"
        label = status.upper()
    else:
        status, label = grp, _LABEL[grp]
    name = f"{_s(target)} ({_s(op)})" if target != op else _s(op)
    if len(rs) == 1:
        r = rs[0]
        where = f"{name} [{' '.join(_s(r[k]) for k in ('oracle', 'device', 'dtype', 'regime'))}]"
    else:
        tally = " + ".join(f"{k} {s}" for s in ("fail", "error") if (k := sum(r["status"] == s for r in rs)))
        where = (f"{name}: {tally or len(rs)} cells [{_axis(rs, 'oracle')} | {_axis(rs, 'device')} | "
                 f"{_axis(rs, 'dtype')} | {_axis(rs, 'regime')}]")
    # the sentence whole (a student acts on it); a bare message only up to its first clause, cut at width
    first = next((r for r in rs if r.get("explanation")), rs[0])
    hazards = sorted({hazard_text(h) for r in rs for h in (r.get("hazards") or [])})
    text = clean("; ".join(hazards) if grp == "warning" and hazards and not first.get("explanation")
                 else headline(first, limit=width), None)
    return f"  {_c(label, status, color)} {where} {_why(rs)}: {text}"


def terminal_summary(records: list[dict], *, color: bool = False, width: int = 100, run_meta: dict | None = None) -> str:
    """Counts per status (and the seed of the run, to replay it); one line per user function and finding,
    grouped wrong / unstable / warnings; the overall verdict on the last line. `width` bounds a bare
    message, never a pattern's sentence."""
    c = counts(records)
    head = "gradaudit: " + ", ".join(_c(f"{c[s]} {s}", s, color and c[s] > 0) for s in STATUSES) + \
        f" ({len(records)} cells)"
    seed = (run_meta or {}).get("seed")
    if seed is not None:
        head += f"; seed {_s(seed)} (rerun with --seed {_s(seed)})"  # run.json may come from anywhere
    lines = [head]
    by: dict[str, dict] = {g: {} for g in GROUPS}
    for r in records:
        g = group(r)
        if g is not None:
            by[g].setdefault((r.get("target") or r["op"], r["op"]), []).append(r)
    for g in GROUPS:
        if by[g]:
            lines.append(GROUP_TITLES[g])
        for (target, op), rs in by[g].items():
            lines.append(_line(g, target, op, rs, width, color))
    verdict = overall_verdict(records)
    tail = {"fail": f"FAIL: {c['fail']} failed, {c['error']} errored",
            "pass": "PASS", "skip": "NOTHING CHECKED: every cell skipped",
            "empty": "NOTHING CHECKED: no records"}[verdict]
    lines.append(_c(tail, "fail" if verdict == "fail" else "pass" if verdict == "pass" else "skip",
                    color))
    return "\n".join(lines)
