"""gradaudit where students work: `gradaudit.check` on functions, a namespace (a notebook's
`globals()`), a module without `__file__` and documents; the `CheckResult` it returns (a list of
records that displays a verdict table and the evidence); and the whole flow in a real Jupyter
kernel (nbclient + ipykernel), exported with nbconvert, with pytest inside the notebook (ipytest).

Kept quick: torch as the only requested oracle and float64 in the in-process checks (a failure
still consults JAX and the finite differences to blame), the ci profile, small cs231n functions.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import gradaudit
from gradaudit.results import SCOPE, CheckResult, scope_css

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebooks" / "gradaudit_in_a_notebook.ipynb"
FAST = dict(oracles=("torch",), dtypes=("float64",))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# the functions a student writes (right and wrong), at module level as in a notebook

def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    x = cache
    dx = np.zeros_like(dout)
    dx[x > 0] = dout[x > 0]
    return dx


def _wrong_relu_backward(dout, cache):
    x = cache
    dx = dout.copy()
    dx[x < 0] = 0
    dx *= 0.5  # a stray factor
    return dx


def softmax_loss(x, y):
    n = x.shape[0]
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(n), y]).sum() / n
    dx = p.copy()
    dx[np.arange(n), y] -= 1
    return loss, dx  # missing / n


@pytest.fixture(scope="module")
def failing():
    """One check with a right and a wrong function, its records kept in a folder."""
    ns = {"relu_forward": relu_forward, "relu_backward": _wrong_relu_backward, "softmax_loss": softmax_loss}
    with tempfile.TemporaryDirectory() as d:
        result = gradaudit.check(ns, convention="cs231n", raise_on_failure=False, report=d, **FAST)
        result.html()  # rendered while the counterexamples exist
        yield result


# ---- the result: a list that displays itself ---------------------------------------------------

def test_the_result_is_still_a_list_of_records(failing):
    assert isinstance(failing, list) and all(isinstance(r, dict) for r in failing)
    assert json.loads(json.dumps(failing)) == list(failing)
    assert {r["target"] for r in failing} == {"relu_backward", "softmax_loss"}
    assert failing.verdict == "fail" and failing.failures == [r for r in failing if r["status"] in ("fail", "error")]


def test_text_plain_is_a_verdict_table_that_reads_alone(failing):
    bundle = failing._repr_mimebundle_()
    text = bundle["text/plain"]
    lines = text.splitlines()
    assert lines[0] == "gradaudit: FAIL — 2 of 2 functions wrong: relu_backward, softmax_loss"
    row = next(line for line in lines if line.lstrip().startswith("relu_backward "))
    assert "relu" in row and "FAIL" in row
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)  # fits a PDF page
    # each wrong function's message is there whole (wrapped, never cut)
    msg = next(r for r in failing if r["target"] == "softmax_loss" and r["status"] == "fail")["message"]
    assert " ".join(msg.split()) in " ".join(text.split())
    assert "constant_factor" in text and "…" not in text


def test_ipython_shows_the_table_as_plain_text(failing):
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(failing)
    assert data["text/plain"] == failing.table()  # not the list's items, nor the one-line repr
    assert "gradaudit-result" in data["text/html"]


def test_text_html_is_a_scoped_fragment_with_the_evidence(failing):
    html = failing._repr_mimebundle_()["text/html"]
    assert html.startswith(f'<div class="{SCOPE}"><style>') and "<script" not in html and "<body" not in html
    assert "What is wrong" in html and '<details class="f fail"' in html  # the report's table and evidence
    assert "Minimal counterexample" in html and "reference (under test)" in html
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    rules = re.findall(r"([^{}]+)\{[^{}]*\}", style)
    assert rules and all(s.strip().startswith(f".{SCOPE}") for r in rules for s in r.split(","))
    assert not re.search(r'href="(?!#ga\d+-)', html)  # only anchors inside the fragment, prefixed
    ids = re.findall(r'id="([^"]+)"', html)
    assert ids and all(re.match(r"ga\d+-", i) for i in ids)


def test_scope_css_keeps_at_rules_and_maps_root_and_body():
    css = ":root{--a:1}\nbody,h1{x:1}\n/* c */@media (max-width:9px){.a b{y:2}}"
    out = scope_css(css, ".s")
    assert ".s{--a:1}" in out and ".s,.s h1{x:1}" in out and "@media (max-width:9px){.s .a b{y:2}}" in out


def test_a_passing_result_says_so():
    r = CheckResult([{"target": "f_backward", "op": "f", "oracle": "torch", "device": "cpu", "dtype": "float64",
                      "regime": "typical", "status": "pass", "max_rel_err": 1e-15, "message": ""}])
    assert r.table().splitlines()[0] == "gradaudit: PASS — 1 function agrees with the oracles"
    assert CheckResult([]).table().startswith("gradaudit: NOTHING CHECKED")


# ---- what check accepts ----------------------------------------------------------------------

def test_check_takes_functions_a_namespace_and_a_module_without_file():
    by_functions = gradaudit.check(relu_forward, relu_backward, convention="cs231n", **FAST)
    assert {r["target"] for r in by_functions} == {"relu_backward"}
    assert {r["status"] for r in by_functions} <= {"pass", "kink"}
    main = types.ModuleType("__main__")  # a notebook's __main__: no __file__
    main.relu_forward, main.relu_backward = relu_forward, relu_backward
    assert not hasattr(main, "__file__")
    by_module = gradaudit.check(main, convention="cs231n", **FAST)
    by_namespace = gradaudit.check(dict(vars(main)), convention="cs231n", **FAST)
    strip = lambda recs: [(r["id"], r["status"]) for r in recs]  # noqa: E731
    assert strip(by_functions) == strip(by_module) == strip(by_namespace)
    # a backward given alone: its cache from how it unpacks it
    alone = gradaudit.check(relu_backward, convention="cs231n", **FAST)
    assert strip(alone) == strip(by_functions)


def test_check_names_what_it_cannot_check():
    def my_layer_backward(dout, cache):
        return dout

    with pytest.raises(ValueError, match="my_layer_backward is not a cs231n function name"):
        gradaudit.check(my_layer_backward, convention="cs231n")
    with pytest.raises(TypeError, match="plain functions are checked with convention='cs231n'"):
        gradaudit.check(relu_backward)
    with pytest.raises(TypeError, match="cannot check int"):
        gradaudit.check(3)
    with pytest.raises(ValueError, match="convention must be"):
        gradaudit.check(relu_backward, convention="cs231N")
    with pytest.raises(FileNotFoundError, match="no-such.ipynb"):
        gradaudit.check("no-such.ipynb")


def test_check_raises_with_the_result_attached():
    with pytest.raises(AssertionError) as e:
        gradaudit.check(relu_forward, _rename(_wrong_relu_backward, "relu_backward"), convention="cs231n", **FAST)
    assert isinstance(e.value, gradaudit.CheckFailed) and e.value.result.verdict == "fail"
    assert "constant_factor" in str(e.value) and "pass report=DIR" in str(e.value)


def test_numpy_warnings_from_the_extreme_regimes_do_not_bury_the_verdict():
    import warnings

    def naive_softmax_loss(x, y):  # no max shift: overflows in exp, log of 0
        p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
        dx = p.copy()
        dx[np.arange(x.shape[0]), y] -= 1
        return -np.log(p[np.arange(x.shape[0]), y]).mean(), dx / x.shape[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = gradaudit.check(_rename(naive_softmax_loss, "softmax_loss"), convention="cs231n",
                                 raise_on_failure=False, **FAST)
    assert {r["regime"] for r in result if r["status"] == "fail"}  # the overflow is found...
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # ...and said once, by the verdict


def _rename(fn, name):
    fn.__name__ = name
    return fn


def test_check_reads_a_notebook_file_and_reports_what_it_skipped(tmp_path):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%matplotlib inline\nimport numpy as np\n"
                   "def relu_backward(dout, cache):\n    x = cache\n    return -dout * (x > 0)\n"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%%time\nslow()"}]}
    (tmp_path / "hw.ipynb").write_text(json.dumps(nb))
    result = gradaudit.check(tmp_path / "hw.ipynb", convention="cs231n", raise_on_failure=False, **FAST)
    assert result.verdict == "fail" and {r["audited"] for r in result} == {"hw.ipynb"}
    assert any("cell 2 starts with the cell magic %%time" in n for n in result.notes)
    assert "cell 2 starts with the cell magic" in result.table()


def test_check_leaves_no_temporary_folder_behind(tmp_path, monkeypatch):
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    result = gradaudit.check({"relu_forward": relu_forward, "relu_backward": _wrong_relu_backward},
                             convention="cs231n", raise_on_failure=False, **FAST)
    assert result.failures and list(private.iterdir()) == []
    assert result.report_dir is None
    html = result.html()  # rendered before the folder went: the evidence is still there
    assert "Minimal counterexample" in html and "Counterexample not available" not in html
    assert list(private.iterdir()) == []


def test_a_failing_check_in_pytest_shows_the_verdict_not_gradaudits_source(tmp_path):
    (tmp_path / "test_layers.py").write_text(textwrap.dedent("""
        import numpy as np
        import gradaudit

        def relu_forward(x):
            return np.maximum(0, x), x

        def relu_backward(dout, cache):
            return -dout * (cache > 0)

        def test_relu():
            gradaudit.check(relu_forward, relu_backward, convention="cs231n", oracles=("torch",))
    """))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "1 failed" in out, out[-2000:]
    assert "sign_flip" in out and "CheckFailed" in out
    assert "__tracebackhide__" not in out and "raise CheckFailed" not in out, out[-3000:]


# ---- a real Jupyter kernel -------------------------------------------------------------------

def _need(module: str):
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install 'gradaudit[dev]')")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """examples/notebooks/gradaudit_in_a_notebook.ipynb run top to bottom in a fresh kernel."""
    for m in ("nbformat", "nbclient", "ipykernel", "nbconvert", "ipytest"):
        _need(m)
    import nbformat
    from nbclient import NotebookClient

    where = tmp_path_factory.mktemp("kernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")  # the kernel imports this checkout
    try:
        NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(where)}}).execute()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    nb.where = where
    return nb


def _outputs(nb, needle):
    cell = next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)
    return cell.outputs


@pytest.mark.xdist_group("kernel")
def test_the_notebook_shows_both_display_parts(executed):
    outs = _outputs(executed, "gradaudit.check(globals()")
    assert not [o for o in outs if o.output_type == "error"], outs
    shown = next(o for o in outs if o.output_type == "execute_result")
    text, html = shown.data["text/plain"], shown.data["text/html"]
    assert text.startswith("gradaudit: FAIL — 1 of 2 functions wrong: softmax_loss"), text
    assert re.search(r"affine_backward\s+affine\s+PASS", text) and re.search(r"softmax_loss\s+\S+\s+FAIL", text)
    assert "constant_factor" in text
    assert f'class="{SCOPE}"' in html and '<details class="f fail"' in html and "Minimal counterexample" in html
    assert not [o for o in outs if o.output_type == "stream" and "Warning" in o.text]  # NumPy's warnings stay out
    # nothing left beside the notebook but the caches of Hypothesis and of pytest (ipytest)
    assert [p.name for p in Path(executed.where).iterdir() if p.name not in (".hypothesis", ".pytest_cache")] == []


@pytest.mark.xdist_group("kernel")
def test_nbconvert_exports_keep_the_verdict(executed):
    from nbconvert import HTMLExporter, MarkdownExporter

    page, _ = HTMLExporter().from_notebook_node(executed)
    assert "FAIL — 1 of 2 functions wrong: softmax_loss" in page and f'class="{SCOPE}"' in page
    md, _ = MarkdownExporter().from_notebook_node(executed)
    assert "gradaudit: FAIL — 1 of 2 functions wrong: softmax_loss" in md or \
        "FAIL — 1 of 2 functions wrong: softmax_loss" in md
    assert "softmax_loss" in md and "constant_factor" in md


@pytest.mark.xdist_group("kernel")
def test_pytest_inside_the_notebook_fails_the_wrong_function_with_the_verdict(executed):
    outs = _outputs(executed, "%%ipytest")
    text = ANSI.sub("", "".join(o.get("text", "") for o in outs if o.output_type == "stream"))
    assert "1 failed, 1 passed" in text, text[-2000:]
    assert "test_softmax_loss" in text and "constant_factor" in text and "CheckFailed" in text
    assert "test_affine_backward" not in text.split("FAILURES")[-1].split("short test summary")[0]
    assert "raise CheckFailed" not in text and "__tracebackhide__" not in text  # the verdict, not our source
