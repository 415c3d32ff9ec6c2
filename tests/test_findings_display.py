"""How findings are shown, the same in the HTML report, the terminal and JUnit: wrong first, then
unstable, then warnings; the pattern's sentence first and whole; one line per user function; unique
JUnit names; the replay command that works from where the report is. Synthetic records: no run."""
import re
from html import escape as html_escape
import xml.etree.ElementTree as ET

import pytest

import reports
from reports.findings import group, headline, replay_command
from reports.records import cell_id, new_record

OVERWRITE = ("you assign `dx[window] = …` where windows overlap (stride 2 < window height 3), so each element keeps "
             "only the last window's share; accumulate with `+=`")


def rec(target, op, status="fail", oracle="torch", dtype="float64", regime="typical", **kw):
    r = new_record(target=target, op=op, oracle=oracle, device="cpu", dtype=dtype, regime=regime, status=status,
                   id=cell_id(target=target, op=op, oracle=oracle, device="cpu", dtype=dtype, regime=regime),
                   examples=12, **kw)
    if status in ("fail", "error"):
        r["replay"] = f"gradaudit replay {r['id']}"
    return r


def conv_fail(**kw):
    return rec("conv_backward_naive", "conv2d", kind="gradient", blame="reference", pattern="overwrite",
               explanation=OVERWRITE, max_rel_err=5.7, max_abs_err=2.0, max_ulp=3e15, atol=1.3e-12, rtol=1.2e-13,
               needed_atol=2.0, needed_rtol=None,
               message=f"conv_backward_naive vs torch (cpu, float64): {OVERWRITE} — grad[x]: greatest absolute "
                       f"difference 2.03 at index (1, 1, 3, 1) (up to 1.27e-12 + 1.21e-13*|expected| allowed)", **kw)


SEVERITIES = [
    rec("relu_backward", "relu", status="fail", kind="mutation", severity="warning",
        hazards=["writes into dout (dx = dout; dx[x <= 0] = 0)"], message="relu_backward: modified dout"),
    rec("softmax_loss", "softmax_cross_entropy", regime="overflow", kind="nonfinite", severity="unstable",
        message="softmax_loss: inf once the true logit trails the max by > 745"),
    conv_fail(severity="fail"),
    rec("affine_backward", "affine", status="pass", severity=None, message="12 examples agree"),
]


def test_report_groups_wrong_then_unstable_then_warnings(tmp_path):
    html = reports.render_html(SEVERITIES, {}, tmp_path).read_text()
    glance = html.split('id="failures"', 1)[1].split('id="matrix"', 1)[0]
    heads = re.findall(r'<tr class="grp grp-(\w+)">', glance)
    assert heads == ["fail", "unstable", "warning"]
    assert glance.index("conv_backward_naive") < glance.index("softmax_loss") < glance.index("relu_backward")
    assert "writes into dout" in glance  # a warning's hazards
    # the evidence sections in the same order
    sections = re.findall(r'<details class="f \w+" id="f\d+"', html)
    assert len(sections) == 3
    order = [html.index(t, html.index('id="details"')) for t in ("conv_backward_naive", "softmax_loss", "relu_backward")]
    assert order == sorted(order)


def test_without_severity_the_status_decides():
    assert group(rec("a", "affine", status="fail")) == "fail"
    assert group(rec("a", "affine", status="error")) == "fail"
    assert group(rec("a", "affine", status="pass")) is None
    assert group(rec("a", "affine", status="pass", severity="warning", hazards=["returns float64"])) == "warning"


def test_the_sentence_comes_first_and_the_tolerance_figures_go_into_a_details_block(tmp_path):
    html = reports.render_html([conv_fail()], {}, tmp_path).read_text()
    summary = html.split('<details class="f fail"', 1)[1].split("</summary>", 1)[0]
    assert html_escape(OVERWRITE).replace("&#x27;", "&#39;") in summary
    card = html.split("max |error|", 1)[1].split("examples", 1)[0]
    visible, hidden = card.split('<details class="tol', 1)
    assert "atol" not in visible and "ULP" not in visible
    assert "atol" in hidden and "max ULP" in hidden and "rtol" in hidden
    assert "≥ inf" not in html and "rtol ≥ <b>inf" not in html  # no needed rtol to show: said in words
    assert "no rtol below 1 would" in hidden


def test_the_replay_line_names_a_report_that_is_not_the_default(tmp_path):
    r = conv_fail()
    assert replay_command(r, "gradaudit-report") == r["replay"]
    assert replay_command(r, tmp_path / "my report") == f"{r['replay']} --report '{tmp_path / 'my report'}'"
    html = reports.render_html([r], {}, tmp_path / "elsewhere").read_text()
    assert f"{r['replay']} --report {tmp_path / 'elsewhere'}" in html


def test_cjk_fonts_are_in_the_font_stack(tmp_path):
    html = reports.render_html([conv_fail(source="seed 001 § 卷积层")], {}, tmp_path).read_text()
    body_font = re.search(r"body\{font:[^;]*;", html).group(0)
    assert "Noto Sans CJK SC" in body_font and "Microsoft YaHei" in body_font
    assert "卷积层" in html


# ---- the terminal --------------------------------------------------------------------------------

def test_terminal_one_line_per_function_with_the_whole_sentence():
    three = [conv_fail(oracle=o, dtype=d) for o in ("torch", "jax") for d in ("float64", "float32")]
    out = reports.terminal_summary(three + [rec("affine_backward", "affine", status="pass")], width=60)
    lines = [ln for ln in out.splitlines() if "conv_backward_naive" in ln]
    assert len(lines) == 1, out
    assert OVERWRITE in lines[0]  # never cut mid-explanation, whatever the width
    assert "4 fail cells" in lines[0]


def test_terminal_groups_and_names_each_function_once():
    out = reports.terminal_summary(SEVERITIES)
    body = out.splitlines()
    wrong, unstable, warn = (next(i for i, ln in enumerate(body) if ln.strip().startswith(h))
                             for h in ("Wrong", "Unstable", "Warnings"))
    assert wrong < unstable < warn
    assert sum("relu_backward" in ln for ln in body) == 1


def test_terminal_shows_the_seed_to_replay_a_run():
    out = reports.terminal_summary([conv_fail()], run_meta={"seed": 1234, "profile": "dev"})
    assert "--seed 1234" in out


def test_headline_cuts_the_figures_not_the_sentence():
    r = rec("affine_backward", "affine", message="affine_backward vs torch (cpu, float64), grad[b]: greatest "
                                                  "absolute difference 1.16 at index (1,) (up to 1e-12 allowed)")
    assert headline(r) == "affine_backward vs torch (cpu, float64), grad[b]: greatest absolute difference 1.16 at index (1,)"
    assert headline(conv_fail()) == OVERWRITE


# ---- JUnit ---------------------------------------------------------------------------------------

def test_junit_names_are_unique_per_function_and_cell(tmp_path):
    recs = [rec(t, "batchnorm", status=s) for t, s in (("batchnorm_backward", "pass"),
                                                        ("batchnorm_backward_alt", "fail"),
                                                        ("spatial_like_batchnorm_backward", "pass"))]
    recs.append(conv_fail())
    path = reports.write_junit(recs, tmp_path / "junit.xml")
    cases = ET.parse(path).getroot().iter("testcase")
    names = [(c.get("classname"), c.get("name")) for c in cases]
    assert len(set(names)) == len(names) == 4, names
    failure = next(c for c in ET.parse(path).getroot().iter("testcase") if "conv" in c.get("name")).find("failure")
    assert OVERWRITE in failure.get("message") and failure.text.startswith(OVERWRITE)


@pytest.mark.parametrize("status", ["pass", "kink", "skip"])
def test_junit_keeps_every_status(tmp_path, status):
    path = reports.write_junit([rec("relu_backward", "relu", status=status, kink="x == 0")], tmp_path / "j.xml")
    assert ET.parse(path).getroot().get("tests") == "1"


def test_evidence_figures_are_never_divided_by_about_zero():
    """The evidence's statistics, as the judge's: an element next to 0 with an error inside the
    tolerance shows a small relative error and a few ULP, not 1e+40."""
    import numpy as np

    from reports.evidence import array_evidence

    o = np.array([1.0, 1e-300, 0.0])
    r = o + np.array([0.0, 1e-14, 1e-14])
    rtol, atol = 4.5e-14, 9e-14
    c = array_evidence("x", r, o, dtype="float64", allowed=atol + rtol * np.abs(o), rtol=rtol)
    assert c.stats["beyond"] == 0
    assert c.stats["rel"]["max"] <= 1 and c.stats["ulp"]["max"] < 1e3
