"""Render the report of a real run with planted bugs (tests/planted_run.py: the catalogue's ops with
classic derivation bugs, judged by the real oracles) and screenshot it in headless Chromium: the
first failure's evidence section, cropped, for docs/.

    python scripts/report_screenshot.py [--out docs/report-failure.png] [--full]

Needs torch, jax, /usr/bin/chromium (Debian package ``chromium``) and Pillow.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import reports  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1280


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, *, width: int = WIDTH, height: int = 2000,
               chromium: str | None = None) -> None:
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    "--no-first-run", "--disable-extensions", f"--screenshot={png}",
                    f"--window-size={width},{height}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def crop_to_first_failure(png: Path, out: Path, *, height: int = 1500) -> None:
    """Crop the page screenshot to the first evidence section: it starts where the section's
    red left border (#c62828) first appears near the left margin."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    w, h = img.size
    px = img.load()
    def red(x, y):
        return all(abs(a - b) < 16 for a, b in zip(px[x, y], (0xC6, 0x28, 0x28)))

    def light(x, y):
        return min(px[x, y]) > 235

    top = None
    for y in range(h - 40):
        # The border is a thin red strip with a light background right of it (the verdict box,
        # also red, is red all across); it runs down for a while.
        if red(26, y) and light(60, y) and red(26, y + 39) and light(60, y + 39):
            top = y
            break
    if top is None:
        img.crop((0, 0, w, min(h, height))).save(out)
        return
    top = max(0, top - 40)  # a little of the heading above
    crop = img.crop((0, top, w, min(h, top + height)))
    # 256 colours are plenty for a page of text and flat colour; a third of the bytes.
    crop.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "report-failure.png"))
    ap.add_argument("--full", action="store_true", help="the whole page, not the failure section")
    ap.add_argument("--keep", help="run and render into this directory, and keep it")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        from planted_run import planted_run

        d = Path(args.keep or tmp) / "run"
        planted_run(d)
        page = reports.render_html(reports.load_records(d), reports.load_run_meta(d), d)
        raw = Path(tmp) / "page.png"
        screenshot(page, raw, height=2000 if args.full else 6000)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.full:
            shutil.copyfile(raw, out)
        else:
            crop_to_first_failure(raw, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
