"""`gradaudit` command line: run, audit, list, report, replay, mutate. Argument parsing and printing only:
a run is properties.session's, an audit's plan gradaudit.audit's, the report the reports package's.

Exit codes: 0 all pass (kinks and skips included), 1 any fail or error, 2 bad usage.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from pathlib import Path

from .progress import Progress

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "config_from_args", "main",
           "parse_shard"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _choose(kind: str, given: tuple[str, ...], accepted) -> tuple[str, ...]:
    bad = [g for g in given if g not in accepted]
    if bad:
        raise UsageError(f"unknown {kind} {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")
    if not given:
        raise UsageError(f"no {kind} given; accepted: {', '.join(accepted)}")
    return given


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--oracles", type=_csv, default=None, help="comma-separated: torch,jax,numeric (default all)")
    p.add_argument("--devices", type=_csv, default=("cpu",), help="comma-separated: cpu,cuda (default cpu)")
    p.add_argument("--dtypes", type=_csv, default=("float64", "float32"), help="comma-separated: float64,float32")
    p.add_argument("--examples", type=int, default=None, help="examples per cell (default: the profile's)")
    p.add_argument("--seed", type=int, default=None,
                   help="Hypothesis seed (same seed and versions, same verdicts); without it a dev or thorough "
                        "run draws one, records it in run.json and prints it (the ci profile is derandomized)")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default=None,
                   help="Hypothesis settings profile (default: ci when $CI is set, else dev)")
    p.add_argument("--report", type=Path, default=Path("gradaudit-report"),
                   help="report directory: results.jsonl, run.json, cases/, index.html (default gradaudit-report)")
    p.add_argument("--junit", type=Path, default=None, help="also write JUnit XML here")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the terminal one")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (by default: a live k/N cells line on a terminal, a plain line at each "
                        "group's end and at least every 10 s elsewhere, on stderr)")
    p.add_argument("--resume", action="store_true", help="keep DIR/results.jsonl and run only the cells not in it")
    p.add_argument("--workers", type=int, default=1, help="processes to run cells in (default 1)")
    p.add_argument("--shard", default=None, help="i/n: run only the i-th of n deterministic slices (CI matrix jobs)")
    p.add_argument("--example-db", default=None,
                   help="Hypothesis example database: a directory (default .hypothesis/gradaudit) or redis://host:port/db")
    p.add_argument("--allow-tf32", action="store_true",
                   help="let float32 matmul/conv use TF32 on GPU (to see what it does; off by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradaudit", description="Differential testing of hand-derived gradients.")
    parser.add_argument("--version", action="version", version=f"gradaudit {_version()}",
                        help="print gradaudit's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check the catalogue's reference derivations")
    run.add_argument("--ops", type=_csv, default=None, help="comma-separated op names (default: all; see `gradaudit list`)")
    _common(run)
    aud = sub.add_parser("audit", help="check a user's own derivations (a .py file)")
    aud.add_argument("path", type=Path, help="a Python file with cs231n-style functions or @gradaudit.derivation")
    aud.add_argument("--convention", choices=("cs231n",), default=None,
                     help="check functions named as in the cs231n assignments against the catalogue")
    aud.add_argument("--timeout", type=float, default=60.0, help="seconds per check before a hang is an error (default 60)")
    aud.add_argument("--verbose", action="store_true", help="show tracebacks from the audited code")
    aud.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                     help="check only the functions whose names match EXPR, as pytest -k does: a substring "
                          "(case-insensitive), or names joined with and/or/not and parentheses "
                          "(-k conv, -k \"batchnorm and not spatial\")")
    _common(aud)
    lst = sub.add_parser("list", help="list the catalogue")
    lst.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    rep = sub.add_parser("report", help="re-render (and merge) results.jsonl files into one report")
    rep.add_argument("results", nargs="+", type=Path,
                     help="results.jsonl files (or report directories); a cell in several: the last one wins")
    rep.add_argument("--report", type=Path, default=Path("gradaudit-report"),
                     help="directory to write index.html into (default gradaudit-report)")
    rep.add_argument("--junit", type=Path, default=None, help="also write JUnit XML here")
    rpl = sub.add_parser("replay", help="re-run a saved counterexample")
    rpl.add_argument("id", help="cell id (as in the record's `replay`) or a path to a .npz")
    rpl.add_argument("--report", type=Path, default=Path("gradaudit-report"),
                     help="the report directory the cell was recorded in (default gradaudit-report)")
    from .mutate import add_arguments as _mutate_arguments

    _mutate_arguments(sub.add_parser("mutate", help="mutation score: how many wrong backwards the check would catch"))
    return parser


def _prepare_report_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"report directory {str(path)!r} is not writable ({e.strerror or e})") from None


def config_from_args(args):
    """The RunConfig that `run` and `audit` share, validated: a bad value is a UsageError naming it."""
    import oracles
    from properties.config import DTYPES, RunConfig, default_profile

    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be at least 1, got {args.examples}")
    if getattr(args, "workers", 1) < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    profile = args.profile or default_profile()
    seed = args.seed
    if seed is None and profile != "ci":
        # Hypothesis would pick one per group and keep it to itself: draw one here instead, recorded in
        # run.json and printed with the summary, so that a run's findings can be replayed with --seed
        seed = secrets.randbelow(2**32)
    if args.example_db is not None and (profile == "ci" or args.seed is not None):
        # Hypothesis runs a derandomized or seeded search without a database: say so rather than
        # let a campaign believe its failures are being shared
        why = "--profile ci is derandomized" if profile == "ci" else "--seed runs Hypothesis without one"
        print(f"gradaudit: warning: --example-db {args.example_db} is not used ({why}); "
              "use --profile dev or thorough without --seed to share failures", file=sys.stderr)
    return RunConfig(
        oracles=_choose("oracle", args.oracles, oracles.ORACLES) if args.oracles is not None else oracles.ORACLES,
        devices=_choose("device", args.devices, oracles.DEVICES),
        dtypes=_choose("dtype", args.dtypes, DTYPES),
        profile=profile, examples=args.examples, seed=seed, seed_drawn=args.seed is None and seed is not None,
        report_dir=args.report,
        database=args.example_db or str(Path(".hypothesis") / "gradaudit"),
        allow_tf32=getattr(args, "allow_tf32", False))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise UsageError(f"--shard {text}: need 1 <= i <= n, got i={i}, n={n}")
    return i, n


def _version() -> str:
    from . import __version__

    return __version__


def _session(args, cfg, jobs, *, what: list[str], cells: list[int] | None = None) -> int:
    """Run `jobs` (properties.session) into args.report, then report. Shared by run and audit.

    `--resume` keeps the records already in results.jsonl and skips their cells; `--workers N` runs
    the jobs in N processes appending to the same results.jsonl; `--shard i/n` keeps every n-th job.
    `cells`: how many cells each job records, for the progress line's k/N (None: N unknown).
    """
    import reports
    from properties.session import run_session

    _prepare_report_dir(args.report)
    results = args.report / "results.jsonl"
    finished = None
    if getattr(args, "resume", False) and results.exists():
        try:
            finished = reports.load_records([results])
        except reports.RecordError as e:
            raise UsageError(f"cannot resume: {e}") from None
        for r in finished:
            r.pop(reports.records.SOURCE_KEY, None)
    shard = parse_shard(getattr(args, "shard", None))
    if finished is None:
        results.unlink(missing_ok=True)  # a new run (as run_session does): progress counts from an empty file
    total = None
    if cells is not None:
        mine = [n for k, n in enumerate(cells) if shard is None or k % shard[1] == shard[0] - 1]
        total = max(sum(mine) - len(finished or ()), 0)
    progress = Progress(results, total, live=sys.stderr.isatty(), offset=results.stat().st_size if finished else 0)
    quiet = getattr(args, "quiet", False)
    with progress if not quiet else contextlib.nullcontext():
        records, meta = run_session(cfg, jobs, finished=finished, workers=getattr(args, "workers", 1) or 1,
                                    shard=shard, what=what, command=["gradaudit", *sys.argv[1:]])
    return _finish(records, meta, args.report, args.junit, args.json)


def cmd_run(args) -> int:
    from properties import catalogue
    from properties.session import catalogue_jobs

    known = catalogue.load()
    ops = _choose("op", args.ops, list(known)) if args.ops is not None else tuple(known)
    cfg = config_from_args(args)
    cells = [len(known[op].regimes) * len(cfg.sides()) for op in ops for _ in cfg.dtypes]  # as catalogue_jobs
    return _session(args, cfg, catalogue_jobs(ops, cfg.dtypes), what=list(ops), cells=cells)


def _finish(records, meta, report_dir: Path, junit: Path | None, as_json: bool) -> int:
    import reports

    html = reports.render_html(records, meta, report_dir)
    if junit is not None:
        reports.write_junit(records, junit, report_dir=report_dir)
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    failing = counts.get("fail", 0) + counts.get("error", 0)
    if as_json:
        print(json.dumps({"counts": counts, "ok": failing == 0, "report": str(html),
                          "results": str(report_dir / "results.jsonl"), "duration_s": meta.get("duration_s"),
                          "failures": [{k: r[k] for k in ("id", "status", "kind", "blame", "pattern", "message",
                                                          "replay")} for r in records
                                       if r["status"] in ("fail", "error")]}))
    else:
        print(reports.terminal_summary(records, color=sys.stdout.isatty(), run_meta=meta))
        print(f"report: {html}")
    return EXIT_FAIL if failing else EXIT_OK


def cmd_list(args) -> int:
    from properties import catalogue

    ops = catalogue.load()
    if args.json:
        print(json.dumps([s.describe() for s in ops.values()], indent=1))
    else:
        width = max(len(n) for n in ops)
        for s in ops.values():
            print(f"{s.name:<{width}}  {s.family:<14} {','.join(s.regimes):<40} {s.source}")
    return EXIT_OK


def cmd_report(args) -> int:
    import reports

    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        raise UsageError(f"no such results file: {', '.join(missing)}")
    try:
        records = reports.load_records(args.results)
    except reports.RecordError as e:
        raise UsageError(str(e)) from None
    _prepare_report_dir(args.report)
    meta = reports.load_run_meta(args.results[-1].parent)
    if len(args.results) > 1:
        meta = dict(meta, merged_from=[str(p) for p in args.results])
    return _finish(records, meta, args.report, args.junit, False)


def cmd_audit(args) -> int:
    from . import audit
    from ._guard import clean
    from .selection import KeywordError, matcher, select

    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"no such file or folder: {str(path)!r}")
    if path.is_dir() and args.convention:
        raise UsageError("--convention cs231n audits one file; give the path of a .py file")
    if path.is_file() and path.suffix != ".py":
        raise UsageError(f"{str(path)!r} is not a .py file")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    cfg = config_from_args(args)
    jobs, absent, error, hint = audit.plan_isolated(path, args.convention, args.timeout, args.verbose)
    if args.keyword is not None:
        planned = [j["target"] for j in jobs]
        try:
            jobs, absent = select(jobs, args.keyword), [a for a in absent if matcher(args.keyword)([a])]
        except KeywordError as e:
            raise UsageError(str(e)) from None
        if planned and not jobs and not args.json:
            print(f"gradaudit audit: -k {args.keyword!r} matches none of {', '.join(clean(t) for t in planned)}",
                  file=sys.stderr)
    if not args.json:
        if error:
            print(f"gradaudit audit: {clean(error)}", file=sys.stderr)
        if absent:
            print(f"gradaudit audit: not defined in {clean(path.name)}, not checked: {', '.join(absent)}",
                  file=sys.stderr)
        if not jobs and not error and args.keyword is None:
            what = "cs231n-named functions" if args.convention else "@gradaudit.derivation functions"
            print(f"gradaudit audit: no {what} in {clean(str(path))}" + (f"; {clean(hint)}" if hint else ""),
                  file=sys.stderr)
    session_jobs = audit.session_jobs(path, args.convention, jobs, error, timeout=args.timeout, verbose=args.verbose,
                                      workers=args.workers or 1, sharded=bool(args.shard), progress=False)
    # cells per session job, as session_jobs makes them: the import error's one, then one job per
    # function when sharded (else the shard selection does not apply and only the sum counts)
    per = [1 if j.get("skip") else len(cfg.dtypes) * len(j["regimes"]) * len(cfg.sides()) * j.get("checks", 1)
           for j in jobs]
    cells = [1] * bool(error) + (per if args.shard else [sum(per)])
    return _session(args, cfg, session_jobs, what=[j["target"] for j in jobs], cells=cells)


def cmd_replay(args) -> int:
    from .replay import ReplayError, replay

    try:
        r = replay(args.id, args.report)
    except ReplayError as e:
        raise UsageError(str(e)) from None
    print(f"{r.id}: {r.case.summary()}")
    print(f"  {r.verdict.status}: {r.verdict.message or 'agrees'}")
    return EXIT_FAIL if r.failed else EXIT_OK


def cmd_mutate(args) -> int:
    from .mutate import MutateUsageError, cmd_mutate as run_mutate

    try:
        return run_mutate(args)
    except MutateUsageError as e:
        raise UsageError(str(e)) from None


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage line
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    try:
        return {"run": cmd_run, "audit": cmd_audit, "list": cmd_list, "report": cmd_report, "replay": cmd_replay,
                "mutate": cmd_mutate}[args.command](args)
    except UsageError as e:
        print(f"gradaudit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gradaudit: interrupted; finished cells are in results.jsonl", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
