"""The result record (``results.jsonl``) and the run metadata (``run.json``): written and read here.

The schema is docs/result_record.md, and `SCHEMA` below is that table in code: `new_record`, the
validation on reading and the report's normaliser all read it. A line that is not a JSON object,
that lacks a cell coordinate or a known status, or whose field has the wrong type, is an error
naming the file, line and key. A final line without its newline that does not parse is a run
killed mid-write: it is dropped with a warning, everything before it is kept (`repair_tail` cuts
it off before a resumed run appends).

One writer per report folder: `ReportLock` (reports/lock.py) is taken by a run and by `gradaudit
report` before they change anything there.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .lock import LOCK_NAME, ReportBusy, ReportLock

__all__ = ["COORDS", "DEFAULT_FAIL_ON", "LOCK_NAME", "RecordError", "RecordSink", "ReportBusy", "ReportLock", "SCHEMA",
           "SEVERITIES", "SOURCE_KEY", "STATUSES", "cell_id", "checked", "counts", "failing", "load_records",
           "load_run_meta", "merge_records", "new_record", "normalise", "overall_verdict", "record_id", "repair_tail",
           "rewrite_records", "severity", "worse", "write_run_meta"]

STATUSES = ("pass", "fail", "error", "skip", "kink")
# What a finding means, worst first (docs/result_record.md): a wrong value; a right derivation whose
# evaluation breaks in an extreme regime; a hazard with correct values.
SEVERITIES = ("fail", "unstable", "warning")
DEFAULT_FAIL_ON = ("fail", "unstable")  # what fails a run unless --fail-on / --strict say otherwise
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
    "severity": Field("str"), "hazards": Field("list", []),
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
        if val is None or f.required:
            continue
        if isinstance(val, bool) or not isinstance(val, _TYPES[f.kind]):
            shown = json.dumps(val)
            shown = shown if len(shown) <= 60 else shown[:59] + "…"
            raise RecordError(f"{where}: {key!r} must be {_NAMES[f.kind]} or null, got {shown}")
    return rec


# ---- writing -------------------------------------------------------------------------------------

class RecordSink:
    """Appends one JSON line per record, each with a single write() on an O_APPEND descriptor: a killed
    run keeps every finished cell, and several worker processes can share one results.jsonl.

    A write the disk cannot take (ENOSPC, EFBIG, EIO) raises OSError naming the file; what it left
    is at most a partial last line, which readers drop and a resumed run cuts off (`repair_tail`)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        data = (json.dumps(_json_safe(record), allow_nan=False, default=str) + "\n").encode("utf-8")
        try:
            n = os.write(self._fd, data)
            while n < len(data):  # a short write: the disk filled up mid-line; the next write says why
                k = os.write(self._fd, data[n:])
                if k == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n += k
        except OSError as e:
            raise OSError(e.errno, f"cannot write {self.path}: {e.strerror or e}") from None

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


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file in the same folder, then rename()."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # as an ordinary file (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_run_meta(report_dir: str | os.PathLike, meta: dict) -> Path:
    """``report_dir/run.json`` (written at the start of a run and again at its end), replaced whole:
    a run killed while writing it leaves the previous version, never half of one."""
    path = Path(report_dir) / "run.json"
    _replace_atomically(path, json.dumps(_json_safe(meta), indent=1, default=str).encode("utf-8"))
    return path


def rewrite_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Replace the results file at `path` with `records` (without the `_source` key), whole or not at
    all. Only the holder of the folder's `ReportLock` may call it: a writer appending to the old file
    meanwhile would lose its lines."""
    data = "".join(json.dumps(_json_safe({k: v for k, v in r.items() if k != SOURCE_KEY}), allow_nan=False,
                              default=str) + "\n" for r in records)
    _replace_atomically(Path(path), data.encode("utf-8"))


def repair_tail(path: str | os.PathLike) -> str | None:
    """Cut a partial last line (a run killed, or a disk that filled up, mid-write) off the results file
    at `path`, so that the next record appended starts a line of its own; a last line that is a whole
    record without its newline gets the newline. Returns what was done (None: nothing to do)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        end = os.pread(fd, 1, size - 1)
        if end == b"\n":
            return None
        # the start of the last line: the byte after the last newline (read back in blocks)
        pos, start = size, 0
        while pos > 0:
            step = min(1 << 16, pos)
            block = os.pread(fd, step, pos - step)
            k = block.rfind(b"\n")
            if k >= 0:
                start = pos - step + k + 1
                break
            pos -= step
        tail = os.pread(fd, size - start, start)
        try:
            whole = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, ValueError):
            whole = False
        if whole:
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, b"\n")
            return f"{path}: the last record lacked its newline; added"
        os.ftruncate(fd, start)
        return f"{path}: dropped a partial last line ({size - start} bytes; a run stopped mid-write)"
    finally:
        os.close(fd)


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


# How bad a verdict is, for merging records of one cell from several files: the worse one stands.
_RANK = {"skip": 0, "pass": 1, "kink": 2, "error": 3, "fail": 4}


def worse(a: dict, b: dict) -> dict:
    """Of two records of one cell, the one with the worse verdict (fail > error > kink > pass > skip);
    `b` when they are equally bad."""
    return a if _RANK.get(a.get("status"), 0) > _RANK.get(b.get("status"), 0) else b


def merge_records(files: Iterable[tuple[str, list[dict]]]) -> list[dict]:
    """Records of several results files, `(file name, records)` each, one record per cell. Within a
    file a later line replaces an earlier one of the same cell (a rerun group's cells); between
    files the worse verdict stands whatever the order of the files, and a warning names the cell and
    both files when the verdicts differ. A cell keeps the position of its first appearance."""
    merged: dict[str, tuple[str, dict]] = {}
    for name, records in files:
        mine: dict[str, dict] = {}
        for rec in records:
            mine[record_id(rec)] = rec
        for rid, rec in mine.items():
            if rid not in merged:
                merged[rid] = (name, rec)
                continue
            old_name, old = merged[rid]
            kept = worse(old, rec)
            if old.get("status") != rec.get("status"):
                warnings.warn(f"cell {rid}: {old.get('status')} in {old_name}, {rec.get('status')} in {name}; "
                              f"the worse verdict ({kept.get('status')}) is kept", stacklevel=3)
            merged[rid] = (name, rec) if kept is rec else (old_name, old)
    return [rec for _, rec in merged.values()]


def load_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Read one or more ``results.jsonl`` files (a report directory stands for its results.jsonl).

    Records are kept in file order, one per cell (`merge_records`: a later line of one file replaces
    an earlier one in its original position; between files the worse verdict stands, with a
    warning). Each record gains ``_source``: the directory it was read from, against which its
    ``counterexample`` path resolves.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [_results_path(path) for path in paths]
    return merge_records((str(f), _read_one(f)) for f in files)


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


def severity(rec: dict) -> str | None:
    """The record's `severity`; without one (a record written before severities existed), what its
    status meant then: a fail or an error failed the run."""
    s = rec.get("severity")
    if s is None and rec.get("status") in ("fail", "error"):
        return "fail"
    return s


def failing(records: Iterable[dict], fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> list[dict]:
    """The records whose severity is one of `fail_on` (what makes `gradaudit` exit 1)."""
    fail_on = frozenset(fail_on)
    return [r for r in records if severity(r) in fail_on]


def checked(records: Iterable[dict]) -> bool:
    """Whether anything was checked: a cell that passed, failed, errored or sat on a kink (all-skip
    and no records at all are "nothing checked": exit 5)."""
    return any(r.get("status") in ("pass", "fail", "error", "kink") for r in records)


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
