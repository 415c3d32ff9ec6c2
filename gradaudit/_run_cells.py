"""Running a notebook's or notes' text (gradaudit/sources.py `text`) in the audit child cell by cell,
as a reader runs a notebook: a cell that raises, or trains a model for minutes, does not take the
functions defined after it down with it."""
from __future__ import annotations

import ast
import contextlib
import signal
import threading
import time

from ._guard import clean
from .sources import HEADER, locate

__all__ = ["CellOverTime", "chunks_of_text", "run_text"]


def chunks_of_text(text: str) -> list[tuple[int, str, str]]:
    """(first line, chunk name, header and code) of each chunk of a text `text` made; a text not
    made by it (no header on its first line) is one chunk."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines) and (m := HEADER.search(lines[i])):
        n = int(m.group(2))
        out.append((i + 1, m.group(1), "\n".join(lines[i:i + 1 + n])))
        i += 1 + n
    if i < len(lines) and "".join(lines[i:]).strip():
        out.append((i + 1, out[-1][1] if out else "the text", "\n".join(lines[i:])))
    return out


class CellOverTime(BaseException):
    """Raised in a cell that runs past its time (a training loop): a BaseException, so that the
    cell's own `except Exception` does not swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise CellOverTime(f"the cell ran for more than {seconds:.0f} s and was stopped")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)


def run_text(text: str, path: str, namespace: dict, call, last_traceback=lambda: None,
             seconds: float | None = None) -> list[tuple[str, str, str | None]]:
    """Run a document's text (`text`) chunk by chunk in `namespace`, as a reader runs a notebook's
    cells: `call(fn, label, args)` runs each (the audit child's guard, which turns whatever a chunk
    raises into UserCodeError); a chunk that raises does not stop the next one. Each chunk is
    compiled at its own lines of `path`, so that tracebacks and `where` name the cell as for the
    whole text. `seconds`: the time the whole text may take. A notebook with its data at hand trains
    models in its cells: a cell gets at most a quarter of that time, and once it is spent, the cells
    left only define (their def, class and import statements run), so that the functions after a
    training loop are still there. Returns (chunk name, what went wrong, `last_traceback()`) for each
    chunk that raised, was stopped or was cut to its definitions."""
    raised, deadline = [], None if seconds is None else time.monotonic() + seconds
    for first, name, code in chunks_of_text(text):
        tree = ast.parse("\n" * (first - 1) + code, path)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            kept = [node for node in tree.body if isinstance(node, _DEFINITIONS)]
            if len(kept) < len(tree.body):
                raised.append((name, f"only its def, class and import statements ran (the cells before it had used "
                                     f"the {seconds:.0f} s a document may take)", None))
            tree.body, left = kept, None
        try:
            with _time_limit(None if left is None else min(left, seconds / 4)):
                call(exec, name, (compile(tree, path, "exec", dont_inherit=True), namespace))
        except (Exception, CellOverTime) as e:  # noqa: BLE001  the guard's UserCodeError: what the chunk raised
            raised.append((name, str(e), last_traceback()))
    return raised


def cells_that_raised(loaded) -> list[str]:
    """The child's account of a notebook's or notes' cells that raised as it ran them one by one
    ([chunk name, error, traceback], gradaudit/_run_cells.py), as sentences; whatever else the
    child sent is ignored: it only ever becomes text."""
    out = []
    for item in (loaded.get("raised") if isinstance(loaded, dict) else None) or ():
        if isinstance(item, list) and len(item) == 3 and all(isinstance(v, str) for v in item[:2]):
            name, error, tb = item
            at = locate(tb) if isinstance(tb, str) else None
            error = error.removeprefix(f"{name} ").removeprefix("raised ")  # "cell 3 raised X" / "cell 3 called sys.exit(0)"
            error = error.removesuffix(f" at {at}") if at else error  # said once, in front
            out.append(f"{clean(at or name, 200)}: {clean(error, 300)}; the rest of {clean(name, 40)} was not run")
    return out[:50]
