"""Progress of a run, for the CLI: on a terminal a live `k/N cells · ETA` line; off one (CI logs) a
plain line at each group's end and at least every 10 s. It follows results.jsonl, which every way
of running cells appends to as each group ends (this process, `--workers` processes, an audit's
child processes), so it needs nothing from them."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

__all__ = ["Progress"]


def _duration(s: float) -> str:
    s = max(int(round(s)), 0)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Counts the records appended to `results` after `offset` bytes, out of `total` expected cells
    (None: unknown). `live`: redraw one line in place (a terminal); else print plain lines, one when
    cells were added since the last and at least one every `every` seconds."""

    def __init__(self, results: Path, total: int | None, *, live: bool, stream=None, every: float = 10.0,
                 offset: int = 0, clock=time.monotonic):
        self.results, self.total, self.live = Path(results), total, live
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.offset, self.clock = every, offset, clock
        self.cells = self.failing = 0
        self.t0 = self.last_print = clock()
        self._partial = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what it says ----------------------------------------------------------------------------

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        done = f"{self.cells}/{self.total} cells" if self.total else f"{self.cells} cells"
        out = [done]
        if self.failing:
            out.append(f"{self.failing} failing")
        if self.total and 0 < self.cells < self.total:
            out.append(f"ETA {_duration(elapsed / self.cells * (self.total - self.cells))}")
        elif not self.cells:
            out.append(f"{_duration(elapsed)} elapsed")
        return "gradaudit: " + " · ".join(out)

    def poll(self) -> bool:
        """Read what was appended; True when new cells were recorded."""
        try:
            with open(self.results, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        new = 0
        for raw in lines:
            if not raw.strip():
                continue
            new += 1
            try:
                if json.loads(raw).get("status") in ("fail", "error"):
                    self.failing += 1
            except (ValueError, AttributeError):
                pass
        self.cells += new
        return new > 0

    def tick(self) -> None:
        """One look at the file, and what to print after it."""
        grew = self.poll()
        now = self.clock()
        if self.live:
            self._write(f"\r\x1b[K{self.line()}")
        elif grew or now - self.last_print >= self.every:
            self._write(self.line() + "\n")
            self.last_print = now

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the run
            pass

    # -- the thread --------------------------------------------------------------------------------

    def __enter__(self) -> "Progress":
        if not self.live:  # a CI log says at once that the run started, and how big it is
            self._write(self.line() + "\n")
        self._thread = threading.Thread(target=self._run, name="gradaudit-progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5 if self.live else 1.0):
            self.tick()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.live:
            self._write("\r\x1b[K")  # the summary follows on a clean line
        elif self.poll():
            self._write(self.line() + "\n")
