"""The child process of `gradaudit audit`: imports the user's file and checks its functions.

Started by gradaudit.audit.drive_child with a JSON job on stdin and a pipe (`ctl_fd`) back to the
parent, one event per line:

    P <plan json>     what there is to check (mode "plan")
    T <target>        starting a target;  E <target>: finished it
    C <function>      calling the user's function;  R: it returned (or raised)
    J <record json>   a record, already appended to results.jsonl
    X <json>          a traceback from the user's code (shown with --verbose)
    F <json>          gradaudit's own failure;  D: all done

File descriptors 1 and 2 are redirected into a counting drain before any user code runs, so
nothing the user's code prints reaches the terminal. SIGINT is ignored: the parent decides.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback


def main() -> None:
    job = json.loads(sys.stdin.read())
    ctl = job["ctl_fd"]

    def emit(line: str) -> None:
        os.write(ctl, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gradaudit._guard import Guard, OutputDrain

    drain = OutputDrain()
    guard = Guard(emit, drain, convert_interrupt=True, verbose=job.get("verbose", False))
    try:
        if job["mode"] == "plan":
            emit("P " + json.dumps(_plan(job, guard)))
        else:
            _run(job, guard, emit)
        emit("D")
    except BaseException as e:  # noqa: BLE001  gradaudit's own failure: report it, never hang
        emit("F " + json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}))
    finally:
        # skip interpreter shutdown: the user's atexit hooks, framework thread teardown
        os._exit(0)


def _plan(job: dict, guard) -> dict:
    from pathlib import Path

    from gradaudit._guard import UserCodeError, clean
    from gradaudit.audit import derivation_files, plan_file

    path = Path(job["path"])
    folder = path.is_dir()
    jobs, absent, hints, notes = [], None, [], []
    for p in derivation_files(path):
        try:
            got = plan_file(p, job["convention"], guard, folder=folder)
        except UserCodeError as e:
            return {"jobs": jobs, "absent": absent or [], "error": clean(str(e)), "notes": notes}
        except Exception as e:
            return {"jobs": jobs, "absent": absent or [], "error": clean(f"{p.name}: {type(e).__name__}: {e}"),
                    "notes": notes}
        jobs += got["jobs"]
        absent = got["absent"] if absent is None else [a for a in absent if a in got["absent"]]  # in no file
        hints += [got["hint"]] if got.get("hint") else []
        notes += got.get("notes", [])
    return {"jobs": jobs, "absent": absent or [], "hint": "; ".join(hints) or None, "notes": notes}


def _run(job: dict, guard, emit) -> None:
    from pathlib import Path

    from gradaudit.audit import Job, Modules, run_job
    from properties.config import RunConfig
    from properties.session import apply_precision, prepare_process
    from reports.records import RecordSink

    cfg = RunConfig.from_json(job["cfg"])
    done = set(job.get("done", ()))
    prepare_process(cfg)  # as every process that runs checks: torch threads, the JAX cache
    apply_precision(cfg)
    sink = RecordSink(Path(job["results"]))
    modules = Modules(guard)
    try:
        for j in job["jobs"]:
            j = Job(**j)
            emit(f"T {j.target}")
            run_job(j, cfg, sink, modules, guard, emit=emit, done=done)
            emit(f"E {j.target}")
    finally:
        sink.close()


if __name__ == "__main__":
    main()
