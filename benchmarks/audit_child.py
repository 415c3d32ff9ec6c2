"""What does it cost to keep audited code out of the judge's process?

1. The round trip to the audit child (gradaudit/_remote.py), interleaved round by round with the same
   call made in-process, median of the rounds:
     ping            a request with nothing in it
     affine_small    affine_forward(x[2,3], w[3,4], b[4]) -> (out, cache kept in the child)
     affine_medium   the same at x[64,128], w[128,96]
     backward_small  affine_backward(dout, cache handle) -> three arrays
2. `gradaudit audit NOTES --profile ci` (the notes audit: examples/notes/*.py copied to a folder of
   their own, so that both checkouts audit the same files; a fresh process, warm JAX cache),
   this checkout and, with --baseline PATH, another one (e.g. the main branch before the child existed),
   run alternately so that a shared machine's load falls on both alike: wall time, and the CPU time
   of the whole process tree (the judge and its children), which a busy machine disturbs less.

    python benchmarks/audit_child.py --json                         # round trips only (~1 minute)
    python benchmarks/audit_child.py --notes 3 --baseline /work/main  # and the notes audit, 3 rounds each
    python benchmarks/audit_child.py --notes 2 --in-process --one-child  # against one process, and one child
    python benchmarks/audit_child.py --count                         # and the notes audit's requests, by kind
    python benchmarks/audit_child.py --verdicts /tmp/before --seed 7  # the same verdicts as another checkout?

3. `--count`: every request to the child by kind, and the replies the child sent ahead
   (gradaudit/_ahead.py) that answered a request (`ahead call`, `ahead vjp`) or were dropped, and the
   CPU of the judge and of the audit child (read from /proc before it is killed).
4. `--verdicts PATH`: the notes audit with `--seed` here and in the checkout at PATH; every cell's
   (status, kind, blame, pattern, message) must be the same (exit 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULE = b"""
import numpy as np
def affine_forward(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b, (x, w)
def affine_backward(dout, cache):
    x, w = cache
    return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout, dout.sum(axis=0)
"""


def round_trips(rounds: int, calls: int) -> dict:
    from gradaudit._remote import Child, RemoteFunction, Source
    from gradaudit._sandbox import Confinement

    ns: dict = {}
    exec(MODULE, ns)
    rng = np.random.default_rng(0)
    small = (rng.standard_normal((2, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4))
    medium = (rng.standard_normal((64, 128)), rng.standard_normal((128, 96)), rng.standard_normal(96))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "layers.py"
        path.write_bytes(MODULE)
        with Child(Confinement(timeout=60), [Source("m0", str(path), MODULE, "_bench_layers")]) as child:
            child.ensure()
            fwd = RemoteFunction(child, "m0", "affine_forward", label="affine_forward", keeps_cache=True)
            bwd = RemoteFunction(child, "m0", "affine_backward", label="affine_backward")
            cache = fwd(*small)[1]
            dout = np.ones((2, 4))
            cases = {
                "ping": (lambda: child.ping("ping"), lambda: None),
                "affine_small": (lambda: fwd(*small), lambda: ns["affine_forward"](*small)),
                "affine_medium": (lambda: fwd(*medium), lambda: ns["affine_forward"](*medium)),
                "backward_small": (lambda: bwd(dout, cache), lambda: ns["affine_backward"](dout, (small[0], small[1]))),
            }
            times = {k: ([], []) for k in cases}
            for _ in range(rounds):
                for name, (remote, local) in cases.items():
                    for i, fn in enumerate((remote, local)):
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            fn()
                        times[name][i].append((time.perf_counter() - t0) / calls)
    return {k: {"child_us": round(statistics.median(r) * 1e6, 1), "in_process_us": round(statistics.median(l) * 1e6, 1)}
            for k, (r, l) in times.items()}


def notes_copy(into: Path) -> Path:
    """The notes' Python files of this checkout, in a folder of their own: both checkouts audit the
    same files (a checkout from before notes support would skip examples/notes/README.md, this one
    reads it)."""
    folder = into / "notes"
    folder.mkdir()
    for f in sorted((ROOT / "examples" / "notes").glob("*.py")):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def notes_audit(checkout: Path, report: Path, notes: Path, *extra) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the processes the judge waited for: the judge itself, and not the
    audit child, which is killed at the end and whose CPU getrusage never sees; `--count` measures it)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(notes), "--profile", "ci",
                        "--report", str(report), *extra], cwd=checkout, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(checkout)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"audit in {checkout} failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


# The same checks as `gradaudit audit NOTES --profile ci`, in one process (`gradaudit.check`, which runs
# the audited code in-process): the cost of the child alone, at the same features. The process set up
# as the audit's judge sets itself up (one BLAS and torch thread, the JAX compile cache), and the HTML
# report written as the audit writes it.
IN_PROCESS = """
import json, sys, warnings
from pathlib import Path

import gradaudit
from properties.config import RunConfig
from properties.session import prepare_process
from reports.html import render_html

prepare_process(RunConfig(dtypes=("float64", "float32"), profile="ci"))
result = gradaudit.check(sys.argv[1], dtypes=("float64", "float32"), profile="ci", report=sys.argv[2],
                         raise_on_failure=False)
render_html(list(result), result.run_meta, Path(sys.argv[2]))
print(json.dumps(sorted((r["id"], r["status"]) for r in result)))
"""


def in_process_checks(checkout: Path, report: Path, notes: Path) -> tuple[float, float, list]:
    """(wall, CPU, [(cell id, status)]) of the notes' checks run in one process (IN_PROCESS)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", IN_PROCESS, str(notes), str(report)], cwd=checkout, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(checkout)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"the in-process checks failed ({r.returncode}): {r.stderr[-2000:]}")
    cells = [tuple(c) for c in json.loads(r.stdout.strip().splitlines()[-1])]
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), cells


def descendants_cpu() -> float:
    """CPU seconds (user + system) of every live process under this one, from /proc."""
    procs, tick = {}, os.sysconf("SC_CLK_TCK")
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            procs[int(p)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
        except (OSError, IndexError, ValueError):
            pass
    total, me = 0.0, os.getpid()
    for ppid, cpu in procs.values():
        while ppid > 1 and ppid != me:
            ppid = procs.get(ppid, (0, 0))[0]
        total += cpu if ppid == me else 0.0
    return total


def request_counts(notes: Path, report: Path) -> dict:
    """The notes audit in this process with every request to the child counted and timed, by kind:
    where the round trips go (`--count`)."""
    import collections

    from gradaudit import _remote
    from gradaudit.cli import main as gradaudit_main

    n, spent = collections.Counter(), collections.Counter()
    plain, plain_send = _remote.Child._receive, _remote.Child._send
    plain_ahead = getattr(_remote.Child, "_answered_ahead", None)

    def send(self, meta, data=b"", **kw):
        self.sent_kind = meta["kind"] + (f" {meta['oracle']}" if meta["kind"] == "vjp" else "") + \
            (" (+ ahead)" if "ahead" in meta else "")
        self.sent_at = time.perf_counter()
        return plain_send(self, meta, data, **kw)

    def receive(self, *a, **kw):
        try:
            return plain(self, *a, **kw)
        finally:
            n[self.sent_kind] += 1
            spent[self.sent_kind] += time.perf_counter() - self.sent_at

    def ahead(self, parts, *a, **kw):
        t0 = time.perf_counter()
        got = plain_ahead(self, parts, *a, **kw)
        kind = f"ahead {parts[0]}" + (f" {parts[2]}" if parts[0] == "vjp" else "") + ("" if got else " (dropped)")
        n[kind] += 1
        spent[kind] += time.perf_counter() - t0
        return got

    child_cpu, plain_close = [0.0], _remote.Child.close

    def close(self):  # the child's CPU, read from /proc before it is killed (getrusage never sees it)
        if self.proc is not None:
            child_cpu[0] += descendants_cpu()
        return plain_close(self)

    _remote.Child._receive, _remote.Child._send, _remote.Child.close = receive, send, close
    if plain_ahead is not None:
        _remote.Child._answered_ahead = ahead
    t0 = time.perf_counter()
    try:
        # one child: the CPU read at its close is that of the one child (a lane's would count both)
        gradaudit_main(["audit", str(notes), "--profile", "ci", "--report", str(report), "--quiet", "--children", "1"])
    finally:
        _remote.Child._receive, _remote.Child._send, _remote.Child.close = plain, plain_send, plain_close
        if plain_ahead is not None:
            _remote.Child._answered_ahead = plain_ahead
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(time.perf_counter() - t0, 1), "judge_cpu_s": round(me.ru_utime + me.ru_stime, 1),
            "child_cpu_s": round(child_cpu[0], 1),
            "requests": {k: {"n": c, "total_s": round(spent[k], 1), "mean_ms": round(1e3 * spent[k] / c, 2)}
                         for k, c in n.most_common()}}


def same_verdicts(other: Path, seed: int) -> int:
    """The notes audit with `--seed` in this checkout and in `other`: 0 when every cell has the same
    (status, kind, blame, pattern, message), else 1 (the differences printed)."""
    keys = ("status", "kind", "blame", "pattern", "message")
    with tempfile.TemporaryDirectory() as d:
        notes, got = notes_copy(Path(d)), {}
        for name, where in (("this", ROOT), ("other", other)):
            notes_audit(where, Path(d) / name, notes, "--seed", str(seed))
            got[name] = {r["id"]: tuple(r.get(k) for k in keys) for r in map(json.loads, (
                Path(d) / name / "results.jsonl").read_text().splitlines())}
    this, that = got["this"], got["other"]
    differ = sorted(i for i in this.keys() | that.keys() if this.get(i) != that.get(i))
    for i in differ:
        print(f"{i}\n  this:  {this.get(i)}\n  other: {that.get(i)}")
    print(f"{len(this)} cells here, {len(that)} there; {len(differ)} differ")
    return 1 if differ else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--notes", type=int, default=0, help="rounds of the notes audit (0: skip it)")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time the notes audit in")
    ap.add_argument("--in-process", action="store_true",
                    help="time the notes' same checks run in one process (gradaudit.check), alternated with the audit")
    ap.add_argument("--one-child", action="store_true",
                    help="also time this checkout's audit with --children 1 (one lane: the audit before lanes), alternated")
    ap.add_argument("--workers", type=int, default=None, help="--workers N for the audits (not the in-process checks)")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-up audit (the JAX caches are warm already)")
    ap.add_argument("--count", action="store_true", help="count the notes audit's requests to the child, by kind")
    ap.add_argument("--verdicts", type=Path, default=None, help="another checkout: the same verdicts with --seed?")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.verdicts:
        raise SystemExit(same_verdicts(args.verdicts.resolve(), args.seed))
    out = {"load_average": os.getloadavg(), "round_trip": round_trips(args.rounds, args.calls)}
    if args.count:
        with tempfile.TemporaryDirectory() as d:
            out["notes_requests"] = request_counts(notes_copy(Path(d)), Path(d) / "count")
    if args.notes:
        checkouts = {"this": ROOT, **({"one_child": ROOT} if args.one_child else {}),
                     **({"baseline": args.baseline.resolve()} if args.baseline else {}),
                     **({"in_process": ROOT} if args.in_process else {})}
        workers = ["--workers", str(args.workers)] if args.workers else []
        with tempfile.TemporaryDirectory() as d:
            notes = notes_copy(Path(d))
            def timed(name, where, report):
                if name == "in_process":
                    w, c, cells = in_process_checks(where, report, notes)
                    out.setdefault("in_process_cells", len(cells))
                    return w, c
                return notes_audit(where, report, notes, *workers, *(["--children", "1"] if name == "one_child" else []))

            for name, where in checkouts.items() if not args.no_warm else ():  # warm each one's JAX cache
                timed(name, where, Path(d) / f"warm-{name}")
            wall, cpu = {name: [] for name in checkouts}, {name: [] for name in checkouts}
            for i in range(args.notes):
                for name, where in checkouts.items():
                    w, c = timed(name, where, Path(d) / f"{name}-{i}")
                    wall[name].append(round(w, 1))
                    cpu[name].append(round(c, 1))
        out["notes_audit_s"] = {name: {"wall": wall[name], "cpu": cpu[name], "median_wall": statistics.median(wall[name]),
                                       "median_cpu": statistics.median(cpu[name])} for name in checkouts}
        if args.baseline:
            this, base = out["notes_audit_s"]["this"], out["notes_audit_s"]["baseline"]
            out["notes_audit_slowdown"] = {k: round(this[f"median_{k}"] / base[f"median_{k}"] - 1, 3)
                                           for k in ("wall", "cpu")}
            ratios = [round(t / b, 2) for t, b in zip(this["wall"], base["wall"])]  # pair by pair
            out["notes_audit_wall_ratio"] = {"pairs": ratios, "median": statistics.median(ratios)}
        if args.one_child:  # what the lanes change: this audit over the same with one child
            this, one = out["notes_audit_s"]["this"], out["notes_audit_s"]["one_child"]
            ratios = [round(t / b, 2) for t, b in zip(this["wall"], one["wall"])]
            out["lanes_vs_one_child_wall_ratio"] = {"pairs": ratios, "median": statistics.median(ratios)}
        if args.in_process:  # the child's cost at the same features: the audit over its checks in one process
            this, alone = out["notes_audit_s"]["this"], out["notes_audit_s"]["in_process"]
            ratios = [round(t / b, 2) for t, b in zip(this["wall"], alone["wall"])]
            out["child_vs_in_process_wall_ratio"] = {"pairs": ratios, "median": statistics.median(ratios)}
        out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
