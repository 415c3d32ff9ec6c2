"""The command line's options (gradaudit/cli.py): the parser, and every check of an option that can
be made before anything runs or the report folder is touched (a bad value is a UsageError: one line,
exit status 2)."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import sys
from pathlib import Path

__all__ = ["REPORT_FILES", "UsageError", "add_common_options", "add_fail_on_options", "build_parser", "check_junit",
           "choose", "code_hash", "config_from_args", "csv_list", "fail_on", "parse_shard", "prepare_report_dir",
           "quoted", "seed_to_resume", "validate", "version_text"]


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def csv_list(value: str) -> tuple[str, ...]:
    """A comma-separated list, each name once (in the order given)."""
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def choose(kind: str, given: tuple[str, ...], accepted) -> tuple[str, ...]:
    bad = [g for g in given if g not in accepted]
    if bad:
        raise UsageError(f"unknown {kind} {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")
    if not given:
        raise UsageError(f"no {kind} given; accepted: {', '.join(accepted)}")
    return given


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--oracles", type=csv_list, default=None, help="comma-separated: torch,jax,numeric (default all)")
    p.add_argument("--devices", type=csv_list, default=("cpu",), help="comma-separated: cpu,cuda (default cpu)")
    p.add_argument("--dtypes", type=csv_list, default=("float64", "float32"), help="comma-separated: float64,float32")
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
    add_fail_on_options(p)


def add_fail_on_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fail-on", type=csv_list, default=None, metavar="SEVERITIES",
                   help="comma-separated severities that make the exit status 1: fail (a wrong value), unstable "
                        "(a right formula whose evaluation breaks in an extreme regime), warning (a hazard with "
                        "correct values); default fail,unstable")
    p.add_argument("--strict", action="store_true", help="warnings fail the run too (adds warning to --fail-on)")


def fail_on(args) -> tuple[str, ...]:
    """The severities that fail the run, from --fail-on and --strict (validated)."""
    from reports.records import DEFAULT_FAIL_ON, SEVERITIES

    chosen = DEFAULT_FAIL_ON if getattr(args, "fail_on", None) is None else choose(
        "severity for --fail-on", args.fail_on, SEVERITIES)
    if getattr(args, "strict", False) and "warning" not in chosen:
        chosen = (*chosen, "warning")
    return tuple(chosen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradaudit", description="Differential testing of hand-derived gradients.")
    parser.add_argument("--version", action="version", version=f"gradaudit {version_text()}",
                        help="print gradaudit's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check the catalogue's reference derivations")
    run.add_argument("--ops", type=csv_list, default=None, help="comma-separated op names (default: all; see `gradaudit list`)")
    add_common_options(run)
    aud = sub.add_parser("audit", help="check a user's own derivations (a .py file, a notebook, notes, a folder)")
    aud.add_argument("path", type=Path, help="a Python file with cs231n-style functions or @gradaudit.derivation, a "
                     "notebook (.ipynb) or notes (.md, .txt) with them in code cells or fenced blocks, or a folder of these")
    aud.add_argument("--convention", choices=("cs231n",), default=None,
                     help="check functions named as in the cs231n assignments against the catalogue")
    aud.add_argument("--timeout", type=float, default=60.0, help="seconds per check before a hang is an error (default 60)")
    aud.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                     help="check only the functions whose names match EXPR, as pytest -k does: a substring "
                          "(case-insensitive), or names joined with and/or/not and parentheses "
                          "(-k conv, -k \"batchnorm and not spatial\")")
    aud.add_argument("--children", type=int, default=None, metavar="N",
                     help="audit children, each checking one function at a time while the judge works for the "
                          "others (default: 2 on two or more cores, 1 with --workers or --shard); each imports "
                          "the audited files: with 1 their import-time code runs once")
    aud.add_argument("--memory-limit", default="4G", metavar="SIZE",
                     help="address space the audited code may use in its child process, beyond what the harness "
                          "maps there (default 4G)")
    aud.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                     help="hand this environment variable to the audited code (it gets only PATH, HOME, LANG and "
                          "the Python path by default); repeatable")
    aud.add_argument("--sandbox", choices=("process", "bwrap"), default="process",
                     help="process (default): a confined child process; bwrap: also a read-only filesystem, no "
                          "network and its own PID namespace (bubblewrap); see docs/security.md")
    add_common_options(aud)
    fz = sub.add_parser("fuzz", help="a fuzzing campaign over the catalogue: many value sets per example, for a time")
    fz.add_argument("--ops", type=csv_list, default=None, help="comma-separated op names (default: all)")
    fz.add_argument("--seconds", type=float, default=60.0,
                    help="the campaign's wall time, shared by the ops, dtypes and regimes (default 60)")
    add_common_options(fz)
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
    add_fail_on_options(rep)
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


def prepare_report_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"report directory {quoted(path)} is not writable ({e.strerror or e})") from None


def quoted(path) -> str:
    """A path in a message: quoted, escaped (it may hold anything)."""
    from reports.text import clean

    return repr(clean(str(path), 300))


# The files of a report folder (reports.records, reports.cases, reports.html): never a --junit target.
REPORT_FILES = ("results.jsonl", "run.json", "index.html", ".lock")


def check_junit(junit: Path | None, report: Path, inputs=()) -> None:
    """--junit must be a file we may write that is none of the records or the report folder's files."""
    if junit is None:
        return
    if junit.is_dir():
        raise UsageError(f"--junit {quoted(junit)} is a directory; give the path of an .xml file")
    target = os.path.realpath(junit)
    if any(target == os.path.realpath(x) for x in
           [*(report / f for f in REPORT_FILES), *(Path(i) / "results.jsonl" if Path(i).is_dir() else i
                                                   for i in inputs)]):
        raise UsageError(f"--junit {quoted(junit)} would overwrite the records or the report; give another path")
    if Path(target).parent == Path(os.path.realpath(report / "cases")):
        raise UsageError(f"--junit {quoted(junit)} is inside the report's cases/ folder; give another path")
    parent = Path(target).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or (
            junit.exists() and not os.access(junit, os.W_OK)):
        raise UsageError(f"--junit {quoted(junit)} cannot be written")


def validate(args) -> tuple[int, int] | None:
    """Every option of run/audit that can be checked before anything runs or the report folder is
    touched; returns the parsed --shard."""
    if getattr(args, "workers", 1) < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    children = getattr(args, "children", None)
    if children is not None and children < 1:
        raise UsageError(f"--children must be at least 1, got {children}")
    if children not in (None, 1) and (getattr(args, "workers", 1) > 1 or getattr(args, "shard", None)):
        raise UsageError("--children is the lanes of one judge process: with --workers or --shard each "
                         "process has one child")
    if args.force and not args.resume:
        raise UsageError("--force only makes sense with --resume")
    shard = parse_shard(getattr(args, "shard", None))
    check_junit(args.junit, args.report)
    return shard


def code_hash(files) -> str:
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
    fail_on(args)  # a bad --fail-on is a usage error before anything runs
    profile = args.profile or default_profile()
    seed = args.seed
    if seed is None and profile != "ci" and getattr(args, "resume", False):
        seed = seed_to_resume(args.report)  # the run it continues drew its seed; a new one would be refused
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
        oracles=choose("oracle", args.oracles, oracles.ORACLES) if args.oracles is not None else oracles.ORACLES,
        devices=choose("device", args.devices, oracles.DEVICES),
        dtypes=choose("dtype", args.dtypes, DTYPES),
        profile=profile, examples=args.examples, seed=seed, seed_drawn=args.seed is None and seed is not None,
        report_dir=args.report,
        database=args.example_db or str(Path(".hypothesis") / "gradaudit"),
        allow_tf32=getattr(args, "allow_tf32", False))


def seed_to_resume(report: Path) -> int | None:
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


def version_text() -> str:
    from . import __version__

    return __version__
