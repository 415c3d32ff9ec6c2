"""Code read out of documents: the code cells of a Jupyter notebook, the fenced Python blocks of notes.

A document becomes a list of chunks (one per code cell or fenced block). Two ways to run them:

- `text(path)` (`gradaudit audit`): the chunks as one module's text (`Document.source`, each chunk
  under a one-line header), which the audit child compiles under the document's own path;
  `Document.position(line)` maps a line of that text to its chunk, so `where`, `innermost` and
  `locate` (a traceback sent by the child) name "cell 6, line 3" as a reader counts.
- `load(path)` (`gradaudit.check`, in this process): each chunk compiled under a file name of its
  own — ``/path/to/hw.ipynb, cell 7`` or ``/path/to/note.md, block 3`` — with line numbers counted
  inside the chunk and its lines in `linecache`, so that tracebacks and `inspect.getsource` name
  the cell or block without translation.

Numbering, as a reader counts:

- **cells**: the 1-based index of the cell among *all* cells of the notebook, markdown and raw
  cells included. A saved notebook does not record the order in which cells were run (execution
  counts are those of one session, and missing for cells never run), so position is the only
  number that means the same to everyone.
- **blocks**: the 1-based index of the fenced block among all fenced blocks of the note (```` ```sh ````
  and unlabelled ones included), so counting the fences finds it; `Chunk.doc_line` is the
  document line of the block's first code line.
- **lines**: 1-based, inside the cell or the block (line 1 of a block is the line after its
  opening fence).

What is kept: in a notebook, every code cell, verbatim, except IPython syntax, which Python cannot
run — cells that start with a cell magic (``%%timeit``), line magics (``%matplotlib inline``),
shell lines (``!pip install ...``, ``files = !ls``) and help lines (``np.sum?``, ``?np.sum``);
each skipped line becomes ``pass`` at its indentation so that line numbers and blocks stay intact.
In notes, fenced blocks labelled ``python``/``py``/``python3``/``ipython``, and unlabelled fences
whose content parses as Python. A labelled block that does not parse (notes often hold pseudo-code)
is skipped with a message naming it. Notes often use ``np`` without importing it; when no block
binds ``np``, it is NumPy (and a message says so).

`load(path)` runs the chunks in order, in one module. A chunk that raises is reported (naming the
cell or block and line) and the next chunk runs, as when a reader runs the notebook's cells one by
one: a data-loading cell that fails here does not hide the functions defined after it. The audit
child is sent `text(path)`, one module's text, and runs it chunk by chunk in the same way
(gradaudit/_run_cells.py): a chunk that raises is a message (naming the cell and line) and the next one runs.
Chunks that do not compile are left out of the text, with a message, in both.
"""
from __future__ import annotations

import ast
import json
import linecache
import re
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOK_SUFFIXES = (".ipynb",)
NOTE_SUFFIXES = (".md", ".markdown", ".txt")
SUFFIXES = NOTEBOOK_SUFFIXES + NOTE_SUFFIXES
PYTHON_LABELS = {"python", "py", "python3", "ipython", "ipython3", "pycon"}


class DocumentError(ValueError):
    """The document itself cannot be read (not a notebook, not text); names the file and why."""


@dataclass(frozen=True)
class Chunk:
    """One code cell or fenced block, as it will run."""

    kind: str  # "cell" | "block"
    number: int  # see the module docstring: a cell's index among all cells, a block's among all fences
    code: str  # what runs: the chunk's lines, IPython syntax replaced by `pass`
    filename: str  # the name it is compiled under ("<path>, cell 7")
    doc_line: int | None = None  # blocks: the document line of the first code line

    @property
    def name(self) -> str:
        return f"{self.kind} {self.number}"

    def where(self, line: int | None = None) -> str:
        """'cell 7, line 3' (the document line too, for a block of notes)."""
        if line is None:
            return self.name
        text = f"{self.name}, line {line}"
        if self.doc_line is not None:
            text += f" (line {self.doc_line + line - 1} of {Path(self.filename.rsplit(', ', 1)[0]).name})"
        return text


@dataclass
class Document:
    path: Path
    kind: str  # "notebook" | "notes"
    chunks: list[Chunk]
    messages: list[str] = field(default_factory=list)  # what was skipped, and why
    prelude: str = ""  # a statement on the first header line ("import numpy as np" for notes that need it)

    @property
    def source(self) -> str:
        """The chunks as one module source, each under a one-line comment naming it and its length
        (`position` counts on the one line; gradaudit/_run_cells.py walks the text by the lengths)."""
        return "".join(f"{self.prelude + '  ' if i == 0 and self.prelude else ''}# ---- {c.name} ---- "
                       f"{c.code.count(chr(10)) + 1} lines\n{c.code}\n" for i, c in enumerate(self.chunks))

    def position(self, line: int) -> tuple[Chunk, int] | None:
        """(chunk, line in the chunk) of a 1-based line of `source`; None on a header line."""
        at = 1
        for c in self.chunks:
            n = c.code.count("\n") + 1
            if at < line <= at + n:
                return c, line - at
            at += n + 1
        return None


# a chunk's header line in `Document.source` (gradaudit/_run_cells.py walks a text by it)
HEADER = re.compile(r"# ---- ((?:cell|block) \d+) ---- (\d+) lines$")


# ---- reading -----------------------------------------------------------------------------------

def read(path) -> Document:
    """The document's code, without running it."""
    path = Path(path).resolve()
    suffix = path.suffix.lower()
    if suffix in NOTEBOOK_SUFFIXES:
        return _read_notebook(path)
    if suffix in NOTE_SUFFIXES:
        return _read_notes(path)
    raise DocumentError(f"{path.name}: not a notebook or notes (expected one of {', '.join(SUFFIXES)})")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(f"{path.name} is not UTF-8 text ({e})") from None


# -- notebooks --

_MAGIC_OR_SHELL = re.compile(r"^\s*[%!?]")  # %magic, !shell, ?help
_SHELL_ASSIGN = re.compile(r"^\s*[\w.]+(\s*,\s*[\w.]+)*\s*=\s*[%!]")  # files = !ls, t = %timeit -o f()
_HELP_SUFFIX = re.compile(r"^\s*[\w.]+\s*\?\??\s*$")  # np.sum?  np.sum??


def ipython_line(line: str) -> bool:
    """Whether a notebook line is IPython syntax that Python cannot run."""
    return bool(_MAGIC_OR_SHELL.match(line) or _SHELL_ASSIGN.match(line) or _HELP_SUFFIX.match(line))


def _cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _read_notebook(path: Path) -> Document:
    try:
        nb = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise DocumentError(f"{path.name} is not a notebook: its JSON does not parse ({e})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        if isinstance(nb, dict) and "worksheets" in nb:
            raise DocumentError(f"{path.name} is an nbformat 3 notebook; convert it with "
                                f"`jupyter nbconvert --to notebook --nbformat 4 {path.name}`")
        raise DocumentError(f"{path.name} is not a notebook: no list of cells")
    doc = Document(path, "notebook", [])
    for number, cell in enumerate(nb["cells"], 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = _cell_source(cell)
        if not src.strip():
            continue
        first = src.lstrip().splitlines()[0]
        if first.startswith("%%"):
            doc.messages.append(f"cell {number} starts with the cell magic {first.split()[0]}: skipped")
            continue
        if _parses(src) is not None:  # only then can it hold IPython syntax: plain Python stays verbatim
            src = "\n".join(f"{line[:len(line) - len(line.lstrip())]}pass  # {line.strip()[:60]}"
                            if ipython_line(line) else line for line in src.split("\n"))
        doc.chunks.append(Chunk("cell", number, src, f"{path}, cell {number}"))
    return doc


# -- notes --

_FENCE = re.compile(r"^( *)(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$")


def fenced_blocks(text: str) -> list[tuple[int, str, int, str]]:
    """(block number, label, document line of the first code line, code) for every fenced block
    (CommonMark: ``` or ~~~, three or more, closed by at least as many of the same; an unclosed
    fence runs to the end of the document). Unlike CommonMark, a fence may be indented by any
    amount (notes put code under list items); the fence's indentation is taken off its lines."""
    lines = text.split("\n")
    out, i, number = [], 0, 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, label = len(m.group(1)), m.group(2), m.group(3).strip("{}.").lower()
        number += 1
        start = i + 1
        j = start
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        body = [line[min(indent, len(line) - len(line.lstrip(' '))):] for line in lines[start:j]]
        out.append((number, label, start + 1, "\n".join(body)))
        i = j + 1
    return out


def _parses(code: str) -> SyntaxError | None:
    try:
        ast.parse(code)
    except SyntaxError as e:
        return e
    except ValueError as e:  # null bytes
        return SyntaxError(str(e))
    return None


def _read_notes(path: Path) -> Document:
    doc = Document(path, "notes", [])
    for number, label, first_line, code in fenced_blocks(_text(path)):
        if label and label not in PYTHON_LABELS:
            continue
        if not code.strip():
            continue
        err = _parses(code)
        if err is not None and _parses(textwrap.dedent(code)) is None:
            code, err = textwrap.dedent(code), None  # a snippet from inside a function, indented
        if err is not None:
            if label:  # a block that says it is Python and is not: pseudo-code, or a typo
                where = f"block {number}" + (f", line {err.lineno}" if err.lineno else "")
                doc.messages.append(f"{where} (line {first_line + (err.lineno or 1) - 1} of {path.name}) "
                                    f"does not parse ({err.msg}): skipped")
            continue
        doc.chunks.append(Chunk("block", number, code, f"{path}, block {number}", doc_line=first_line))
    return doc


# ---- where a frame is ------------------------------------------------------------------------

_CHUNKS: dict[str, Chunk] = {}  # compiled file name -> chunk, for every document loaded in this process
_TEXTS: dict[str, Document] = {}  # document path -> the document whose `source` was made by `text`


def where(filename: str, lineno: int | None = None) -> str | None:
    """'cell 7, line 3' for a code location inside a loaded document, or inside the text `text` made
    of one (compiled under the document's own path); None elsewhere."""
    chunk = _CHUNKS.get(filename)
    if chunk is not None:
        return chunk.where(lineno)
    doc = _TEXTS.get(filename)
    at = doc.position(lineno) if doc is not None and lineno else None
    return None if at is None else at[0].where(at[1])


def document_of(path) -> Document | None:
    """The document whose text `text` made for this path (what it skipped: `messages`)."""
    return _TEXTS.get(str(path))


_FRAME = re.compile(r'File "([^"\n]+)", line (\d+)')


def locate(traceback_text: str) -> str | None:
    """Where in a document a formatted traceback (the audit child's) was raised: its innermost
    frame inside a document's text, as 'cell 6, line 3'; None when no frame is in one."""
    found = None
    for m in _FRAME.finditer(traceback_text or ""):
        found = where(m.group(1), int(m.group(2))) or found
    return found


def innermost(exc: BaseException) -> str | None:
    """Where in a loaded document an exception was raised (its innermost frame in a cell or block):
    'block 3, line 7', or None when it did not pass through one."""
    found = None
    if isinstance(exc, SyntaxError) and (exc.filename in _CHUNKS or exc.filename in _TEXTS):
        return where(exc.filename, exc.lineno)
    tb = exc.__traceback__
    while tb is not None:
        w = where(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        found = w or found
        tb = tb.tb_next
    return found


# ---- running ---------------------------------------------------------------------------------

def _binds_or_uses_np(chunks: list[Chunk]) -> tuple[bool, bool]:
    binds = uses = False
    for c in chunks:
        for node in ast.walk(ast.parse(c.code)):
            if isinstance(node, ast.Name) and node.id == "np":
                if isinstance(node.ctx, ast.Load):
                    uses = True
                else:
                    binds = True
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                binds |= any((a.asname or a.name) == "np" for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == "np":
                binds = True
    return binds, uses


def _compiles(chunk: Chunk, doc: Document):
    """The chunk's code object, or None with a message saying why it does not compile."""
    try:
        return compile(chunk.code, chunk.filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        doc.messages.append(f"{chunk.where(getattr(e, 'lineno', None))} does not compile "
                            f"({getattr(e, 'msg', e)}): skipped")
        return None


def text(path) -> tuple[Document, str]:
    """(the document, its code as one module's text) without running anything: what the audit child
    is sent and compiles under the document's path. Chunks that do not compile are left out (with a
    message); notes that use np without binding it get `import numpy as np` on their first line.
    `where` and `locate` name the cell or block of a line of this text from then on."""
    doc = read(path)
    doc.chunks = [c for c in doc.chunks if _compiles(c, doc) is not None]
    if doc.kind == "notes":
        binds, uses = _binds_or_uses_np(doc.chunks)
        if uses and not binds:
            doc.prelude = "import numpy as np"
            doc.messages.append("the notes use np without importing it: np is NumPy here")
    _TEXTS[str(doc.path)] = doc
    return doc, doc.source


def load(path, module_name: str | None = None) -> types.ModuleType:
    """Run a document's chunks in order as one module; `module.__gradaudit_document__` is its
    Document, whose `messages` say what was skipped or raised."""
    doc = read(path)
    name = module_name or f"_gradaudit_doc_{re.sub(r'[^0-9A-Za-z_]', '_', doc.path.stem)}"
    module = types.ModuleType(name, f"code read from {doc.path.name}")
    module.__file__ = str(doc.path)
    module.__gradaudit_document__ = doc
    sys.modules[name] = module
    runnable = []
    for chunk in doc.chunks:
        _CHUNKS[chunk.filename] = chunk
        lines = [line + "\n" for line in chunk.code.split("\n")]
        linecache.cache[chunk.filename] = (len(chunk.code), None, lines, chunk.filename)  # mtime None: kept
        code = _compiles(chunk, doc)
        if code is not None:
            runnable.append((chunk, code))
    if doc.kind == "notes":
        binds, uses = _binds_or_uses_np([c for c, _ in runnable])
        if uses and not binds:
            import numpy

            module.np = numpy
            doc.messages.append("the notes use np without importing it: np is NumPy here")
    for chunk, code in runnable:
        try:
            exec(code, module.__dict__)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001  SystemExit too: a cell's exit() must not end the audit
            at = innermost(e) or chunk.name
            doc.messages.append(f"{at}: {_describe(e)[:300]}; the rest of {chunk.name} was not run")
    return module


def _describe(e: BaseException) -> str:
    """`Type: message` of an exception raised by user code, whose str() may itself raise. (Messages
    are user text: whoever prints them makes them safe, as gradaudit._guard.clean does.)"""
    try:
        msg = str(e)
    except Exception:  # noqa: BLE001
        msg = "<exception whose str() raised>"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
