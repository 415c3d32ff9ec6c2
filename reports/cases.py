"""The minimal counterexample of a failing cell, ``cases/<id>.npz``: written and read here, and nowhere else.

Arrays (docs/result_record.md):

    input/<name>    the differentiable inputs, in the target's order
    param/<name>    array params (labels, masks)
    dout/<i>        the upstream gradient(s)
    ref/<name>      the code under test's gradient; ref/out (ref/out1, ...) its forward
    oracle/<name>   the oracle's gradient, or its directional derivatives along dirs/<name>
                    (the numeric oracle on large inputs); oracle/out its forward
    dirs/<name>     those directions, (k, *shape)
    allowed/<name>  the judge's allowed error, element by element, of what it compared: the
                    gradient's elements, the directional derivatives, or the forward's elements
    meta            a 0-d string array holding JSON

`meta` holds the cell (op, target, oracle, device, dtype, regime, id), the scalar params, the array
names, and what the judge decided: `judged` (per compared array: ok, ratio = the largest error over
its allowed error, worst_index) and `verdict` (status, kind, phase, pattern, factor, why). The
report draws these; it does not judge again. NumPy only.

The file's name comes from the cell id, which holds names a user chose (a function, a derivation):
`case_name` keeps letters, digits and `._+-`, caps the length, and adds a hash of the real id
whenever it changed anything, so that no name can leave `cases/` and two ids never share a file.
The record keeps the real id.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NAME_LIMIT", "SavedCase", "case_name", "case_path", "read_case", "write_case"]

NAME_LIMIT = 120  # bytes of a case file's name before ".npz" (file systems allow 255)


@dataclass
class SavedCase:
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)  # the array params
    douts: list[np.ndarray] = field(default_factory=list)
    ref: dict[str, np.ndarray] = field(default_factory=dict)
    oracle: dict[str, np.ndarray] = field(default_factory=dict)
    dirs: dict[str, np.ndarray] = field(default_factory=dict)
    allowed: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    error: str | None = None  # why the file could not be read (read_case never raises)

    @property
    def judged(self) -> dict:
        j = self.meta.get("judged")
        return j if isinstance(j, dict) else {}

    @property
    def verdict(self) -> dict:
        v = self.meta.get("verdict")
        return v if isinstance(v, dict) else {}


_HASHED = re.compile(r"-[0-9a-f]{12}$")


def _safe(ch: str) -> bool:
    return ch.isalnum() and ch.isprintable() or ch in "._+-"


def case_name(cid: str) -> str:
    """The file name (without ".npz") of cell `cid`'s case: `cid` itself when it is a plain name
    (letters, digits, `._+-`, not starting with a dot, at most NAME_LIMIT bytes), else its safe
    characters cut to length plus 12 hex digits of its SHA-1 (collision-free in practice)."""
    cid = str(cid)
    name = "".join(ch if _safe(ch) else "_" for ch in cid)
    if (name == cid and not name.startswith(".") and 0 < len(name.encode("utf-8")) <= NAME_LIMIT
            and not _HASHED.search(name)):  # (a plain id that looks hashed is hashed again)
        return name
    digest = hashlib.sha1(cid.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    head = name.lstrip(".").encode("utf-8")[: NAME_LIMIT - 13].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def case_path(report_dir: str | os.PathLike, cid: str) -> Path:
    return Path(report_dir) / "cases" / f"{case_name(cid)}.npz"


def write_case(report_dir: str | os.PathLike, cid: str, case: SavedCase) -> str:
    """Write ``report_dir/cases/<case_name(cid)>.npz`` whole or not at all (a temporary file, then
    rename); return its path relative to report_dir (the record's ``counterexample``)."""
    path = case_path(report_dir, cid)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    for group, arrays in (("input", case.inputs), ("param", case.params), ("ref", case.ref),
                          ("oracle", case.oracle), ("dirs", case.dirs), ("allowed", case.allowed)):
        data.update({f"{group}/{n}": _storable(a) for n, a in arrays.items()})
    data.update({f"dout/{i}": _storable(d) for i, d in enumerate(case.douts)})
    data["meta"] = np.array(json.dumps(case.meta, default=str))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".case-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # as an ordinary file (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return f"cases/{path.name}"


def _storable(a) -> np.ndarray:
    """An array .npz can hold without pickling: bfloat16 (ml_dtypes', which .npz would keep as raw
    bytes) as float32, which holds every bfloat16 value exactly; the cell's dtype is in `meta`."""
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.name == "bfloat16" else a


def read_case(path: str | os.PathLike) -> SavedCase:
    """The saved case at `path`. A missing or unreadable file gives a SavedCase with `error` set."""
    case = SavedCase(path=Path(path))
    groups = {"input": case.inputs, "param": case.params, "ref": case.ref, "oracle": case.oracle,
              "dirs": case.dirs, "allowed": case.allowed}
    douts = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                if key == "meta":
                    try:
                        meta = json.loads(str(z[key][()]))
                        case.meta = meta if isinstance(meta, dict) else {}
                    except (ValueError, TypeError):
                        case.meta = {}
                    continue
                group, _, name = key.partition("/")
                if group == "dout" and name.isdigit():
                    douts[int(name)] = z[key]
                elif group in groups and name:
                    groups[group][name] = z[key]
    except FileNotFoundError:
        case.error = "file not found"
    except Exception as exc:  # a corrupt zip, a pickled array, a truncated write: all the same to a reader
        case.error = f"unreadable ({type(exc).__name__}: {exc})"
    case.douts = [douts[i] for i in sorted(douts)]
    return case
