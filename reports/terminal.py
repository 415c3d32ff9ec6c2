"""A compact plain-text summary for the terminal (and CI logs)."""
from __future__ import annotations

from .records import STATUSES, counts, overall_verdict

_COLOURS = {"pass": "32", "fail": "31", "error": "35", "skip": "33", "kink": "36"}


def _c(text: str, status: str, color: bool) -> str:
    return f"\x1b[{_COLOURS[status]}m{text}\x1b[0m" if color and status in _COLOURS else text


def _trunc(text: str, width: int) -> str:
    text = " ".join(str(text).split())  # one line, whatever the exception looked like
    return text if len(text) <= width else text[: width - 1] + "…"


def terminal_summary(records: list[dict], *, color: bool = False, width: int = 100) -> str:
    """Counts per status, one line per fail/error, and the overall verdict on the last line."""
    c = counts(records)
    lines = ["gradaudit: " + ", ".join(_c(f"{c[s]} {s}", s, color and c[s] > 0) for s in STATUSES)
             + f" ({len(records)} cells)"]
    bad = [r for r in records if r["status"] in ("fail", "error")]
    for r in bad:
        where = f"{r['op']} [{r['oracle']} {r['device']} {r['dtype']} {r['regime']}]"
        why = r["status"] if r["status"] == "error" else (
            f"blame={r.get('blame') or '?'}" + (f" pattern={r['pattern']}" if r.get("pattern") else ""))
        lines.append(f"  {_c(r['status'].upper(), r['status'], color)} {where} {why}: "
                     f"{_trunc(r.get('message') or '', width)}")
    verdict = overall_verdict(records)
    tail = {"fail": f"FAIL: {c['fail']} failed, {c['error']} errored",
            "pass": "PASS", "skip": "NOTHING CHECKED: every cell skipped",
            "empty": "NOTHING CHECKED: no records"}[verdict]
    lines.append(_c(tail, "fail" if verdict == "fail" else "pass" if verdict == "pass" else "skip",
                    color))
    return "\n".join(lines)
