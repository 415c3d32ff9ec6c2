"""`gradaudit` command line: run, list, report, replay.

Exit codes: 0 all pass (kinks and skips included), 1 any fail or error, 2 bad usage.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


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
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (same seed and versions, same verdicts)")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default=None,
                   help="Hypothesis settings profile (default: ci when $CI is set, else dev)")
    p.add_argument("--report", type=Path, default=Path("gradaudit-report"), help="report directory")
    p.add_argument("--junit", type=Path, default=None, help="also write JUnit XML here")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the terminal one")
    p.add_argument("--resume", action="store_true", help="keep DIR/results.jsonl and run only the cells not in it")
    p.add_argument("--workers", type=int, default=1, help="processes to run cells in (default 1)")
    p.add_argument("--shard", default=None, help="i/n: run only the i-th of n deterministic slices (CI matrix jobs)")
    p.add_argument("--example-db", default=None,
                   help="Hypothesis example database: a directory (default .hypothesis/gradaudit) or redis://host:port/db")
    p.add_argument("--allow-tf32", action="store_true",
                   help="let float32 matmul/conv use TF32 on GPU (to see what it does; off by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradaudit", description="Differential testing of hand-derived gradients.")
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
    _common(aud)
    lst = sub.add_parser("list", help="list the catalogue")
    lst.add_argument("--json", action="store_true")
    rep = sub.add_parser("report", help="re-render (and merge) results.jsonl files into one report")
    rep.add_argument("results", nargs="+", type=Path)
    rep.add_argument("--report", type=Path, default=Path("gradaudit-report"))
    rep.add_argument("--junit", type=Path, default=None)
    rpl = sub.add_parser("replay", help="re-run a saved counterexample")
    rpl.add_argument("id", help="cell id (as in the record's `replay`) or a path to a .npz")
    rpl.add_argument("--report", type=Path, default=Path("gradaudit-report"))
    return parser


def _versions() -> dict:
    import hypothesis
    import numpy

    v = {"python": platform.python_version(), "numpy": numpy.__version__, "hypothesis": hypothesis.__version__}
    for mod in ("torch", "jax"):
        if mod in sys.modules:
            v[mod] = getattr(sys.modules[mod], "__version__", "?")
        else:  # a --workers run: the frameworks live in the workers; importing one here costs seconds
            try:
                from importlib.metadata import version

                v[mod] = version(mod)
            except Exception:
                pass
    return v


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    from properties.runner import RunConfig

    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be at least 1, got {args.examples}")
    profile = args.profile or ("ci" if os.environ.get("CI") else "dev")
    if args.example_db is not None and (profile == "ci" or args.seed is not None):
        # Hypothesis runs a derandomized or seeded search without a database: say so rather than
        # let a campaign believe its failures are being shared
        why = "--profile ci is derandomized" if profile == "ci" else "--seed runs Hypothesis without one"
        print(f"gradaudit: warning: --example-db {args.example_db} is not used ({why}); "
              "use --profile dev or thorough without --seed to share failures", file=sys.stderr)
    return RunConfig(
        oracles=_choose("oracle", args.oracles, oracles.ORACLES) if args.oracles is not None else oracles.ORACLES,
        devices=_choose("device", args.devices, oracles.DEVICES),
        dtypes=_choose("dtype", args.dtypes, ("float64", "float32")),
        profile=profile, examples=args.examples, seed=args.seed, report_dir=args.report,
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


def run_session(args, cfg, jobs, *, what: list[str], progress=True) -> int:
    """Run `jobs` (label, fn(sink, cfg) -> records) into args.report, then report. Shared by run and audit.

    `--resume` keeps the records already in results.jsonl and skips their cells; `--workers N` runs
    the jobs in N processes appending to the same results.jsonl; `--shard i/n` keeps every n-th job.
    """
    import reports
    from properties.runner import RecordSink

    _prepare_report_dir(args.report)
    results = args.report / "results.jsonl"
    previous = []
    if getattr(args, "resume", False) and results.exists():
        try:
            previous = reports.load_records([results])
        except reports.RecordError as e:
            raise UsageError(f"cannot resume: {e}") from None
        for r in previous:
            r.pop("_source", None)
        cfg.done = {r["id"] for r in previous}
    elif results.exists():
        results.unlink()  # a new run
    shard = parse_shard(getattr(args, "shard", None))
    if shard is not None:
        i, n = shard
        jobs = [j for k, j in enumerate(jobs) if k % n == i - 1]
    meta = {"command": ["gradaudit", *sys.argv[1:]], "seed": args.seed, "profile": cfg.profile,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "finished": None,
            "duration_s": None, "oracles": list(cfg.oracles), "devices": list(cfg.devices),
            "dtypes": list(cfg.dtypes), "ops": what, "cpu": _cpu_name(), "gpus": [],
            "shard": getattr(args, "shard", None), "workers": getattr(args, "workers", 1)}
    (args.report / "run.json").write_text(json.dumps(meta, indent=1))
    t0 = time.perf_counter()
    tty = progress and sys.stderr.isatty() and not args.json
    records = list(previous)
    workers = getattr(args, "workers", 1) or 1
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    from properties.runner import jax_cache_delta, jax_cache_stats, merge_jax_cache_stats

    jax_stats = []
    try:
        if workers == 1:
            from properties.runner import apply_precision, prepare_process

            prepare_process(cfg)  # one torch thread, JAX's persistent compile cache
            apply_precision(cfg)
            before = jax_cache_stats()
            sink = RecordSink(results)
            try:
                for label, fn in jobs:
                    t_job = time.perf_counter()
                    recs = fn(sink, cfg)
                    records.extend(recs)
                    if tty:
                        _progress(label, recs, time.perf_counter() - t_job)
            finally:
                sink.close()
                jax_stats.append(jax_cache_delta(before, jax_cache_stats()))
        else:
            from properties.parallel import run_parallel

            for label, recs, dt in run_parallel(jobs, cfg, results, workers, jax_stats):
                records.extend(recs)
                if tty:
                    _progress(label, recs, dt)
    finally:
        meta.update(finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    duration_s=round(time.perf_counter() - t0, 2), versions=_versions(), flags=_all_flags(cfg, records))
        meta["gpus"] = sorted({r["device_name"] for r in records if r["device"] == "cuda" and r["status"] != "skip"})
        if "jax" in cfg.oracles:  # jit cache hits/misses, XLA compiles, persistent-cache hits
            meta["jax_cache"] = merge_jax_cache_stats(jax_stats)
        (args.report / "run.json").write_text(json.dumps(meta, indent=1))
    return _finish(records, meta, args.report, args.junit, args.json)


def _progress(label, recs, dt) -> None:
    n = sum(r["examples"] for r in recs)
    bad = sum(r["status"] in ("fail", "error") for r in recs)
    print(f"  {label:<34} {len(recs):>3} cells  {n / max(dt, 1e-9):7.0f} examples/s"
          f"{'  ' + str(bad) + ' FAILING' if bad else ''}", file=sys.stderr)


def cmd_run(args) -> int:
    from properties import catalogue  # noqa: F401  (registers the ops)
    from properties.runner import catalogue_job
    from properties.spec import CATALOGUE

    ops = _choose("op", args.ops, list(CATALOGUE)) if args.ops is not None else tuple(CATALOGUE)
    cfg = config_from_args(args)
    # one job per (op, dtype): the unit a worker or a shard takes
    jobs = [(f"{op} {dtype}", catalogue_job(op, dtype)) for op in ops for dtype in cfg.dtypes]
    return run_session(args, cfg, jobs, what=list(ops))


def _all_flags(cfg, records=()) -> dict:
    """The precision flags in force, from the records when there are any: in a --workers run the
    frameworks were imported by the workers only, and importing them here just for this took seconds."""
    flags = {}
    for r in records:
        flags.update(r.get("flags") or {})
    if flags:
        return flags
    import oracles

    for o in cfg.oracles:
        try:
            flags.update(oracles.get(o).flags())
        except Exception:
            pass
    return flags


def _finish(records, meta, report_dir: Path, junit: Path | None, as_json: bool) -> int:
    import reports

    html = reports.render_html(records, meta, report_dir)
    if junit is not None:
        reports.write_junit(records, junit)
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
        print(reports.terminal_summary(records, color=sys.stdout.isatty()))
        print(f"report: {html}")
    return EXIT_FAIL if failing else EXIT_OK


def cmd_list(args) -> int:
    from properties import catalogue  # noqa: F401
    from properties.spec import CATALOGUE

    if args.json:
        print(json.dumps([s.describe() for s in CATALOGUE.values()], indent=1))
    else:
        width = max(len(n) for n in CATALOGUE)
        for s in CATALOGUE.values():
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
    from .audit import cmd_audit as run_audit

    return run_audit(args)


def cmd_replay(args) -> int:
    from .replay import replay

    return replay(args.id, args.report)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage line
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    try:
        return {"run": cmd_run, "audit": cmd_audit, "list": cmd_list, "report": cmd_report, "replay": cmd_replay}[args.command](args)
    except UsageError as e:
        print(f"gradaudit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gradaudit: interrupted; finished cells are in results.jsonl", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
