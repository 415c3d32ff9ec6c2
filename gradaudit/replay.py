"""`gradaudit replay ID`: re-run a saved minimal counterexample exactly, on the side it failed on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Replayed", "ReplayError", "load_case", "replay"]


class ReplayError(Exception):
    """The counterexample cannot be replayed; the message says why."""


@dataclass
class Replayed:
    id: str
    case: object  # properties.spec.Case
    verdict: object  # properties.verdict.Verdict

    @property
    def failed(self) -> bool:
        return self.verdict.status in ("fail", "error")


def load_case(path: Path):
    """(meta, Case, douts) of a saved counterexample (reports.cases)."""
    from properties.spec import Case
    from reports.cases import read_case

    saved = read_case(path)
    if saved.error:
        raise ReplayError(f"counterexample {str(path)!r}: {saved.error}")
    meta = saved.meta
    arrays = {n: saved.inputs[n].astype(np.float64) for n in meta["arrays"]}
    params = dict(meta.get("params", {}))
    params.update({k: saved.params[k] for k in meta.get("array_params", [])})
    return meta, Case(arrays, params), tuple(saved.douts)


def replay(ident: str, report_dir: Path) -> Replayed:
    """Re-run the counterexample `ident` (a cell id under report_dir/cases, or a path to a .npz)."""
    from properties import catalogue
    from properties.evaluate import evaluate
    from properties.target import Target

    path = Path(ident) if ident.endswith(".npz") else Path(report_dir) / "cases" / f"{ident}.npz"
    if not path.is_file():
        raise ReplayError(_why_no_case(ident, path, Path(report_dir)))
    meta, case, douts = load_case(path)
    spec = catalogue.load().get(meta["op"])
    if meta.get("audit_path"):
        from .audit import target_for  # audit mode re-imports the user's file

        try:
            target = target_for(meta)
        except FileNotFoundError as e:
            raise ReplayError(str(e)) from None
    elif spec is None:
        raise ReplayError(f"counterexample names op {meta['op']!r}, which is not in the catalogue")
    else:
        target = Target.reference(spec)
    side = (meta["oracle"], meta["device"])
    ev = evaluate(spec, target, case, meta["dtype"], [side], douts=douts, stream=meta.get("stream"))
    return Replayed(meta.get("id", path.stem), case, ev.sides[side])


_NO_CASE = {
    "pass": "it passed ({examples} examples agree): only a failing cell keeps a counterexample",
    "kink": "its inputs sat on a kink where the code's choice is a valid subgradient (reported, not failed): "
            "only a failing cell keeps a counterexample",
    "skip": "it was skipped, never checked: {message}",
    "error": "it errored before any comparison: {message}",
    "fail": "its counterexample file is missing from {cases}",
}


def _why_no_case(ident: str, path: Path, report_dir: Path) -> str:
    """Why there is no counterexample to replay, in plain words: the cell passed (or was a kink, or
    skipped), or there is no such cell in the report at all."""
    from reports.records import RecordError, load_records, record_id

    try:
        records = load_records(report_dir) if (report_dir / "results.jsonl").is_file() else []
    except RecordError:
        records = []
    rec = next((r for r in records if record_id(r) == ident), None)
    if rec is None:
        failing = [r["replay"].split()[-1] for r in records if r.get("replay")][:5]
        hint = (f"cells with one: {', '.join(failing)}" if failing else
                "ids are listed in results.jsonl under `replay`")
        where = f"in {str(report_dir)!r}" if records else f"({str(path)!r} does not exist)"
        return f"no counterexample {ident!r} {where}: {hint}; in another report: --report DIR"
    why = _NO_CASE.get(rec["status"], "it has none").format(examples=rec.get("examples"), cases=str(path.parent),
                                                           message=rec.get("message") or "no reason given")
    return f"cell {ident} has no counterexample to replay: {why}"
