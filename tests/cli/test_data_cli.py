"""Every option of `mechtune data build|import|check` changes what is written.

Each case runs a command twice through typer's CliRunner, with one option changed, and
compares the tables written (rows, file names), the exit code, and what the polarity
check recorded in each manifest (its threshold and sample). The polarity-check cases do
not depend on the checker's verdicts: they compare recorded thresholds, or use a file
whose labels contradict its own text ("No pneumothorax." labelled present), which any
negation detector flags, against thresholds 1.0 and 0.0.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.data.check import DEFAULT_SAMPLE
from mechtune.data.io import MANIFEST_NAME, read_table
from tests.data.sources.builders import REPORT, MimicStudy, mimic_folder

runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "importers"

HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
    "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,"
    "Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)
# Every study has enough labels for the polarity row filter; -1.0 (uncertain) labels sit
# where the policy changes which conditions are present.
LABEL_ROWS = [
    "10,50,1.0,1.0,0.0,0.0,0.0,0.0,0.0,-1.0,,1.0,0.0,-1.0,0.0,1.0",
    "11,51,1.0,-1.0,0.0,1.0,0.0,0.0,-1.0,1.0,,0.0,0.0,0.0,0.0,",
    "12,52,-1.0,1.0,1.0,0.0,0.0,-1.0,0.0,1.0,,1.0,0.0,1.0,0.0,1.0",
    "13,53,0.0,1.0,0.0,1.0,-1.0,0.0,0.0,0.0,,1.0,0.0,0.0,-1.0,",
]
BAD_ROW = "14,54,1.0,2.0,0.0,,,,,,,,,,,"  # 2.0 is not a label


def _nast_record(subject: int, labels: list[dict[str, int]], negated: list[str]) -> dict:
    record = {
        "subject_id": subject,
        "study_id": subject + 40000000,
        "question": "Which option best describes the chest radiograph findings?",
        "correct_answer": "A",
    }
    for i, (vec, text) in enumerate(zip(labels, negated, strict=True), start=1):
        record[f"binary_raw_choice_{i}"] = vec
        record[f"negation_mcq_choice_{i}"] = text
        record[f"affirmative_mcq_choice_{i}"] = text.replace(
            "No pneumothorax.", "Lungs are fully expanded."
        ).replace("No edema.", "Normal pulmonary vascularity.")
    return record


def _vec(pneumothorax: int, edema: int) -> dict[str, int]:
    return {"Pneumothorax": pneumothorax, "Edema": edema}


# Four options over two conditions; the texts state what the labels say ...
HONEST = _nast_record(
    10000001,
    [_vec(1, 0), _vec(0, 1), _vec(1, 1), _vec(0, 0)],
    [
        "Pneumothorax. No edema.",
        "No pneumothorax. Edema.",
        "Pneumothorax. Edema.",
        "No pneumothorax. No edema.",
    ],
)
# ... except here: "No pneumothorax." is labelled present, a certain disagreement.
MISLABELLED = _nast_record(
    10000002,
    [_vec(1, 0), _vec(0, 1), _vec(1, 1), _vec(0, 0)],
    [
        "No pneumothorax. No edema.",
        "No pneumothorax. Edema.",
        "No pneumothorax. Edema.",
        "No pneumothorax. No edema.",
    ],
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    files = {
        "labels": root / "labels.csv",
        "bad_labels": root / "bad_labels.csv",
        "nast": root / "nast.json",
        "nast_bad": root / "nast_bad.json",
        "nast_one": root / "nast_one.json",
        "psf": root / "psf.jsonl",
        "psf_one": root / "psf_one.jsonl",
        "psf_bad": root / "psf_bad.jsonl",
    }
    files["labels"].write_text("\n".join([HEADER, *LABEL_ROWS]) + "\n")
    files["bad_labels"].write_text("\n".join([HEADER, *LABEL_ROWS, BAD_ROW]) + "\n")
    files["nast"].write_text(json.dumps([HONEST, MISLABELLED]))
    files["nast_one"].write_text(json.dumps([HONEST]))
    files["nast_bad"].write_text(json.dumps([HONEST, MISLABELLED, {"subject_id": 1}]))
    psf = (FIXTURES / "psf_records.jsonl").read_text().splitlines()
    files["psf"].write_text("\n".join(psf) + "\n")
    files["psf_one"].write_text(psf[0] + "\n")
    files["psf_bad"].write_text("\n".join([*psf, '{"question": ""}']) + "\n")
    files["mimic"] = mimic_with_reports(root / "mimic")
    files["mimic_missing"] = mimic_with_reports(root / "mimic_missing")
    next((files["mimic_missing"] / "files").rglob("d3-pa.jpg")).unlink()
    return files


def mimic_with_reports(root: Path) -> Path:
    """Eight MIMIC-CXR-JPG studies of four patients whose labels leave pneumothorax and
    pneumonia blank while the reports state them absent, and give effusions a side and a
    size; each study has a PA, an AP and a lateral film, one is lateral-only (counted,
    skipped); the negbio table calls every effusion uncertain."""
    studies = []
    for i in range(8):
        subject, study = str(10000100 + i // 2), str(50000100 + i)
        side, size = ("left", "small") if i % 2 else ("right", "moderate")
        labels = {"Pleural Effusion": "1.0", "Cardiomegaly": "1.0", "Edema": "0.0"}
        labels.update({"Consolidation": "0.0", "Fracture": "0.0"})
        findings = f"{size.capitalize()} {side} pleural effusion. Mild cardiomegaly."
        impression = "No pneumothorax. No pneumonia."
        views = [(f"d{i}-pa", "PA"), (f"d{i}-lat", "LATERAL"), (f"d{i}-ap", "AP")]
        report = REPORT.format(findings=findings, impression=impression)
        studies.append(
            MimicStudy(subject, study, labels, views if i != 7 else [("x", "LL")], report=report)
        )
    mimic_folder(root, studies)
    negbio = [
        dataclasses.replace(s, labels={**s.labels, "Pleural Effusion": "-1.0"}) for s in studies
    ]
    return mimic_folder(root, negbio, label_table="negbio", write_images=False)


@pytest.fixture(scope="module", autouse=True)
def one_checker():
    """Build the clinical negation pipeline once (speed only: checking is stateless)."""
    import mechtune.data.check as check

    real, made = check.PolarityChecker, {}

    def cached(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = real(*args, **kwargs)
        return made[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(check, "PolarityChecker", cached)
        yield


def _fingerprint(out: Path, exit_code: int) -> dict:
    """Exit code, every table's rows by file, and each manifest's polarity-check record."""
    tables, checks = {}, {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.name == MANIFEST_NAME:
            record = json.loads(path.read_text()).get("polarity_check")
            checks[rel] = record and (record["max_disagreement"], record["sample_rows"])
        elif path.suffix in (".parquet", ".jsonl"):
            tables[rel] = read_table(path)
    return {"exit_code": exit_code, "tables": tables, "checks": checks}


def _invoke(args: list[str], inputs: dict[str, Path]) -> tuple[int, str]:
    """Run with ``{name}`` placeholders replaced by the input files."""
    result = runner.invoke(app, [str(inputs[a[1:-1]]) if a[:1] == "{" else a for a in args])
    return result.exit_code, result.output


BUILD_COMMANDS = ["data build", "data build polarity", "data build contextual"]
BUILD_COMMANDS.append("data build paraphrase")
SYNTH = ["--n", "60", "--no-check"]
CHECKED = ["--n", "20", "--check", "--max-disagreement", "1.0"]
LABELS = ["--labels", "{labels}", "--no-check"]
DATA = ["--data", "{mimic}", "--no-check"]
MISSING = ["--data", "{mimic_missing}", "--skip-bad", "--no-check", "--no-report-facts"]
# option -> (base options, changed options); None: --out (the same output elsewhere).
BUILD_OPTIONS: dict[str, tuple[list[str], list[str]] | None] = {
    "--out": None,
    "--n": (SYNTH, ["--n", "80", "--no-check"]),
    "--seed": (SYNTH, [*SYNTH, "--seed", "1"]),
    "--format": (SYNTH, [*SYNTH, "--format", "jsonl"]),
    "--labels": (SYNTH, LABELS),
    "--uncertain": (LABELS, [*LABELS, "--uncertain", "present"]),
    "--skip-bad": (
        ["--labels", "{bad_labels}", "--no-check"],
        ["--labels", "{bad_labels}", "--no-check", "--skip-bad"],
    ),
    "--check": (["--n", "20", "--no-check"], CHECKED),
    "--data": (SYNTH, [*DATA, "--no-report-facts"]),
    # The reports add absences the labels leave blank and the side and size of findings.
    "--report-facts": ([*DATA, "--no-report-facts"], DATA),
    # One of eight images is missing: 12.5% is over the default 1% limit, not over 20%.
    "--max-missing": (
        MISSING,
        [*MISSING, "--max-missing", "0.2"],
    ),
    # Every study has a PA and an AP film: all frontal images doubles the items.
    "--all-frontal": ([*DATA, "--no-report-facts"], [*DATA, "--no-report-facts", "--all-frontal"]),
    # The negbio table calls the effusions uncertain where the chexpert table says present.
    "--label-table": (
        [*DATA, "--no-report-facts"],
        [*DATA, "--no-report-facts", "--label-table", "negbio"],
    ),
    "--max-disagreement": (CHECKED, ["--n", "20", "--check", "--max-disagreement", "0.9"]),
}
IMPORT_NAST = ["{nast}", "--no-check"]
IMPORT_OPTIONS: dict[str, dict[str, tuple[list[str], list[str]] | None]] = {
    "data import nast": {
        "path": (IMPORT_NAST, ["{nast_one}", "--no-check"]),
        "--out": None,
        "--format": (IMPORT_NAST, [*IMPORT_NAST, "--format", "jsonl"]),
        "--skip-bad": (["{nast_bad}", "--no-check"], ["{nast_bad}", "--no-check", "--skip-bad"]),
        "--check": (IMPORT_NAST, ["{nast}", "--check", "--max-disagreement", "1.0"]),
        # The mislabelled record disagrees: a zero threshold fails the gate.
        "--max-disagreement": (
            ["{nast}", "--check", "--max-disagreement", "1.0"],
            ["{nast}", "--check", "--max-disagreement", "0.0"],
        ),
    },
    "data import psf": {
        "path": (["{psf}"], ["{psf_one}"]),
        "--out": None,
        "--format": (["{psf}"], ["{psf}", "--format", "jsonl"]),
        "--skip-bad": (["{psf_bad}"], ["{psf_bad}", "--skip-bad"]),
    },
}
CHECKS = {"--check", "--max-disagreement"}


def _needs_checker(option: str, command: str) -> None:
    if option in CHECKS or option == "--report-facts" or command == "data check":
        pytest.importorskip("medspacy")


def _compare(tmp_path, inputs, command, option, base_options, changes):
    _needs_checker(option, command)
    prefix = command.split()
    if changes is None:  # --out: the same tables, at the new place
        a, b = tmp_path / "a", tmp_path / "elsewhere" / "deeper"
        code_a, out_a = _invoke([*prefix, *base_options, "--out", str(a)], inputs)
        code_b, _ = _invoke([*prefix, *base_options, "--out", str(b)], inputs)
        assert code_a == 0, out_a
        assert _fingerprint(a, code_a) == _fingerprint(b, code_b)
        assert _fingerprint(a, code_a)["tables"]
        return
    before_options, after_options = changes
    code_a, out_a = _invoke([*prefix, *before_options, "--out", str(tmp_path / "a")], inputs)
    code_b, out_b = _invoke([*prefix, *after_options, "--out", str(tmp_path / "b")], inputs)
    before, after = _fingerprint(tmp_path / "a", code_a), _fingerprint(tmp_path / "b", code_b)
    assert before != after, (out_a, out_b)
    return before, after


@pytest.mark.parametrize("command", BUILD_COMMANDS)
@pytest.mark.parametrize("option", sorted(BUILD_OPTIONS))
def test_every_data_build_option_changes_the_output(tmp_path, inputs, command, option):
    result = _compare(tmp_path, inputs, command, option, SYNTH, BUILD_OPTIONS[option])
    if result is None:
        return
    before, after = result
    if option in ("--skip-bad", "--max-missing"):  # refused, then skipped and counted
        assert (before["exit_code"], after["exit_code"]) == (2, 0)
    elif option in CHECKS:  # the check ran and recorded the threshold it was given
        threshold = 0.9 if option == "--max-disagreement" else 1.0
        assert set(after["checks"].values()) == {(threshold, DEFAULT_SAMPLE)}
    else:
        assert before["exit_code"] == after["exit_code"] == 0
        assert before["checks"] == {k: None for k in before["checks"]}


@pytest.mark.parametrize(
    ("command", "option"),
    [(c, o) for c, options in IMPORT_OPTIONS.items() for o in options],
)
def test_every_data_import_option_changes_the_output(tmp_path, inputs, command, option):
    base_options = IMPORT_OPTIONS[command]["path"][0]  # type: ignore[index]
    result = _compare(
        tmp_path, inputs, command, option, base_options, IMPORT_OPTIONS[command][option]
    )
    if result is None:
        return
    before, after = result
    if option == "--skip-bad":
        assert (before["exit_code"], after["exit_code"]) == (2, 0)
    if option == "--max-disagreement":  # the gate uses the threshold
        assert (before["exit_code"], after["exit_code"]) == (0, 2)
        assert after["checks"] == {MANIFEST_NAME: (0.0, DEFAULT_SAMPLE)}


@pytest.fixture
def imported(tmp_path, inputs) -> Path:
    """Two imported data folders (no check yet) under one root."""
    pytest.importorskip("medspacy")
    for name, source in (("nast", "{nast}"), ("nast_one", "{nast_one}")):
        code, output = _invoke(
            ["data", "import", "nast", source, "--no-check", "--out", str(tmp_path / name)],
            inputs,
        )
        assert code == 0, output
    return tmp_path


def _checked(root: Path) -> dict:
    return {
        str(p.parent.relative_to(root)): json.loads(p.read_text()).get("polarity_check")
        for p in sorted(root.rglob(MANIFEST_NAME))
    }


def test_data_check_path(imported, inputs):
    """PATH picks what is checked: one folder, or every data folder below a root."""
    code, output = _invoke(
        ["data", "check", str(imported / "nast_one"), "--max-disagreement", "1"], inputs
    )
    assert code == 0, output
    checked = _checked(imported)
    assert checked["nast"] is None and checked["nast_one"] is not None
    code, output = _invoke(["data", "check", str(imported), "--max-disagreement", "1"], inputs)
    assert code == 0, output
    assert all(record is not None for record in _checked(imported).values())


def test_data_check_sample(imported, inputs):
    folder = str(imported / "nast")
    for sample, recorded, texts in (("1", 1, 8), ("0", None, 16)):
        code, output = _invoke(
            ["data", "check", folder, "--sample", sample, "--max-disagreement", "1"], inputs
        )
        assert code == 0, output
        record = _checked(imported)["nast"]
        assert (record["sample_rows"], record["n_texts"]) == (recorded, texts)


def test_data_check_max_disagreement(imported, inputs):
    """The mislabelled record disagrees: 1.0 passes, 0.0 fails (exit 1), as recorded."""
    folder = str(imported / "nast")
    for threshold, exit_code in (("1.0", 0), ("0.0", 1)):
        code, output = _invoke(["data", "check", folder, "--max-disagreement", threshold], inputs)
        assert code == exit_code, output
        assert _checked(imported)["nast"]["max_disagreement"] == float(threshold)


OPTION_TESTS = {
    **{
        f"mechtune {command}": {
            option: "test_every_data_build_option_changes_the_output" for option in BUILD_OPTIONS
        }
        for command in BUILD_COMMANDS
    },
    **{
        f"mechtune {command}": {
            option: "test_every_data_import_option_changes_the_output" for option in options
        }
        for command, options in IMPORT_OPTIONS.items()
    },
    "mechtune data check": {
        "path": "test_data_check_path",
        "--sample": "test_data_check_sample",
        "--max-disagreement": "test_data_check_max_disagreement",
    },
}
