"""The reports package: HTML report, JUnit XML, terminal summary, record loading.

The report is rendered from a real run of the real catalogue with planted bugs (tests/planted_run.py,
the `planted_report` fixture): what the page shows is what the judge decided on real cells.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from planted_run import bulk, judge_again, rewrite

import reports
from reports import evidence as ev
from reports.cases import SavedCase, read_case, write_case
from reports.findings import group, hazard_text

pytestmark = pytest.mark.xdist_group("planted-report")  # one worker runs the planted run once

EVIL = "<script>alert('x')</script> & \"quotes\""
CE_TORCH = "softmax_cross_entropy_backward_no_mean-torch-cpu-float64-typical"
CONV_DB = "conv2d_backward_planted-{}-cpu-float64-typical"


def _by_id(records) -> dict:
    return {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def run_dir(planted_report, tmp_path_factory) -> Path:
    """The planted run, with text from user code that carries markup in an error, a target and a source."""
    src, records = planted_report
    d = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(src, d)
    recs = [dict(r) for r in records]
    err = next(r for r in recs if r["status"] == "error")
    err["message"] += f" {EVIL}"
    err["target"] = "affine<b>backward</b>"
    recs[0]["source"] = "notes <img src=x onerror=alert(1)>.md"
    rewrite(d, recs)
    return d


@pytest.fixture(scope="module")
def html(run_dir) -> str:
    path = reports.render_html(reports.load_records(run_dir), reports.load_run_meta(run_dir), run_dir)
    assert path == run_dir / "index.html"
    return path.read_text(encoding="utf-8")


def _sections(html: str) -> list[str]:
    return [part.split("</details>\n", 1)[0] for part in html.split('<details class="f ')[1:]]


def _section(html: str, *texts: str) -> str:
    """The evidence section (a <details>) whose summary mentions all the texts."""
    for body in _sections(html):
        summary = body.split("</summary>", 1)[0]
        if all(t in summary for t in texts):
            return body
    raise AssertionError(f"no evidence section for {texts!r}")


# ---- the report shows the judge's verdict, never its own ---------------------------------------

def _shown_arrays(section: str) -> dict[str, tuple[int | None, int]]:
    """array label -> (elements beyond tolerance, elements) as the page states them."""
    out = {}
    for m in re.finditer(r"<h4>(.+?) <span[^>]*>shape.*?</h4>.*?(?:(\d+) of (\d+) elements beyond tolerance|"
                         r"not judged)", section, re.S):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3))) if m.group(2) else (None, 0)
    for m in re.finditer(r'<tr><td class="mono">(.+?)</td><td class="mono">.*?</td><td class="num">.*?</td>'
                         r'<td class="num">.*?</td><td class="num">(?:(\d+) / (\d+)|not judged)</td></tr>', section):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3))) if m.group(2) else (None, 0)
    return out


def _label(name: str, c) -> str:
    label = f"forward ({name})" if re.fullmatch(r"out\d*", name) else f"grad[{name}]"
    return label + (f" along {c.err.size} random directions" if c.directional else "")


def test_the_report_shows_the_judges_figures_for_every_failing_cell(planted_report, tmp_path):
    """A bug seen only through the numeric oracle's projections (conv2d's db divided by N: the smallest
    failing case has N = 2, too large for a full Jacobian), and every other failing cell of the run:
    the pattern and factor the page names, and each array's count of elements beyond tolerance, are
    the judge's own (re-run on the saved case), not a second opinion of the report's."""
    run_dir, records = planted_report
    page = reports.render_html(reports.load_records(run_dir), {}, tmp_path).read_text()
    numeric = _by_id(records)[CONV_DB.format("numeric")]
    assert read_case(run_dir / numeric["counterexample"]).dirs, "the planted bug is not judged by projections"
    failing = [r for r in records if r["status"] == "fail"]
    assert len(failing) >= 5
    for rec in failing:
        sec = _section(page, rec["oracle"], rec["regime"], rec["target"])
        verdict = judge_again(run_dir, rec)
        assert verdict.status == "fail" and verdict.pattern == rec["pattern"], (rec["id"], verdict.message)
        # a constant factor is named where the judge named one, and only there
        factor = re.search(r"reference = <b>([^<]+)</b> × oracle", sec)
        named = re.search(r"reference / oracle ≈", sec)
        assert not named, f"{rec['id']}: the report names a ratio of its own"
        if verdict.factor is None:
            assert factor is None, f"{rec['id']}: the page names a factor the judge did not find"
        else:
            assert factor and float(factor.group(1)) == pytest.approx(verdict.factor, rel=1e-4), rec["id"]
        shown = _shown_arrays(sec)
        assert shown, f"{rec['id']}: no array figures on the page"
        judged = {_label(n, c): (int(c.beyond.sum()), c.beyond.size) for n, c in verdict.judged.items()}
        for label, figures in shown.items():
            if figures[0] is None:
                assert label not in judged, f"{rec['id']}: {label} was judged but shows as not judged"
            else:
                assert judged.get(label) == figures, (rec["id"], label, figures, judged.get(label))
    sec = _section(page, "numeric", CONV_DB.format("numeric").split("-")[0])
    assert "grad[b] along 3 random directions" in sec and "Pattern <b>constant_factor</b>" in sec


# ---- HTML ------------------------------------------------------------------------------------

def test_failure_section_shows_the_evidence(html):
    sec = _section(html, "softmax_cross_entropy", "torch")
    assert "torch · cpu · float64 · typical" in sec
    assert "blame <b>reference</b>" in sec and "constant_factor" in sec
    assert f"gradaudit replay {CE_TORCH}" in sec
    assert "<svg" in sec  # the |error| heatmap
    # Side by side: the reference and the oracle values, the counterexample link.
    assert "reference (under test)" in sec and "<figcaption>torch</figcaption>" in sec
    assert f'href="cases/{CE_TORCH}.npz"' in sec
    # The constant factor is the batch size N = 2 (a missing 1/N), as the judge named it.
    assert "reference = <b>2</b> × oracle" in sec
    assert "2 = x.shape[0]: an extra factor of that size (a missing 1/N?)" in sec
    # Error statistics and the tolerance that would have passed.
    assert "|error|" in sec and "median" in sec and "p99" in sec and "ULP (float64)" in sec
    assert "would have passed with atol" in sec


def test_small_values_appear_in_the_tables(run_dir, html):
    case = read_case(run_dir / "cases" / f"{CE_TORCH}.npz")
    ref, ora = case.ref["x"], case.oracle["x"]
    sec = _section(html, "softmax_cross_entropy", "torch")
    assert f"{ref[1, 4]:.6g}" in sec and f"{ora[1, 4]:.6g}" in sec


def test_large_arrays_are_heatmaps(html):
    sec = _section(html, "conv2d_backward_overwrites_overlaps")
    assert sec.count("<svg") == 3  # reference, oracle, |error|
    # the 4-d layout is explained with the tiles of the array shown (the shrunk geometry varies by run)
    n, c, h, w = map(int, re.search(r"grad\[x\] <span[^>]*>shape \[(\d+), (\d+), (\d+), (\d+)\]", sec).groups())
    assert f"a mosaic of {h}×{w} tiles (axes 2, 3), one per index of axis 0 (down, {n}) and axis 1 (across, {c})" in sec


def test_nonfinite_directional_and_mutated(html):
    sec = _section(html, "naive_softmax_cross_entropy_backward")
    assert "NaN/Inf on one side only" in sec and "no tolerance would pass" in sec
    assert ">inf<" in sec and "1 non-finite on one side only" in sec  # exp overflowed in the loss
    sec = _section(html, "conv2d_backward_planted", "numeric")
    assert "along 3 random directions" in sec and "directional derivatives" in sec
    sec = _section(html, "relu_backward_mutates_dout")
    assert "Mutated in place" in sec


def test_the_factor_is_the_judges_not_the_pages(tmp_path):
    """The page shows the case's verdict: a constant ratio between the two sides is named only when
    the judge named it."""
    ref, ora = np.ones((2, 3)), np.full((2, 3), 2.0)
    for verdict, want in (({"factor": 0.5, "why": ["out is off by a constant factor 1/2"]}, True),
                          ({"factor": None, "why": []}, False)):
        d = tmp_path / str(want)
        rec = {"op": "affine", "oracle": "jax", "device": "cpu", "dtype": "float64", "regime": "typical",
               "status": "fail", "kind": "forward", "blame": "reference", "phase": "forward", "atol": 1e-10,
               "rtol": 1e-7, "id": "fwd", "message": "forward differs"}
        rec["counterexample"] = write_case(d, "fwd", SavedCase(
            ref={"out": ref}, oracle={"out": ora}, allowed={"out": np.full((2, 3), 1e-10)},
            meta={"seed": 7, "judged": {"out": {"ok": False, "ratio": 1e10, "worst_index": [0, 0]}},
                  "verdict": verdict}))
        sec = _section(reports.render_html([rec], {}, d).read_text(), "affine")
        assert "the forwards already disagree" in sec and "forward (out)" in sec and "seed 7" in sec
        assert "6 of 6 elements beyond tolerance" in sec and "worst at index [0, 0]" in sec
        assert ("reference = <b>0.5</b> × oracle" in sec) is want
        assert ("off by a constant factor 1/2" in sec) is want


def test_every_status_is_shown(html):
    assert "grad[w] has shape" in _section(html, "affine&lt;b&gt;backward&lt;/b&gt;")  # an error has a section
    assert "pooling window(s) with tied maxima" in html  # kink reason
    assert "no CUDA device" in html  # skip reason
    assert "Closest calls among passing cells" in html  # near misses among passes
    assert "oracle:jax" in _section(html, "sigmoid", "jax")
    assert "FAIL" in html


def test_text_from_user_code_is_escaped(html):
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>backward</b>" not in html and "affine&lt;b&gt;backward&lt;/b&gt;" in html
    assert "<img src=x" not in html
    # The only <script> is the page's own progressive enhancement.
    assert html.count("<script>") == 1


def test_no_external_resources(html):
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "@import" not in html and "<link" not in html
    assert "<?xml" not in html  # inline SVG carries no XML prolog
    assert "Content-Security-Policy" in html


def test_missing_or_corrupt_counterexample_degrades(planted_report, tmp_path):
    shutil.copytree(planted_report[0], tmp_path / "run")
    (tmp_path / "run" / "cases" / f"{CE_TORCH}.npz").unlink()
    (tmp_path / "run" / "cases" / "conv2d_backward_overwrites_overlaps-torch-cpu-float64-typical.npz").write_bytes(b"x")
    page = reports.render_html(reports.load_records(tmp_path / "run"), {}, tmp_path / "run").read_text()
    assert "Counterexample not available" in _section(page, "softmax_cross_entropy", "torch")
    assert "file not found" in _section(page, "softmax_cross_entropy", "torch")
    assert "unreadable" in _section(page, "conv2d_backward_overwrites_overlaps")
    assert "<svg" in _section(page, "softmax_cross_entropy", "numeric")  # the others are unaffected


def test_cases_dir_and_another_out_dir(planted_report, tmp_path):
    run = planted_report[0]
    out = tmp_path / "elsewhere" / "report"
    recs = reports.load_records(run / "results.jsonl")
    page = reports.render_html(recs, reports.load_run_meta(run), out).read_text()
    sec = _section(page, "softmax_cross_entropy", "torch")
    assert "<svg" in sec  # found through the record's source directory
    assert re.search(rf'href="(\.\./)+[^"]*/cases/{CE_TORCH}\.npz"', sec)
    page = reports.render_html([dict(r, _source=None) for r in recs], {}, out, cases_dir=run / "cases").read_text()
    assert "<svg" in _section(page, "softmax_cross_entropy", "torch")


def test_empty_and_all_pass(tmp_path):
    page = reports.render_html([], {}, tmp_path / "a").read_text()
    assert "NO RECORDS" in page
    rec = {"op": "relu", "oracle": "torch", "device": "cpu", "dtype": "float64",
           "regime": "typical", "status": "pass", "examples": 10, "worst_target": 0.1}
    page = reports.render_html([rec], {}, tmp_path / "b").read_text()
    assert "PASS" in page and "What is wrong" not in page


def test_no_torch_jax_or_matplotlib_imported(run_dir, tmp_path):
    code = ("import sys, reports; r = reports.load_records(sys.argv[1]); "
            "reports.render_html(r, {}, sys.argv[2]); reports.write_junit(r, sys.argv[2] + '/j.xml');"
            "reports.terminal_summary(r); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'matplotlib', 'properties')];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(run_dir), str(tmp_path)], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# ---- scale -----------------------------------------------------------------------------------

def test_thousands_of_records_render_fast_and_small(planted_report, tmp_path):
    shutil.copytree(planted_report[0], tmp_path / "run")
    bulk(tmp_path / "run", planted_report[1], 5000, 150)
    recs = reports.load_records(tmp_path / "run")
    assert len(recs) > 5000
    t0 = time.perf_counter()
    path = reports.render_html(recs, reports.load_run_meta(tmp_path / "run"), tmp_path / "run")
    seconds = time.perf_counter() - t0
    size = path.stat().st_size
    print(f"\n5,000-record report: {seconds:.2f} s, {size / 1e6:.2f} MB")
    assert size < 5_000_000
    assert seconds < 10  # ~1.5 s on a laptop-class CPU; generous for a loaded CI runner
    page = path.read_text()
    n_bad = sum(group(r) is not None for r in recs)  # every finding has a section: wrong, unstable, warning
    assert n_bad > 100
    assert page.count('<details class="f ') == min(n_bad, reports.html.MAX_DETAILED)


def test_detail_sections_are_capped(run_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(reports.html, "MAX_DETAILED", 3)
    recs = reports.load_records(run_dir)
    page = reports.render_html(recs, {}, tmp_path).read_text()
    n_bad = sum(group(r) is not None for r in recs)
    assert page.count('<details class="f ') == 3
    assert f"{n_bad - 3} more failing cells have no evidence section" in page


# ---- JUnit -----------------------------------------------------------------------------------

def test_junit_is_valid_and_counts_match(run_dir, tmp_path):
    recs = reports.load_records(run_dir)
    recs[0]["message"] += " \x07bell\x1b[0m <&>"
    path = reports.write_junit(recs, tmp_path / "sub" / "junit.xml")
    root = ET.parse(path).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == len(recs)
    by_status = {s: sum(r["status"] == s for r in recs) for s in reports.records.STATUSES}
    assert len(root.findall(".//testcase/failure")) == by_status["fail"] == int(root.get("failures"))
    assert len(root.findall(".//testcase/error")) == by_status["error"] == int(root.get("errors"))
    assert len(root.findall(".//testcase/skipped")) == by_status["skip"]
    first = cases[0]
    assert first.get("classname") == "softmax_cross_entropy"
    assert first.get("name") == f"{recs[0]['target']}[torch-cpu-float64-typical]"
    failure = first.find("failure")
    assert failure.get("message").endswith("bell[0m <&>") and recs[0]["explanation"] in failure.get("message")
    assert failure.text.startswith(recs[0]["explanation"])
    assert "gradaudit replay" in first.find("failure").text
    err = next(c for c in cases if c.find("error") is not None)
    assert EVIL in err.find("error").get("message")


# ---- terminal --------------------------------------------------------------------------------

def test_terminal_summary(run_dir):
    recs = reports.load_records(run_dir)
    c = reports.records.counts(recs)
    text = reports.terminal_summary(recs)
    lines = text.splitlines()
    assert lines[0].startswith(f"gradaudit: {c['pass']} pass, {c['fail']} fail, {c['error']} error, "
                               f"{c['skip']} skip, {c['kink']} kink")
    assert lines[-1] == f"FAIL: {c['fail']} failed, {c['error']} errored"
    bad = [r for r in recs if group(r) is not None]
    groups = {(group(r), r["target"], r["op"]) for r in bad}
    # counts, then per group present ("Wrong", "Unstable", "Warnings") its title and one line per function, the verdict
    assert len(lines) == 2 + len({g for g, _, _ in groups}) + len(groups)
    line = next(x for x in lines if "softmax_cross_entropy_backward_no_mean (softmax_cross_entropy)" in x)
    assert "[torch,numeric | cpu | float64 | typical]" in line and "blame=reference" in line
    assert "pattern=constant_factor" in line
    assert "\x1b[" not in text and "\x1b[31m" in reports.terminal_summary(recs, color=True)
    hazards = [hazard_text(h) for r in bad for h in (r.get("hazards") or [])]
    for x in lines:  # a bare message is cut; a pattern's sentence or a hazard's never is
        assert len(x) < 220 or any(r["explanation"] and r["explanation"] in x for r in bad) or \
            any(h in x for h in hazards), x
    ok = [r for r in recs if r["status"] == "pass"]
    assert reports.terminal_summary(ok).splitlines()[-1] == "PASS"


# ---- loading ---------------------------------------------------------------------------------

def _rec(**kw):
    r = {"op": "relu", "oracle": "torch", "device": "cpu", "dtype": "float64",
         "regime": "typical", "status": "pass", "examples": 5}
    r.update(kw)
    return r


def _write(path: Path, lines) -> Path:
    path.write_text("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
    return path


def test_malformed_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "results.jsonl", [_rec(), _rec(regime="large"), "{not json\n", _rec()])
    with pytest.raises(reports.RecordError, match=r"results\.jsonl:3: not valid JSON"):
        reports.load_records(p)
    p = _write(tmp_path / "r2.jsonl", [_rec(), _rec(status="wrong")])
    with pytest.raises(reports.RecordError, match=r"r2\.jsonl:2: unknown status 'wrong'"):
        reports.load_records(p)
    p = _write(tmp_path / "r3.jsonl", ["[1, 2]\n"])
    with pytest.raises(reports.RecordError, match=r"r3\.jsonl:1: expected a JSON object"):
        reports.load_records(p)
    p = _write(tmp_path / "r4.jsonl", [{"op": "relu", "status": "pass"}])
    with pytest.raises(reports.RecordError, match=r"r4\.jsonl:1: missing .*oracle"):
        reports.load_records(p)
    p = _write(tmp_path / "r5.jsonl", [_rec(examples=2.5)])
    with pytest.raises(reports.RecordError, match=r"r5\.jsonl:1: 'examples' must be an integer"):
        reports.load_records(p)
    with pytest.raises(reports.RecordError, match="no such file"):
        reports.load_records(tmp_path / "absent.jsonl")


def test_one_schema_for_writing_reading_and_showing():
    """new_record, the reader's validation and the page's normaliser read one table."""
    from reports.records import SCHEMA, new_record, normalise

    rec = new_record(op="relu", oracle="torch", device="cpu", dtype="float64", regime="typical", status="pass")
    assert list(rec) == list(SCHEMA)
    shown = normalise({"op": "relu", "extra": 1})
    assert set(SCHEMA) <= set(shown) and shown["extra"] == 1
    assert shown["shapes"] == {} and shown["mutated"] == [] and shown["message"] == "" and shown["examples"] is None


def test_truncated_last_line_is_a_warning(tmp_path):
    p = _write(tmp_path / "results.jsonl", [_rec(), _rec(regime="large"),
                                             json.dumps(_rec(regime="x"))[:25]])
    with pytest.warns(UserWarning, match=r"results\.jsonl:3: ignoring a truncated last line"):
        recs = reports.load_records(p)
    assert [r["regime"] for r in recs] == ["typical", "large"]


def test_merging_runs_the_worse_verdict_wins(tmp_path):
    # one cell in two files: the worse verdict stands whatever the order, with a warning (#13)
    a = _write(tmp_path / "a.jsonl", [_rec(id="c1", status="fail"), _rec(id="c2")])
    b = _write(tmp_path / "b.jsonl", [_rec(id="c1", status="pass"), _rec(id="c3")])
    for files in ([a, b], [b, a]):
        with pytest.warns(UserWarning, match="cell c1: .* the worse verdict \\(fail\\) is kept"):
            recs = reports.load_records(files)
        assert sorted((r["id"], r["status"]) for r in recs) == [("c1", "fail"), ("c2", "pass"), ("c3", "pass")]
    # Without ids, the cell coordinates are the key.
    with pytest.warns(UserWarning):
        recs = reports.load_records([_write(tmp_path / "c.jsonl", [_rec(status="fail")]),
                                     _write(tmp_path / "d.jsonl", [_rec(status="pass")])])
    assert [r["status"] for r in recs] == ["fail"]


def test_load_run_meta(tmp_path):
    assert reports.load_run_meta(tmp_path) == {}
    (tmp_path / "run.json").write_text('{"seed": 3}')
    assert reports.load_run_meta(tmp_path) == {"seed": 3}


# ---- evidence helpers ------------------------------------------------------------------------

def test_layout_and_index_agree():
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    for shape in [(), (7,), (3, 4), (2, 3, 4), (2, 3, 4, 5), (2, 1, 2, 3, 2)]:
        x = a.reshape(-1)[: int(np.prod(shape))].reshape(shape)
        x2 = ev.to_2d(x)
        assert x2.shape == ev.layout_2d(shape)[0]
        for idx in np.ndindex(*shape):
            r, c = ev.index_2d(idx, shape)
            assert x2[r, c] == x[idx]


def test_block_reduce_keeps_the_worst_and_nonfinite():
    e = np.zeros((130, 70))
    e[100, 3] = 5.0
    e[7, 69] = np.inf
    out, (fr, fc) = ev.block_reduce(e, 64, "max")
    assert out.shape[0] <= 64 and out.shape[1] <= 64
    assert out[100 // fr, 3 // fc] == 5.0 and np.isinf(out[7 // fr, 69 // fc])
    v = np.ones((130, 70))
    v[0, 0] = np.nan
    out, _ = ev.block_reduce(v, 64, "mean")
    assert np.isnan(out[0, 0]) and np.allclose(out[1:, 1:], 1.0)


def test_array_evidence_shows_the_judges_allowed_error():
    o = np.array([1.0, -2.0, 0.0, 4.0, np.nan])
    r = np.array([1.0, -2.5, 0.0, np.inf, np.nan])
    allowed = np.array([1e-8, 1.0, 1e-8, 1e-8, 1e-8])  # the judge let grad[1] be off by up to 1
    c = ev.array_evidence("x", r, o, dtype="float64", allowed=allowed)
    assert c.stats["nonfinite"] == 1 and c.stats["beyond"] == 1  # the mismatch only
    assert c.abs_err[1] == 0.5 and c.rel_err[1] == 0.25
    assert ev.array_evidence("x", r, o, dtype="float64").stats["beyond"] is None  # not judged: not counted
    d = np.random.default_rng(0).normal(size=(4, 2, 3))
    g = np.arange(6.0).reshape(2, 3)
    c = ev.array_evidence("w", g, d.reshape(4, -1) @ g.ravel(), dtype="float64", dirs=d, allowed=np.full(4, 1e-9))
    assert c.directional and c.stats["beyond"] == 0
    assert ev.array_evidence("x", np.zeros(3), np.zeros(4), dtype=None).startswith("shapes")


def test_terminal_summary_groups_a_target_with_many_failing_cells():
    many = [_rec(target="affine_backward", op="affine", oracle=o, dtype=d, regime=g, status="fail",
                 blame="reference", pattern="constant_factor", message=f"affine_backward vs {o}: dw off")
            for o in ("torch", "jax") for d in ("float64", "float32") for g in ("typical", "large")]
    few = [_rec(target="relu_backward", op="relu", status="fail", blame="reference", message="relu off"),
           _rec(target="relu_backward", op="relu", regime="kinks", status="error", message="relu raised")]
    lines = reports.terminal_summary(many + few + [_rec()]).splitlines()
    assert lines[0].startswith("gradaudit: 1 pass, 9 fail, 1 error")
    grouped = [x for x in lines if "affine" in x]
    assert len(grouped) == 1  # eight cells, one line
    assert "affine_backward (affine): 8 fail cells" in grouped[0]
    assert "[torch,jax | cpu | float64,float32 | typical,large]" in grouped[0]
    assert "blame=reference pattern=constant_factor" in grouped[0]
    assert len([x for x in lines if "relu" in x]) == 1  # one line per function, however many cells
    assert lines[-1] == "FAIL: 9 failed, 1 errored"
