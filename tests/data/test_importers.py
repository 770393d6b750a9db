"""Importers for MIMIC-CXR-JPG / CheXpert label CSVs, NAST benchmark and PSF-Med records."""

import json
from pathlib import Path

import pytest

from mechtune.data import importers
from mechtune.data.importers import (
    DataFormatError,
    ImportReport,
    read_label_csv,
    read_nast_benchmark,
    read_psf_records,
)
from mechtune.data.schema import RecordError

FIXTURES = Path(__file__).parent / "fixtures" / "importers"
LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
MIMIC_HEADER = ",".join(["subject_id", "study_id", *LABELS])
CHEXPERT_HEADER = ",".join(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS])
CHEXPERT_PATH = "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"


def _csv(tmp_path: Path, header: str, *rows: str, name: str = "labels.csv", bom: bool = False):
    path = tmp_path / name
    text = "\n".join([header, *rows]) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _labels(**values: str) -> list[str]:
    """The 14 label fields; keyword = column with spaces as underscores."""
    return [values.get(c.replace(" ", "_"), "") for c in LABELS]


def _mimic(subject: object, study: object, **values: str) -> str:
    return ",".join([str(subject), str(study), *_labels(**values)])


def _chexpert(path: str = CHEXPERT_PATH, **values: str) -> str:
    return ",".join([path, "Female", "68", "Frontal", "AP", *_labels(**values)])


# --- label CSVs: semantics -------------------------------------------------------------


@pytest.mark.parametrize(
    "policy,uncertain_as", [("skip", None), ("present", True), ("absent", False)]
)
def test_label_values_and_uncertain_policies(tmp_path, policy, uncertain_as):
    rows = [
        _mimic(10, 50, Atelectasis="1.0", Cardiomegaly="0.0", Edema="-1.0", Fracture="1"),
        _mimic(10, 51, Lung_Opacity="0", Pneumonia="-1", No_Finding="1.0"),
    ]
    studies, report = read_label_csv(_csv(tmp_path, MIMIC_HEADER, *rows), uncertain=policy)
    first, second = studies
    assert first.label("atelectasis") is True
    assert first.label("cardiomegaly") is False
    assert first.label("fracture") is True  # "1" as well as "1.0"
    assert second.label("lung_opacity") is False  # "0" as well as "0.0"
    assert first.label("consolidation") is None  # blank: not mentioned
    assert first.label("edema") is uncertain_as
    assert second.label("pneumonia") is uncertain_as  # "-1" as well as "-1.0"
    assert second.label("no_finding") is True
    assert all(not f.laterality and not f.severity and not f.zone for f in first.findings)
    n_findings = 3 if uncertain_as is None else 4
    assert len(first.findings) == n_findings
    assert report.uncertain_labels == 2 and report.uncertain_policy == policy
    assert report.rows_read == report.rows_kept == 2 and report.skipped == {}


def test_unknown_uncertain_policy_names_the_allowed_values(tmp_path):
    path = _csv(tmp_path, MIMIC_HEADER, _mimic(1, 2))
    with pytest.raises(ValueError, match="one of skip, present, absent; got 'maybe'"):
        read_label_csv(path, uncertain="maybe")


def test_mimic_fixture(tmp_path):
    studies, report = read_label_csv(FIXTURES / "mimic-cxr-2.0.0-chexpert.csv", uncertain="absent")
    assert [s.study_id for s in studies] == ["50000001", "50000002", "50000003", "50000004"]
    assert [s.patient_id for s in studies] == ["10000001", "10000001", "10000002", "10000003"]
    assert all(s.image_ref is None for s in studies)
    assert studies[0].label("no_finding") is True and len(studies[0].findings) == 1
    assert studies[1].label("cardiomegaly") is False  # -1.0 under U-Zeros
    assert report.uncertain_labels == 3
    assert json.loads(json.dumps(report.to_dict()))["rows_kept"] == 4


def test_chexpert_fixture_rows_are_images_grouped_by_patient():
    studies, report = read_label_csv(FIXTURES / "chexpert_valid.csv")
    assert report.rows_kept == 4 and report.uncertain_labels == 1
    assert [s.patient_id for s in studies] == [
        "patient64541",
        "patient64542",
        "patient64542",
        "patient64543",
    ]
    frontal, lateral = studies[1], studies[2]
    assert (
        frontal.study_id
        == frontal.image_ref
        == ("CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg")
    )
    assert lateral.study_id.endswith("view2_lateral.jpg")
    assert frontal.label("support_devices") is True and frontal.label("edema") is False
    assert studies[3].label("consolidation") is None  # uncertain, skipped


@pytest.mark.parametrize("header", [MIMIC_HEADER, CHEXPERT_HEADER])
def test_utf8_bom_is_stripped(tmp_path, header):
    row = _mimic(1, 2, Edema="1.0") if header == MIMIC_HEADER else _chexpert(Edema="1.0")
    (study,), _ = read_label_csv(_csv(tmp_path, header, row, bom=True))
    assert study.label("edema") is True


def test_label_columns_may_be_a_subset_in_any_order(tmp_path):
    path = _csv(tmp_path, "subject_id,study_id,Pneumothorax,Edema", "1,2,1.0,0.0")
    (study,), _ = read_label_csv(path)
    assert study.label("pneumothorax") is True and study.label("edema") is False
    path = _csv(tmp_path, "Path,Edema", f"{CHEXPERT_PATH},-1.0", name="c.csv")
    (study,), _ = read_label_csv(path, uncertain="present")
    assert study.label("edema") is True and study.patient_id == "patient00001"


def test_blank_lines_are_not_rows_and_lines_stay_right(tmp_path):
    path = _csv(tmp_path, MIMIC_HEADER, _mimic(1, 2), "", _mimic(1, 3, Edema="x"))
    with pytest.raises(DataFormatError, match=r"line 4, column 'Edema'"):
        read_label_csv(path)


def test_a_quoted_newline_keeps_line_numbers(tmp_path):
    quoted = f'"{CHEXPERT_PATH}\nsecond line",F,1,Frontal,AP,' + ",".join(_labels())
    bad = _chexpert("CheXpert-v1.0/train/patient00002/s/v.jpg", Edema="2")
    path = _csv(tmp_path, CHEXPERT_HEADER, quoted, bad)
    with pytest.raises(DataFormatError, match="line 4, column 'Edema'"):
        read_label_csv(path)


# --- label CSVs: header errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "header,fragment",
    [
        ("foo,bar", "line 1: header is neither MIMIC-CXR-JPG"),
        ("study_id,subject_id,Edema", "line 1: header is neither"),
        ("subject_id,study_id,Edema,Foo", "line 1, column 'Foo': unknown condition column 'Foo'"),
        ("subject_id,study_id,edema", "line 1, column 'edema': unknown condition column"),
        ("Path,Sex,Edema,dicom_id", "line 1, column 'dicom_id': unknown condition column"),
        ("subject_id,study_id,Edema,Edema", "line 1, column 'Edema': duplicate column"),
        ("subject_id,study_id", "line 1: header has no condition columns"),
        ("", "line 1: header is neither"),
    ],
)
def test_header_errors_always_raise(tmp_path, header, fragment):
    path = _csv(tmp_path, header, "1,2,1.0,0.0")
    with pytest.raises(DataFormatError) as info:
        read_label_csv(path, skip_bad=True)
    assert str(path) in str(info.value) and fragment in str(info.value)
    assert info.value.row == 1 and info.value.path == str(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.csv, line 1: header is neither"):
        read_label_csv(path)


# --- label CSVs: bad rows ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header,row,column,value,fragment,reason",
    [
        (
            MIMIC_HEADER,
            _mimic(1, 3, Edema="2.0"),
            "Edema",
            "2.0",
            "column 'Edema': label '2.0' is not one of 1.0, 0.0, -1.0 or blank",
            "bad_label",
        ),
        (MIMIC_HEADER, _mimic(1, 3, Fracture="yes"), "Fracture", "yes", "'yes'", "bad_label"),
        (MIMIC_HEADER, _mimic("x1", 3), "subject_id", "x1", "id 'x1' is not an integer", "bad_id"),
        (MIMIC_HEADER, _mimic(1, ""), "study_id", "", "id '' is not an integer", "bad_id"),
        (MIMIC_HEADER, _mimic(1, "3.0"), "study_id", "3.0", "id '3.0'", "bad_id"),
        (MIMIC_HEADER, "1,3,1.0", None, "1,3,1.0", "expected 16 fields, got 3", "malformed"),
        (
            MIMIC_HEADER,
            _mimic(9, 50, Edema="1.0"),
            "study_id",
            "50",
            "column 'study_id': duplicate id (value '50')",
            "duplicate_id",
        ),
        (
            CHEXPERT_HEADER,
            _chexpert("CheXpert-v1.0/train/study1/view1_frontal.jpg"),
            "Path",
            "CheXpert-v1.0/train/study1/view1_frontal.jpg",
            "has no patientNNNNN component",
            "bad_id",
        ),
        (
            CHEXPERT_HEADER,
            _chexpert("CheXpert-v1.0/train/xpatient7/study1/view1.jpg"),
            "Path",
            "CheXpert-v1.0/train/xpatient7/study1/view1.jpg",
            "has no patientNNNNN component",
            "bad_id",
        ),
        (
            CHEXPERT_HEADER,
            _chexpert(CHEXPERT_PATH, Edema="1.0"),
            "Path",
            CHEXPERT_PATH,
            "column 'Path': duplicate id",
            "duplicate_id",
        ),
    ],
)
def test_bad_rows_name_file_line_column_and_value(
    tmp_path, header, row, column, value, fragment, reason
):
    good = _mimic(1, 50) if header == MIMIC_HEADER else _chexpert()
    path = _csv(tmp_path, header, good, row)
    with pytest.raises(DataFormatError) as info:
        read_label_csv(path)
    err = info.value
    message = str(err)
    assert message.startswith(f"{path}, line 3") and fragment in message
    assert repr(value) in message
    assert (err.path, err.row, err.column, err.value, err.reason) == (
        str(path),
        3,
        column,
        value,
        reason,
    )
    studies, report = read_label_csv(path, skip_bad=True)
    assert len(studies) == 1
    assert report.skipped == {reason: 1}
    assert report.rows_read == 2 and report.rows_kept == 1
    assert report.first_errors == [message]


def test_record_errors_are_wrapped(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RecordError("Study('2'): broken")

    monkeypatch.setattr(importers, "Study", broken)
    path = _csv(tmp_path, MIMIC_HEADER, _mimic(1, 2))
    with pytest.raises(DataFormatError, match=r"labels\.csv, line 2: Study\('2'\): broken$"):
        read_label_csv(path)
    _, report = read_label_csv(path, skip_bad=True)
    assert report.skipped == {"invalid_record": 1}


def test_skip_bad_counts_every_reason_and_keeps_good_rows(tmp_path):
    rows = [
        _mimic(1, 10, Edema="1.0"),
        _mimic(1, 11, Edema="2.0"),  # bad_label
        _mimic(1, 12, Edema="-1.0"),
        "1,13",  # malformed
        _mimic("", 14),  # bad_id
        _mimic(2, 10),  # duplicate study_id
        _mimic(1, 15, Edema="-1.0"),
        *(_mimic(3, 100 + i, Fracture="?") for i in range(10)),  # bad_label x 10
    ]
    studies, report = read_label_csv(_csv(tmp_path, MIMIC_HEADER, *rows), skip_bad=True)
    assert [s.study_id for s in studies] == ["10", "12", "15"]
    assert report.skipped == {"bad_label": 11, "malformed": 1, "bad_id": 1, "duplicate_id": 1}
    assert report.rows_read == 17 and report.rows_kept == 3
    assert report.rows_read == report.rows_kept + sum(report.skipped.values())
    assert report.uncertain_labels == 2  # only the kept rows' -1.0 labels
    assert len(report.first_errors) == 10 and "line 3" in report.first_errors[0]


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    rows = [_mimic(1, 2), _mimic(1, 3, Edema="1.0") + ",caf\xe9"]
    path.write_bytes(("\n".join([MIMIC_HEADER, *rows]) + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin1\.csv, line 3: not UTF-8 text \(value b'"):
        read_label_csv(path, skip_bad=True)


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes(("\r\n".join([MIMIC_HEADER, _mimic(1, 2, Edema="0.0")]) + "\r\n").encode())
    (study,), _ = read_label_csv(path)
    assert study.label("edema") is False and study.study_id == "2"


# --- NAST benchmark -------------------------------------------------------------------------


def _nast(study: int = 5, answer: object = "C", subject: int = 1) -> dict:
    choices = [
        {"Pneumothorax": 1, "Edema": 0, "Fracture": 0},
        {"Pneumothorax": 0, "Edema": 0, "Fracture": 0},
        {"Pneumothorax": 1, "Edema": 1, "Fracture": 0},
        {"Pneumothorax": 0, "Edema": 1, "Fracture": 1},
    ]
    rec: dict = {"subject_id": subject, "study_id": study, "question": "Which option fits?"}
    for i, c in enumerate(choices, start=1):
        rec[f"binary_raw_choice_{i}"] = c
        rec[f"negation_mcq_choice_{i}"] = f"negated option {i}"
        rec[f"affirmative_mcq_choice_{i}"] = f"affirmative option {i}"
    rec["correct_answer"] = answer
    return rec


def _write_json(path: Path, records: list, jsonl: bool) -> Path:
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records, indent=2))
    return path


def test_nast_fixture_round_trips_to_mcq_pairs():
    mcqs, report = read_nast_benchmark(FIXTURES / "nast_benchmark.json")
    assert report.rows_read == report.rows_kept == 2
    first, second = mcqs
    assert first.mcq_id == "10000001-50000002"
    assert (first.study_id, first.patient_id, first.split) == ("50000002", "10000001", "test")
    assert first.conditions == ("pleural_effusion", "edema", "atelectasis")
    assert first.labels == ((0, 1, 0), (1, 0, 1), (1, 1, 1), (0, 0, 1))
    assert first.correct_index == 1 and first.labels[first.correct_index] == (1, 0, 1)
    assert first.negated_options[1] == "Pleural effusion, no edema, atelectasis"
    assert first.affirmative_options[1] == (
        "Pleural effusion, normal pulmonary vascularity, atelectasis"
    )
    assert second.conditions == ("cardiomegaly", "pneumothorax", "support_devices")
    assert second.correct_index == 2 and second.labels[2] == (0, 0, 0)


@pytest.mark.parametrize("jsonl", [False, True])
def test_nast_array_and_jsonl(tmp_path, jsonl):
    answers = ["C", "a", 4, "2", " d "]
    records = [_nast(study=i, answer=a) for i, a in enumerate(answers)]
    path = _write_json(tmp_path / "nast.json", records, jsonl)
    mcqs, report = read_nast_benchmark(path)
    assert [m.correct_index for m in mcqs] == [2, 0, 3, 1, 3]
    first = mcqs[0]
    assert first.conditions == ("pneumothorax", "edema", "fracture")  # key order of choice 1
    assert first.labels == ((1, 0, 0), (0, 0, 0), (1, 1, 0), (0, 1, 1))
    assert first.negated_options == tuple(f"negated option {i}" for i in range(1, 5))
    assert first.affirmative_options[3] == "affirmative option 4"
    assert [m.mcq_id for m in mcqs] == [f"1-{i}" for i in range(5)]
    assert report.rows_kept == 5 and report.uncertain_policy is None


def _drop(name):
    return lambda r: r.pop(name)


def _set(name, value):
    return lambda r: r.__setitem__(name, value)


def _choice(i, column, value):
    return lambda r: r[f"binary_raw_choice_{i}"].__setitem__(column, value)


@pytest.mark.parametrize(
    "mutate,column,fragment,reason",
    [
        (_drop("question"), "question", "missing field 'question'", "malformed"),
        (_drop("binary_raw_choice_3"), "binary_raw_choice_3", "missing field", "malformed"),
        (_set("question", " "), "question", "text is empty or not a string", "invalid_record"),
        (_set("subject_id", None), "subject_id", "id is not an integer", "bad_id"),
        (
            _set("correct_answer", "E"),
            "correct_answer",
            "not a letter A-D or 1-4 (value 'E')",
            "invalid_record",
        ),
        (_set("correct_answer", 0), "correct_answer", "(value 0)", "invalid_record"),
        (_set("correct_answer", True), "correct_answer", "(value True)", "invalid_record"),
        (
            _choice(2, "Edema", 2),
            "binary_raw_choice_2",
            "label of 'Edema' is not 0 or 1",
            "bad_label",
        ),
        (_choice(2, "Edema", True), "binary_raw_choice_2", "(value True)", "bad_label"),
        (
            _choice(3, "Foo", 1),
            "binary_raw_choice_3",
            "conditions ['Edema', 'Foo', 'Fracture', 'Pneumothorax'] differ",
            "bad_label",
        ),
        (
            lambda r: [r[f"binary_raw_choice_{i}"].update(Foo=i % 2) for i in range(1, 5)],
            "binary_raw_choice_1",
            "unknown condition 'Foo'",
            "bad_label",
        ),
        (
            _set("binary_raw_choice_2", [1, 0, 0]),
            "binary_raw_choice_2",
            "not a non-empty object",
            "bad_label",
        ),
        (
            lambda r: r.update(binary_raw_choice_2=dict(r["binary_raw_choice_1"])),
            "binary_raw_choice_1..4",
            "option label vectors are not distinct",
            "invalid_record",
        ),
        (_set("negation_mcq_choice_2", ""), "negation_mcq_choice_2", "empty", "invalid_record"),
        (
            _set("affirmative_mcq_choice_4", None),
            "affirmative_mcq_choice_4",
            "(value None)",
            "invalid_record",
        ),
    ],
)
@pytest.mark.parametrize("jsonl", [False, True])
def test_nast_errors_name_file_record_field_and_value(
    tmp_path, mutate, column, fragment, reason, jsonl
):
    bad = _nast(6)
    mutate(bad)
    path = _write_json(tmp_path / "nast.json", [_nast(5), bad, _nast(7)], jsonl)
    with pytest.raises(DataFormatError) as info:
        read_nast_benchmark(path)
    where = "line 2" if jsonl else "record 2"
    message = str(info.value)
    assert message.startswith(f"{path}, {where}, column {column!r}: ")
    assert fragment in message and info.value.row == 2 and info.value.column == column
    mcqs, report = read_nast_benchmark(path, skip_bad=True)
    assert [m.study_id for m in mcqs] == ["5", "7"]
    assert report.skipped == {reason: 1} and report.first_errors == [message]


def test_nast_record_that_is_not_an_object(tmp_path):
    path = _write_json(tmp_path / "nast.json", [_nast(5), ["not", "an", "object"]], False)
    with pytest.raises(DataFormatError, match=r"record 2: record is not a JSON object"):
        read_nast_benchmark(path)


def test_nast_duplicate_ids(tmp_path):
    path = _write_json(tmp_path / "nast.jsonl", [_nast(5), _nast(6), _nast(5)], True)
    with pytest.raises(DataFormatError, match=r"line 3, column 'study_id': duplicate id .*'1-5'"):
        read_nast_benchmark(path)
    mcqs, report = read_nast_benchmark(path, skip_bad=True)
    assert len(mcqs) == 2 and report.skipped == {"duplicate_id": 1}
    path = _write_json(tmp_path / "other.json", [_nast(5), _nast(5, subject=2)], False)
    assert len(read_nast_benchmark(path)[0]) == 2  # same study, other subject: other id


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "nast.json"
    text = json.dumps([_nast(5), _nast(6)], indent=2)
    lines = text.split("\n")
    lines[6] = lines[6].rstrip(",")  # drop a comma: json reports the next line
    path.write_text("\n".join(lines))
    with pytest.raises(
        DataFormatError, match=r"nast\.json, line 8: invalid JSON \(Expecting ',' delimiter\)"
    ):
        read_nast_benchmark(path, skip_bad=True)  # a broken array cannot be skipped
    jsonl = tmp_path / "nast.jsonl"
    jsonl.write_text(json.dumps(_nast(5)) + "\n\n{not json\n" + json.dumps(_nast(6)) + "\n")
    with pytest.raises(DataFormatError, match=r"nast\.jsonl, line 3: invalid JSON"):
        read_nast_benchmark(jsonl)
    mcqs, report = read_nast_benchmark(jsonl, skip_bad=True)  # a broken line can
    assert len(mcqs) == 2 and report.skipped == {"malformed": 1} and report.rows_read == 3


def test_json_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "psf.jsonl"
    path.write_bytes(b'{"question": "a?"}\n{"question": "caf\xe9?"}\n')
    with pytest.raises(DataFormatError, match=r"psf\.jsonl, line 2: not UTF-8 text"):
        read_psf_records(path)


def test_empty_json_files(tmp_path):
    for text in ("", "[]", "\n\n"):
        path = tmp_path / "empty.json"
        path.write_text(text)
        records, report = read_nast_benchmark(path)
        assert records == [] and report.rows_read == 0


def test_import_report_to_dict():
    report = ImportReport("x.csv", rows_read=3, rows_kept=2, skipped={"bad_id": 1})
    assert report.to_dict() == {
        "path": "x.csv",
        "rows_read": 3,
        "rows_kept": 2,
        "skipped": {"bad_id": 1},
        "uncertain_labels": 0,
        "uncertain_policy": None,
        "first_errors": [],
    }
