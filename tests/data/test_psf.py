"""PSF-Med paraphrase records: the reader's fields and errors, and the writer's round trip."""

import dataclasses
import json
from pathlib import Path

import pytest

from mechtune.data import importers
from mechtune.data.builders.paraphrase import image_paraphrase_sets
from mechtune.data.psf import (
    PSF_FIELDS,
    PsfImportReport,
    psf_record,
    read_psf_records,
    write_psf_records,
)
from mechtune.data.rows import DataFormatError
from mechtune.data.schema import ParaphraseSet
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "importers"


def _write_json(path: Path, records: list, jsonl: bool) -> Path:
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records, indent=2))
    return path


def test_the_importers_module_still_gives_the_reader():
    assert importers.read_psf_records is read_psf_records
    assert importers.DataFormatError is DataFormatError


def test_psf_fixture():
    sets, report = read_psf_records(FIXTURES / "psf_records.jsonl")
    assert report.rows_kept == 3
    first, second, third = sets
    assert (first.question_id, first.study_id, first.patient_id) == (
        "mimic-0001",
        "50000002",
        "10000001",
    )
    assert first.image_ref == "files/p10/p10000001/s50000002/view1.jpg"
    assert first.condition == "pleural_effusion" and first.answer is True
    assert first.strategies == ("syntactic", "lexical", "register") and first.split == "test"
    assert second.condition == "cardiomegaly" and second.answer is False
    assert (second.image_ref, second.study_id, second.patient_id) == ("d3a1f2",) * 3
    assert third.question_id == "q3" and third.study_id == third.patient_id == "q3"
    assert third.image_ref is None and third.condition is None
    assert third.strategies == ("unknown",) and third.families == ()


def _psf(**fields) -> dict:
    record = {"question": "Is there a pleural effusion?", "paraphrases": ["Any effusion?"]}
    return {**record, "answer": "yes", **fields}


@pytest.mark.parametrize(
    "answer,expected",
    [
        *[("yes", True), ("YES", True), ("No", False), (True, True), (False, False)],
        *[("true", True), ("False", False), (1, True), (0, False), ("1", True), (" no ", False)],
    ],
)
def test_psf_answers(tmp_path, answer, expected):
    path = _write_json(tmp_path / "psf.json", [_psf(answer=answer)], False)
    (item,), _ = read_psf_records(path)
    assert item.answer is expected


@pytest.mark.parametrize("key", ["image_ref", "image", "image_path", "dicom_id"])
def test_psf_image_fields_and_id_defaults(tmp_path, key):
    records = [_psf(**{key: "img.jpg"}), _psf(study_id=""), _psf(patient_id="p9")]
    path = _write_json(tmp_path / "psf.json", records, False)
    first, second, third = read_psf_records(path)[0]
    assert first.image_ref == "img.jpg" and first.question_id == "q1"
    assert first.study_id == first.patient_id == "img.jpg"
    assert second.study_id == second.patient_id == "q2"
    assert third.study_id == "q3" and third.patient_id == "p9"


def test_psf_strategies_and_families(tmp_path):
    record = _psf(
        paraphrases=["Any effusion?", "Is a pleural effusion seen?"],
        strategies=["register", "voice"],
        families=["f1", "f2"],
        condition="pleural_effusion",
    )
    (item,), _ = read_psf_records(_write_json(tmp_path / "psf.json", [record], False))
    assert item.strategies == ("register", "voice") and item.families == ("f1", "f2")
    assert item.condition == "pleural_effusion"


@pytest.mark.parametrize(
    "paraphrase",
    [
        "Can a pleural effusion be excluded?",
        "Has a pleural effusion been ruled out?",
        "Can we rule out a pleural effusion?",
        "Is a pleural effusion absent?",
        "Is there no pleural effusion?",
        "No pleural effusion?",
        "Is a pleural effusion not seen?",
        "Are the pleural spaces free of effusion?",
        "Is the study without effusion?",
        "Are the costophrenic angles normal?",
        "Is the film NEGATIVE FOR effusion?",
    ],
)
def test_psf_polarity_inverting_paraphrases_are_rejected(tmp_path, paraphrase):
    path = _write_json(
        tmp_path / "psf.json", [_psf(paraphrases=["Any effusion?", paraphrase])], True
    )
    with pytest.raises(DataFormatError) as info:
        read_psf_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 1, column 'paraphrases': paraphrase adds")
    assert repr(paraphrase) in message and info.value.reason == "polarity_inverting"
    sets, report = read_psf_records(path, skip_bad=True)
    assert sets == [] and report.skipped == {"polarity_inverting": 1}


def test_psf_polarity_rule_is_about_the_question(tmp_path):
    ok = [
        _psf(paraphrases=["Answer yes or no: is a pleural effusion seen?"]),
        _psf(paraphrases=["Is there a pleural effusion or not?"]),
        _psf(paraphrases=["Isn't there a pleural effusion?"]),
        _psf(
            question="Can a pneumothorax be excluded?", paraphrases=["Is pneumothorax ruled out?"]
        ),
        _psf(question="Is the heart size normal?", paraphrases=["Is there no cardiomegaly?"]),
        _psf(question="Is there no edema?", paraphrases=["Is there no pulmonary edema?"]),
    ]
    sets, _ = read_psf_records(_write_json(tmp_path / "psf.json", ok, False))
    assert len(sets) == len(ok)
    dropped = _psf(question="Is there no edema?", paraphrases=["Is there edema?"])
    path = _write_json(tmp_path / "bad.json", [dropped], False)
    with pytest.raises(
        DataFormatError, match=r"drops the question's polarity-inverting cue\(s\) \['no'\]"
    ):
        read_psf_records(path)


@pytest.mark.parametrize(
    "fields,column,fragment,reason",
    [
        (
            {"paraphrases": ["is there a  Pleural effusion?"]},
            "paraphrases",
            "repeats the question",
            "invalid_record",
        ),
        (
            {"answer": "maybe"},
            "answer",
            "answer is not yes/no, true/false or 1/0 (value 'maybe')",
            "invalid_record",
        ),
        ({"answer": 2}, "answer", "(value 2)", "invalid_record"),
        ({"paraphrases": []}, "paraphrases", "not a non-empty list", "invalid_record"),
        ({"paraphrases": "Any effusion?"}, "paraphrases", "not a non-empty list", "invalid_record"),
        ({"paraphrases": ["ok?", ""]}, "paraphrases", "not a non-empty list", "invalid_record"),
        ({"question": ""}, "question", "text is empty", "invalid_record"),
        ({"condition": "Foo"}, "condition", "unknown condition 'Foo'", "invalid_record"),
        (
            {"strategies": ["semantic"]},
            "strategies",
            "'semantic' is not one of lexical",
            "invalid_record",
        ),
        (
            {"strategies": ["lexical", "voice"]},
            "strategies",
            "2 strategies for 1 paraphrases",
            "invalid_record",
        ),
        ({"families": "f1"}, "families", "not a list of strings", "invalid_record"),
        ({"question_id": ["x"]}, "question_id", "id is not an integer", "bad_id"),
    ],
)
def test_psf_errors(tmp_path, fields, column, fragment, reason):
    path = _write_json(tmp_path / "psf.json", [_psf(question_id="a"), _psf(**fields)], False)
    with pytest.raises(DataFormatError) as info:
        read_psf_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}, record 2, column {column!r}: ") and fragment in message
    sets, report = read_psf_records(path, skip_bad=True)
    assert [s.question_id for s in sets] == ["a"] and report.skipped == {reason: 1}


def test_psf_missing_field_and_duplicate_question_id(tmp_path):
    record = _psf()
    del record["answer"]
    path = _write_json(tmp_path / "psf.jsonl", [record], True)
    with pytest.raises(DataFormatError, match="line 1, column 'answer': missing field 'answer'"):
        read_psf_records(path)
    path = _write_json(tmp_path / "psf.json", [_psf(question_id=7), _psf(question_id="7")], False)
    with pytest.raises(DataFormatError, match="record 2, column 'question_id': duplicate id"):
        read_psf_records(path)
    sets, report = read_psf_records(path, skip_bad=True)
    assert len(sets) == 1 and report.skipped == {"duplicate_id": 1}


# --- split and held-out family labels --------------------------------------------------


def test_psf_split_labels_and_the_test_default(tmp_path):
    records = [
        _psf(question_id="a", split="train"),
        _psf(question_id="b", split=" VAL "),
        _psf(question_id="c", split="test"),
        _psf(question_id="d", split=None),
        _psf(question_id="e"),
    ]
    sets, report = read_psf_records(_write_json(tmp_path / "psf.jsonl", records, True))
    assert [s.split for s in sets] == ["train", "val", "test", "test", "test"]
    assert isinstance(report, PsfImportReport)
    assert report.split_labels == 3 and report.labels_splits
    assert report.to_dict()["split_labels"] == 3
    # a file without split labels says so: its records are test records by default only
    sets, report = read_psf_records(_write_json(tmp_path / "none.json", records[3:], False))
    assert [s.split for s in sets] == ["test", "test"]
    assert report.split_labels == 0 and not report.labels_splits


@pytest.mark.parametrize("value", ["validate", "", "dev", 1, True, ["train"], {"x": 1}])
def test_psf_bad_split_names_file_row_field_and_value(tmp_path, value):
    path = _write_json(tmp_path / "psf.jsonl", [_psf(question_id="a"), _psf(split=value)], True)
    with pytest.raises(DataFormatError) as info:
        read_psf_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 2, column 'split': split {value!r} is not one of")
    assert "train, val, test" in message and info.value.reason == "bad_split"
    sets, report = read_psf_records(path, skip_bad=True)
    assert [s.question_id for s in sets] == ["a"] and report.skipped == {"bad_split": 1}
    assert report.split_labels == 0


def test_psf_heldout_family_flags(tmp_path):
    two = ["Any effusion?", "Is a pleural effusion seen?"]
    records = [
        _psf(question_id="a", paraphrases=two, heldout_family=[True, False]),
        _psf(question_id="b", paraphrases=two, heldout_family=[]),
        _psf(question_id="c", paraphrases=two, heldout_family=None),
        _psf(question_id="d", paraphrases=two),
    ]
    sets, report = read_psf_records(_write_json(tmp_path / "psf.json", records, False))
    assert [s.heldout_family for s in sets] == [(True, False), (), (), ()]
    assert report.heldout_labels == 1 and report.labels_heldout_families
    _, report = read_psf_records(_write_json(tmp_path / "none.json", records[1:], False))
    assert report.heldout_labels == 0 and not report.labels_heldout_families


@pytest.mark.parametrize(
    "value,fragment",
    [
        ([1, 0], "heldout_family is not a list of booleans (true/false)"),
        (["true", "false"], "heldout_family is not a list of booleans (true/false)"),
        ([True, None], "heldout_family is not a list of booleans (true/false)"),
        ("true", "heldout_family is not a list of booleans (true/false)"),
        (True, "heldout_family is not a list of booleans (true/false)"),
        ([True], "1 heldout_family for 2 paraphrases"),
        ([True, False, True], "3 heldout_family for 2 paraphrases"),
    ],
)
def test_psf_bad_heldout_family_names_file_row_field_and_value(tmp_path, value, fragment):
    bad = _psf(paraphrases=["Any effusion?", "Is a pleural effusion seen?"], heldout_family=value)
    path = _write_json(tmp_path / "psf.json", [_psf(question_id="a"), bad], False)
    with pytest.raises(DataFormatError) as info:
        read_psf_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}, record 2, column 'heldout_family': {fragment}")
    assert repr(value) in message and info.value.column == "heldout_family"
    assert info.value.value == value
    sets, report = read_psf_records(path, skip_bad=True)
    assert [s.question_id for s in sets] == ["a"] and report.skipped == {"invalid_record": 1}


# --- the writer ------------------------------------------------------------------------


def _built_sets() -> list[ParaphraseSet]:
    """Builder sets of every kind: train (training families), val and test (training and
    held-out families), with image references, plus an imported-style set."""
    studies = list(sample_studies(SyntheticConfig(n_studies=9, seed=4)))
    studies = [dataclasses.replace(s, image_ref=f"img/{s.study_id}.png") for s in studies]
    sets = [q.record for q in image_paraphrase_sets(enumerate(studies[:3]), "train", heldout=False)]
    for split, chunk in (("val", studies[3:6]), ("test", studies[6:])):
        for heldout in (False, True):
            rows = enumerate(chunk)
            sets += [q.record for q in image_paraphrase_sets(rows, split, heldout=heldout)]
    bare = ParaphraseSet(
        question_id="7",
        study_id="7",
        patient_id="p 1",
        condition=None,
        question="Is the heart enlarged? Answer yes or no.",
        paraphrases=("Is there cardiomegaly?",),
        strategies=("unknown",),
        families=(),
        answer=False,
        split="test",
    )
    return [*sets, bare]


def test_written_records_read_back_equal_with_flags_and_splits(tmp_path):
    sets = _built_sets()
    assert {s.split for s in sets} == {"train", "val", "test"}
    assert any(all(s.heldout_family) for s in sets) and any(s.heldout_family == () for s in sets)
    path = tmp_path / "out" / "questions.jsonl"
    assert write_psf_records(sets, path) == len(sets)
    back, report = read_psf_records(path)
    assert back == sets
    assert report.rows_kept == len(sets) and report.split_labels == len(sets)
    assert report.heldout_labels == len(sets) - 1  # the bare set has no flags
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == len(sets) + 1
    assert all(list(json.loads(line)) == list(PSF_FIELDS) for line in lines[:-1])
    # the same sets give the same bytes; other sets do not
    again = tmp_path / "again.jsonl"
    write_psf_records(sets, again)
    assert again.read_bytes() == path.read_bytes()
    write_psf_records(sets[::-1], again)
    assert again.read_bytes() != path.read_bytes()


def test_a_written_record_is_exactly_the_documented_line(tmp_path):
    item = ParaphraseSet(
        question_id="s1-edema-h",
        study_id="s1",
        patient_id="p1",
        condition="edema",
        question="Is there pulmonary edema?",
        paraphrases=("Is pulmonary edema seen?", "Does the film show edema?"),
        strategies=("voice", "syntactic"),
        families=("f.a", "f.b"),
        answer=False,
        image_ref="files/x.jpg",
        heldout_family=(True, True),
        split="val",
    )
    path = tmp_path / "q.jsonl"
    write_psf_records([item], path)
    assert path.read_text(encoding="utf-8") == (
        '{"question_id": "s1-edema-h", "study_id": "s1", "subject_id": "p1", '
        '"condition": "edema", "question": "Is there pulmonary edema?", '
        '"paraphrases": ["Is pulmonary edema seen?", "Does the film show edema?"], '
        '"strategies": ["voice", "syntactic"], "families": ["f.a", "f.b"], '
        '"heldout_family": [true, true], "answer": "no", "image": "files/x.jpg", '
        '"split": "val"}\n'
    )
    assert psf_record(item)["answer"] == "no" and read_psf_records(path)[0] == [item]


def _set(**fields) -> ParaphraseSet:
    base = {
        "question_id": "q",
        "study_id": "s",
        "patient_id": "p",
        "condition": "pleural_effusion",
        "question": "Is there a pleural effusion?",
        "paraphrases": ("Any effusion?",),
        "strategies": ("lexical",),
        "families": (),
        "answer": True,
    }
    return ParaphraseSet(**{**base, **fields})


@pytest.mark.parametrize(
    "sets,message",
    [
        ([_set(), _set()], "question_id 'q' is repeated"),
        (
            [_set(paraphrases=("Can a pleural effusion be excluded?",))],
            "ParaphraseSet 'q' cannot be written as a PSF record: .*polarity-inverting",
        ),
        ([_set(question=" Is there a pleural effusion?")], "would read back with question"),
        ([_set(condition="Pleural Effusion")], "would read back with condition 'pleural_effusion'"),
        ([_set(study_id="")], "would read back with study_id 'q', not ''"),
        ([_set(image_ref="")], "would read back with image_ref None"),
    ],
)
def test_the_writer_refuses_sets_that_would_not_read_back(tmp_path, sets, message):
    path = tmp_path / "q.jsonl"
    with pytest.raises(DataError, match=message):
        write_psf_records([_set(question_id="first"), *sets], path)
    assert list(tmp_path.iterdir()) == []  # atomic: nothing half-written is left


def test_written_ids_keep_their_text(tmp_path):
    """Integer-looking ids stay strings, leading zeros and all."""
    sets = [_set(question_id="007", study_id="50000012", patient_id="10000007")]
    path = tmp_path / "q.jsonl"
    write_psf_records(sets, path)
    assert '"question_id": "007"' in path.read_text()
    assert read_psf_records(path)[0] == sets
