"""What every display (the terminal, the HTML report, JUnit, a notebook) says about a record, so that
they say it alike: which group a finding is in (wrong, unstable, warning), its headline (the
pattern's sentence, `explanation`, from properties.patterns' one table, else the message's first
clause), and the command that replays it.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

__all__ = ["DEFAULT_REPORT", "GROUPS", "GROUP_TITLES", "group", "hazard_text", "headline", "replay_command"]

DEFAULT_REPORT = "gradaudit-report"  # the CLI's --report default
GROUPS = ("fail", "unstable", "warning")  # shown in this order: wrong first, then unstable, then warnings
GROUP_TITLES = {"fail": "Wrong", "unstable": "Unstable", "warning": "Warnings"}


def hazard_text(h) -> str:
    """A hazard as a person reads it: a record's hazards are {"kind", "message"} objects
    (docs/result_record.md); a bare string is shown as it is."""
    return str(h.get("message") or h.get("kind")) if isinstance(h, dict) else str(h)


def group(rec: dict) -> str | None:
    """The record's `severity` (fail | unstable | warning) when the run gave one; else from its status
    (a fail or an error is wrong). None: nothing to show."""
    sev = rec.get("severity")
    if sev in GROUPS:
        return sev
    if rec.get("hazards"):
        return "warning"
    return "fail" if rec.get("status") in ("fail", "error") else None


def headline(rec: dict, *, limit: int | None = None) -> str:
    """What to read first about a record: its sentence in full (never cut), else the message up to the
    first figure-laden clause, cut at `limit` characters if given."""
    sentence = rec.get("explanation")
    if sentence:
        return str(sentence)
    msg = " ".join(str(rec.get("message") or "").split())
    # `X vs torch (cpu, float64), grad[w]: greatest absolute difference ... (up to ...)`: keep the first
    # parenthesis-free clause whole; the figures are in the report
    cut = re.split(r" \(up to | — ", msg, maxsplit=1)[0]
    if limit is not None and len(cut) > limit:
        cut = cut[: limit - 1] + "…"
    return cut


def replay_command(rec: dict, report_dir=None) -> str | None:
    """The record's replay command, with `--report DIR` when its report is not the default one."""
    cmd = rec.get("replay")
    if not cmd:
        return None
    where = rec.get("_source") or report_dir
    if where is not None and "--report" not in cmd and Path(str(where)) != Path(DEFAULT_REPORT):
        cmd += f" --report {shlex.quote(str(where))}"
    return cmd
