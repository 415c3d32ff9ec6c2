"""The reports package: HTML report, JUnit XML, terminal summary, record loading.

Everything runs on synthetic runs (reports.demo) shaped like the runner's output, so these tests
need neither torch nor jax.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import reports
from reports import evidence as ev
from reports.demo import write_demo

EVIL = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("demo")
    recs = write_demo(d)
    # A message, a target and a source from user code with markup in them.
    recs[6]["message"] = f"lstm_step_backward raised ValueError: {EVIL}"
    recs[6]["target"] = "lstm<b>step</b>"
    recs[0]["source"] = "notes <img src=x onerror=alert(1)>.md"
    with open(d / "results.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return d


@pytest.fixture(scope="module")
def demo_html(demo_dir) -> str:
    recs = reports.load_records(demo_dir)
    path = reports.render_html(recs, reports.load_run_meta(demo_dir), demo_dir)
    assert path == demo_dir / "index.html"
    return path.read_text(encoding="utf-8")


def _section(html: str, *texts: str) -> str:
    """The evidence section (a <details>) whose summary mentions all the texts."""
    for part in html.split('<details class="f ')[1:]:
        body = part.split("</details>\n", 1)[0]
        summary = body.split("</summary>", 1)[0]
        if all(t in summary for t in texts):
            return body
    raise AssertionError(f"no evidence section for {texts!r}")


# ---- HTML ------------------------------------------------------------------------------------

def test_failure_section_shows_the_evidence(demo_html):
    sec = _section(demo_html, "softmax_cross_entropy")
    assert "torch · cpu · float64 · typical" in sec
    assert "blame <b>reference</b>" in sec and "constant_factor" in sec
    assert "gradaudit replay softmax_cross_entropy-torch-cpu-float64-typical" in sec
    assert "<svg" in sec  # the |error| heatmap
    # Side by side: the reference and the oracle values, the counterexample link.
    assert "reference (under test)" in sec and "<figcaption>torch</figcaption>" in sec
    assert 'href="cases/softmax_cross_entropy-torch-cpu-float64-typical.npz"' in sec
    # The constant factor is the batch size N = 3 (a missing 1/N).
    assert "reference / oracle ≈ <b>3</b>" in sec
    # Error statistics and the tolerance that would have passed.
    assert "|error|" in sec and "median" in sec and "p99" in sec and "ULP (float64)" in sec
    assert "would have passed with atol" in sec


def test_small_values_appear_in_the_tables(demo_dir, demo_html):
    with np.load(demo_dir / "cases" / "softmax_cross_entropy-torch-cpu-float64-typical.npz") as z:
        ref, ora = z["ref/x"], z["oracle/x"]
    sec = _section(demo_html, "softmax_cross_entropy")
    assert f"{ref[1, 4]:.6g}" in sec and f"{ora[1, 4]:.6g}" in sec


def test_large_arrays_are_heatmaps(demo_html):
    sec = _section(demo_html, "conv2d")
    assert sec.count("<svg") == 3  # reference, oracle, |error|
    assert "a mosaic of 5×7 tiles" in sec  # the 4-d layout is explained
    assert "sign_flip" in sec


def test_nonfinite_directional_and_mutated(demo_html):
    sec = _section(demo_html, "softmax_naive_backward")
    assert "NaN/Inf on one side only" in sec and "no tolerance would pass" in sec
    assert ">nan<" in sec and "3 non-finite on one side only" in sec
    sec = _section(demo_html, "conv2d", "numeric")
    assert "along 6 random directions" in sec and "directional derivatives" in sec
    sec = _section(demo_html, "rnn")
    assert "Mutated in place" in sec and "missing_timestep" in sec


def test_forward_failure(tmp_path):
    rec = {"op": "affine", "oracle": "jax", "device": "cpu", "dtype": "float64",
           "regime": "typical", "status": "fail", "kind": "forward", "blame": "reference",
           "phase": "forward", "atol": 1e-10, "rtol": 1e-7, "id": "fwd",
           "counterexample": "cases/fwd.npz", "message": "forward differs"}
    (tmp_path / "cases").mkdir()
    np.savez(tmp_path / "cases" / "fwd.npz", **{"ref/out": np.ones((2, 3)),
                                                "oracle/out": np.full((2, 3), 2.0),
                                                "meta": np.array('{"seed": 7}')})
    html = reports.render_html([rec], {}, tmp_path).read_text()
    sec = _section(html, "affine")
    assert "the forwards already disagree" in sec and "forward (out)" in sec
    assert "seed 7" in sec and "reference / oracle ≈ <b>0.5</b>" in sec


def test_every_status_is_shown(demo_html):
    assert "lstm_step" in _section(demo_html, "lstm_step")  # error has a section
    assert "tie in a 2×2 window" in demo_html               # kink reason
    assert "no CUDA device visible to torch" in demo_html   # skip reason
    assert "0.83" in demo_html                              # a near miss among passes
    assert "oracle:jax" in demo_html
    assert "FAIL" in demo_html


def test_text_from_user_code_is_escaped(demo_html):
    assert "<script>alert" not in demo_html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in demo_html
    assert "<b>step</b>" not in demo_html and "lstm&lt;b&gt;step&lt;/b&gt;" in demo_html
    assert "<img src=x" not in demo_html
    # The only <script> is the page's own progressive enhancement.
    assert demo_html.count("<script>") == 1


def test_no_external_resources(demo_html):
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", demo_html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", demo_html, re.I)
    assert "@import" not in demo_html and "<link" not in demo_html
    assert "<?xml" not in demo_html  # inline SVG carries no XML prolog
    assert "Content-Security-Policy" in demo_html


def test_missing_or_corrupt_counterexample_degrades(tmp_path):
    recs = write_demo(tmp_path)
    (tmp_path / "cases" / "affine-jax-cpu-float64-typical.npz").unlink()
    (tmp_path / "cases" / "conv2d-torch-cuda-float32-typical.npz").write_bytes(b"not a zip")
    html = reports.render_html(reports.load_records(tmp_path), {}, tmp_path).read_text()
    assert "Counterexample not available" in _section(html, "affine")
    assert "file not found" in _section(html, "affine")
    assert "unreadable" in _section(html, "conv2d")
    assert "<svg" in _section(html, "softmax_cross_entropy")  # the others are unaffected
    assert len(recs) > 5


def test_cases_dir_and_another_out_dir(tmp_path):
    run = tmp_path / "run"
    write_demo(run)
    out = tmp_path / "elsewhere" / "report"
    recs = reports.load_records(run / "results.jsonl")
    html = reports.render_html(recs, reports.load_run_meta(run), out).read_text()
    sec = _section(html, "softmax_cross_entropy")
    assert "<svg" in sec  # found through the record's source directory
    assert 'href="../../run/cases/softmax_cross_entropy-torch-cpu-float64-typical.npz"' in sec
    html = reports.render_html([dict(r, _source=None) for r in recs], {}, out,
                               cases_dir=run / "cases").read_text()
    assert "<svg" in _section(html, "softmax_cross_entropy")


def test_empty_and_all_pass(tmp_path):
    html = reports.render_html([], {}, tmp_path / "a").read_text()
    assert "NO RECORDS" in html
    rec = {"op": "relu", "oracle": "torch", "device": "cpu", "dtype": "float64",
           "regime": "typical", "status": "pass", "examples": 10, "worst_target": 0.1}
    html = reports.render_html([rec], {}, tmp_path / "b").read_text()
    assert "PASS" in html and "What is wrong" not in html


def test_no_torch_jax_or_matplotlib_imported(demo_dir, tmp_path):
    code = ("import sys, reports; r = reports.load_records(sys.argv[1]); "
            "reports.render_html(r, {}, sys.argv[2]); reports.write_junit(r, sys.argv[2] + '/j.xml');"
            "reports.terminal_summary(r); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'matplotlib')];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(demo_dir), str(tmp_path)], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# ---- scale -----------------------------------------------------------------------------------

def test_thousands_of_records_render_fast_and_small(tmp_path):
    write_demo(tmp_path, bulk_records=5000, bulk_failures=100)
    recs = reports.load_records(tmp_path)
    assert len(recs) > 5000
    t0 = time.perf_counter()
    path = reports.render_html(recs, reports.load_run_meta(tmp_path), tmp_path)
    seconds = time.perf_counter() - t0
    size = path.stat().st_size
    print(f"\n5,000-record report: {seconds:.2f} s, {size / 1e6:.2f} MB")
    assert size < 5_000_000
    assert seconds < 10  # ~1.5 s on a laptop-class CPU; generous for a loaded CI runner
    html = path.read_text()
    n_bad = sum(r["status"] in ("fail", "error") for r in recs)
    assert n_bad > 100
    assert html.count('<details class="f ') == min(n_bad, reports.html.MAX_DETAILED)


def test_detail_sections_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(reports.html, "MAX_DETAILED", 3)
    write_demo(tmp_path)
    html = reports.render_html(reports.load_records(tmp_path), {}, tmp_path).read_text()
    assert html.count('<details class="f ') == 3
    assert "6 more failing cells have no evidence section" in html


# ---- JUnit -----------------------------------------------------------------------------------

def test_junit_is_valid_and_counts_match(demo_dir, tmp_path):
    recs = reports.load_records(demo_dir)
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
    assert first.get("name") == "torch-cpu-float64-typical"
    assert first.find("failure").get("message").endswith("bell[0m <&>")
    assert "gradaudit replay" in first.find("failure").text
    err = next(c for c in cases if c.find("error") is not None)
    assert EVIL in err.find("error").get("message")


# ---- terminal --------------------------------------------------------------------------------

def test_terminal_summary(demo_dir):
    recs = reports.load_records(demo_dir)
    text = reports.terminal_summary(recs)
    lines = text.splitlines()
    assert lines[0].startswith("gradaudit: 2 pass, 8 fail, 1 error, 2 skip, 2 kink")
    assert lines[-1] == "FAIL: 8 failed, 1 errored"
    assert len(lines) == 2 + 9
    line = next(l for l in lines if "affine" in l)
    assert "[jax cpu float64 typical]" in line and "blame=reference" in line
    assert "pattern=transpose" in line
    assert "\x1b[" not in text and "\x1b[31m" in reports.terminal_summary(recs, color=True)
    assert all(len(l) < 220 for l in lines)
    ok = [r for r in recs if r["status"] == "pass"]
    assert reports.terminal_summary(ok).splitlines()[-1] == "PASS"


# ---- loading ---------------------------------------------------------------------------------

def _rec(**kw):
    r = {"op": "relu", "oracle": "torch", "device": "cpu", "dtype": "float64",
         "regime": "typical", "status": "pass", "examples": 5}
    r.update(kw)
    return r


def _write(path: Path, lines) -> Path:
    path.write_text("".join(l if isinstance(l, str) else json.dumps(l) + "\n" for l in lines))
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
    with pytest.raises(reports.RecordError, match="no such file"):
        reports.load_records(tmp_path / "absent.jsonl")


def test_truncated_last_line_is_a_warning(tmp_path):
    p = _write(tmp_path / "results.jsonl", [_rec(), _rec(regime="large"),
                                             json.dumps(_rec(regime="x"))[:25]])
    with pytest.warns(UserWarning, match=r"results\.jsonl:3: ignoring a truncated last line"):
        recs = reports.load_records(p)
    assert [r["regime"] for r in recs] == ["typical", "large"]


def test_merging_runs_later_file_wins(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_rec(id="c1", status="fail"), _rec(id="c2")])
    b = _write(tmp_path / "b.jsonl", [_rec(id="c1", status="pass"), _rec(id="c3")])
    recs = reports.load_records([a, b])
    assert [(r["id"], r["status"]) for r in recs] == [("c1", "pass"), ("c2", "pass"), ("c3", "pass")]
    # Without ids, the cell coordinates are the key.
    recs = reports.load_records([_write(tmp_path / "c.jsonl", [_rec(status="fail")]),
                                 _write(tmp_path / "d.jsonl", [_rec(status="pass")])])
    assert [r["status"] for r in recs] == ["pass"]


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


def test_compare_statistics():
    o = np.array([1.0, -2.0, 0.0, 4.0, np.nan])
    r = np.array([1.0, -2.5, 0.0, np.inf, np.nan])
    c = ev.compare("x", r, o, atol=1e-8, rtol=1e-5, dtype="float64")
    assert c.stats["nonfinite"] == 1 and c.stats["beyond"] == 2
    assert c.stats["worst_index"] == [3]
    assert c.abs_err[1] == 0.5 and c.rel_err[1] == 0.25
    d = np.random.default_rng(0).normal(size=(4, 2, 3))
    g = np.arange(6.0).reshape(2, 3)
    c = ev.compare("w", g, d.reshape(4, -1) @ g.ravel(), atol=1e-8, rtol=1e-5,
                   dtype="float64", dirs=d)
    assert c.directional and c.stats["beyond"] == 0
    assert ev.compare("x", np.zeros(3), np.zeros(4), atol=0, rtol=0, dtype=None).startswith("shapes")


def test_terminal_summary_groups_a_target_with_many_failing_cells():
    many = [_rec(target="affine_backward", op="affine", oracle=o, dtype=d, regime=g, status="fail",
                 blame="reference", pattern="constant_factor", message=f"affine_backward vs {o}: dw off")
            for o in ("torch", "jax") for d in ("float64", "float32") for g in ("typical", "large")]
    few = [_rec(target="relu_backward", op="relu", status="fail", blame="reference", message="relu off"),
           _rec(target="relu_backward", op="relu", regime="kinks", status="error", message="relu raised")]
    lines = reports.terminal_summary(many + few + [_rec()]).splitlines()
    assert lines[0].startswith("gradaudit: 1 pass, 9 fail, 1 error")
    grouped = [l for l in lines if "affine" in l]
    assert len(grouped) == 1  # eight cells, one line
    assert "affine_backward (affine): 8 fail cells" in grouped[0]
    assert "[torch,jax | cpu | float64,float32 | typical,large]" in grouped[0]
    assert "blame=reference pattern=constant_factor" in grouped[0]
    assert len([l for l in lines if "relu" in l]) == 2  # two cells: one line each
    assert lines[-1] == "FAIL: 9 failed, 1 errored"
