"""What a results file holds, and whether a run may add to it (`--resume`): the identity of a run,
the groups a killed run left half-done, every invocation on a report folder (docs/reliability.md)."""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Sequence

from reports.records import (SOURCE_KEY, RecordError, cell_id, load_records, load_run_meta, repair_tail, rewrite_records)

from .config import RunConfig

__all__ = ["IDENTITY_KEYS", "ResumeRefused", "check_resumable", "check_resume", "identity", "invocations",
           "read_back", "settle", "start_afresh"]


# ---- what a results file holds, and whether a run may add to it -----------------------------------

class ResumeRefused(ValueError):
    """`--resume` onto records of another run (seed, profile, budget, lists or code differ)."""


IDENTITY_KEYS = ("seed", "profile", "examples", "ops", "oracles", "dtypes", "devices", "code")


def identity(cfg: RunConfig, what: Sequence[str], code: str | None) -> dict:
    """What makes two runs' cells comparable: a resumed run must match the run it continues."""
    from .config import PROFILES

    return {"seed": cfg.seed, "profile": cfg.profile,
            "examples": cfg.examples if cfg.examples is not None else PROFILES[cfg.profile]["max_examples"],
            "ops": sorted(set(what)), "oracles": sorted(set(cfg.oracles)), "dtypes": sorted(set(cfg.dtypes)),
            "devices": sorted(set(cfg.devices)), "code": code}


def _differences(before: dict, now: dict) -> list[str]:
    out = []
    for k in IDENTITY_KEYS:
        a, b = before.get(k), now.get(k)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            gone, new = [x for x in a if x not in b], [x for x in b if x not in a]
            parts = ([f"not in this run: {_few(gone)}"] if gone else []) + ([f"new: {_few(new)}"] if new else [])
            out.append(f"{k} differ ({'; '.join(parts)})")
        elif k == "code":
            out.append("the checked code changed since")
        else:
            out.append(f"{k} differs (the records: {_none(a)}, this run: {_none(b)})")
    return out


def _none(v) -> str:
    return "none" if v is None else str(v)


def _few(items: list, n: int = 4) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_resumable(report_dir: Path, mine: dict) -> list[dict]:
    """The previous invocations of run.json when this run may continue them; ResumeRefused else."""
    meta = load_run_meta(report_dir)
    theirs = meta.get("identity")
    if not isinstance(theirs, dict):
        raise ResumeRefused(f"cannot resume {report_dir}: its run.json does not say which run wrote the records "
                            f"(seed, profile, lists); run without --resume to start afresh, or add --force")
    diff = _differences(theirs, mine)
    if diff:
        raise ResumeRefused(f"cannot resume {report_dir}: {'; '.join(diff)}; run without --resume to start "
                            f"afresh, or add --force to mix them")
    return invocations(meta)


def check_resume(cfg: RunConfig, *, what: Sequence[str] = (), code: str | None = None) -> None:
    """ResumeRefused when `cfg.report_dir` holds records of another run than this one would be (what
    `run_session(resume=True)` checks first): for a caller that wants to know before it starts."""
    report_dir = Path(cfg.report_dir)
    if (report_dir / "results.jsonl").exists():
        check_resumable(report_dir, identity(cfg, what, code))


def invocations(meta: dict) -> list[dict]:
    inv = meta.get("invocations")
    return [i for i in inv if isinstance(i, dict)] if isinstance(inv, list) else []


def _group(rec: dict) -> tuple:
    return (rec.get("target"), rec.get("op"), rec.get("dtype"), rec.get("regime"))


def settle(results: Path, report_dir: Path, cfg: RunConfig) -> list[dict]:
    """Make results.jsonl a place to append to, and return the cells it holds that are done: the
    partial last line cut off; the cells of a group that was not finished (a run stopped between
    its records) dropped with their cases, so that the group reruns whole instead of twice; a cell
    recorded twice kept once (the later record). Only with the folder's lock held."""
    if not results.exists():
        return []
    repair_tail(results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reasons are handled here
        raw = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = load_records([results])
    sides = cfg.sides()
    groups: dict[tuple, set] = {}
    for r in kept:
        groups.setdefault(_group(r), set()).add(r.get("id"))
    whole = set()
    for key, ids in groups.items():
        target, op, dtype, regime = key
        expected = {cell_id(target=target, op=str(op), oracle=o, device=d, dtype=str(dtype), regime=str(regime))
                    for o, d in sides}
        if expected <= ids:
            whole.add(key)
    out = []
    for r in kept:
        r.pop(SOURCE_KEY, None)
        if _group(r) in whole:
            out.append(r)
        elif r.get("counterexample"):
            with contextlib.suppress(OSError):
                (report_dir / str(r["counterexample"])).unlink()
    if len(out) != len(raw):
        rewrite_records(results, out)
    return out


def start_afresh(report_dir: Path, results: Path) -> None:
    """A new run: no record, case or page of an earlier one is left to be mixed with its own."""
    results.unlink(missing_ok=True)
    (report_dir / "index.html").unlink(missing_ok=True)
    cases = report_dir / "cases"
    if cases.is_dir():
        for f in cases.iterdir():
            if f.suffix in (".npz", ".tmp") and f.is_file():
                with contextlib.suppress(OSError):
                    f.unlink()


def read_back(results: Path, fallback: list[dict]) -> list[dict]:
    """The run's records as `gradaudit report` reads them from results.jsonl (one per cell); what the
    jobs returned when the file cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recs = load_records([results]) if results.exists() else []
    except (OSError, RecordError):
        return fallback
    for r in recs:
        r.pop(SOURCE_KEY, None)
    return recs
