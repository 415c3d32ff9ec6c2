"""The HTML report in a real browser: headless Chromium loads it with no console message (no
script error, no blocked resource), the failure's evidence is in the rendered DOM, with and
without JavaScript, and a screenshot is not blank.

Skipped when Chromium is not installed (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planted_run import bulk, rewrite

import reports

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from report_screenshot import find_chromium  # noqa: E402

CHROMIUM = find_chromium() or (shutil.which("/usr/bin/chromium"))
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"),
              pytest.mark.xdist_group("planted-report")]  # the planted run, shared with test_reports.py

FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars"]


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True,
                          timeout=timeout)


def console_messages(stderr: str) -> list[str]:
    """Messages the page wrote to the console: script errors, CSP violations (a blocked
    external resource), console.log. Chromium logs each as ``INFO:CONSOLE(...)``."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


@pytest.fixture(scope="module")
def report(planted_report, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(planted_report[0], d)
    recs = [dict(r) for r in planted_report[1]]
    next(r for r in recs if r["status"] == "error")["message"] += " <script>console.error('injected')</script>"
    rewrite(d, recs)
    return reports.render_html(reports.load_records(d), reports.load_run_meta(d), d)


def test_loads_without_console_messages_and_shows_the_evidence(report):
    res = chromium("--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_messages(res.stderr) == []
    dom = res.stdout
    assert "softmax_cross_entropy" in dom and "constant_factor" in dom
    assert "gradaudit replay softmax_cross_entropy_backward_no_mean-torch-cpu-float64-typical" in dom
    assert "Blame: reference" in dom and "<svg" in dom
    assert "&lt;script&gt;console.error('injected')" in dom
    # The progressive-enhancement script ran: its toggle is visible.
    assert re.search(r'<label id="only-bad" class="">', dom)


def _screenshot(page: Path, png: Path, *extra: str):
    res = chromium(*extra, f"--screenshot={png}", "--window-size=1280,2000", page.as_uri())
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]
    return png


def test_readable_without_javascript(report, tmp_path):
    """The page without its script shows the same evidence and looks the same, but for the
    optional matrix filter. (Chromium's headless --dump-dom and --screenshot themselves need
    scripting, so the script is removed from a copy of the page instead of turned off.)"""
    html = report.read_text(encoding="utf-8")
    stripped = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert stripped != html and "<script" not in stripped
    nojs = report.with_name("nojs.html")
    nojs.write_text(stripped, encoding="utf-8")
    res = chromium("--dump-dom", nojs.as_uri())
    assert "Blame: reference" in res.stdout and "Mutated in place" in res.stdout
    assert '<label id="only-bad" class="js-only">' in res.stdout
    Image = pytest.importorskip("PIL.Image")
    with_js = Image.open(_screenshot(report, tmp_path / "js.png")).convert("L")
    without = Image.open(_screenshot(nojs, tmp_path / "nojs.png")).convert("L")
    assert with_js.size == without.size
    a, b = with_js.tobytes()[::7], without.tobytes()[::7]
    differ = sum(x != y for x, y in zip(a, b)) / len(a)
    assert differ < 0.02, f"{differ:.1%} of the page changes without JavaScript"


def test_screenshot_is_not_blank(report, tmp_path):
    png = _screenshot(report, tmp_path / "page.png")
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib; without it, the size must do
        assert png.stat().st_size > 20_000
        return
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 2000)
    colours = img.resize((64, 100)).getcolors(64 * 100)
    assert len(colours) > 50  # text, the verdict box, the matrix colours


def test_thorough_sized_report_opens_at_once(planted_report, tmp_path):
    shutil.copytree(planted_report[0], tmp_path / "run")
    bulk(tmp_path / "run", planted_report[1], 5000, 100)
    page = reports.render_html(reports.load_records(tmp_path / "run"), {}, tmp_path / "run")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><title>x</title><p>x")
    t0 = time.perf_counter()
    chromium("--dump-dom", blank.as_uri())
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = chromium("--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    load = time.perf_counter() - t0
    print(f"\nChromium: blank page {startup:.2f} s, 5,000-record report {load:.2f} s "
          f"({page.stat().st_size / 1e6:.2f} MB)")
    assert res.returncode == 0 and console_messages(res.stderr) == []
    assert load - startup < 5  # pytest-html: ~40 s at 4,000 tests


def _cjk_font() -> bool:
    try:
        out = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(out.strip())


@pytest.mark.skipif(not _cjk_font(), reason="no CJK font installed (Debian: apt-get install fonts-noto-cjk)")
def test_chinese_text_renders_in_the_reports_fonts(tmp_path):
    """The notes are Chinese: the report's text (a source such as "seed 001 § 卷积层") must render as
    glyphs, not as tofu boxes. Five different characters are drawn large in the report's own style;
    tofu would draw five identical boxes, real glyphs differ from one another."""
    Image = pytest.importorskip("PIL.Image")
    text = "卷积层池化"
    rec = {"target": "conv_backward", "op": "conv2d", "oracle": "torch", "device": "cpu", "dtype": "float64",
           "regime": "typical", "status": "pass", "examples": 3, "source": f"seed 001 § {text}"}
    html = reports.render_html([rec], {}, tmp_path / "r").read_text(encoding="utf-8")
    assert text in html
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    page = tmp_path / "cjk.html"
    page.write_text(f'<!DOCTYPE html><meta charset="utf-8"><style>{style} body{{margin:0;padding:0}} '
                    f'#t{{font-size:64px;line-height:80px;white-space:nowrap}}</style><div id="t">{text}</div>',
                    encoding="utf-8")
    png = tmp_path / "cjk.png"
    res = chromium(f"--screenshot={png}", "--window-size=400,100", page.as_uri())
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]
    img = Image.open(png).convert("L")
    cells = [img.crop((64 * i, 0, 64 * (i + 1), 80)).tobytes() for i in range(len(text))]
    assert all(min(c) < 128 for c in cells), "a character drew nothing"
    assert len(set(cells)) == len(text), "the characters render as identical boxes (tofu): no CJK font in the stack"
