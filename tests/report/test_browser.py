"""The report in a real browser (Chromium's headless shell): every figure decodes, every
table has rows, nothing is fetched and nothing logs an error, on reports of a tiny run;
and the same check fails on deliberately broken reports."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tests.report.browser import expected_counts, main, open_page, problems
from tests.report.conftest import run_cli

expected = expected_counts


@pytest.mark.parametrize("part", ["zero-shot", "negation", "paraphrase", "."])
def test_every_report_of_a_tiny_run_renders(tiny_run, tmp_path, part):
    folder = tiny_run / part
    if part == ".":  # the whole run, by `mechtune report`
        run_cli("report", tiny_run)
    figures, tables = expected(folder)
    assert figures >= 1 and tables >= 1
    shot = tmp_path / "shot.png"
    page = open_page(folder / "report.html", screenshot=shot, size="1200,1600")
    assert problems(page, figures, tables) == []
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10  # not a blank page


def _break(html: str, how: str) -> str:
    first = re.search(r'src="data:image/(png|svg\+xml);base64,([^"]+)"', html)
    assert first is not None
    if how == "corrupt figure":
        return html.replace(first.group(2), "AAAAnot-an-image", 1)
    if how == "missing figure":  # the <figure> of the first plot is gone
        start = html.rindex('<figure class="plot', 0, first.start())
        end = html.index("</figure>", first.end()) + len("</figure>")
        return html[:start] + html[end:]
    if how == "external figure":
        return html.replace(first.group(0), 'src="https://example.org/figure.png"', 1)
    if how == "empty table":
        body = re.search(r"<tbody>.*?</tbody>", html, flags=re.S)
        assert body is not None
        return html[: body.start()] + "<tbody></tbody>" + html[body.end() :]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["corrupt figure", "missing figure", "external figure", "empty table"]
)
def test_the_browser_check_fails_on_a_broken_report(tiny_run, tmp_path, how):
    folder = tiny_run / "negation"
    figures, tables = expected(folder)
    broken = tmp_path / "report.html"
    broken.write_text(_break((folder / "report.html").read_text(), how))
    found = problems(open_page(broken), figures, tables)
    assert found, how
    if how in ("corrupt figure", "external figure"):
        assert any("figure did not load" in p for p in found)
    if how == "external figure":  # the page's content security policy blocked the fetch
        assert any("Content Security Policy" in p for p in found)
    if how == "missing figure":
        assert any(f"{figures - 1} figures on the page" in p for p in found)
    if how == "empty table":
        assert any("has no rows" in p for p in found)


def test_the_ci_check_passes_a_good_report_and_fails_a_broken_one(tiny_run, tmp_path, capsys):
    assert main([str(tiny_run / "zero-shot")]) == 0
    assert "OK" in capsys.readouterr().out
    import shutil

    copy = tmp_path / "zero-shot"
    shutil.copytree(tiny_run / "zero-shot", copy)
    page = (copy / "report.html").read_text()
    (copy / "report.html").write_text(_break(page, "corrupt figure"))
    assert main([str(copy)]) == 1
    assert "figure did not load" in capsys.readouterr().out
