"""--max-uncertain reaches the polarity gate from every command that runs it (no medspacy:
the gate is replaced by a stand-in whose report has 6% uncertain mentions)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechtune.cli import data as data_cli
from mechtune.cli.main import app
from mechtune.data.check import PolarityCheckFailed
from mechtune.data.polarity_check import PolarityReport

runner = CliRunner()
NAST = str(Path(__file__).resolve().parents[1] / "data/fixtures/importers/nast_comma_list.json")


@pytest.fixture
def gate(monkeypatch):
    """A stand-in for check_dataset: 6 of 100 matched mentions uncertain, none wrong."""
    seen = []

    def fake_check(out, *, sample_rows, max_disagreement, max_uncertain, **_):
        seen.append((max_disagreement, max_uncertain))
        report = PolarityReport(n_texts=100, n_mentions=100, agree=94, uncertain=6)
        if not report.passes(max_disagreement, max_uncertain):
            raise PolarityCheckFailed(out, report, max_disagreement, max_uncertain)
        return report

    monkeypatch.setattr(data_cli, "check_dataset", fake_check)
    monkeypatch.setattr(data_cli, "clinical_available", lambda: True)
    return seen


def _commands(tmp_path):
    out = str(tmp_path / "out")
    return {
        "build": ["data", "build", "--n", "30", "--out", out],
        "build polarity": ["data", "build", "polarity", "--n", "30", "--out", out],
        "build contextual": ["data", "build", "contextual", "--n", "30", "--out", out],
        "build paraphrase": ["data", "build", "paraphrase", "--n", "30", "--out", out],
        "import nast": ["data", "import", "nast", NAST, "--out", out],
    }


COMMANDS = ["build", "build polarity", "build contextual", "build paraphrase", "import nast"]


@pytest.mark.parametrize("command", COMMANDS)
def test_max_uncertain_reaches_the_gate(tmp_path, gate, command):
    args = _commands(tmp_path)[command]
    strict = runner.invoke(app, args)
    assert strict.exit_code == 2
    assert "uncertain rate 6.00% > 5.00%" in " ".join(strict.output.split())
    lenient = runner.invoke(app, [*args, "--max-uncertain", "0.1"])
    assert lenient.exit_code == 0, lenient.output
    assert "uncertain 6 = 6.00% (limit 10.00%)" in " ".join(lenient.output.split())
    assert gate[0] == (0.02, 0.05) and gate[-1] == (0.02, 0.1)


def test_data_check_takes_max_uncertain(tmp_path, gate):
    assert runner.invoke(app, _commands(tmp_path)["import nast"] + ["--no-check"]).exit_code == 0
    folder = str(tmp_path / "out")
    assert runner.invoke(app, ["data", "check", folder]).exit_code == 1
    assert runner.invoke(app, ["data", "check", folder, "--max-uncertain", "0.1"]).exit_code == 0
    assert gate == [(0.02, 0.05), (0.02, 0.1)]


@pytest.mark.parametrize("option", ["--max-uncertain", "--max-disagreement"])
def test_a_limit_must_be_a_rate(tmp_path, gate, option):
    result = runner.invoke(app, [*_commands(tmp_path)["import nast"], option, "1.5"])
    assert result.exit_code == 2 and option in result.output and not gate


OPTION_TESTS = {
    **{
        f"mechtune data {c}": {"--max-uncertain": "test_max_uncertain_reaches_the_gate"}
        for c in COMMANDS
    },
    "mechtune data check": {"--max-uncertain": "test_data_check_takes_max_uncertain"},
}
