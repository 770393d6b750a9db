"""Open a report in Chromium's headless shell: the DOM after the page's own check ran,
the console, and a screenshot (``tests/report/test_browser.py`` and the docs' screenshot)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
# .ci/run sets this: there a missing browser is a failure, not a skip
REQUIRE = "MECHTUNE_REQUIRE_BROWSER"


def chromium() -> str:
    """The browser's path; skips the test (fails it under ``MECHTUNE_REQUIRE_BROWSER=1``)
    when none is installed."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = (
        "Chromium is not installed (apt-get update && apt-get install -y "
        "chromium-headless-shell); the report's browser test needs it"
    )
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Page:
    body: dict[str, str]  # the <body> attributes after the page's check
    console: list[str]  # console messages
    dom: str


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def open_page(html: Path, screenshot: Path | None = None, size: str = "1400,2400") -> Page:
    """Load ``html`` from disk, let its scripts run, and return its DOM and console; with
    ``screenshot``, also write a PNG of the first ``size`` pixels."""
    browser = chromium()
    url = html.resolve().as_uri()
    common = [browser, *FLAGS, "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0"]
    done = _run([*common, "--dump-dom", url])
    assert done.returncode == 0, done.stderr[-2000:]
    if screenshot is not None:
        shot = _run([*common, f"--window-size={size}", f"--screenshot={screenshot}", url])
        assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    tag = re.search(r"<body([^>]*)>", done.stdout)
    assert tag is not None, done.stdout[:2000]
    body = dict(re.findall(r'([\w-]+)="([^"]*)"', tag.group(1)))
    console = re.findall(r':CONSOLE[^\]]*\] "(.*?)", source:', done.stderr)
    return Page(body=body, console=console, dom=done.stdout)


def problems(page: Page, figures: int, tables: int) -> list[str]:
    """What is wrong with a rendered report: the page's own check failed, a figure or
    table count differs from what the run holds, or the console logged an error or a
    blocked load."""
    found = []
    if page.body.get("data-render") != "ok":
        found.append(f"the page's check says {page.body.get('data-render')!r}")
    if page.body.get("data-figures") != str(figures):
        found.append(f"{page.body.get('data-figures')} figures on the page, {figures} expected")
    if page.body.get("data-tables") != str(tables):
        found.append(f"{page.body.get('data-tables')} tables on the page, {tables} expected")
    found += [
        f"console: {m}"
        for m in page.console
        if "mechtune report" in m or "Content Security Policy" in m or "Failed to load" in m
    ]
    return found


def expected_counts(folder: Path) -> tuple[int, int]:
    """(figures, tables) the report of ``folder`` should show, from what the run holds."""
    from mechtune.report.render import collect

    report = collect(folder)
    figures = sum(len(s.figures) for s in report.sections)
    tables = sum(len(s.tables) + len(s.examples) for s in report.sections)
    return figures, tables + bool(report.timings)


def main(argv: list[str]) -> int:
    """``python -m tests.report.browser RUN_DIR [SCREENSHOT]``: open RUN_DIR/report.html
    in Chromium and exit 1 with the problems found (.ci/run checks the demo's report this
    way); a missing browser is an error here."""
    os.environ[REQUIRE] = "1"
    folder = Path(argv[0])
    shot = Path(argv[1]) if len(argv) > 1 else None
    figures, tables = expected_counts(folder)
    page = open_page(folder / "report.html", screenshot=shot, size="1400,4000")
    found = problems(page, figures, tables)
    for problem in found:
        print(f"report check: {problem}")
    if not found:
        print(f"report check: {folder / 'report.html'} OK ({figures} figures, {tables} tables)")
    return 1 if found else 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
