"""`gradaudit replay ID`: re-run a saved minimal counterexample exactly, on the side it failed on.

A case of an audit names the file its functions came from, but a case file is data, and data never
says what to run: the audited code runs only in a confined child (as under `gradaudit audit`), from
the file the user names (`file=`, `--file`), or else the recorded path, said aloud before anything runs.
"""
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
    """(meta, Case, douts) of a saved counterexample (reports.cases). A file that is not one (not an
    .npz, or without the arrays and metadata a case has) is a ReplayError saying what is missing."""
    from properties.spec import Case
    from reports.cases import read_case
    from reports.text import clean

    saved = read_case(path)
    where = f"counterexample {clean(str(path), 300)!r}"
    if saved.error:
        raise ReplayError(f"{where}: {clean(saved.error, 300)}")
    meta = saved.meta
    missing = [k for k in ("op", "oracle", "device", "dtype", "arrays") if k not in meta]
    if missing:
        raise ReplayError(f"{where} is not a gradaudit case: its metadata lacks {', '.join(missing)}")
    if not (isinstance(meta["arrays"], list) and all(isinstance(n, str) for n in meta["arrays"])
            and all(isinstance(meta[k], str) for k in ("op", "oracle", "device", "dtype"))
            and isinstance(meta.get("params", {}), dict) and isinstance(meta.get("array_params", []), list)):
        raise ReplayError(f"{where} is not a gradaudit case: its metadata has fields of the wrong type")
    absent = [f"input/{n}" for n in meta["arrays"] if n not in saved.inputs] + [
        f"param/{k}" for k in meta.get("array_params", []) if k not in saved.params]
    if absent:
        raise ReplayError(f"{where} is incomplete: no {', '.join(map(str, absent[:5]))}")
    try:
        arrays = {n: saved.inputs[n].astype(np.float64) for n in meta["arrays"]}
    except (TypeError, ValueError) as e:
        raise ReplayError(f"{where}: an input is not a float array ({clean(e, 200)})") from None
    params = dict(meta.get("params", {}))
    params.update({k: saved.params[k] for k in meta.get("array_params", [])})
    return meta, Case(arrays, params), tuple(saved.douts)


def replay(ident: str, report_dir: Path, *, file: Path | None = None, timeout: float = 60.0,
           say=None, in_process: bool = False) -> Replayed:
    """Re-run the counterexample `ident` (a cell id under report_dir/cases, or a path to a .npz).
    An audit's case (a `gradaudit.function` subject's too) runs the functions of `file` (default: the
    recorded path, told to `say` first) in a confined child; `in_process`: a subject's case in this
    process, as gradaudit.check ran it."""
    from properties import catalogue
    from properties.evaluate import evaluate
    from properties.target import Target
    from reports.cases import case_path
    from reports.text import clean

    path = Path(ident) if ident.endswith(".npz") else case_path(report_dir, ident)
    if not path.is_file():
        raise ReplayError(_why_no_case(ident, path, Path(report_dir)))
    meta, case, douts = load_case(path)
    side = (meta["oracle"], meta["device"])
    if meta.get("convention") == "function" and in_process:
        return _replay_subject(meta, case, douts, side, file, path)
    if meta.get("audit_path") or file is not None:
        return _replay_audit(meta, case, douts, side, file, timeout, say, path)
    spec = catalogue.load().get(meta["op"])
    if spec is None:
        raise ReplayError(f"counterexample names op {clean(meta['op'], 200)!r}, which is not in the catalogue")
    ev = evaluate(spec, Target.reference(spec), case, meta["dtype"], [side], douts=douts, stream=meta.get("stream"))
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


def _replay_subject(meta, case, douts, side, file, path) -> Replayed:
    """A subject's case in this process, as gradaudit.check ran it (`in_process`: never from the CLI)."""
    from properties.evaluate import evaluate

    from ._guard import clean
    from ._subject_run import subject_in
    from .audit import import_file

    rid = str(meta.get("id", path.stem))
    file = Path(file if file is not None else str(meta.get("audit_path")))
    if not file.is_file():
        raise ReplayError(f"the subject's file {clean(str(file))!r} is not there; give it with file=PATH")
    try:
        target = subject_in(import_file(file), meta)
    except LookupError as e:
        raise ReplayError(clean(str(e))) from None
    return Replayed(rid, case, evaluate(None, target, case, meta["dtype"], [side], douts=douts).sides[side])


def _replay_audit(meta, case, douts, side, file, timeout, say, path) -> Replayed:
    from properties.evaluate import evaluate
    from properties.verdict import Verdict

    from . import cs231n
    from ._guard import UserCodeError, clean
    from ._proxy import InChild
    from ._remote import Child, ChildLost, ChildStartError, Source
    from ._sandbox import Confinement
    from .audit import Job, build, module_name, source_text
    from .models import CLASSES

    convention, name = meta.get("convention"), meta.get("audit_name") or meta.get("target")
    if convention not in ("cs231n", "derivation", "function") or not isinstance(name, str):
        raise ReplayError(f"{str(path)!r} is not the case of an audited function (convention {convention!r})")
    if convention == "cs231n" and name not in cs231n.BY_TARGET and name.split(".")[0] not in CLASSES:  # (a model class)
        raise ReplayError(f"{clean(name)!r} is no cs231n function gradaudit checks")
    if file is None:
        file = Path(str(meta["audit_path"]))
        if say is not None:
            say(f"replaying with the recorded file {clean(str(file))} (the audited code runs in a confined child; "
                f"--file PATH to choose another)")
    if not Path(file).is_file():
        raise ReplayError(f"the audited file {clean(str(file))!r} is not there; give it with --file PATH")
    file = Path(file)
    src = Source("m0", str(file.resolve()), source_text(file), module_name(file))
    job = Job(str(meta.get("target") or name), str(meta.get("audit_op") or meta.get("op")), convention, src.path, "m0",
              name, [str(meta.get("regime", "typical"))])
    frameworks = (side[0],) if convention == "derivation" and side[0] in ("torch", "jax") else ()
    rid = str(meta.get("id", path.stem))
    with Child(Confinement(timeout=timeout, frameworks=frameworks), [src]) as child:
        try:
            child.ensure()
            if "m0" in child.load_errors:
                raise UserCodeError(child.load_errors["m0"])
            if convention == "function":  # a gradaudit.function subject's check, its calls in the child
                from ._subject import subject_target
                from ._subject_remote import subject_in_child
                from .function import CHECKS

                check, device = meta.get("function_check"), meta.get("function_device", "cpu")
                if check not in CHECKS or device not in ("cpu", "cuda"):
                    raise ReplayError(f"{str(path)!r} names no check of a gradaudit.function subject")
                spec, target = None, subject_target(subject_in_child(InChild(child), job), check, device)
            else:
                spec, target, _, _ = build(job, InChild(child), {})
            ev = evaluate(spec, target, case, meta["dtype"], [side], douts=douts, stream=meta.get("stream"))
            return Replayed(rid, case, ev.sides[side])
        except ChildStartError as e:
            raise ReplayError(str(e)) from None
        except (ChildLost, UserCodeError) as e:
            return Replayed(rid, case, Verdict("error", fault=clean(e, 4000)))
