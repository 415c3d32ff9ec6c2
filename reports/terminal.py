"""A compact plain-text summary for the terminal (and CI logs)."""
from __future__ import annotations

from .records import STATUSES, counts, overall_verdict

__all__ = ["terminal_summary"]

_COLOURS = {"pass": "32", "fail": "31", "error": "35", "skip": "33", "kink": "36"}


def _c(text: str, status: str, color: bool) -> str:
    return f"\x1b[{_COLOURS[status]}m{text}\x1b[0m" if color and status in _COLOURS else text


def _trunc(text: str, width: int) -> str:
    text = " ".join(str(text).split())  # one line, whatever the exception looked like
    return text if len(text) <= width else text[: width - 1] + "…"


GROUP_ABOVE = 3  # a target with more failing cells than this gets one line, not one per cell


def _why(r: dict) -> str:
    return r["status"] if r["status"] == "error" else (
        f"blame={r.get('blame') or '?'}" + (f" pattern={r['pattern']}" if r.get("pattern") else ""))


def _axis(rs: list[dict], key: str) -> str:
    return ",".join(dict.fromkeys(str(r.get(key)) for r in rs))


def terminal_summary(records: list[dict], *, color: bool = False, width: int = 100) -> str:
    """Counts per status, the fails and errors (one line per cell; one line per target when a target
    has more than GROUP_ABOVE), and the overall verdict on the last line."""
    c = counts(records)
    lines = ["gradaudit: " + ", ".join(_c(f"{c[s]} {s}", s, color and c[s] > 0) for s in STATUSES)
             + f" ({len(records)} cells)"]
    by_target: dict = {}
    for r in records:
        if r["status"] in ("fail", "error"):
            by_target.setdefault((r.get("target") or r["op"], r["op"]), []).append(r)
    for (target, op), rs in by_target.items():
        if len(rs) > GROUP_ABOVE:
            status = "error" if all(r["status"] == "error" for r in rs) else "fail"
            first = next(r for r in rs if r["status"] == status)
            n = {s: sum(r["status"] == s for r in rs) for s in ("fail", "error")}
            tally = " + ".join(f"{k} {s}" for s, k in n.items() if k)
            where = (f"[{_axis(rs, 'oracle')} | {_axis(rs, 'device')} | {_axis(rs, 'dtype')} | "
                     f"{_axis(rs, 'regime')}]")
            name = f"{target} ({op})" if target != op else target
            lines.append(f"  {_c(status.upper(), status, color)} {name}: {tally} cells {where} {_why(first)}: "
                         f"{_trunc(first.get('message') or '', width)}")
            continue
        for r in rs:
            where = f"{r['op']} [{r['oracle']} {r['device']} {r['dtype']} {r['regime']}]"
            lines.append(f"  {_c(r['status'].upper(), r['status'], color)} {where} {_why(r)}: "
                         f"{_trunc(r.get('message') or '', width)}")
    verdict = overall_verdict(records)
    tail = {"fail": f"FAIL: {c['fail']} failed, {c['error']} errored",
            "pass": "PASS", "skip": "NOTHING CHECKED: every cell skipped",
            "empty": "NOTHING CHECKED: no records"}[verdict]
    lines.append(_c(tail, "fail" if verdict == "fail" else "pass" if verdict == "pass" else "skip",
                    color))
    return "\n".join(lines)
