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
        raise ReplayError(f"no counterexample {str(path)!r} (ids are listed in results.jsonl under `replay`)")
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
    ev = evaluate(spec, target, case, meta["dtype"], [side], douts=douts)
    return Replayed(meta.get("id", path.stem), case, ev.sides[side])
