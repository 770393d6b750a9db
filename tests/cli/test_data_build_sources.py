"""`mechtune data build contextual --data DIR` on an exported MIMIC-CXR-JPG folder and on a
CheXpert-layout folder: it runs, and says how many studies it used and skipped, by reason,
on the console and in the manifest."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.data.io import MANIFEST_NAME, read_table
from tests.data.sources.builders import chexpert_folder

runner = CliRunner()


def _build(data, out, *extra):
    args = ["data", "build", "contextual", "--data", str(data), "--out", str(out), "--no-check"]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    return " ".join(result.output.split()), manifest["source"]


def test_contextual_from_a_chexpert_folder_counts_used_and_skipped(tmp_path):
    effusion = {"Pleural Effusion": "1.0", "Edema": "0.0", "Pneumothorax": "0.0"}
    train = [
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "PA", effusion),
        ("patient00001/study1/view2_lateral.jpg", "Lateral", "", effusion),
        ("patient00002/study1/view1_frontal.jpg", "Frontal", "AP", {"Cardiomegaly": "1.0"}),
        ("patient00003/study1/view1_lateral.jpg", "Lateral", "", {"Edema": "1.0"}),
        ("patient00004/study2/view1_frontal.jpg", "Frontal", "PA", {"Edema": "-1.0"}),
    ]
    root = chexpert_folder(tmp_path, train)
    console, source = _build(root, tmp_path / "out")
    assert source["layout"] == "chexpert"
    assert source["read"]["items"] == 3
    assert source["read"]["skipped"] == {"lateral_only": 1}
    assert "3 items from 5 rows" in console and "lateral_only 1" in console
    claims = read_table(tmp_path / "out" / "claims.parquet")
    assert {r["patient_id"] for r in claims} <= {"patient00001", "patient00002", "patient00004"}
    assert {r["condition"] for r in claims} >= {"pleural_effusion", "cardiomegaly"}


def test_contextual_from_an_exported_mimic_folder_with_report_facts(tmp_path):
    pytest.importorskip("medspacy")
    export = ["sim", "export", "--layout", "mimic-cxr-jpg", "--n", "80", "--size", "32"]
    result = runner.invoke(app, [*export, "--seed", "2", "--out", str(tmp_path / "mimic")])
    assert result.exit_code == 0, result.output
    console, source = _build(tmp_path / "mimic", tmp_path / "out")
    assert source["layout"] == "mimic-cxr-jpg"
    assert source["read"]["items"] == 80
    assert source["read"]["skipped"] == {"lateral_only": 3}  # the export's extras
    facts = source["read"]["notes"]["report_facts"]
    assert facts["reports"] == 80 and facts["changed"] > 0
    assert "80 items" in console and "lateral_only 3" in console and "report facts" in console
    claims = read_table(tmp_path / "out" / "claims.parquet")
    # Side and size reach the claim sets: laterality and severity flips exist only when
    # the findings have them, and label CSVs alone carry neither.
    flipped = {a for r in claims for a in r["flipped"]}
    assert {"laterality", "severity"} <= flipped
    # The official split file decides the splits: every split of the export is used.
    assert {r["split"] for r in claims} == {"train", "val", "test"}
    _, labels_only = _build(tmp_path / "mimic", tmp_path / "labels", "--no-report-facts")
    plain = read_table(tmp_path / "labels" / "claims.parquet")
    assert not {a for r in plain for a in r["flipped"]} & {"laterality", "severity"}
    assert "report_facts" not in labels_only["read"]["notes"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--all-frontal"], "all_frontal"),
        (["--max-missing", "0.5"], "max_missing"),
        (["--label-table", "negbio"], "labels"),
    ],
)
def test_reader_options_need_data(tmp_path, options, named):
    args = ["data", "build", "contextual", "--n", "20", "--no-check", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 2
    assert f"{named}: reader options need --data" in " ".join(result.output.split())


def test_a_reader_option_the_layout_does_not_take_is_refused(tmp_path):
    root = chexpert_folder(tmp_path, [("patient00001/study1/a.jpg", "Frontal", "PA", {})])
    args = ["data", "build", "contextual", "--data", str(root), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--no-check", "--label-table", "negbio"])
    assert result.exit_code == 2
    assert "the chexpert reader does not take option(s) labels" in " ".join(result.output.split())
