"""`mechtune data padchest-manifest`: every option changes the written manifest."""

from __future__ import annotations

from typer.testing import CliRunner

from mechtune.cli.main import app
from tests.data.sources.builders import PADCHEST_ROWS as ROWS
from tests.data.sources.builders import padchest_csv as _csv
from tests.data.sources.builders import padchest_images as _images

OPTION_TESTS = {
    "mechtune data padchest-manifest": {
        "csv_path": "test_cli_padchest_manifest_options",
        "--images": "test_cli_padchest_manifest_options",
        "--out": "test_cli_padchest_manifest_options",
        "--skip-bad": "test_cli_padchest_manifest_options",
    }
}


def test_cli_padchest_manifest_options(tmp_path):
    runner = CliRunner()
    src = _csv(tmp_path / "padchest.csv")
    _images(tmp_path / "images")
    _images(tmp_path / "flat", flat=True)

    def run(*args):
        return runner.invoke(app, ["data", "padchest-manifest", *map(str, args)])

    result = run(src, "--images", tmp_path / "images", "--out", tmp_path / "a.csv")
    assert result.exit_code == 0, result.output
    assert "3 items from 9 rows" in result.output and "copd signs 1" in result.output
    first = (tmp_path / "a.csv").read_text()
    # --out: written where asked
    assert run(src, "--images", tmp_path / "images", "--out", tmp_path / "b.csv").exit_code == 0
    assert (tmp_path / "b.csv").read_text() == first
    # --images: the image paths follow the folder
    assert run(src, "--images", tmp_path / "flat", "--out", tmp_path / "c.csv").exit_code == 0
    assert "flat/a_pa.png" in (tmp_path / "c.csv").read_text() and "flat" not in first
    # csv_path: another CSV, another manifest
    other = _csv(tmp_path / "other.csv", ROWS[:2])
    assert run(other, "--images", tmp_path / "images", "--out", tmp_path / "d.csv").exit_code == 0
    assert (tmp_path / "d.csv").read_text().count("\n") == 2
    # --skip-bad: a bad row fails the run (exit 2, naming file and line), or is counted
    bad = _csv(tmp_path / "bad.csv", [*ROWS, ("x.png", "0", "X", "P0", "PA", "[oops", "")])
    result = run(bad, "--images", tmp_path / "images", "--out", tmp_path / "e.csv")
    assert result.exit_code == 2 and "line 11" in result.output
    assert not (tmp_path / "e.csv").exists()
    result = run(bad, "--images", tmp_path / "images", "--out", tmp_path / "e.csv", "--skip-bad")
    assert result.exit_code == 0 and "bad_label 1" in result.output
    assert (tmp_path / "e.csv").read_text() == first
