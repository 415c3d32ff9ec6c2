"""Code read straight out of documents (gradaudit/sources.py): notebook cells and fenced blocks of
notes, every position named as the reader counts ("cell 7, line 3", "block 3, line 7"); cs231n
backwards given without their forward (gradaudit/cache_inference.py); and `gradaudit audit` on
notebooks, notes and the raw seed note 000 as a user runs it (a subprocess).
"""
import inspect
import json
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import numpy as np
import pytest

from gradaudit import cs231n, sources
from gradaudit.cache_inference import CannotPlace, Layout, place, read_layout, unplaceable

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "examples" / "notes" / "raw"
FAST = ["--profile", "ci", "--oracles", "torch", "--dtypes", "float64"]


def notebook(path: Path, cells: list[tuple[str, str]]) -> Path:
    """An nbformat-4 notebook of (cell_type, source) cells, sources stored as lists of lines (as Jupyter saves them)."""
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": kind, "metadata": {}, "source": src.splitlines(keepends=True),
         **({"outputs": [], "execution_count": None} if kind == "code" else {})} for kind, src in cells]}
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def audit(path, report, *extra):
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(path), "--report", str(report), *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "CI": "1"})
    results = Path(report) / "results.jsonl"
    r.records = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    return r


def statuses(records, target):
    return {r["status"] for r in records if r["target"] == target}


# ---- notebooks -------------------------------------------------------------------------------

def test_notebook_cells_are_numbered_among_all_cells_and_ipython_syntax_is_skipped(tmp_path):
    nb = notebook(tmp_path / "hw.ipynb", [
        ("markdown", "# Assignment"),
        ("code", "%matplotlib inline\nimport numpy as np\n!pip install nothing\nfiles = !ls\nnp.sum?\n"
                 "def f(x):\n    return 2 * x"),
        ("code", "%%timeit\nf(3)"),
        ("raw", "raw text"),
        ("code", "   \n"),
        ("code", 'def g(x):\n    """100% of the time; !important"""\n    return f(x) + 1'),
    ])
    doc = sources.read(nb)
    assert [c.name for c in doc.chunks] == ["cell 2", "cell 6"]
    assert any("cell 3" in m and "%%timeit" in m for m in doc.messages)
    cell2 = doc.chunks[0].code.split("\n")
    assert cell2[1] == "import numpy as np" and cell2[5] == "def f(x):"  # line numbers kept
    assert all(line.strip().startswith("pass") for line in (cell2[0], cell2[2], cell2[3], cell2[4]))
    assert '"""100% of the time; !important"""' in doc.chunks[1].code  # plain Python stays verbatim
    m = sources.load(nb)
    assert m.g(1) == 3 and m.__file__ == str(nb.resolve())
    # the combined source maps back to cells
    lines = doc.source.split("\n")
    at = lines.index("def g(x):") + 1
    chunk, line = doc.position(at)
    assert (chunk.name, line) == ("cell 6", 1)


def test_tracebacks_and_getsource_name_the_cell(tmp_path):
    nb = notebook(tmp_path / "hw.ipynb", [
        ("code", "import numpy as np"),
        ("markdown", "text"),
        ("code", "def affine_backward(dout, cache):\n    x, w, b = cache\n    return undefined_name"),
    ])
    m = sources.load(nb)
    with pytest.raises(NameError) as e:
        m.affine_backward(None, (1, 2, 3))
    text = "".join(traceback.format_exception(e.value))
    assert f'File "{nb.resolve()}, cell 3", line 3, in affine_backward' in text
    assert "return undefined_name" in text  # the source line itself, through linecache
    assert sources.innermost(e.value) == "cell 3, line 3"
    assert inspect.getsource(m.affine_backward).startswith("def affine_backward(dout, cache):")


def test_a_cell_that_raises_or_does_not_compile_is_reported_and_the_rest_still_runs(tmp_path):
    nb = notebook(tmp_path / "hw.ipynb", [
        ("code", "data = load_cifar10('/datasets')"),
        ("code", "def f(:\n    pass"),
        ("code", "import sys\nsys.exit(3)"),
        ("code", "def h():\n    return 7"),
    ])
    m = sources.load(nb)
    msgs = m.__gradaudit_document__.messages
    assert any(x.startswith("cell 1, line 1: NameError") for x in msgs), msgs
    assert any(x.startswith("cell 2, line 1 does not compile") for x in msgs), msgs
    assert any(x.startswith("cell 3, line 2: SystemExit") for x in msgs), msgs
    assert m.h() == 7


def test_the_text_sent_to_the_audit_child_names_cells_from_its_own_lines(tmp_path):
    """gradaudit audit sends the child one module's text (audit.source_text), compiled under the
    notebook's path: its line numbers map back to cells, in a traceback the child sends (locate)
    and in an exception (innermost); a cell that does not compile is left out, with a message."""
    from gradaudit import audit
    from gradaudit._child import exec_source

    nb = notebook(tmp_path / "hw.ipynb", [
        ("markdown", "# hw"),
        ("code", "%matplotlib inline\nimport numpy as np"),
        ("code", "def broken(:\n    pass"),
        ("code", "def f(x):\n    y = np.asarray(x) + 1\n    return y / undefined_name"),
    ])
    m = exec_source("_gradaudit_test_hw_text", str(nb.resolve()), audit.source_text(nb))
    assert any(msg.startswith("cell 3") and "does not compile" in msg
               for msg in sources.document_of(nb.resolve()).messages)
    with pytest.raises(NameError) as e:
        m.f(1)
    assert sources.innermost(e.value) == "cell 4, line 3"
    assert sources.locate("".join(traceback.format_exception(e.value))) == "cell 4, line 3"
    assert "return y / undefined_name" in inspect.getsource(m.f)



@pytest.mark.parametrize("text, why", [("{not json", "does not parse"), ('{"cells": 3}', "no list of cells"),
                                       ('{"worksheets": []}', "nbformat 3")])
def test_a_file_that_is_not_a_notebook_is_named_with_the_reason(tmp_path, text, why):
    p = tmp_path / "broken.ipynb"
    p.write_text(text)
    with pytest.raises(sources.DocumentError, match=why):
        sources.read(p)


# ---- notes -----------------------------------------------------------------------------------

NOTE = """\
# 笔记

```python
import numpy as np
def affine_backward(dout, cache):
    x, w, b = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)
```

```sh
pip install numpy
```

```python
dW = X^T · dY    (伪代码)
```

```
def helper():
    return 41
```

```
not python at all: ∂L/∂x
```

~~~py
    value = helper() + 1
~~~

1. Under a list item:

    ```python
    def indented():
        return value
    ```
"""


def test_notes_blocks_are_read_in_order_and_numbered_among_all_fences(tmp_path):
    p = tmp_path / "note.md"
    p.write_text(NOTE, encoding="utf-8")
    doc = sources.read(p)
    assert [c.name for c in doc.chunks] == ["block 1", "block 4", "block 6", "block 7"]
    assert doc.chunks[0].doc_line == 4  # the line after the opening fence
    assert doc.chunks[0].where(2) == "block 1, line 2 (line 5 of note.md)"
    # the pseudo-code block says it is Python: skipped with a message naming it and the line
    assert len(doc.messages) == 1 and doc.messages[0].startswith("block 3, line 1 (line 15 of note.md) does not parse (")
    m = sources.load(p)
    assert m.value == 42  # the indented snippet ran, after the unlabelled block that parses
    assert m.indented() == 42  # a fence under a list item
    dx, dw, db = m.affine_backward(np.ones((2, 3)), (np.ones((2, 4)), np.ones((4, 3)), np.zeros(3)))
    assert dx.shape == (2, 4) and dw.shape == (4, 3)


def test_notes_that_use_np_without_importing_it_get_numpy_and_a_message(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("```python\ndef f(x):\n    return np.sum(x)\n```\n", encoding="utf-8")
    m = sources.load(p)
    assert m.f(np.ones(3)) == 3 and any("np" in x for x in m.__gradaudit_document__.messages)
    p.write_text("```python\nnp = 5\ndef f(x):\n    return np\n```\n", encoding="utf-8")
    m = sources.load(p)
    assert m.f(0) == 5 and m.__gradaudit_document__.messages == []


def test_the_raw_seed_note_000_reads_as_two_blocks():
    doc = sources.read(RAW / "000_2d8d11f8f22c7193.txt")
    assert [c.name for c in doc.chunks] == ["block 1", "block 2"]
    m = sources.load(RAW / "000_2d8d11f8f22c7193.txt")
    assert {"affine_backward", "rnn_step_backward"} <= set(vars(m))


# ---- a backward without its forward: the cache from how it unpacks it --------------------------

def _fn(src: str, tmp_path, name="f"):
    p = tmp_path / f"{name}_{abs(hash(src))}.md"
    p.write_text(f"```python\n{textwrap.dedent(src)}\n```\n", encoding="utf-8")
    m = sources.load(p)
    return next(v for k, v in vars(m).items() if k.endswith("_backward"))


def test_the_cache_layout_is_read_from_the_unpacking(tmp_path):
    f = _fn("""
        def rnn_step_backward(dnext_h, cache):
            dx = None
            x, Wx, Wh, prev_h, next_h, b = cache
            return dx
    """, tmp_path)
    layout = read_layout(f)
    assert layout == Layout("tuple", ("x", "Wx", "Wh", "prev_h", "next_h", "b"))
    placed = place(layout, "rnn_step_backward", ())
    assert placed == {"x": "x", "Wx": "Wx", "Wh": "Wh", "prev_h": "prev_h", "next_h": "next_h", "b": "b"}
    # the usual spellings, nested tuples, `_`, dict caches
    assert place(Layout("tuple", ("x", "W_xh", "W_hh", "h_prev", "h", "bias")), "rnn_step_backward", ()) == \
        {"x": "x", "W_xh": "Wx", "W_hh": "Wh", "h_prev": "prev_h", "h": "next_h", "bias": "b"}
    assert place(Layout("tuple", (("X", "W"), "_", "conv_param")), "conv_backward_naive", ("stride", "pad")) == \
        {"X": "x", "W": "w", "_": None, "conv_param": "conv_param"}
    g = _fn("""
        def affine_backward(dout, cache):
            x = cache['x']
            return dout @ cache['w'].T, x.T @ dout, dout.sum(0)
    """, tmp_path)
    assert read_layout(g) == Layout("dict", ("x", "w"))


def test_names_that_cannot_be_placed_are_a_skip_naming_them(tmp_path):
    f = _fn("""
        def batchnorm_backward(dout, cache):
            x_hat, gamma, var, eps = cache
            return dout, dout, dout
    """, tmp_path)
    why = unplaceable(cs231n.BY_TARGET["batchnorm_backward"], f)
    assert why and "x_hat, var" in why and "batchnorm_forward is not defined" in why and "gamma" not in why.split(
        "holds")[1].split(",")[0]
    h = _fn("""
        def rnn_step_backward(dnext_h, cache):
            x, W, prev_h, next_h, b = cache   # W: Wx or Wh?
            return None
    """, tmp_path)
    with pytest.raises(CannotPlace):
        place(read_layout(h), "rnn_step_backward", ())
    assert "W" in unplaceable(cs231n.BY_TARGET["rnn_step_backward"], h)
    k = _fn("""
        def affine_backward(dout, cache):
            return dout, dout, dout
    """, tmp_path)
    assert "never unpacks `cache`" in unplaceable(cs231n.BY_TARGET["affine_backward"], k)
    # relu's cache is x: a backward that never unpacks it still gets it
    r = _fn("""
        def relu_backward(dout, cache):
            return dout * (cache > 0)
    """, tmp_path)
    assert unplaceable(cs231n.BY_TARGET["relu_backward"], r) is None


def test_plan_checks_a_backward_alone_only_when_its_cache_can_be_built(tmp_path):
    f = _fn("""
        def affine_backward(dout, cache):
            x, w, b = cache
            return dout @ w.T, x.T @ dout, dout.sum(0)
    """, tmp_path)
    run, skipped, _ = cs231n.plan({"affine_backward"}, {"affine_backward": f})
    assert [p.target for p in run] == ["affine_backward"] and skipped == []
    run, skipped, _ = cs231n.plan({"affine_backward"})  # without the functions: as before, a skip
    assert run == [] and skipped[0][0] == "affine_backward"


# ---- gradaudit audit on documents ------------------------------------------------------------

STUDENT_NOTE = """\
# 作业笔记

仿射层的反向传播（没有给出前向）：

```python
import numpy as np

def affine_backward(dout, cache):
    x, w, b = cache
    N = x.shape[0]
    x2 = x.reshape(N, -1)
    dx = np.zeros_like(x2)
    dw = np.zeros_like(w)
    for i in range(N):                 # loops, as students write them
        dx[i] += dout[i] @ w.T
        dw += np.outer(x2[i], dout[i])
    db = np.zeros_like(b)
    for j in range(dout.shape[1]):
        db[j] = dout[:, j].sum()
    return dx.reshape(x.shape), dw, db
```

ReLU：

```python
def relu_backward(dout, cache):
    x = cache
    dx = dout.copy()
    dx[x < 0] = 0
    dx *= 0.5                           # planted: a constant factor
    return dx
```

```python
def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    return undefined_helper(dout, x, w)
```
"""


@pytest.fixture(scope="module")
def notes_folder(tmp_path_factory):
    """A folder of notes audited as one (targets are file.function): the student's note above, a
    second note with a sign-flipped relu, and a README without code."""
    d = tmp_path_factory.mktemp("notes")
    (d / "笔记.md").write_text(STUDENT_NOTE, encoding="utf-8")
    (d / "b.txt").write_text("```python\ndef relu_backward(dout, cache):\n    return -dout * (cache > 0)\n```\n")
    (d / "README.md").write_text("No code here.\n```sh\ngradaudit audit .\n```\n")
    return audit(d, d / "report", "--convention", "cs231n", *FAST)


@pytest.mark.xdist_group("sources-notes-folder")
def test_a_note_audited_as_written_judges_each_backward_and_names_blocks(notes_folder):
    r = notes_folder
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(r.records, "笔记.affine_backward") == {"pass"}, r.stdout
    assert "fail" in statuses(r.records, "笔记.relu_backward")
    errors = [x for x in r.records if x["target"] == "笔记.conv_backward_naive" and x["status"] == "error"]
    assert errors and all("block 3, line 3" in x["message"] for x in errors), errors[:1]
    assert "NameError" in errors[0]["message"] and "undefined_helper" in errors[0]["message"]


@pytest.mark.xdist_group("sources-notes-folder")
def test_a_folder_of_notes_with_the_convention(notes_folder):
    r = notes_folder
    assert statuses(r.records, "b.relu_backward") == {"fail"}
    assert {x["audited"] for x in r.records} == {"笔记.md", "b.txt"}


def test_the_raw_seed_note_000_as_text_affine_right_rnn_step_wrong(tmp_path):
    """Done-when of issue 20: the note as written, no transcription."""
    r = audit(RAW / "000_2d8d11f8f22c7193.txt", tmp_path, "--convention", "cs231n", *FAST)
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(r.records, "affine_backward") == {"pass"}
    rnn = [x for x in r.records if x["target"] == "rnn_step_backward"]
    assert rnn and {x["status"] for x in rnn} == {"error"}
    msg = rnn[0]["message"]
    assert "dprev_h is None (never computed)" in msg  # never computed
    assert "dx has shape" in msg  # computed with Wh: (N, H) where (N, D) is due
    assert "np is NumPy" in r.stderr  # the note never imports numpy


def test_a_notebook_audited_names_cells_and_skips_its_magics(tmp_path):
    """As a student's assignment notebook is: its setup cell imports the course's package and loads
    data that are not there, a test cell uses them; the audit child runs the cells one by one, as
    Jupyter does, so the functions defined after them are still checked."""
    nb = notebook(tmp_path / "assignment.ipynb", [
        ("markdown", "# Layers"),
        ("code", "%load_ext autoreload\n%autoreload 2\nimport numpy as np\nfrom cs231n.data_utils import get_CIFAR10_data\n"
                 "def rel_error(x, y):\n    return np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))"),
        ("code", "data = get_CIFAR10_data()\nprint(data['X_train'].shape)"),
        ("code", "def affine_forward(x, w, b):\n    out = x.reshape(x.shape[0], -1) @ w + b\n"
                 "    return out, (x, w, b)"),
        ("code", "def affine_backward(dout, cache):\n    x, w, b = cache\n    dx = (dout @ w.T).reshape(x.shape)\n"
                 "    dw = x.reshape(x.shape[0], -1).T @ dout\n    db = dout.sum(axis=0)\n    return dx, dw, db"),
        ("code", "def relu_forward(x):\n    return np.maximum(0, x), x"),
        ("code", "def relu_backward(dout, cache):\n    x = cache\n    return dout * (x > 0) * undefined_scale"),
        ("code", "!nvidia-smi"),
    ])
    r = audit(nb, tmp_path / "report", "--convention", "cs231n", *FAST)
    assert r.returncode == 1, r.stdout + r.stderr
    assert statuses(r.records, "affine_backward") == {"pass"}
    relu = [x for x in r.records if x["target"] == "relu_backward"]
    assert relu and all(x["status"] == "error" and "cell 7, line 3" in x["message"] for x in relu), relu[:1]
    assert ("assignment.ipynb: cell 2, line 4: ModuleNotFoundError: No module named 'cs231n'; the rest of cell 2 "
            "was not run") in r.stderr, r.stderr
    assert "cell 3, line 1: NameError: name 'get_CIFAR10_data' is not defined" in r.stderr, r.stderr
    assert all(x["audited"] == "assignment.ipynb" for x in r.records)


# ---- a folder: every file's functions and classes apart ----------------------------------------

MODEL_FILE = '''
import numpy as np

def relu_forward(x):
    return np.maximum(0, x), x

def relu_backward(dout, cache):
    return dout * (cache > 0)

class TwoLayerNet(object):
    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0):
        self.reg = reg
        self.params = {"W1": weight_scale * np.random.randn(input_dim, hidden_dim), "b1": np.zeros(hidden_dim),
                       "W2": weight_scale * np.random.randn(hidden_dim, num_classes), "b2": np.zeros(num_classes)}

    def loss(self, X, y=None):
        raise NotImplementedError
'''


def test_a_folder_keeps_each_files_functions_and_model_classes_apart(tmp_path):
    """Two files that define the same function and class: every job (a model's configurations too)
    and the Target it builds are named file.name, so no two share a cell id."""
    from gradaudit import audit
    from gradaudit._guard import Guard

    for stem in ("a", "b"):
        (tmp_path / f"{stem}.py").write_text(MODEL_FILE)
    code = audit.InProcess(Guard())
    jobs = []
    for src in audit.sources_of(tmp_path):
        code.modules[src.key] = audit.import_file(src.path)
        jobs += audit.plan(code.describe(src.key), src.path, src.key, "cs231n", folder=True)[0]
    targets = [j.target for j in jobs]
    assert {"a.relu_backward", "b.relu_backward", "a.TwoLayerNet", "b.TwoLayerNet.test_mode"} <= set(targets)
    assert len(targets) == len(set(targets)), targets
    for j in (j for j in jobs if j.target in ("b.relu_backward", "b.TwoLayerNet")):
        _, target, _, _ = audit.build(j, code, {})
        assert target.name == j.target


DROPOUT_NOT_INVERTED = '''Dropout as first written, before inverted dropout:

```python
import numpy as np

def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    if mode == "train":
        mask = np.random.rand(*x.shape) < p
        out = x * mask
    else:
        out = x
    return out, (dropout_param, mask)

def dropout_backward(dout, cache):
    dropout_param, mask = cache
    if dropout_param["mode"] == "train":
        return dout * mask
    return dout
```
'''


def test_in_a_folder_a_verdict_keeps_the_sentence_about_the_forward(tmp_path):
    """What the dropout probe found about the forward is said with the verdict of file.dropout_backward."""
    import gradaudit

    (tmp_path / "a.md").write_text(DROPOUT_NOT_INVERTED)
    recs = gradaudit.check(tmp_path, convention="cs231n", oracles=("torch",), raise_on_failure=False)
    bad = [r for r in recs if r["target"] == "a.dropout_backward" and r["status"] == "fail"]
    assert bad and all("expected 1/p" in r["message"] for r in bad), [r["message"] for r in recs]


def test_a_notebook_that_trains_models_in_its_cells_still_has_its_functions_checked(tmp_path):
    """A student's notebook with the data at hand runs training loops in its cells: each cell gets a
    share of the time (its own `except Exception` cannot swallow the stop), and once the document's
    time is spent the cells left only define — the functions after the loops are still checked."""
    train = "w = np.ones(3)\nfor epoch in range(10 ** 9):\n    w -= 1e-9 * w"
    nb = notebook(tmp_path / "train.ipynb", [
        ("code", "import numpy as np"),
        ("code", f"try:\n    {train.replace(chr(10), chr(10) + '    ')}\nexcept Exception:\n    pass"),
        ("code", train), ("code", train), ("code", train),
        ("code", train + "\ndef relu_forward(x):\n    return np.maximum(0, x), x"),
        ("code", "def relu_backward(dout, cache):\n    return dout * (cache > 0)"),
    ])
    r = audit(nb, tmp_path / "report", "--convention", "cs231n", "--timeout", "8", *FAST)
    assert statuses(r.records, "relu_backward") <= {"pass", "kink"} and r.records, r.stdout + r.stderr
    assert "cell 2, line 4: CellOverTime: the cell ran for more than 2 s and was stopped" in r.stderr, r.stderr
    assert "cell 6: only its def, class and import statements ran" in r.stderr, r.stderr


def test_cells_run_one_by_one_each_failure_named_at_its_own_cell(tmp_path):
    """The child's way of running a notebook (gradaudit/_run_cells.py under its guard): a cell that
    raises, exits or is interrupted is named at its own cell and line — never at an earlier cell's —
    and the cells after it run."""
    from gradaudit import _remote, audit
    from gradaudit._guard import Guard
    from gradaudit._run_cells import run_text

    nb = notebook(tmp_path / "hw.ipynb", [
        ("code", "import numpy as np\nx = undefined_name"),
        ("code", "import sys\nsys.exit(0)"),
        ("code", "y = 1\nraise KeyboardInterrupt"),
        ("code", "def f(v):\n    return np.asarray(v) * 2"),
    ])
    guard, namespace = Guard(convert_interrupt=True), {}
    raised = run_text(audit.source_text(nb).decode(), str(nb.resolve()), namespace, guard.call,
                      lambda: guard.last_traceback)
    notes = _remote.cells_that_raised({"raised": [list(r) for r in raised]})
    assert notes == ["cell 1, line 2: NameError: name 'undefined_name' is not defined; the rest of cell 1 was not run",
                     "cell 2: called sys.exit(0); the rest of cell 2 was not run",
                     "cell 3, line 2: KeyboardInterrupt; the rest of cell 3 was not run"], notes
    assert namespace["y"] == 1 and namespace["f"](3) == 6
