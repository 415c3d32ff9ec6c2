"""Reading result records (``results.jsonl``) and run metadata (``run.json``).

The schema is docs/result_record.md. This module validates just enough for the report to be
right: a line that is not a JSON object, or that lacks a cell coordinate or a known status, is
an error naming the file and line. A final line without its newline that does not parse is a
run killed mid-write: it is dropped with a warning, everything before it is kept.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable

STATUSES = ("pass", "fail", "error", "skip", "kink")
COORDS = ("op", "oracle", "device", "dtype", "regime")
SOURCE_KEY = "_source"  # added by load_records: the report directory the record was read from


def new_record(**fields) -> dict:
    """A result record with every key of docs/result_record.md, unset ones at their empty value;
    `fields` fill in the rest. The runner, the audit's own records and the demo all start here."""
    rec = {"target": None, "op": None, "oracle": None, "device": None, "dtype": None, "regime": None,
           "status": None, "kind": None, "blame": None, "examples": 0, "max_abs_err": None, "max_rel_err": None,
           "max_ulp": None, "pattern": None, "counterexample": None, "replay": None, "message": "", "id": None,
           "family": None, "source": None, "phase": None, "worst_index": None, "atol": None, "rtol": None,
           "tolerance_source": None, "needed_atol": None, "needed_rtol": None, "triangulation": None,
           "shapes": {}, "params": {}, "kink": None, "mutated": [], "device_name": None, "flags": {},
           "worst_target": None}
    rec.update(fields)
    return rec


class RecordError(ValueError):
    """A results.jsonl line that cannot be used: the message names file, line and problem."""


def cell_id(rec: dict) -> str:
    """The record's ``id``, or the id the runner would have given it (op-oracle-device-dtype-regime)."""
    rid = rec.get("id")
    if isinstance(rid, str) and rid:
        return rid
    return "-".join(str(rec.get(k)) for k in COORDS)


def _check(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in COORDS + ("status",) if not isinstance(rec.get(k), str)]
    if missing:
        raise RecordError(f"{where}: missing or non-string key(s) {', '.join(missing)}")
    if rec["status"] not in STATUSES:
        raise RecordError(
            f"{where}: unknown status {rec['status']!r} (expected one of {', '.join(STATUSES)})")
    for key in ("examples",):
        if rec.get(key) is not None and not isinstance(rec[key], int):
            raise RecordError(f"{where}: {key!r} must be an integer, got {rec[key]!r}")
    for key in ("max_abs_err", "max_rel_err", "max_ulp", "worst_target", "atol", "rtol",
                "needed_atol", "needed_rtol", "seconds"):
        val = rec.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float))):
            raise RecordError(f"{where}: {key!r} must be a number or null, got {val!r}")
    for key, typ, name in (("shapes", dict, "an object"), ("params", dict, "an object"),
                           ("flags", dict, "an object"), ("triangulation", dict, "an object"),
                           ("mutated", list, "a list"), ("worst_index", list, "a list")):
        if rec.get(key) is not None and not isinstance(rec[key], typ):
            raise RecordError(f"{where}: {key!r} must be {name} or null, got {rec[key]!r}")
    return rec


def _results_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / "results.jsonl" if p.is_dir() else p


def _read_one(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    # A file that ends with "\n" splits into a final "", so an unterminated last line is lines[-1].
    unterminated_last = len(lines) - 1 if lines[-1] != "" else None
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == unterminated_last:
                warnings.warn(f"{where}: ignoring a truncated last line (the run was probably "
                              f"killed while writing it): {exc.msg}", stacklevel=3)
                continue
            raise RecordError(f"{where}: not valid JSON: {exc.msg} at column {exc.colno}") from None
        rec = _check(rec, where)
        rec[SOURCE_KEY] = str(path.parent)
        out.append(rec)
    return out


def load_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Read one or more ``results.jsonl`` files (a report directory stands for its results.jsonl).

    Records are kept in file order. When a cell ``id`` appears more than once, the later
    occurrence (later line, later file) replaces the earlier one in its original position.
    Each record gains ``_source``: the directory it was read from, against which its
    ``counterexample`` path resolves.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    merged: dict[str, dict] = {}
    for path in paths:
        for rec in _read_one(_results_path(path)):
            merged[cell_id(rec)] = rec
    return list(merged.values())


def load_run_meta(report_dir: str | os.PathLike) -> dict:
    """``report_dir/run.json`` as a dict, or {} when there is none (or it is unreadable: warned)."""
    path = Path(report_dir) / "run.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: unreadable run metadata, ignored: {exc}", stacklevel=2)
        return {}
    if not isinstance(meta, dict):
        warnings.warn(f"{path}: run metadata is not a JSON object, ignored", stacklevel=2)
        return {}
    return meta


def counts(records: Iterable[dict]) -> dict[str, int]:
    c = {s: 0 for s in STATUSES}
    for r in records:
        c[r["status"]] = c.get(r["status"], 0) + 1
    return c


def overall_verdict(records: Iterable[dict]) -> str:
    """``fail`` when any cell failed or errored (the CLI exits 1); ``pass`` when something was
    checked and nothing failed; ``skip`` when every cell was skipped; ``empty`` with no records."""
    c = counts(records)
    if c["fail"] or c["error"]:
        return "fail"
    if c["pass"] or c["kink"]:
        return "pass"
    return "skip" if c["skip"] else "empty"
