"""Recorded-answer importer and AnswerGroup records (mechtune.data.answers)."""

import json
from pathlib import Path

import pytest

from mechtune.data.answers import (
    AnswerColumns,
    AnswerGroup,
    AnswerVariant,
    answers_from_margins,
    family_labels,
    parse_yes_no,
    read_answer_records,
)
from mechtune.data.importers import DataFormatError
from mechtune.data.schema import ParaphraseSet, RecordError

# UNHSAILLab/lvlm-interpret-medgemma (MIT), results/question_phrasing_results/phrasing_analysis.csv
EXTERNAL = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "external"
    / "medgemma_mimic_phrasing_answers.csv"
)
HEADER = "study_id,baseline_question,ground_truth,variant_index,strategy,question,extracted_answer"


def _row(index: int, strategy: str, question: str, answer: str, *, study="s1", truth="yes"):
    return f"{study},is there edema?,{truth},{index},{strategy},{question},{answer}"


def _group_rows(study: str = "s1", answers=("yes", "yes", "no"), truth: str = "yes") -> list[str]:
    rows = [_row(0, "baseline", "is there edema?", answers[0], study=study, truth=truth)]
    for i, a in enumerate(answers[1:], start=1):
        rows.append(_row(i, "voice change", f"Is edema seen {i}?", a, study=study, truth=truth))
    return rows


def _csv(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "answers.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", True),
        (" No ", False),
        ("YES.", True),
        ("no!?", False),
        ("Yes,", True),
        ("maybe", None),
        ("yes, there is", None),
        ("", None),
        ("y", None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


def test_reads_groups_with_normalised_answers(tmp_path):
    path = _csv(
        tmp_path,
        *_group_rows("s1", ("Yes.", " YES ", "no")),
        *_group_rows("s2", ("no", "No", "no"), truth="no"),
    )
    groups, report = read_answer_records(path)
    assert [g.group_id for g in groups] == ["s1 | is there edema?", "s2 | is there edema?"]
    first = groups[0]
    assert first.study_id == "s1"
    assert first.original_question == "is there edema?"
    assert first.original_answer is True
    assert first.ground_truth is True
    assert [v.answer for v in first.variants] == [True, False]
    assert first.variants[0] == AnswerVariant("Is edema seen 1?", "voice change", True, None)
    assert groups[1].ground_truth is False
    assert (report.rows_read, report.rows_kept, report.groups_kept) == (6, 6, 2)
    assert report.skipped == {}


def test_rows_of_a_group_need_not_be_adjacent_nor_original_first(tmp_path):
    a, b = _group_rows("s1"), _group_rows("s2")
    path = _csv(tmp_path, a[1], b[0], a[0], b[1], a[2], b[2])
    groups, _ = read_answer_records(path)
    assert [g.study_id for g in groups] == ["s1", "s2"]
    assert [len(g.variants) for g in groups] == [2, 2]


def test_repeated_runs_keep_the_repeated_original_as_a_variant(tmp_path):
    run1 = _group_rows("s1", ("yes", "no", "yes"))
    run2 = _group_rows("s1", ("yes", "yes", "no"))  # same variant indexes, a second run
    groups, report = read_answer_records(_csv(tmp_path, *run1, *run2))
    (group,) = groups
    assert group.answers == (True, False, True, True, True, False)
    assert group.variants[2].strategy == "baseline"
    assert group.variants[2].question == group.original_question
    assert report.rows_kept == 6


def test_jsonl_with_custom_columns_and_margins(tmp_path):
    records = [
        {"qid": "q1", "img": 7, "text": "Is there edema?", "kind": "ORIGINAL", "pred": "Yes",
         "m": 1.5, "label": None, "fam": "q.is_there"},
        {"qid": "q1", "img": 7, "text": "Edema present?", "kind": "register", "pred": "no",
         "m": -0.25, "label": None, "fam": "p.register.1"},
    ]  # fmt: skip
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    columns = AnswerColumns(
        group=("qid",),
        study="img",
        question="text",
        strategy="kind",
        original="original",
        answer="pred",
        ground_truth="label",
        variant_index=None,
        margin="m",
        family="fam",
    )
    (group,), report = read_answer_records(path, columns=columns)
    assert group.group_id == "q1"
    assert group.study_id == "7"
    assert group.ground_truth is None
    assert group.original_margin == 1.5
    assert group.variants == (
        AnswerVariant("Edema present?", "register", False, -0.25, "p.register.1"),
    )
    assert report.rows_kept == 2


# --- bad values --------------------------------------------------------------------------


def test_bad_answer_names_file_row_column_and_value(tmp_path):
    rows = _group_rows()
    rows[1] = _row(1, "voice change", "Is edema seen?", "maybe")
    path = _csv(tmp_path, *rows)
    with pytest.raises(DataFormatError) as info:
        read_answer_records(path)
    err = info.value
    assert (err.path, err.row, err.column, err.value) == (str(path), 3, "extracted_answer", "maybe")
    assert err.reason == "bad_answer"
    for part in (str(path), "line 3", "'extracted_answer'", "'maybe'"):
        assert part in str(err)


def test_bad_json_answer_names_record_field_and_value(tmp_path):
    good = {"study_id": 1, "baseline_question": "q?", "ground_truth": "yes", "variant_index": 0,
            "strategy": "baseline", "question": "q?", "extracted_answer": "yes"}  # fmt: skip
    bad = {**good, "variant_index": 1, "strategy": "voice", "question": "q2?",
           "extracted_answer": True}  # fmt: skip
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DataFormatError) as info:
        read_answer_records(path)
    assert (info.value.row, info.value.unit, info.value.column) == (2, "record", "extracted_answer")
    assert info.value.value is True


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("ground_truth", "unsure", "bad_ground_truth"),
        ("variant_index", "x1", "bad_variant_index"),
        ("variant_index", "-1", "bad_variant_index"),
        ("question", "", "missing_value"),
    ],
)
def test_other_bad_values(tmp_path, column, value, reason):
    fields = dict(zip(HEADER.split(","), _group_rows()[2].split(","), strict=True))
    fields[column] = value
    path = _csv(tmp_path, *_group_rows()[:2], ",".join(fields.values()))
    with pytest.raises(DataFormatError) as info:
        read_answer_records(path)
    assert (info.value.row, info.value.column, info.value.value) == (4, column, value)
    assert info.value.reason == reason
    _, report = read_answer_records(path, skip_bad=True)
    assert report.skipped == {reason: 1}


def test_bad_margin(tmp_path):
    header = HEADER + ",margin"
    rows = [r + ",0.5" for r in _group_rows()]
    rows[2] = rows[2][: -len("0.5")] + "nan"
    path = _csv(tmp_path, *rows, header=header)
    with pytest.raises(DataFormatError, match="margin") as info:
        read_answer_records(path, columns=AnswerColumns(margin="margin"))
    assert (info.value.row, info.value.value, info.value.reason) == (4, "nan", "bad_margin")


def test_skip_mode_counts_every_dropped_row(tmp_path):
    rows = [
        *_group_rows("s1"),
        _row(1, "voice change", "Is edema seen?", "perhaps", study="s2"),  # bad answer
        *_group_rows("s2"),  # s2 now has index 1 twice
        _row(1, "voice change", "Is edema seen?", "yes", study="s3"),  # s3: no original
        _row(2, "voice change", "Edema?", "no", study="s3"),
        _row(0, "baseline", "is there edema?", "yes", study="s4"),  # s4: original only
        "s5,is there edema?,yes,1",  # too few fields
    ]
    path = _csv(tmp_path, *rows)
    groups, report = read_answer_records(path, skip_bad=True)
    assert [g.study_id for g in groups] == ["s1", "s2"]
    assert report.skipped == {"bad_answer": 1, "no_original": 2, "no_variants": 1, "malformed": 1}
    assert report.groups_skipped == {"no_original": 1, "no_variants": 1}
    assert report.rows_read == len(rows) == report.rows_kept + sum(report.skipped.values())
    assert len(report.first_errors) == 4  # one message per problem, each row counted
    with pytest.raises(DataFormatError, match="perhaps"):
        read_answer_records(path)


def test_group_without_original_is_an_error(tmp_path):
    path = _csv(tmp_path, *_group_rows()[1:])
    with pytest.raises(DataFormatError, match="no original row") as info:
        read_answer_records(path)
    assert (info.value.row, info.value.column, info.value.reason) == (2, "strategy", "no_original")


def test_duplicate_variant_index_is_an_error(tmp_path):
    rows = [*_group_rows(), _row(2, "register shift", "Edema?", "no")]
    path = _csv(tmp_path, *rows)
    with pytest.raises(DataFormatError, match="duplicate variant index 2") as info:
        read_answer_records(path)
    assert (info.value.row, info.value.column, info.value.value) == (5, "variant_index", 2)
    (group,), report = read_answer_records(path, skip_bad=True)
    assert len(group.variants) == 2
    assert report.skipped == {"duplicate_variant_index": 1}


def test_conflicting_ground_truth_is_an_error(tmp_path):
    rows = _group_rows()
    rows[2] = _row(2, "voice change", "Edema?", "no", truth="no")
    with pytest.raises(DataFormatError, match="ground truth") as info:
        read_answer_records(_csv(tmp_path, *rows))
    assert (info.value.row, info.value.reason) == (4, "conflicting_ground_truth")


def test_header_without_a_column_always_raises(tmp_path):
    header = HEADER.replace("extracted_answer", "answer")
    path = _csv(tmp_path, *_group_rows(), header=header)
    with pytest.raises(DataFormatError, match="lacks column 'extracted_answer'"):
        read_answer_records(path, skip_bad=True)
    assert read_answer_records(path, columns=AnswerColumns(answer="answer"))[1].rows_kept == 3


def test_unknown_suffix_needs_kind(tmp_path):
    path = _csv(tmp_path, *_group_rows(), name="answers.txt")
    with pytest.raises(ValueError, match="kind="):
        read_answer_records(path)
    assert len(read_answer_records(path, kind="csv")[0]) == 1


# --- records and model margins -----------------------------------------------------------


def test_answer_group_validates_and_round_trips():
    group = AnswerGroup("g", "s", "q?", True, 0.5, None, (("q2?", "voice", False, -1.0, None),))
    assert isinstance(group.variants[0], AnswerVariant)
    assert AnswerGroup.from_dict(json.loads(json.dumps(group.to_dict()))) == group
    with pytest.raises(RecordError, match="at least one variant"):
        AnswerGroup("g", "s", "q?", True, None, None, ())
    with pytest.raises(RecordError, match="original_answer must be bool"):
        AnswerGroup("g", "s", "q?", "yes", None, None, (("q2?", "voice", False),))  # type: ignore[arg-type]
    with pytest.raises(RecordError, match="finite"):
        AnswerGroup("g", "s", "q?", True, float("inf"), None, (("q2?", "voice", False),))


def _set(qid: str, answer: bool, heldout: bool) -> ParaphraseSet:
    return ParaphraseSet(
        question_id=qid,
        study_id="s1",
        patient_id="p1",
        condition=None,
        question="Is there edema?",
        paraphrases=("Is edema present?", "Edema?"),
        strategies=("syntactic", "register"),
        families=("p.a", "p.b") if not heldout else ("p.c", "p.d"),
        answer=answer,
        heldout_family=(heldout, heldout),
    )


def test_answers_from_margins():
    sets = [_set("q1", True, False), _set("q2", False, True)]
    groups = answers_from_margins(sets, [[1.0, -0.5, 2.0], [0.0, 0.1, -3.0]])
    assert groups[0].answers == (True, False, True)
    assert groups[1].answers == (False, True, False)  # a zero margin is "no"
    assert groups[0].ground_truth is True and groups[1].ground_truth is False
    assert groups[0].variants[0] == AnswerVariant(
        "Is edema present?", "syntactic", False, -0.5, "p.a"
    )
    assert groups[1].original_margin == 0.0
    with pytest.raises(ValueError, match="2 margins"):
        answers_from_margins(sets[:1], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="margins for 1"):
        answers_from_margins(sets, [[1.0, 2.0, 3.0]])
    labels = family_labels(sets)
    assert labels == {"p.a": "in-distribution", "p.b": "in-distribution", "p.c": "held-out",
                      "p.d": "held-out"}  # fmt: skip


# --- the MedGemma file -------------------------------------------------------------------


def test_external_medgemma_file_reads_cleanly():
    if not EXTERNAL.exists():
        pytest.skip(f"{EXTERNAL} is absent")
    groups, report = read_answer_records(EXTERNAL)
    assert len(groups) == 63
    assert (report.rows_read, report.rows_kept, report.skipped) == (600, 600, {})
    assert sum(len(g.answers) for g in groups) == 600
    # 100 runs of (original + 5 paraphrases): 37 extra originals are kept as variants.
    assert sum(v.strategy == "baseline" for g in groups for v in g.variants) == 100 - 63
    assert all(g.ground_truth is not None for g in groups)
