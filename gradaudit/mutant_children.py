"""The child processes that judge mutants for `gradaudit mutate` (gradaudit/mutate.py): each runs
gradaudit/_mutant_worker.py over a chunk of items, one result per item whatever the child does
(hangs are killed with their process group, a child that dies mid-chunk leaves its items an
internal error)."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Children", "PROBE", "WORKER"]

WORKER = "gradaudit._mutant_worker"
PROBE = {"narrow": 8, "full": 16}  # inputs per value regime and shape breadth


# ---- children ---------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class Children:
    """Runs items in `workers` child processes; each item gets exactly one result."""

    def __init__(self, plan, cfg: dict, *, workers: int, timeout: float, scratch: str,
                 extra=(), probe=None, progress=None):
        self.plan, self.cfg, self.workers, self.timeout, self.scratch = plan, cfg, workers, timeout, scratch
        self.extra, self.probe, self.progress = list(extra), probe or PROBE, progress
        self.results: dict = {}
        self.lock = threading.Lock()

    def run(self, items: list[dict]) -> dict:
        chunks = _chunks(items, self.workers)
        threads = [threading.Thread(target=self._drive, args=(c, k), daemon=True) for k, c in enumerate(chunks) if c]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.results

    def _job(self, items, k) -> dict:
        return {"kind": self.plan.kind, "original": self.plan.original, "cfg": self.cfg, "items": items,
                "scratch": self.scratch, "extra": self.extra, "probe": self.probe,
                "log": os.path.join(self.scratch, f"worker-{k}.log")}

    def _done(self, res: dict) -> None:
        with self.lock:
            self.results[res["id"]] = res
            if self.progress:
                self.progress(res, len(self.results))

    def _drive(self, items: list[dict], k: int) -> None:
        remaining = list(items)
        while remaining:
            r, w = os.pipe()
            job = dict(self._job(remaining, k), ctl_fd=w)
            proc = subprocess.Popen([sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=(w,), env=_env(), cwd=self.scratch,
                                    start_new_session=True)
            os.close(w)
            try:
                proc.stdin.write(json.dumps(job).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            current, started, finished, buf = None, time.monotonic(), False, b""
            done = set()
            try:
                while True:
                    ready, _, _ = select.select([r], [], [], 0.2)
                    if ready:
                        data = os.read(r, 1 << 16)
                        if not data:
                            break
                        buf += data
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
                            if kind == "S":
                                current, started = rest, time.monotonic()
                            elif kind == "R":
                                res = json.loads(rest)
                                done.add(res["id"])
                                self._done(res)
                                current = None
                            elif kind == "D":
                                finished = True
                    if current is not None and time.monotonic() - started > self.timeout:
                        _kill(proc)
                        self._done({"id": current, "died": f"did not finish within {self.timeout:g} s (--timeout)"})
                        done.add(current)
                        current = None
                        break
            finally:
                os.close(r)
                _kill(proc) if proc.poll() is None and not finished else proc.wait()
            if current is not None:
                code = proc.returncode
                how = f"killed by signal {-code}" if code and code < 0 else f"exited with status {code}"
                self._done({"id": current, "died": f"the process judging it {how}"})
                done.add(current)
            remaining = [i for i in remaining if i["id"] not in done]
            if not done and not finished and remaining:
                # the worker died before judging anything: gradaudit's own failure, not a mutant's
                log = Path(self.scratch, f"worker-{k}.log")
                tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
                for i in remaining:
                    self._done({"id": i["id"], "internal_error": f"the mutation worker failed to start: {tail}"})
                break
            if finished:
                for i in remaining:  # the child said it was done: nothing may be left without a result
                    self._done({"id": i["id"], "internal_error": "the worker finished without judging it"})
                break


def _kill(proc) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _chunks(items: list[dict], n: int) -> list[list[dict]]:
    """Items to `n` children: the mutants of one function together (their probe inputs and JAX
    compilations are shared), each child's originals first."""
    groups: dict = {}
    for it in items:
        if it.get("path") is not None or "function" in it:
            groups.setdefault(it.get("function") or it["id"], []).append(it)
    originals = {j: it for it in items if it.get("path") is None and "function" not in it for j in it["judges"]}
    chunks: list[list] = [[] for _ in range(max(n, 1))]
    for g in sorted(groups.values(), key=len, reverse=True):
        min(chunks, key=len).extend(g)
    out = []
    for c in chunks:
        needed = []
        for j in dict.fromkeys(j for it in c for j in it["judges"]):
            if j in originals and originals[j] not in needed:
                needed.append(originals[j])
        out.append(needed + c)
    # originals nobody's mutants need (a function with no mutants) still get checked once
    placed = {id(o) for c in out for o in c}
    for o in originals.values():
        if id(o) not in placed:
            min(out, key=len).insert(0, o)
            placed.add(id(o))
    return out
