"""`gradaudit` command line: run, audit, list, report, replay, mutate. Argument parsing and printing only:
a run is properties.session's, an audit's plan gradaudit.audit's, the report the reports package's.

Exit codes: 0 nothing that `--fail-on` names (default: fail, unstable; `--strict` adds warning), 1 a
finding it names or an error, 2 bad usage (every option is
checked before the report folder is touched; a busy folder or a refused --resume too), 3 gradaudit
itself broke (one line, the finished cells kept, the summary printed; --verbose for the traceback),
5 nothing was checked, 130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP (finished cells kept).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from .console import Interrupted, handled_signals, internal_error, out, say, show_warning, silence_stdout
from .options import (UsageError, build_parser, check_junit, choose, code_hash, config_from_args, fail_on, parse_shard,
                      prepare_report_dir, quoted, validate)
from .progress import Progress

__all__ = ["EXIT_FAIL", "EXIT_INTERNAL", "EXIT_NOTHING", "EXIT_OK", "EXIT_USAGE", "Interrupted", "UsageError",
           "build_parser", "config_from_args", "fail_on", "main", "parse_shard"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_NOTHING = 0, 1, 2, 3, 5

def _on_wait(folder: Path):
    def tell(pid):
        who = f"pid {pid}" if pid else "another process"
        print(f"gradaudit: waiting for {who} to finish with {quoted(folder)}", file=sys.stderr)

    return tell


def _session(args, cfg, jobs, *, what: list[str], shard, code: str | None, cells: list[int] | None = None) -> int:
    """Run `jobs` (properties.session) into args.report, then report. Shared by run and audit; the
    options were checked (`validate`) before anything ran.

    `--resume` keeps the records already in results.jsonl and skips their cells; `--workers N` runs
    the jobs in N processes appending to the same results.jsonl; `--shard i/n` keeps every n-th job.
    The report folder stays locked from the start of the run to the last page written.
    `cells`: how many cells each job records, for the progress line's k/N (None: N unknown).
    """
    from properties.session import ResumeRefused, check_resume, run_session
    from reports.records import ReportLock, load_records

    prepare_report_dir(args.report)
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
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP (console.handled_signals): what finished, then stop
            _finished(args, results, stopped=True)
            raise
        except Exception as e:  # gradaudit broke (a full disk, a lost worker, a bug): say so, keep what is done
            internal_error(e, args.verbose)
            records = _finished(args, results)
            say(f"the {len(records)} finished cells are kept in {quoted(results)}; --resume runs the others")
            return EXIT_INTERNAL
        return _finish(records, meta, args.report, args.junit, args.json, verbose=args.verbose, failing_on=fail_on(args))


def _finished(args, results: Path, *, stopped: bool = False) -> list:
    """The summary of the cells a run that broke or was `stopped` finished (no page: the run did not
    end; a stopped run's last line says so, never PASS); their records."""
    import reports
    from reports.records import load_records, load_run_meta

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = load_records([results]) if results.exists() else []
    except Exception:
        records = []
    with contextlib.suppress(Exception):  # (a summary that cannot be printed does not change how the run ends)
        if not stopped:
            _finish(records, load_run_meta(args.report), args.report, None, args.json, render=False,
                    failing_on=fail_on(args))
        elif not args.json:
            summary = reports.terminal_summary(records, color=sys.stdout.isatty(), run_meta=load_run_meta(args.report))
            out("\n".join([*summary.splitlines()[:-1], f"INTERRUPTED: {len(records)} cells finished"]))
    return records


def cmd_run(args) -> int:
    from properties import catalogue
    from properties.session import catalogue_jobs

    import reference_impl

    known = catalogue.load()
    ops = choose("op", args.ops, list(known)) if args.ops is not None else tuple(known)
    cfg = config_from_args(args)
    shard = validate(args)
    code = code_hash(Path(reference_impl.__file__).parent.glob("*.py"))
    cells = [len(known[op].regimes) * len(cfg.sides()) for op in ops for _ in cfg.dtypes]  # as catalogue_jobs
    return _session(args, cfg, catalogue_jobs(ops, cfg.dtypes), what=list(ops), shard=shard, code=code, cells=cells)


def cmd_fuzz(args) -> int:
    from properties import catalogue
    from properties.fuzz import fuzz_jobs, write_rates

    import reference_impl

    known = catalogue.load()
    ops = choose("op", args.ops, list(known)) if args.ops is not None else tuple(known)
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds}")
    if args.resume:
        raise UsageError("--resume: a fuzzing campaign starts afresh (its findings replay from the example database)")
    cfg = config_from_args(args)
    shard = validate(args)
    code = code_hash(Path(reference_impl.__file__).parent.glob("*.py"))
    mine = -(-len(ops) * len(cfg.dtypes) // shard[1]) if shard else len(ops) * len(cfg.dtypes)  # this shard's jobs
    jobs = fuzz_jobs(ops, cfg.dtypes, args.seconds * min(args.workers, mine) / mine)
    cells = [len(known[op].regimes) * len(cfg.sides()) for op in ops for _ in cfg.dtypes]
    status = _session(args, cfg, jobs, what=list(ops), shard=shard, code=code, cells=cells)
    if not args.json and (args.report / "results.jsonl").exists():
        say(write_rates(args.report))
    return status


def _finish(records, meta, report_dir: Path, junit: Path | None, as_json: bool, *, render: bool = True,
            verbose: bool = False, failing_on: tuple[str, ...] = ("fail", "unstable")) -> int:
    """Write the page (and JUnit), print the summary; the exit status. A page or JUnit file that
    cannot be written is an internal error (3) said after the summary."""
    import reports
    from reports.records import checked, failing as failing_records, severity

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
    failing = len(failing_records(records, failing_on))
    nothing = not checked(records)
    if as_json:
        out(json.dumps({"counts": counts, "ok": failing == 0 and not nothing, "fail_on": list(failing_on),
                         "report": str(html) if html else None,
                         "results": str(report_dir / "results.jsonl"), "duration_s": meta.get("duration_s"),
                         "failures": [{**{k: r.get(k) for k in ("id", "status", "kind", "blame", "pattern", "message",
                                                                "replay")}, "severity": severity(r)}
                                      for r in failing_records(records, failing_on)]}))
    else:
        out(reports.terminal_summary(records, color=sys.stdout.isatty(), run_meta=meta))
        if html is not None:
            out(f"report: {html}")
    for what, e in problems:
        internal_error(e, verbose, f"writing {what}: ")
    if problems:
        return EXIT_INTERNAL
    if failing:
        return EXIT_FAIL
    if nothing:
        skipped = counts.get("skip", 0)
        say(f"nothing was checked ({f'all {skipped} cells skipped' if skipped else 'no cells'}): exit {EXIT_NOTHING}")
        return EXIT_NOTHING
    return EXIT_OK


def cmd_list(args) -> int:
    from properties import catalogue

    ops = catalogue.load()
    if args.json:
        out(json.dumps([s.describe() for s in ops.values()], indent=1))
    else:
        width = max(len(n) for n in ops)
        out("\n".join(f"{s.name:<{width}}  {s.family:<14} {','.join(s.regimes):<40} {s.source}"
                       for s in ops.values()))
    return EXIT_OK


def cmd_report(args) -> int:
    import reports
    from reports.records import ReportLock

    missing = [quoted(p) for p in args.results if not p.is_file()]
    if missing:
        raise UsageError(f"no such results file: {', '.join(missing)}")
    check_junit(args.junit, args.report, inputs=args.results)
    try:
        records = reports.load_records(args.results)
    except reports.RecordError as e:
        raise UsageError(str(e)) from None
    meta = reports.load_run_meta(args.results[-1].parent)
    if len(args.results) > 1:
        meta = dict(meta, merged_from=[str(p) for p in args.results])
        meta.pop("identity", None)  # merged records are no single run's: --resume there refuses
    prepare_report_dir(args.report)
    with ReportLock(args.report, wait=args.wait, on_wait=_on_wait(args.report)):
        try:
            records = _gather(records, meta, args.report)
        except OSError as e:
            internal_error(e, args.verbose)
            return EXIT_INTERNAL
        return _finish(records, meta, args.report, args.junit, False, verbose=args.verbose, failing_on=fail_on(args))


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
    from .sources import SUFFIXES as SOURCE_SUFFIXES

    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"no such file or folder: {str(path)!r}")
    if path.is_file() and path.suffix.lower() not in (".py", *SOURCE_SUFFIXES):
        raise UsageError(f"{str(path)!r} is not a .py file, a notebook or notes ({', '.join(SOURCE_SUFFIXES)})")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    cfg = config_from_args(args)
    shard = validate(args)
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
    with audit.Audit(sources, args.convention, conf, folder=path.is_dir(), verbose=args.verbose, judge_cfg=cfg) as run:
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
            for note in run.notes:  # what a notebook or notes held that could not run, and why
                print(f"gradaudit audit: {clean(note)}", file=sys.stderr)
            for error in errors:
                print(f"gradaudit audit: {clean(error)}", file=sys.stderr)
            if absent:
                print(f"gradaudit audit: not defined in {clean(path.name)}, not checked: {', '.join(absent)}",
                      file=sys.stderr)
            if not jobs and args.keyword is None:
                what = "cs231n-named functions" if args.convention else "@gradaudit.derivation functions"
                print(f"gradaudit audit: no {what} in {clean(str(path))}" + (f"; {clean('; '.join(hints))}" if hints
                                                                              else ""), file=sys.stderr)
        session_jobs = run.session_jobs(jobs, workers=args.workers or 1, sharded=bool(args.shard),
                                        children=args.children or audit.default_children(args.workers or 1))
        # cells per session job, as session_jobs makes them: one job per function when sharded (else
        # the shard selection does not apply and only the sum counts); a file that cannot be imported: one
        per = [1 if j.skip or j.op == "(import)" else len(j.cells(cfg)) for j in jobs]
        code = code_hash(audit.derivation_files(path))
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
    out(f"{clean(r.id)}: {clean(r.case.summary())}")
    out(f"  {r.verdict.status}: {clean(r.verdict.message, 4000) or 'agrees'}")
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
    from reports.records import ReportBusy
    from reports.text import clean

    command = {"run": cmd_run, "audit": cmd_audit, "list": cmd_list, "report": cmd_report,
               "replay": cmd_replay, "mutate": cmd_mutate, "fuzz": cmd_fuzz}[args.command]
    shown = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        with handled_signals():
            return command(args)
    except (UsageError, ReportBusy) as e:
        say(f"error: {clean(e, 2000)}")
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        where = getattr(args, "report", None)
        kept = f"; finished cells are in {quoted(where / 'results.jsonl')} (--resume continues)" if (
            args.command in ("run", "audit") and where is not None) else ""
        say(f"interrupted ({signal.Signals(signum).name}){kept}")
        return 128 + signum
    except BrokenPipeError:  # the reader of stdout went away (`| head`)
        silence_stdout()
        return EXIT_OK
    except Exception as e:  # gradaudit itself broke
        internal_error(e, getattr(args, "verbose", False))
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
