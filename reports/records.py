"""The result record (``results.jsonl``) and the run metadata (``run.json``): written and read here.

The schema is docs/result_record.md, and `SCHEMA` below is that table in code: `new_record`, the
validation on reading and the report's normaliser all read it. A line that is not a JSON object,
or that lacks a cell coordinate or a known status, is an error naming the file and line. A final
line without its newline that does not parse is a run killed mid-write: it is dropped with a
warning, everything before it is kept.
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

__all__ = ["COORDS", "RecordError", "RecordSink", "SCHEMA", "SOURCE_KEY", "STATUSES", "cell_id", "counts",
           "load_records", "load_run_meta", "new_record", "normalise", "overall_verdict", "record_id",
           "write_run_meta"]

STATUSES = ("pass", "fail", "error", "skip", "kink")
COORDS = ("op", "oracle", "device", "dtype", "regime")
SOURCE_KEY = "_source"  # added by load_records: the report directory the record was read from


@dataclass(frozen=True)
class Field:
    kind: str  # str | int | number | object | list | any: what a reader accepts (null always)
    default: Any = None  # what a new record holds until it is set
    required: bool = False  # a record without it (as a string) cannot be read


# Every key of docs/result_record.md, in the order the runner writes them.
SCHEMA: dict[str, Field] = {
    "target": Field("str"), "op": Field("str", required=True), "oracle": Field("str", required=True),
    "device": Field("str", required=True), "dtype": Field("str", required=True),
    "regime": Field("str", required=True), "status": Field("str", required=True),
    "kind": Field("str"), "blame": Field("str"), "examples": Field("int", 0),
    "max_abs_err": Field("number"), "max_rel_err": Field("number"), "max_ulp": Field("number"),
    "pattern": Field("str"), "counterexample": Field("str"), "replay": Field("str"), "message": Field("str", ""),
    "id": Field("str"), "family": Field("str"), "source": Field("str"), "phase": Field("str"),
    "worst_index": Field("list"), "atol": Field("number"), "rtol": Field("number"),
    "tolerance_source": Field("str"), "needed_atol": Field("number"), "needed_rtol": Field("number"),
    "triangulation": Field("object"), "shapes": Field("object", {}), "params": Field("object", {}),
    "kink": Field("str"), "mutated": Field("list", []), "device_name": Field("str"), "flags": Field("object", {}),
    "seconds": Field("number"), "worst_target": Field("number"), "explanation": Field("str"),
    "tolerance_mode": Field("str"), "target_spread": Field("number"),
}
_TYPES = {"str": (str,), "int": (int,), "number": (int, float), "object": (dict,), "list": (list,)}
_NAMES = {"str": "a string", "int": "an integer", "number": "a number", "object": "an object", "list": "a list"}


def new_record(**fields) -> dict:
    """A result record with every key of the schema at its default; `fields` fill in the rest."""
    rec = {k: copy.copy(f.default) for k, f in SCHEMA.items()}
    rec.update(fields)
    return rec


def normalise(rec: dict) -> dict:
    """Every schema key present (a template never meets a missing one); a missing text or container
    is its empty default, a missing figure stays None (shown as "–")."""
    out = {k: rec.get(k) for k in SCHEMA}
    for k, f in SCHEMA.items():
        if out[k] is None and f.kind in ("str", "object", "list") and f.default is not None:
            out[k] = copy.copy(f.default)
    out.update((k, v) for k, v in rec.items() if k not in SCHEMA)
    return out


def cell_id(*, op: str, oracle: str, device: str, dtype: str, regime: str, target: str | None = None) -> str:
    """The id of a cell: `op-oracle-device-dtype-regime`, with the target in place of the op when it
    is not the op's own `<op>_backward` (an audited function, a planted bug)."""
    head = op if target in (None, f"{op}_backward") else target
    return f"{head}-{oracle}-{device}-{dtype}-{regime}"


def record_id(rec: dict) -> str:
    """The record's ``id``, or the id its cell would have been given."""
    rid = rec.get("id")
    if isinstance(rid, str) and rid:
        return rid
    return cell_id(target=rec.get("target"), **{k: str(rec.get(k)) for k in COORDS})


class RecordError(ValueError):
    """A results.jsonl line that cannot be used: the message names file, line and problem."""


def _check(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k, f in SCHEMA.items() if f.required and not isinstance(rec.get(k), str)]
    if missing:
        raise RecordError(f"{where}: missing or non-string key(s) {', '.join(missing)}")
    if rec["status"] not in STATUSES:
        raise RecordError(f"{where}: unknown status {rec['status']!r} (expected one of {', '.join(STATUSES)})")
    for key, f in SCHEMA.items():
        val = rec.get(key)
        if val is None or f.required or f.kind == "str":
            continue
        if isinstance(val, bool) or not isinstance(val, _TYPES[f.kind]):
            raise RecordError(f"{where}: {key!r} must be {_NAMES[f.kind]} or null, got {val!r}")
    return rec


# ---- writing -------------------------------------------------------------------------------------

class RecordSink:
    """Appends one JSON line per record, each with a single write() on an O_APPEND descriptor: a killed
    run keeps every finished cell, and several worker processes can share one results.jsonl."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        line = json.dumps(_json_safe(record), allow_nan=False, default=str) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_safe(v):
    """Infinity/NaN are not JSON (jq and JSON.parse reject them): write null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_run_meta(report_dir: str | os.PathLike, meta: dict) -> Path:
    """``report_dir/run.json`` (written at the start of a run and again at its end)."""
    path = Path(report_dir) / "run.json"
    path.write_text(json.dumps(_json_safe(meta), indent=1, default=str), encoding="utf-8")
    return path


# ---- reading -------------------------------------------------------------------------------------

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
            merged[record_id(rec)] = rec
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
