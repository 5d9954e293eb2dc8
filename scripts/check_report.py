"""Render a SHED report in headless Chromium at its full page height, and measure what a reader would notice.

    python scripts/check_report.py RUN_DIR/report.html out.png [--width 1280] [--chromium /usr/bin/chromium]

Two passes over a temporary copy of the report (the report itself is not touched):

1. ``--dump-dom`` of the copy with a small script appended that writes measurements into the DOM: the page
   height, every stat card whose number wraps or overflows its card, every image narrower than it is drawn
   or wider than the page, and whether the page has text at all;
2. ``--screenshot`` at ``--width`` x the measured height.

Prints the measurements as JSON (``{"height", "width", "cards", "wrapped_cards", "overflowing", "images",
"text_chars", "png"}``) and exits 1 when a card wraps or overflows or the page is blank. No network: the
report is self-contained and Chromium runs with background networking off.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"

_MEASURE = """
<script>
window.addEventListener('load', function () {
  var cards = Array.from(document.querySelectorAll('.card .v'));
  var wrapped = [], overflowing = [];
  cards.forEach(function (v) {
    var style = getComputedStyle(v);
    var line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.3;
    if (v.getBoundingClientRect().height > 1.5 * line) wrapped.push(v.textContent);
    if (v.scrollWidth > v.clientWidth + 1 || v.getBoundingClientRect().right > v.parentElement.getBoundingClientRect().right + 1)
      overflowing.push(v.textContent);
  });
  var images = Array.from(document.querySelectorAll('img')).map(function (img) {
    return {alt: img.alt, natural: img.naturalWidth, shown: Math.round(img.getBoundingClientRect().width)};
  });
  var out = {height: Math.ceil(document.documentElement.scrollHeight), width: document.documentElement.scrollWidth,
             cards: cards.length, wrapped_cards: wrapped, overflowing: overflowing, images: images,
             text_chars: document.body.innerText.trim().length};
  var pre = document.createElement('pre');
  pre.id = 'shed-measurements';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium(binary: str, *args: str, user_dir: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={user_dir}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def measure(report: Path, *, width: int = 1280, chromium: str = CHROMIUM) -> dict:
    """Measurements of ``report`` rendered ``width`` pixels wide (see the module docstring)."""
    source = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(source.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
        result = _chromium(chromium, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
                           f"--window-size={width},1000", "--dump-dom", copy.as_uri(), user_dir=str(Path(tmp) / "u"))
    found = re.search(r'<pre id="shed-measurements">(.*?)</pre>', result.stdout, re.S)
    if not found:
        raise RuntimeError(f"chromium gave no measurements (exit {result.returncode}): {result.stderr[-500:]}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, png: Path, *, width: int, height: int, chromium: str = CHROMIUM) -> None:
    """``report`` rendered to ``png`` at ``width`` x ``height`` pixels."""
    with tempfile.TemporaryDirectory() as tmp:
        result = _chromium(chromium, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
                           f"--window-size={width},{height}", f"--screenshot={png.absolute()}",
                           report.absolute().as_uri(), user_dir=str(Path(tmp) / "u"))
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-500:]}")


def check(report: Path, png: Path, *, width: int = 1280, chromium: str = CHROMIUM) -> dict:
    """Measure, then screenshot at the full page height; returns the measurements (with ``"png"``)."""
    measured = measure(report, width=width, chromium=chromium)
    screenshot(report, png, width=width, height=max(200, int(measured["height"])), chromium=chromium)
    return {**measured, "png": str(png)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    result = check(args.report, args.png, width=args.width, chromium=args.chromium)
    print(json.dumps(result, indent=2))
    bad = result["wrapped_cards"] or result["overflowing"] or result["text_chars"] == 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
