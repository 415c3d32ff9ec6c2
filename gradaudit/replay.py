"""`gradaudit replay ID`: re-run a saved minimal counterexample exactly, on the sides it failed on."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load_case(path: Path):
    from properties.spec import Case

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {n: z[f"input/{n}"].astype(np.float64) for n in meta["arrays"]}
        params = dict(meta.get("params", {}))
        params.update({k: z[f"param/{k}"] for k in meta.get("array_params", [])})
        douts = tuple(z[f"dout/{i}"] for i in range(sum(k.startswith("dout/") for k in z.files)))
    return meta, Case(arrays, params), douts


def replay(ident: str, report_dir: Path) -> int:
    from properties import catalogue  # noqa: F401
    from properties.evaluate import evaluate
    from properties.spec import CATALOGUE
    from properties.target import Target

    from .cli import UsageError

    path = Path(ident) if ident.endswith(".npz") else Path(report_dir) / "cases" / f"{ident}.npz"
    if not path.is_file():
        raise UsageError(f"no counterexample {str(path)!r} (ids are listed in results.jsonl under `replay`)")
    meta, case, douts = load_case(path)
    spec = CATALOGUE.get(meta["op"])
    if meta.get("audit_path"):
        from .audit import target_for  # audit mode re-imports the user's file

        target = target_for(meta)
    elif spec is None:
        raise UsageError(f"counterexample names op {meta['op']!r}, which is not in the catalogue")
    else:
        target = Target.reference(spec)
    side = (meta["oracle"], meta["device"])
    ev = evaluate(spec, target, case, meta["dtype"], [side], douts=douts)
    v = ev.sides[side]
    print(f"{meta.get('id', path.stem)}: {case.summary()}")
    print(f"  {v.status}: {v.message or 'agrees'}")
    return 1 if v.status in ("fail", "error") else 0
