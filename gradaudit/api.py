"""`gradaudit.check(...)`: check derivations or cs231n functions from a test or a notebook, in this process."""
from __future__ import annotations

import os
import sys
import tempfile
import types
import warnings
from pathlib import Path

from .results import CheckResult

__all__ = ["CheckFailed", "check"]


class CheckFailed(AssertionError):
    """Raised by `check(..., raise_on_failure=True)` when a cell fails or errors; `.result` holds the records."""

    def __init__(self, message: str, result: CheckResult):
        super().__init__(message)
        self.result = result


def check(*things, convention: str | None = None, oracles=("torch", "jax", "numeric"), dtypes=("float64",),
          profile: str = "ci", examples: int | None = None, seed: int | None = None, report=None,
          raise_on_failure: bool = True, fail_on=("fail", "unstable"), devices=("cpu",)) -> CheckResult:
    """Check hand-derived gradients against PyTorch, JAX and finite differences, in this process.

    things:
      - `@gradaudit.derivation` objects, and `gradaudit.function` subjects (custom torch.autograd.Functions,
        jax.custom_vjp/custom_jvp rules);
      - functions, with `convention="cs231n"`: `check(affine_forward, affine_backward, convention="cs231n")`
        (matched by name; a backward alone is checked when its cache can be built from how it unpacks it);
      - a namespace: `check(globals(), convention="cs231n")` in a notebook, or any dict of names;
      - modules (a notebook's `__main__`, which has no `__file__`, included);
      - paths: a .py file, a notebook (.ipynb), notes (.md, .txt: their fenced Python blocks), or a
        folder of them.
    convention: "cs231n" for functions named as in the assignments, None for `@gradaudit.derivation`s.

    Returns a `CheckResult`: a list of records (docs/result_record.md) that a notebook displays as a
    verdict table with the evidence of each failure. Raises `CheckFailed` (an AssertionError, with
    `.result`) listing the errors and the findings whose severity `fail_on` names (default a wrong
    value or an unstable evaluation; add "warning" for the hazards), unless `raise_on_failure=False`.

    Defaults differ from `gradaudit audit` on purpose, to keep a test or a notebook cell quick:
    `profile="ci"` (few examples, derandomized: the same verdict on every run) where the CLI uses
    `dev`, float64 only where the CLI also checks float32, and no example database. Counterexamples
    go to `report` (a folder) when given; otherwise to a temporary folder that is removed before
    `check` returns (the display keeps the evidence). The code runs in this process: for code that
    may hang, crash or misbehave, use `gradaudit audit`, which runs it in a child process.
    """
    __tracebackhide__ = True  # pytest and IPython show the verdict, not this function's source
    from properties.config import RunConfig
    from properties.session import apply_precision
    from reports.records import RecordSink

    from ._guard import Guard
    from .audit import InProcess, check_job, error_record, first_cell

    if convention not in (None, "cs231n"):
        raise ValueError(f"convention must be None or 'cs231n', got {convention!r}")
    code = InProcess(Guard())
    jobs, notes = plan(things, convention, code)
    taken: set = set()
    for j in jobs:  # two derivations with one name (a factory's, or given apart): each its own cells
        op, k = j.op, 2
        while (j.target, j.op) in taken:
            j.op, j.target, k = f"{op}_{k}", f"{op}_{k}_backward", k + 1
        taken.add((j.target, j.op))
    temporary = tempfile.TemporaryDirectory(prefix="gradaudit-check-") if report is None else None
    report_dir = Path(temporary.name if temporary else report)
    try:
        cfg = RunConfig(oracles=tuple(oracles), dtypes=tuple(dtypes), profile=profile, examples=examples,
                        seed=seed, report_dir=report_dir, devices=tuple(devices))
        apply_precision(cfg)
        sink = RecordSink(report_dir / "results.jsonl")
        records = []
        try:
            with warnings.catch_warnings():
                # the extreme regimes make NumPy warn (overflow in exp, log of 0) on every example; the
                # verdict says what that means, the warnings would only bury it
                warnings.simplefilter("ignore", RuntimeWarning)
                for job in jobs:
                    if job.op == "(import)":
                        rec = error_record(job, first_cell(job, cfg, "import"), job.skip)
                        sink.write(rec)
                        records.append(rec)
                    else:
                        records.extend(check_job(job, code, cfg, sink))
        finally:
            sink.close()
        meta = {"command": "gradaudit.check(...)", "profile": profile, "seed": seed, "oracles": list(oracles),
                "dtypes": list(dtypes)}
        result = CheckResult(records, notes=notes, report_dir=None if temporary else report_dir, run_meta=meta)
        if temporary and result.failures:
            result._render(report_dir / "cases")  # now, while the counterexamples exist
    finally:
        if temporary:
            temporary.cleanup()
    from reports.records import severity

    bad = [r for r in result if r["status"] == "error" or severity(r) in frozenset(fail_on)]
    if bad and raise_on_failure:
        raise CheckFailed(_failure_message(result, bad), result)
    return result


def _failure_message(result: CheckResult, bad: list[dict]) -> str:
    where = f" --report {result.report_dir}" if result.report_dir else ""
    lines = [f"gradaudit: {len(bad)} of {len(result)} cells failed:"]
    for r in bad:
        how = ""
        if r["status"] == "fail":
            how = f" ({r.get('severity') or 'fail'}, {r['kind']}, blame={r['blame']}" + (f", pattern={r['pattern']}" if r.get("pattern") else "") + ")"
        replay = f" [{r['replay']}{where}]" if r.get("replay") and where else ""
        lines.append(f"  {r['id']}: {r['status']}{how}: {r['message']}{replay}")
    if not result.report_dir:
        lines.append("  (pass report=DIR to keep the counterexamples and replay them)")
    return "\n".join(lines)


# ---- what to check -------------------------------------------------------------------------

def _namespace_label(ns: dict) -> str:
    """A name for a namespace in the records: the notebook's file where the front end tells it."""
    for key in ("__vsc_ipynb_file__", "__session__"):  # VS Code; JupyterLab and Notebook 7
        if isinstance(ns.get(key), str) and ns[key].endswith(".ipynb"):
            return Path(ns[key]).name
    return ns.get("__name__") or "namespace"


def plan(things, convention, code) -> tuple[list, list[str]]:
    """(jobs, notes) for check's arguments, their code in `code` (gradaudit.audit.InProcess);
    namespaces and functions become in-memory modules."""
    from . import audit
    from .derivation import Derivation
    from .function import FunctionSubject

    jobs, notes, functions = [], [], {}
    for i, thing in enumerate(things):
        key = f"m{i}"
        if isinstance(thing, (Derivation, FunctionSubject)):
            if any(o is thing for o in code.objects.values()):
                continue  # the same object twice: checked once
            code.objects[key] = thing
            file = getattr(sys.modules.get(thing.fn.__module__), "__file__", None) or f"<{thing.fn.__module__}>"
            jobs += audit.plan(code.describe(key), file, key, None)[0]
        elif isinstance(thing, (str, os.PathLike)):
            path = Path(thing)
            if not path.exists():
                raise FileNotFoundError(f"gradaudit.check: no such file or folder: {str(path)!r}")
            for k, p in enumerate(audit.derivation_files(path)):
                try:
                    module = code.guard.call(audit.import_file, f"import {p.name}", (p,))
                except Exception as e:
                    if not path.is_dir():
                        raise
                    # a folder: the file that fails to import is an error cell of its own, the others are checked
                    jobs.append(audit.Job(p.name, "(import)", convention or "derivation", str(p.resolve()), f"{key}.{k}",
                                          p.name, ["-"], source=p.name, skip=str(e)))
                    continue
                doc = getattr(module, "__gradaudit_document__", None)  # a notebook or notes: what was skipped
                notes += [f"{p.name}: {m}" for m in (doc.messages if doc else [])]
                jobs += _from_module(module, str(p.resolve()), f"{key}.{k}", convention, code, folder=path.is_dir())
        elif isinstance(thing, dict):
            jobs += _from_namespace(thing, _namespace_label(thing), key, convention, code)
        elif isinstance(thing, types.ModuleType):
            file = getattr(thing, "__file__", None)
            if file is None:  # a notebook's __main__, or a module made in memory
                jobs += _from_namespace(vars(thing), _namespace_label(vars(thing)), key, convention, code)
            else:
                jobs += _from_module(thing, str(Path(file).resolve()), key, convention, code)
        elif callable(thing) and getattr(thing, "__name__", None):
            functions[thing.__name__] = thing
        else:
            raise TypeError(f"gradaudit.check: cannot check {type(thing).__name__} {thing!r}: give derivations, "
                            f"functions, a namespace (globals()), modules or paths")
    if functions:
        if convention != "cs231n":
            raise TypeError(f"gradaudit.check({', '.join(functions)}): plain functions are checked with "
                            f"convention='cs231n' (named as in the assignments); otherwise decorate them with "
                            f"@gradaudit.derivation")
        from . import cs231n

        known = {f for p in cs231n.PAIRS for f in p.functions} | set(cs231n.UNSUPPORTED)
        unknown = [n for n in functions if n not in known]
        if unknown:
            raise ValueError(f"gradaudit.check: {', '.join(unknown)} is not a cs231n function name; "
                             f"known: {', '.join(sorted(known))}")
        jobs += _from_namespace(functions, "functions given to check()", "functions", convention, code)
    return jobs, notes


def _from_namespace(ns: dict, label: str, key: str, convention, code) -> list:
    module = types.ModuleType(label)
    module.__dict__.update(ns)
    return _from_module(module, f"<{label}>", key, convention, code)


def _from_module(module, file: str, key: str, convention, code, *, folder: bool = False) -> list:
    """The jobs of a module already in memory (it is not imported again)."""
    from . import audit, cs231n

    code.modules[key] = module
    return audit.plan(code.describe(key), file, key, convention, folder=folder,
                      functions=cs231n.functions_in(module))[0]
