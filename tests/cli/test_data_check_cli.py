"""`mechtune data import nast` and `data check` with the polarity gate (needs medspacy)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app

pytest.importorskip("medspacy")
pytestmark = pytest.mark.clinical

runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "importers"

# One MCQ whose options hedge four of the present findings: 4 of 24 mentions (3 conditions
# x 4 options x 2 wordings) are uncertain, 16.7%; every decided mention agrees.
HEDGED = {
    "subject_id": 19990201,
    "study_id": 59990201,
    "question": "Which option best describes the findings on this chest radiograph?",
    "binary_raw_choice_1": {"Pneumothorax": 1, "Pleural Effusion": 0, "Consolidation": 0},
    "binary_raw_choice_2": {"Pneumothorax": 0, "Pleural Effusion": 1, "Consolidation": 0},
    "binary_raw_choice_3": {"Pneumothorax": 0, "Pleural Effusion": 0, "Consolidation": 0},
    "binary_raw_choice_4": {"Pneumothorax": 1, "Pleural Effusion": 1, "Consolidation": 0},
    "negation_mcq_choice_1": "Possible pneumothorax; no pleural effusion or consolidation.",
    "negation_mcq_choice_2": "No pneumothorax. Pleural effusion cannot be excluded. No consolidation.",
    "negation_mcq_choice_3": "No pneumothorax, pleural effusion, or consolidation.",
    "negation_mcq_choice_4": "Pneumothorax and pleural effusion present; no consolidation.",
    "affirmative_mcq_choice_1": "Questionable pneumothorax, with sharp costophrenic angles and clear lung parenchyma.",
    "affirmative_mcq_choice_2": "Fully expanded lungs. Pleural effusion may be present. Clear lung parenchyma.",
    "affirmative_mcq_choice_3": "Fully expanded lungs, sharp costophrenic angles and clear lung parenchyma.",
    "affirmative_mcq_choice_4": "Pneumothorax and pleural effusion present, with clear lung parenchyma.",
    "correct_answer": "A",
}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["nast_comma_list.json", "nast_benchmark.json"])
def test_nast_import_of_list_options_passes_the_gate(tmp_path, name):
    # Comma-coordinated lists under one negation ("No pneumothorax, pleural effusion, or
    # consolidation.") and terse item-by-item options ("Pleural effusion, no edema,
    # atelectasis") both read as labelled.
    result = runner.invoke(
        app, ["data", "import", "nast", str(FIXTURES / name), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    check = _manifest(tmp_path)["polarity_check"]
    assert check["passed"] is True
    assert (check["disagree"], check["uncertain"], check["unmatched"]) == (0, 0, 0)
    assert check["agree"] == check["n_mentions"] > 0
    assert "uncertain 0 = 0.00% (limit 5.00%)" in " ".join(result.output.split())


def test_max_uncertain_decides_the_gate(tmp_path):
    path = tmp_path / "hedged.json"
    path.write_text(json.dumps([HEDGED]))
    failed = runner.invoke(app, ["data", "import", "nast", str(path), "--out", str(tmp_path / "a")])
    assert failed.exit_code == 2
    out = " ".join(failed.output.split())
    assert "uncertain rate 16.67% > 5.00% (4 of 24 matched mentions)" in out
    assert "disagreement rate" not in out.split("error:")[1]
    check = _manifest(tmp_path / "a")["polarity_check"]
    assert check["passed"] is False and check["max_uncertain"] == 0.05
    assert (check["uncertain"], check["disagree"]) == (4, 0)
    assert check["uncertain_rate"] == pytest.approx(4 / 24)
    assert check["rates_by_polarity"]["affirmed"]["uncertain_rate"] == pytest.approx(4 / 8)
    assert {e["condition"] for e in check["uncertain_examples"]} == {
        "pneumothorax",
        "pleural_effusion",
    }

    passed = runner.invoke(
        app,
        [
            "data",
            "import",
            "nast",
            str(path),
            "--out",
            str(tmp_path / "b"),
            "--max-uncertain",
            "0.2",
        ],
    )
    assert passed.exit_code == 0, passed.output
    assert _manifest(tmp_path / "b")["polarity_check"]["passed"] is True

    # `data check` prints the uncertain counts per family and per labelled polarity
    table = runner.invoke(app, ["data", "check", str(tmp_path / "b"), "--max-uncertain", "0.2"])
    assert table.exit_code == 0, table.output
    assert "uncertain%" in table.output and "label " in table.output
    assert "50.0%" in table.output  # affirmed: 4 uncertain of 8 matched
    strict = runner.invoke(app, ["data", "check", str(tmp_path / "b")])
    assert strict.exit_code == 1 and "FAILED" in strict.output


def test_a_limit_outside_zero_one_is_refused(tmp_path):
    result = runner.invoke(
        app,
        [
            "data",
            "import",
            "nast",
            str(FIXTURES / "nast_comma_list.json"),
            "--out",
            str(tmp_path),
            "--max-uncertain",
            "1.5",
        ],
    )
    assert result.exit_code == 2 and "max-uncertain" in result.output
