import json

import pytest

from mechtune.data.importers import (
    DataFormatError,
    read_label_csv,
    read_nast_benchmark,
    read_psf_records,
)

MIMIC_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)


def _csv(tmp_path, header, *rows, name="labels.csv", bom=False):
    path = tmp_path / name
    text = "\n".join([header, *rows]) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _mimic_row(subject, study, **labels):
    cols = MIMIC_HEADER.split(",")[2:]
    return ",".join(
        [str(subject), str(study), *(labels.get(c.replace(" ", "_"), "") for c in cols)]
    )


def test_label_semantics_and_uncertain_policies(tmp_path):
    row = _mimic_row(
        10, 50, Atelectasis="1.0", Cardiomegaly="0.0", Edema="-1.0", Pneumothorax="1", Fracture="0"
    )
    path = _csv(tmp_path, MIMIC_HEADER, row)
    expected_edema = {"skip": None, "present": True, "absent": False}
    for policy, edema in expected_edema.items():
        (study,), report = read_label_csv(path, uncertain=policy)
        assert study.label("atelectasis") is True
        assert study.label("cardiomegaly") is False
        assert study.label("pneumothorax") is True
        assert study.label("fracture") is False
        assert study.label("consolidation") is None  # blank: not mentioned
        assert study.label("edema") is edema
        assert report.uncertain_labels == 1
        assert report.uncertain_policy == policy
    assert study.patient_id == "10" and study.study_id == "50"


def test_unknown_uncertain_policy(tmp_path):
    path = _csv(tmp_path, MIMIC_HEADER, _mimic_row(1, 2))
    with pytest.raises(ValueError, match="uncertain must be one of"):
        read_label_csv(path, uncertain="maybe")


def test_chexpert_paths_give_patients_and_image_refs(tmp_path):
    rows = [
        "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
        "1.0,,,,,,,,,0.0,,,,1.0",
        "CheXpert-v1.0/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,"
        "1.0,,,,,,,,,0.0,,,,1.0",
    ]
    studies, report = read_label_csv(_csv(tmp_path, CHEXPERT_HEADER, *rows, bom=True))
    assert [s.patient_id for s in studies] == ["patient00001", "patient00001"]
    assert studies[0].image_ref.endswith("view1_frontal.jpg")
    assert studies[0].label("no_finding") is True
    assert studies[0].label("support_devices") is True
    assert report.rows_read == report.rows_kept == 2


@pytest.mark.parametrize(
    "row,fragment,reason",
    [
        (_mimic_row(1, 2, Edema="2.0"), "column 'Edema': label '2.0' is not one of", "bad_label"),
        (_mimic_row("x1", 2), "column 'subject_id': id is not a positive integer", "bad_id"),
        ("1,2,1.0", "expected 16 fields, got 3", "malformed"),
        (_mimic_row(1, 50), "column 'study_id': duplicate id", "duplicate_id"),
    ],
)
def test_bad_rows_name_file_line_and_value(tmp_path, row, fragment, reason):
    path = _csv(tmp_path, MIMIC_HEADER, _mimic_row(1, 50), row)
    with pytest.raises(DataFormatError) as info:
        read_label_csv(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and fragment in message
    assert info.value.row == 3 and info.value.reason == reason
    studies, report = read_label_csv(path, skip_bad=True)
    assert len(studies) == 1
    assert report.skipped == {reason: 1}
    assert report.rows_read == 2 and report.rows_kept == 1
    assert "line 3" in report.first_errors[0]


def test_unknown_condition_column_and_unknown_header(tmp_path):
    path = _csv(tmp_path, "subject_id,study_id,Edema,Bogus", "1,2,1.0,0.0")
    with pytest.raises(DataFormatError, match=r"line 1, column 'Bogus': unknown condition column"):
        read_label_csv(path)
    path = _csv(tmp_path, "foo,bar", "1,2", name="other.csv")
    with pytest.raises(DataFormatError, match="line 1: header is neither"):
        read_label_csv(path)


def test_label_subset_columns(tmp_path):
    (study,), _ = read_label_csv(_csv(tmp_path, "subject_id,study_id,Edema", "1,2,0.0"))
    assert study.label("edema") is False


# --- NAST ------------------------------------------------------------------------------


def _nast_record(study=5, answer="C"):
    choices = [
        {"Edema": 1, "Fracture": 0, "Pneumothorax": 0},
        {"Edema": 0, "Fracture": 0, "Pneumothorax": 0},
        {"Edema": 1, "Fracture": 1, "Pneumothorax": 0},
        {"Edema": 0, "Fracture": 1, "Pneumothorax": 1},
    ]
    rec = {
        "subject_id": 1,
        "study_id": study,
        "question": "Which option describes the image?",
        "correct_answer": answer,
    }
    for i, c in enumerate(choices, start=1):
        rec[f"binary_raw_choice_{i}"] = c
        rec[f"negation_mcq_choice_{i}"] = f"negated option {i}"
        rec[f"affirmative_mcq_choice_{i}"] = f"affirmative option {i}"
    return rec


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_nast_records(tmp_path, fmt):
    records = [_nast_record(5, "C"), _nast_record(6, "1")]
    path = tmp_path / f"nast.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    mcqs, report = read_nast_benchmark(path)
    assert [m.correct_index for m in mcqs] == [2, 0]
    first = mcqs[0]
    assert first.conditions == ("edema", "fracture", "pneumothorax")
    assert first.labels[2] == (1, 1, 0)
    assert first.negated_options[3] == "negated option 4"
    assert first.mcq_id == "1-5" and first.patient_id == "1"
    assert report.rows_kept == 2


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda r: r.pop("question"), "missing field 'question'"),
        (lambda r: r.update(correct_answer="E"), "correct_answer is not A-D or 1-4"),
        (lambda r: r["binary_raw_choice_2"].update(Edema=2), "label of 'Edema' is not 0 or 1"),
        (
            lambda r: r.update(binary_raw_choice_2={"Bogus": 1, "Fracture": 0, "Pneumothorax": 0}),
            "conditions differ from choice 1",
        ),
        (lambda r: r.update(binary_raw_choice_2=dict(r["binary_raw_choice_1"])), "not distinct"),
        (lambda r: r.update(negation_mcq_choice_2=" "), "option text is empty"),
    ],
)
def test_nast_errors(tmp_path, mutate, fragment):
    bad = _nast_record(6)
    mutate(bad)
    path = tmp_path / "nast.json"
    path.write_text(json.dumps([_nast_record(5), bad]))
    with pytest.raises(DataFormatError, match="record 2") as info:
        read_nast_benchmark(path)
    assert fragment in str(info.value) and str(path) in str(info.value)
    mcqs, report = read_nast_benchmark(path, skip_bad=True)
    assert len(mcqs) == 1 and sum(report.skipped.values()) == 1


def test_nast_duplicate_and_invalid_json(tmp_path):
    path = tmp_path / "nast.jsonl"
    path.write_text(json.dumps(_nast_record(5)) + "\n" + json.dumps(_nast_record(5)) + "\n")
    with pytest.raises(DataFormatError, match="line 2, column 'study_id': duplicate id"):
        read_nast_benchmark(path)
    path.write_text(json.dumps(_nast_record(5)) + "\n{not json\n")
    with pytest.raises(DataFormatError, match="line 2: invalid JSON"):
        read_nast_benchmark(path)


# --- PSF -------------------------------------------------------------------------------


def test_psf_records(tmp_path):
    records = [
        {
            "question": "Is there a pleural effusion?",
            "paraphrases": ["Any effusion?", "Does the image show a pleural effusion?"],
            "answer": "Yes",
            "image_path": "a.jpg",
            "condition": "Pleural Effusion",
            "strategies": ["register", "syntactic"],
        },
        {
            "question": "Is there cardiomegaly?",
            "paraphrases": ["Is the heart enlarged?"],
            "answer": 0,
            "question_id": "q-cm",
        },
    ]
    path = tmp_path / "psf.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    sets, report = read_psf_records(path)
    assert sets[0].answer is True and sets[0].image_ref == "a.jpg"
    assert sets[0].condition == "pleural_effusion" and sets[0].question_id == "q1"
    assert sets[0].strategies == ("register", "syntactic")
    assert sets[1].answer is False and sets[1].condition is None
    assert sets[1].strategies == ("unknown",) and sets[1].question_id == "q-cm"
    assert report.rows_kept == 2


@pytest.mark.parametrize(
    "record,fragment,reason",
    [
        (
            {
                "question": "Is there a pneumothorax?",
                "paraphrases": ["Can a pneumothorax be excluded?"],
                "answer": "no",
            },
            "adds polarity cue(s) ['excluded']",
            "polarity_inverting",
        ),
        (
            {"question": "Is there edema?", "paraphrases": ["Is there edema?"], "answer": "yes"},
            "a paraphrase equals the question",
            "invalid_record",
        ),
        (
            {"question": "Is there edema?", "paraphrases": ["Edema?"], "answer": "maybe"},
            "answer is not yes/no",
            "invalid_record",
        ),
        (
            {"question": "Is there edema?", "paraphrases": [], "answer": "yes"},
            "non-empty list",
            "invalid_record",
        ),
    ],
)
def test_psf_errors(tmp_path, record, fragment, reason):
    path = tmp_path / "psf.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataFormatError, match="record 1") as info:
        read_psf_records(path)
    assert fragment in str(info.value)
    sets, report = read_psf_records(path, skip_bad=True)
    assert sets == [] and report.skipped == {reason: 1}
