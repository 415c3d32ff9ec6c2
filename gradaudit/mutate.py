"""`gradaudit mutate`: how many wrong backwards would the check have caught?

Mutants of each backward (gradaudit/mutants.py: the mistakes people make deriving a gradient by
hand) are judged one by one in child processes (gradaudit/_mutant_worker.py):

- killed      gradaudit's check fails or errors on the mutant;
- survived    the mutant computes another gradient (the probe saw it) and the check passes;
- equivalent  the mutant computes the same gradient in float64 on every probe input, every value
              regime, both shape breadths, and writes nothing into the upstream gradient: no check
              could kill it, so it does not count against the score;
- invalid     the mutant raises, or returns the wrong number or shape of gradients, on every input
              (any checker rejects it on sight): reported, not scored.

score = killed / (killed + survived). Every survivor is listed with its diff and where it differs
from the original (regime, geometry, by how much), and is checked again in the dev profile (full
shape breadth, more examples) to say whether a longer search would have caught it.

    gradaudit mutate layers.py --convention cs231n        # your cs231n functions
    gradaudit mutate notes.py                             # your @gradaudit.derivation backwards
    gradaudit mutate --ops affine,conv2d                  # the catalogue's own reference backwards
    gradaudit mutate --ops all --workers 2                # all of them

Exit status: 0; 1 when the score is below --min-score; 2 bad usage; 3 gradaudit itself failed on
a mutant; 5 nothing to mutate.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .mutant_children import Children
from .mutants import OPERATORS, backward_helpers, generate
from .mutation_score import classify, explain, render, summarize

__all__ = ["MutateUsageError", "OPERATORS", "Plan", "add_arguments", "classify", "cmd_mutate", "explain",
           "plan_file", "plan_ops", "render", "run", "summarize"]

EXIT_OK, EXIT_LOW, EXIT_INTERNAL, EXIT_NOTHING = 0, 1, 3, 5


class MutateUsageError(ValueError):
    """A bad argument to `gradaudit mutate` (the CLI prints it and exits 2)."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _known(kind: str, given, accepted) -> list:
    bad = [g for g in given if g not in accepted]
    if bad:
        raise MutateUsageError(f"unknown {kind} {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")
    if not given:
        raise MutateUsageError(f"no {kind} given; accepted: {', '.join(accepted)}")
    return list(given)


def add_arguments(p) -> None:
    """The `gradaudit mutate` options (cli.py adds the subparser and calls this)."""
    p.add_argument("path", nargs="?", type=Path, default=None,
                   help="a .py file: cs231n functions (--convention cs231n) or @gradaudit.derivation backwards")
    p.add_argument("--ops", type=_csv, default=None,
                   help="mutate the catalogue's own reference backwards of these ops (comma-separated, or all) instead")
    p.add_argument("--convention", choices=("cs231n",), default=None, help="as for `gradaudit audit`")
    p.add_argument("-k", dest="select", default=None, metavar="NAME",
                   help="mutate only functions whose name contains NAME")
    p.add_argument("--operators", type=_csv, default=None,
                   help=f"mutation operators (default all): {', '.join(OPERATORS)}")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default="ci",
                   help="the check's Hypothesis profile (default ci)")
    p.add_argument("--explain-profile", choices=("dev", "thorough", "none"), default="dev",
                   help="check survivors again in this profile to say whether a longer search kills them (default dev)")
    p.add_argument("--oracles", type=_csv, default=("torch", "jax", "numeric"), help="as for `gradaudit audit`")
    p.add_argument("--dtypes", type=_csv, default=("float64", "float32"), help="as for `gradaudit audit`")
    p.add_argument("--examples", type=int, default=None, help="examples per cell (default: the profile's)")
    p.add_argument("--workers", type=int, default=1, help="child processes judging mutants in parallel (default 1)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one mutant may take before it is stopped and called invalid (default 300)")
    p.add_argument("--min-score", type=float, default=None,
                   help="exit 1 when the score (killed / (killed + survived), 0..1) is below this")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", type=Path, default=None, help="write the mutant files into this folder and keep them")


# ---- what to mutate, and who judges each mutant ------------------------------------------------

@dataclasses.dataclass
class Plan:
    kind: str  # cs231n | derivation | catalogue
    original: str | None  # the user's file (None: the catalogue)
    mutants: list  # [(Mutant, judges, module name or None)]
    judges: dict  # judge -> module name (catalogue) or None
    label: str


def _functions(tree: ast.Module) -> dict:
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _calls(fn) -> set:
    return {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _reach(fns: dict, roots) -> set:
    seen, todo = set(roots), list(roots)
    while todo:
        f = todo.pop()
        for g in _calls(fns[f]) if f in fns else ():
            if g in fns and g not in seen:
                seen.add(g)
                todo.append(g)
    return seen


def _select(names, select: str | None):
    return [n for n in names if select is None or select in n]


def plan_file(path: Path, convention: str | None, select: str | None, operators) -> Plan:
    """Mutants of a user's file, read without running it."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise MutateUsageError(f"{path} does not parse: {e}") from None
    fns = _functions(tree)
    if convention == "cs231n":
        from . import cs231n

        run, _, _ = cs231n.plan(set(fns))
        targets = {p.target: p for p in run}
        # only backwards and the losses that return gradients are mutated; a pair whose target is a
        # forward (batchnorm_forward's modes) judges the backwards it calls, it is not mutated itself
        mutated = [t for t in targets if "backward" in t or "loss" in t]
        roots = {t: [f for f in p.functions if f in fns] for t, p in targets.items()}
        forwards = {t: p.forward for t, p in targets.items() if p.forward}
        losses = {t for t, p in targets.items() if p.forward is None}
        kind = "cs231n"
    else:
        targets, roots, forwards, losses = {}, {}, {}, set()
        for fn in fns.values():
            for dec in fn.decorator_list:
                if isinstance(dec, ast.Attribute) and dec.attr == "backward" and isinstance(dec.value, ast.Name):
                    targets[dec.value.id] = fn.name  # derivation name -> its backward
                    roots[dec.value.id] = [fn.name]
        mutated = list(targets)
        kind = "derivation"
    backwards = [targets[t].target if kind == "cs231n" else targets[t] for t in mutated]
    helpers = backward_helpers(source, backwards, [f for f in fns if f not in backwards and not f.startswith("_")])
    mutable = _select(backwards + sorted(helpers), select)
    mutants = []
    for m in generate(source, mutable, forwards=forwards, operators=operators, losses=losses, filename=path.name):
        judges = [t for t in targets if m.function in _reach(fns, roots[t])]
        mutants.append((m, judges, None))
    return Plan(kind, str(path.resolve()), mutants, {t: None for t in targets}, path.name)


def plan_ops(ops, select: str | None, operators) -> Plan:
    """Mutants of the catalogue's reference backwards of `ops`."""
    import inspect

    import reference_impl

    by_file: dict = {}
    for op in ops:
        fn = getattr(reference_impl, f"{op}_backward")
        by_file.setdefault((inspect.getsourcefile(fn), fn.__module__), []).append(op)
    mutants, judges = [], {}
    for (file, modname), chosen in by_file.items():
        source = Path(file).read_text(encoding="utf-8")
        fns = _functions(ast.parse(source))
        backwards = [f"{op}_backward" for op in chosen]
        every_backward = [f for f in fns if f.endswith("_backward") and not f.startswith("_")]
        helpers = backward_helpers(source, every_backward, [f for f in fns if not f.endswith("_backward")
                                                            and not f.startswith("_")])
        reach = {op: _reach(fns, [f"{op}_backward"]) for op in chosen}
        mutable = _select(backwards + sorted(h for h in helpers if any(h in r for r in reach.values())), select)
        forwards = {f"{op}_backward": f"{op}_forward" for op in chosen}
        for m in generate(source, mutable, forwards=forwards, operators=operators, filename=Path(file).name):
            mutants.append((m, [op for op in chosen if m.function in reach[op]], modname))
        judges.update({op: modname for op in chosen})
    label = "catalogue " + ",".join(ops) if len(ops) <= 6 else f"the catalogue ({len(ops)} ops)"
    return Plan("catalogue", None, mutants, judges, label)


# ---- one mutation run -------------------------------------------------------------------------

def write_mutants(plan: Plan, folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for k, (m, judges, modname) in enumerate(plan.mutants):
        p = folder / f"m{k:04d}_{m.function}_{m.operator}.py"
        p.write_text(m.source, encoding="utf-8")
        items.append({"id": m.id, "function": m.function, "path": str(p), "judges": judges, "module": modname})
    used = {j for _, judges, _ in plan.mutants for j in judges}
    for j, modname in plan.judges.items():
        if j in used:
            items.append({"id": f"original:{j}", "path": None, "judges": [j], "module": modname})
    return items


def run(plan: Plan, *, profile="ci", dtypes=("float64", "float32"), oracles=("torch", "jax", "numeric"),
        examples=None, workers=1, timeout=300.0, explain_profile="dev", extra=(), probe=None, keep=None,
        progress=None, raw=False) -> dict:
    """Judge every mutant of `plan`; returns the report (see `summarize`). `extra`: more judges for
    the child to run on each mutant ("path.py:function", see benchmarks/mutation.py); `raw`: keep
    every child result under "raw"."""
    scratch = tempfile.mkdtemp(prefix="gradaudit-mutate-")
    t0 = time.perf_counter()
    try:
        folder = Path(keep) if keep is not None else Path(scratch) / "mutants"
        items = write_mutants(plan, folder)
        cfg = {"profile": profile, "dtypes": list(dtypes), "oracles": list(oracles), "examples": examples, "seed": None}
        kids = Children(plan, cfg, workers=workers, timeout=timeout, scratch=scratch, extra=extra, probe=probe,
                        progress=progress)
        results = kids.run([it for it in items if it["judges"]])
        report = summarize(plan, items, results, profile)
        survivors = [s["id"] for s in report["survivors"]]
        if survivors and explain_profile not in (None, "none") and explain_profile != profile:
            again = [dict(it, probe=False) for it in items if it["id"] in survivors]
            cfg2 = dict(cfg, profile=explain_profile)
            kids2 = Children(plan, cfg2, workers=workers, timeout=timeout * 4, scratch=scratch, probe=probe)
            second = kids2.run(again)
            for s in report["survivors"]:
                r = second.get(s["id"], {})
                checks = [v.get("check") for v in r.get("judges", {}).values() if v.get("check")]
                killed = [c for c in checks if c.get("killed")]
                s[f"{explain_profile}_profile"] = "killed" if killed else ("survived" if checks else "not run")
                if killed:
                    s[f"{explain_profile}_by"] = killed[0].get("by")
                s["why"] = explain(s, explain_profile)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        if raw:
            report["raw"] = results
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the command ------------------------------------------------------------------------------

def cmd_mutate(args) -> int:
    """`gradaudit mutate`; a bad argument raises MutateUsageError."""
    if (args.path is None) == (args.ops is None):
        raise MutateUsageError("give a .py file to mutate, or --ops a,b for the catalogue's reference backwards "
                               "(not both)")
    if args.workers < 1:
        raise MutateUsageError(f"--workers must be at least 1, got {args.workers}")
    if not args.timeout > 0:
        raise MutateUsageError(f"--timeout must be positive, got {args.timeout}")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise MutateUsageError(f"--min-score is a fraction in [0, 1], got {args.min_score}")
    if args.examples is not None and args.examples < 1:
        raise MutateUsageError(f"--examples must be at least 1, got {args.examples}")
    operators = _known("mutation operator", args.operators, list(OPERATORS)) if args.operators else None
    import oracles

    _known("oracle", args.oracles, oracles.ORACLES)
    _known("dtype", args.dtypes, ("float64", "float32"))
    if args.ops is not None:
        from properties import catalogue

        known = catalogue.load()
        ops = list(known) if tuple(args.ops) == ("all",) else _known("op", args.ops, list(known))
        plan = plan_ops(ops, args.select, operators)
    else:
        path = Path(args.path)
        if not path.is_file() or path.suffix != ".py":
            raise MutateUsageError(f"{str(path)!r} is not a .py file")
        plan = plan_file(path, args.convention, args.select, operators)
        if not plan.judges:
            what = "cs231n-named functions" if args.convention else "@<derivation>.backward functions"
            hint = "" if args.convention else " (cs231n code? add --convention cs231n)"
            print(f"gradaudit mutate: no {what} in {path}{hint}", file=sys.stderr)
            return EXIT_NOTHING
    if not plan.mutants:
        print(f"gradaudit mutate: no mutants of {plan.label}" + (f" matching -k {args.select}" if args.select else ""),
              file=sys.stderr)
        return EXIT_NOTHING
    tty = sys.stderr.isatty() and not args.json
    total = len(plan.mutants) + len(plan.judges)

    def progress(res, k):
        if tty:
            print(f"\r  {k}/{total} judged", end="", file=sys.stderr, flush=True)

    if not args.json:
        print(f"gradaudit mutate: {len(plan.mutants)} mutants of {plan.label}, {args.workers} worker(s), "
              f"{args.profile} profile", file=sys.stderr)
    report = run(plan, profile=args.profile, dtypes=args.dtypes, oracles=args.oracles, examples=args.examples,
                 workers=args.workers, timeout=args.timeout, explain_profile=args.explain_profile, keep=args.keep,
                 progress=progress)
    if tty:
        print(file=sys.stderr)
    print(json.dumps(report, indent=1) if args.json else render(report))
    if report["errors"]:
        return EXIT_INTERNAL
    if args.min_score is not None and report["score"] is not None and report["score"] < args.min_score:
        return EXIT_LOW
    return EXIT_OK
