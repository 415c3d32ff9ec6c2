"""`gradaudit` command line: run, audit, list, report, replay, mutate. Argument parsing and printing only:
a run is properties.session's, an audit's plan gradaudit.audit's, the report the reports package's.

Exit codes: 0 all pass (kinks and skips included), 1 any fail or error, 2 bad usage (every option is
checked before the report folder is touched; a busy folder or a refused --resume too), 3 gradaudit
itself broke (one line, the finished cells kept, the summary printed; --verbose for the traceback),
130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP (finished cells kept).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import signal
import sys
import traceback
import warnings
from pathlib import Path

from .progress import Progress

__all__ = ["EXIT_FAIL", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "Interrupted", "UsageError", "build_parser",
           "config_from_args", "main", "parse_shard"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, stopping a run as Ctrl-C does; exit status 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _csv(value: str) -> tuple[str, ...]:
    """A comma-separated list, each name once (in the order given)."""
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


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
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue even when the records come from another seed, profile or list")
    p.add_argument("--wait", action="store_true", help="wait for another run that is using the report folder")
    p.add_argument("--verbose", action="store_true",
                   help="show tracebacks (of the audited code, and of gradaudit's own internal errors)")
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
    aud.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                     help="check only the functions whose names match EXPR, as pytest -k does: a substring "
                          "(case-insensitive), or names joined with and/or/not and parentheses "
                          "(-k conv, -k \"batchnorm and not spatial\")")
    aud.add_argument("--memory-limit", default="4G", metavar="SIZE",
                     help="address space the audited code may use in its child process, beyond what the harness "
                          "maps there (default 4G)")
    aud.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                     help="hand this environment variable to the audited code (it gets only PATH, HOME, LANG and "
                          "the Python path by default); repeatable")
    aud.add_argument("--sandbox", choices=("process", "bwrap"), default="process",
                     help="process (default): a confined child process; bwrap: also a read-only filesystem, no "
                          "network and its own PID namespace (bubblewrap); see docs/security.md")
    _common(aud)
    lst = sub.add_parser("list", help="list the catalogue")
    lst.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    rep = sub.add_parser("report", help="re-render (and merge) results.jsonl files into one report")
    rep.add_argument("results", nargs="+", type=Path,
                     help="results.jsonl files (or report directories); a cell in several: the worse verdict "
                          "stands, with a warning")
    rep.add_argument("--report", type=Path, default=Path("gradaudit-report"),
                     help="directory to write the merged report into: index.html, results.jsonl, run.json, "
                          "cases/ (default gradaudit-report)")
    rep.add_argument("--junit", type=Path, default=None, help="also write JUnit XML here")
    rep.add_argument("--wait", action="store_true", help="wait for another run that is using the report folder")
    rep.add_argument("--verbose", action="store_true", help="show the traceback of an internal error")
    rpl = sub.add_parser("replay", help="re-run a saved counterexample")
    rpl.add_argument("id", help="cell id (as in the record's `replay`) or a path to a .npz")
    rpl.add_argument("--report", type=Path, default=Path("gradaudit-report"),
                     help="the report directory the cell was recorded in (default gradaudit-report)")
    rpl.add_argument("--verbose", action="store_true", help="show the traceback of an internal error")
    rpl.add_argument("--file", type=Path, default=None,
                     help="an audit's case: the file whose functions to replay (default: the recorded path, "
                          "printed first); it runs in a confined child, never in this process")
    rpl.add_argument("--timeout", type=float, default=60.0, help="seconds per call of the audited code (default 60)")
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
        raise UsageError(f"report directory {_q(path)} is not writable ({e.strerror or e})") from None


def _q(path) -> str:
    """A path in a message: quoted, escaped (it may hold anything)."""
    from reports.text import clean

    return repr(clean(str(path), 300))


# The files of a report folder (reports.records, reports.cases, reports.html): never a --junit target.
_REPORT_FILES = ("results.jsonl", "run.json", "index.html", ".lock")


def _check_junit(junit: Path | None, report: Path, inputs=()) -> None:
    """--junit must be a file we may write that is none of the records or the report folder's files."""
    if junit is None:
        return
    if junit.is_dir():
        raise UsageError(f"--junit {_q(junit)} is a directory; give the path of an .xml file")
    target = os.path.realpath(junit)
    if any(target == os.path.realpath(x) for x in
           [*(report / f for f in _REPORT_FILES), *(Path(i) / "results.jsonl" if Path(i).is_dir() else i
                                                   for i in inputs)]):
        raise UsageError(f"--junit {_q(junit)} would overwrite the records or the report; give another path")
    if Path(target).parent == Path(os.path.realpath(report / "cases")):
        raise UsageError(f"--junit {_q(junit)} is inside the report's cases/ folder; give another path")
    parent = Path(target).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (
            junit.exists() and not os.access(junit, os.W_OK)):
        raise UsageError(f"--junit {_q(junit)} cannot be written")


def _validate(args) -> tuple[int, int] | None:
    """Every option of run/audit that can be checked before anything runs or the report folder is
    touched; returns the parsed --shard."""
    if getattr(args, "workers", 1) < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.force and not args.resume:
        raise UsageError("--force only makes sense with --resume")
    shard = parse_shard(getattr(args, "shard", None))
    _check_junit(args.junit, args.report)
    return shard


def _code_hash(files) -> str:
    """SHA-256 over the checked code's files (names and contents): a resumed run must check the same code."""
    h = hashlib.sha256()
    for f in sorted(Path(x) for x in files):
        h.update(f.name.encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


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
    if seed is None and profile != "ci" and getattr(args, "resume", False):
        seed = _seed_to_resume(args.report)  # the run it continues drew its seed; a new one would be refused
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


def _seed_to_resume(report: Path) -> int | None:
    """The seed of the run whose records are in `report` (run.json), when it says one."""
    from reports.records import load_run_meta

    try:
        ident = load_run_meta(report).get("identity")
    except Exception:  # run_session says what is wrong with the folder
        return None
    seed = ident.get("seed") if isinstance(ident, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


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


def _on_wait(folder: Path):
    def tell(pid):
        who = f"pid {pid}" if pid else "another process"
        print(f"gradaudit: waiting for {who} to finish with {_q(folder)}", file=sys.stderr)

    return tell


def _session(args, cfg, jobs, *, what: list[str], shard, code: str | None, cells: list[int] | None = None) -> int:
    """Run `jobs` (properties.session) into args.report, then report. Shared by run and audit; the
    options were checked (`_validate`) before anything ran.

    `--resume` keeps the records already in results.jsonl and skips their cells; `--workers N` runs
    the jobs in N processes appending to the same results.jsonl; `--shard i/n` keeps every n-th job.
    The report folder stays locked from the start of the run to the last page written.
    `cells`: how many cells each job records, for the progress line's k/N (None: N unknown).
    """
    from properties.session import ResumeRefused, check_resume, run_session
    from reports.records import ReportLock, load_records, load_run_meta

    _prepare_report_dir(args.report)
    results = args.report / "results.jsonl"
    with ReportLock(args.report, wait=args.wait, on_wait=_on_wait(args.report)):
        if args.resume and not args.force:
            try:  # before any progress line: a refused resume is one line
                check_resume(cfg, what=what, code=code)
            except ResumeRefused as e:
                raise UsageError(str(e)) from None
        finished = 0
        if args.resume and results.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with contextlib.suppress(Exception):  # a file run_session refuses says why itself
                    finished = len(load_records([results]))
        total = None
        if cells is not None:
            mine = [n for k, n in enumerate(cells) if shard is None or k % shard[1] == shard[0] - 1]
            total = max(sum(mine) - finished, 0)
        if not args.resume:  # a new run (as run_session does, under this lock): progress counts from an empty file
            results.unlink(missing_ok=True)
        offset = results.stat().st_size if results.exists() else 0
        progress = Progress(results, total, live=sys.stderr.isatty(), offset=offset)
        try:
            with progress if not args.quiet else contextlib.nullcontext():
                records, meta = run_session(cfg, jobs, resume=args.resume, force=args.force, code=code,
                                            workers=args.workers, shard=shard, what=what,
                                            command=["gradaudit", *sys.argv[1:]])
        except ResumeRefused as e:
            raise UsageError(str(e)) from None
        except Exception as e:  # gradaudit broke (a full disk, a lost worker, a bug): say so, keep what is done
            _internal(e, args.verbose)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    records = load_records([results]) if results.exists() else []
            except Exception:
                records = []
            _finish(records, load_run_meta(args.report), args.report, None, args.json, render=False)
            _say(f"the {len(records)} finished cells are kept in {_q(results)}; --resume runs the others")
            return EXIT_INTERNAL
        return _finish(records, meta, args.report, args.junit, args.json, verbose=args.verbose)


def _internal(e: BaseException, verbose: bool, doing: str = "") -> None:
    """gradaudit's own failure: one line (the traceback first, with --verbose). `doing`: what failed."""
    from reports.text import clean

    if verbose:
        _say("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
    text = clean(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, 600)
    _say(f"internal error: {doing}{text}" + ("" if verbose else " (--verbose shows the traceback)"))


def _say(line: str) -> None:
    """One line on stderr, prefixed."""
    try:
        print(f"gradaudit: {line}", file=sys.stderr)
    except (BrokenPipeError, ValueError):
        pass


def _out(text: str) -> None:
    """Print to stdout; a reader that went away (`| head`) ends the printing quietly, not the command."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # what the interpreter would flush at exit goes nowhere, instead of a second BrokenPipeError
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def cmd_run(args) -> int:
    from properties import catalogue
    from properties.session import catalogue_jobs

    import reference_impl

    known = catalogue.load()
    ops = _choose("op", args.ops, list(known)) if args.ops is not None else tuple(known)
    cfg = config_from_args(args)
    shard = _validate(args)
    code = _code_hash(Path(reference_impl.__file__).parent.glob("*.py"))
    cells = [len(known[op].regimes) * len(cfg.sides()) for op in ops for _ in cfg.dtypes]  # as catalogue_jobs
    return _session(args, cfg, catalogue_jobs(ops, cfg.dtypes), what=list(ops), shard=shard, code=code, cells=cells)


def _finish(records, meta, report_dir: Path, junit: Path | None, as_json: bool, *, render: bool = True,
            verbose: bool = False) -> int:
    """Write the page (and JUnit), print the summary; the exit status. A page or JUnit file that
    cannot be written is an internal error (3) said after the summary."""
    import reports

    problems, html = [], None
    if render:
        for what, write in (("the report", lambda: reports.render_html(records, meta, report_dir)),
                            ("JUnit XML", (lambda: reports.write_junit(records, junit, report_dir=report_dir))
                             if junit else None)):
            if write is None:
                continue
            try:
                path = write()
                html = path if html is None else html
            except Exception as e:
                problems.append((what, e))
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    failing = counts.get("fail", 0) + counts.get("error", 0)
    if as_json:
        _out(json.dumps({"counts": counts, "ok": failing == 0, "report": str(html) if html else None,
                         "results": str(report_dir / "results.jsonl"), "duration_s": meta.get("duration_s"),
                         "failures": [{k: r.get(k) for k in ("id", "status", "kind", "blame", "pattern", "message",
                                                             "replay")} for r in records
                                      if r["status"] in ("fail", "error")]}))
    else:
        _out(reports.terminal_summary(records, color=sys.stdout.isatty(), run_meta=meta))
        if html is not None:
            _out(f"report: {html}")
    for what, e in problems:
        _internal(e, verbose, f"writing {what}: ")
    if problems:
        return EXIT_INTERNAL
    return EXIT_FAIL if failing else EXIT_OK


def cmd_list(args) -> int:
    from properties import catalogue

    ops = catalogue.load()
    if args.json:
        _out(json.dumps([s.describe() for s in ops.values()], indent=1))
    else:
        width = max(len(n) for n in ops)
        _out("\n".join(f"{s.name:<{width}}  {s.family:<14} {','.join(s.regimes):<40} {s.source}"
                       for s in ops.values()))
    return EXIT_OK


def cmd_report(args) -> int:
    import reports
    from reports.records import ReportLock

    missing = [_q(p) for p in args.results if not p.is_file()]
    if missing:
        raise UsageError(f"no such results file: {', '.join(missing)}")
    _check_junit(args.junit, args.report, inputs=args.results)
    try:
        records = reports.load_records(args.results)
    except reports.RecordError as e:
        raise UsageError(str(e)) from None
    meta = reports.load_run_meta(args.results[-1].parent)
    if len(args.results) > 1:
        meta = dict(meta, merged_from=[str(p) for p in args.results])
        meta.pop("identity", None)  # merged records are no single run's: --resume there refuses
    _prepare_report_dir(args.report)
    with ReportLock(args.report, wait=args.wait, on_wait=_on_wait(args.report)):
        try:
            records = _gather(records, meta, args.report)
        except OSError as e:
            _internal(e, args.verbose)
            return EXIT_INTERNAL
        return _finish(records, meta, args.report, args.junit, False, verbose=args.verbose)


def _gather(records: list[dict], meta: dict, out: Path) -> list[dict]:
    """The merged report's folder holds what it shows: results.jsonl (one record per cell), run.json
    and each failing cell's case under cases/, so that its replay lines work."""
    import shutil

    from reports.cases import case_path
    from reports.records import SOURCE_KEY, rewrite_records, write_run_meta

    merged = []
    for r in records:
        r = dict(r)
        ce, src = r.get("counterexample"), r.get(SOURCE_KEY)
        if ce and src:
            here = Path(src) / str(ce)
            there = case_path(out, str(r.get("id") or here.stem))
            if here.is_file():
                there.parent.mkdir(parents=True, exist_ok=True)
                if not there.exists() or not os.path.samefile(here, there):
                    shutil.copyfile(here, there)
                r["counterexample"] = f"cases/{there.name}"
        merged.append(r)
    rewrite_records(out / "results.jsonl", merged)
    write_run_meta(out, meta)
    return merged


def cmd_audit(args) -> int:
    from . import audit
    from ._guard import clean
    from .selection import KeywordError, matcher

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
    shard = _validate(args)
    try:
        sources = audit.sources_of(path, args.convention)
        conf = audit.confinement(sources, args.convention, cfg, timeout=args.timeout, memory_limit=args.memory_limit,
                                 pass_env=args.pass_env, sandbox=args.sandbox)
        keep = matcher(args.keyword) if args.keyword is not None else None
    except KeywordError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    with audit.Audit(sources, args.convention, conf, folder=path.is_dir(), verbose=args.verbose) as run:
        try:
            jobs, absent, errors, hints = run.plan()
        except audit.ChildStartError as e:
            print(f"gradaudit audit: error: {e}", file=sys.stderr)
            return 3
        if keep is not None:
            planned = [j.target for j in jobs if j.op != "(import)"]
            jobs = [j for j in jobs if j.op == "(import)" or keep([j.target, j.forward or "", j.name])]
            absent = [a for a in absent if keep([a])]
            if planned and not any(j.op != "(import)" for j in jobs) and not args.json:
                print(f"gradaudit audit: -k {args.keyword!r} matches none of {', '.join(clean(t) for t in planned)}",
                      file=sys.stderr)
        if not args.json:
            for error in errors:
                print(f"gradaudit audit: {clean(error)}", file=sys.stderr)
            if absent:
                print(f"gradaudit audit: not defined in {clean(path.name)}, not checked: {', '.join(absent)}",
                      file=sys.stderr)
            if not jobs and args.keyword is None:
                what = "cs231n-named functions" if args.convention else "@gradaudit.derivation functions"
                print(f"gradaudit audit: no {what} in {clean(str(path))}" + (f"; {clean('; '.join(hints))}" if hints
                                                                              else ""), file=sys.stderr)
        session_jobs = run.session_jobs(jobs, workers=args.workers or 1, sharded=bool(args.shard))
        # cells per session job, as session_jobs makes them: one job per function when sharded (else
        # the shard selection does not apply and only the sum counts); a file that cannot be imported: one
        per = [1 if j.skip or j.op == "(import)" else len(cfg.dtypes) * len(j.regimes) * len(cfg.sides()) for j in jobs]
        code = _code_hash(audit.derivation_files(path) if args.convention is None else [path])
        return _session(args, cfg, session_jobs, what=[j.target for j in jobs], shard=shard, code=code,
                        cells=per if args.shard else [sum(per)])


def cmd_replay(args) -> int:
    from .replay import ReplayError, replay

    from reports.text import clean

    try:
        r = replay(args.id, args.report, file=args.file, timeout=args.timeout,
                   say=lambda line: print(line, file=sys.stderr))
    except ReplayError as e:
        raise UsageError(str(e)) from None
    _out(f"{clean(r.id)}: {clean(r.case.summary())}")
    _out(f"  {r.verdict.status}: {clean(r.verdict.message, 4000) or 'agrees'}")
    return EXIT_FAIL if r.failed else EXIT_OK


def cmd_mutate(args) -> int:
    from .mutate import MutateUsageError, cmd_mutate as run_mutate

    try:
        return run_mutate(args)
    except MutateUsageError as e:
        raise UsageError(str(e)) from None


_stopping = {"signum": None, "lost": False}


def _interrupt(signum, frame):
    if _stopping["signum"] is not None:
        return  # once: a second signal while the run stops its workers would cut that short
    _stopping["signum"] = signum
    raise Interrupted(signum)


def _redeliver(signum, frame):
    if _stopping["lost"]:
        _stopping["lost"] = False
        raise Interrupted(_stopping["signum"])


def _unraisable(u) -> None:
    """An exception Python had to drop (raised in a gc callback or a __del__): when it is our
    Interrupted, it is raised again 50 ms later (SIGALRM), after that callback."""
    if isinstance(u.exc_value, Interrupted) and _stopping["signum"] is not None:
        _stopping["lost"] = True
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    sys.__unraisablehook__(u)


@contextlib.contextmanager
def _signals():
    """SIGTERM (CI's cancel and timeout) and SIGHUP (a closed terminal) stop a command as Ctrl-C
    (SIGINT) does: an Interrupted exception, the same for the three, raised once."""
    try:
        old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        old[signal.SIGALRM] = signal.signal(signal.SIGALRM, _redeliver)
    except ValueError:  # not the main thread (main() called from a library): leave them be
        old = {}
    hook = sys.unraisablehook
    if old:
        sys.unraisablehook = _unraisable
    _stopping.update(signum=None, lost=False)
    try:
        yield
    finally:
        if old:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.unraisablehook = hook
        for s, h in old.items():
            signal.signal(s, h)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from reports.text import clean

    _say(f"warning: {clean(message, 2000)}")


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage line
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    from reports.records import ReportBusy
    from reports.text import clean

    command = {"run": cmd_run, "audit": cmd_audit, "list": cmd_list, "report": cmd_report,
               "replay": cmd_replay, "mutate": cmd_mutate}[args.command]
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with _signals():
            return command(args)
    except (UsageError, ReportBusy) as e:
        _say(f"error: {clean(e, 2000)}")
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        where = getattr(args, "report", None)
        kept = f"; finished cells are in {_q(where / 'results.jsonl')} (--resume continues)" if (
            args.command in ("run", "audit") and where is not None) else ""
        _say(f"interrupted ({signal.Signals(signum).name}){kept}")
        return 128 + signum
    except BrokenPipeError:  # the reader of stdout went away (`| head`)
        _silence_stdout()
        return EXIT_OK
    except Exception as e:  # gradaudit itself broke
        _internal(e, getattr(args, "verbose", False))
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
