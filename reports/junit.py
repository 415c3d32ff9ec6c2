"""JUnit XML: one testcase per cell, for CI systems that display test results."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from .findings import hazard_text, replay_command
from .records import counts

__all__ = ["write_junit"]

# Characters XML 1.0 forbids even when escaped (control characters from a user's exception).
_XML_BAD = {c: None for c in range(0x20) if c not in (0x9, 0xA, 0xD)}


def _clean(text: object) -> str:
    return str(text).translate(_XML_BAD)


def _case_name(r: dict) -> str:
    """`oracle-device-dtype-regime` for the op's own reference; `function[oracle-device-dtype-regime]`
    when the cell checks a function of another name (an audit: three batchnorm functions of one file
    are three test cases, not one name three times)."""
    cell = f"{r['oracle']}-{r['device']}-{r['dtype']}-{r['regime']}"
    target = r.get("target")
    return cell if target in (None, r["op"], f"{r['op']}_backward") else f"{target}[{cell}]"


def _details(r: dict, report_dir=None) -> str:
    """The failure body: everything a CI log reader needs without opening the HTML report, the
    pattern's sentence first."""
    lines = [str(r["explanation"])] if r.get("explanation") else []
    lines.append(str(r.get("message") or ""))
    for key in ("target", "kind", "blame", "pattern", "phase", "max_abs_err", "max_rel_err",
                "max_ulp", "atol", "rtol", "needed_atol", "needed_rtol", "counterexample"):
        if r.get(key) is not None:
            lines.append(f"{key}: {r[key]}")
    if replay_command(r, report_dir):
        lines.append(f"replay: {replay_command(r, report_dir)}")
    if r.get("hazards"):
        lines.append(f"hazards: {'; '.join(map(hazard_text, r['hazards']))}")
    if r.get("mutated"):
        lines.append(f"mutated in place: {', '.join(map(str, r['mutated']))}")
    return "\n".join(lines)


def write_junit(records: list[dict], path: str | os.PathLike, *, report_dir=None) -> Path:
    """Write JUnit XML to ``path``: testsuite per op, testcase per cell (classname = op, name =
    oracle-device-dtype-regime, prefixed by the function when it is not the op's own; names made
    unique). `report_dir`: where the counterexamples are, for the replay command."""
    c = counts(records)
    root = ET.Element("testsuites", name="gradaudit", tests=str(len(records)),
                      failures=str(c["fail"]), errors=str(c["error"]), skipped=str(c["skip"]),
                      time=f"{sum(float(r.get('seconds') or 0) for r in records):.3f}")
    suites: dict[str, list[dict]] = {}
    for r in records:
        suites.setdefault(r["op"], []).append(r)
    for op, recs in suites.items():
        sc = counts(recs)
        suite = ET.SubElement(root, "testsuite", name=_clean(op), tests=str(len(recs)),
                              failures=str(sc["fail"]), errors=str(sc["error"]),
                              skipped=str(sc["skip"]),
                              time=f"{sum(float(r.get('seconds') or 0) for r in recs):.3f}")
        taken: set[str] = set()
        for r in recs:
            name = _case_name(r)
            if name in taken:  # two records of one cell (merged runs): still two names
                name = next(f"{name} ({k})" for k in range(2, len(recs) + 2) if f"{name} ({k})" not in taken)
            taken.add(name)
            case = ET.SubElement(suite, "testcase", classname=_clean(op), name=_clean(name),
                                 time=f"{float(r.get('seconds') or 0):.3f}")
            status = r["status"]
            msg = _clean(r.get("message") or "")  # the pattern's sentence is its first clause (describe)
            if status == "fail":
                el = ET.SubElement(case, "failure", message=msg,
                                   type=_clean(f"{r.get('kind') or 'gradient'}"))
                el.text = _clean(_details(r, report_dir))
            elif status == "error":
                el = ET.SubElement(case, "error", message=msg, type="error")
                el.text = _clean(_details(r, report_dir))
            elif status == "skip":
                ET.SubElement(case, "skipped", message=msg)
            elif status == "kink":
                # A kink passes; say why it was not compared strictly.
                out = ET.SubElement(case, "system-out")
                out.text = _clean(f"kink: {r.get('kink') or msg}")
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
