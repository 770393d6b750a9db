"""PSF-Med's metrics by view and strategy (mechtune.pipelines.paraphrase_eval), checked
against hand computations on a model whose every margin the test sets, and on the
recorded MedGemma answers of UNHSAILLab/lvlm-interpret-medgemma."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mechtune.data.answers import AnswerGroup, AnswerVariant, read_answer_records
from mechtune.data.io import dumps_json
from mechtune.data.schema import ImageQuestion, ParaphraseSet
from mechtune.errors import DataError
from mechtune.eval.metrics import wilson_interval
from mechtune.pipelines.paraphrase_eval import (
    NO_IMAGES,
    NO_MARGINS,
    NO_TRUTH,
    ONE_PATIENT,
    eval_table,
    evaluate_groups,
    evaluate_questions,
    family_view_gap,
    jsonable,
    model_answers,
    swap_rows,
    views,
    write_margins,
)

# UNHSAILLab/lvlm-interpret-medgemma (MIT), results/question_phrasing_results/phrasing_analysis.csv
EXTERNAL = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "external"
    / "medgemma_mimic_phrasing_answers.csv"
)


class TableVLM:
    """A yes/no model whose margin for (image, question) is looked up in ``table``.
    Images are names (a list batch, as take_rows picks from); a blanked image is
    ``"blank"``. Every call is recorded."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls: list[list[tuple[str, str]]] = []

    @property
    def image_mode(self) -> str:
        return "L"

    def prepare_images(self, images: list[Any]) -> list[Any]:
        return list(images)

    def blank_images(self, images: list[str]) -> list[str]:
        return ["blank"] * len(images)

    def margin(self, images: list[str], questions: list[str]) -> torch.Tensor:
        pairs = list(zip(images, questions, strict=True))
        self.calls.append(pairs)
        return torch.tensor([self.table[p] for p in pairs])


IMAGES = ["img0", "img1", "img2"]


def _set(
    qid: str,
    patient: str,
    question: str,
    paraphrases: list[str],
    answer: bool,
    strategies: list[str],
    heldout: list[bool] | None = None,
) -> ParaphraseSet:
    return ParaphraseSet(
        question_id=qid,
        study_id=f"s-{qid}",
        patient_id=patient,
        condition=None,
        question=question,
        paraphrases=tuple(paraphrases),
        strategies=tuple(strategies),
        families=(),
        answer=answer,
        image_ref=f"{qid}.png",
        heldout_family=tuple(heldout or ()),
        split="test",
    )


# q1 and q4 belong to patient P1 and share img0; q2 (P2) is on img1, q3 (P3) on img2.
Q1 = _set("q1", "P1", "Is there edema?", ["Any edema?", "Is edema present?"], True,
          ["lexical", "syntactic"], [False, True])  # fmt: skip
Q2 = _set("q2", "P2", "Is there an effusion?", ["Any effusion?", "Is an effusion seen?"], False,
          ["lexical", "register"], [True, True])  # fmt: skip
Q3 = _set("q3", "P3", "Is the heart enlarged?", ["Is there cardiomegaly?"], False,
          ["voice"], [False])  # fmt: skip
Q4 = _set("q4", "P1", "Is there a pneumothorax?", ["Any pneumothorax?", "Is a pneumothorax seen?"],
          True, ["syntactic", "lexical"], [False, False])  # fmt: skip
QUESTIONS = [ImageQuestion(Q1, 0), ImageQuestion(Q2, 1), ImageQuestion(Q3, 2), ImageQuestion(Q4, 0)]

TABLE = {
    # the questions on their own images: q1 flips once, q4 twice, q2 and q3 never
    ("img0", "Is there edema?"): 2.0,
    ("img0", "Any edema?"): 1.0,
    ("img0", "Is edema present?"): -0.5,
    ("img1", "Is there an effusion?"): -1.0,
    ("img1", "Any effusion?"): -2.0,
    ("img1", "Is an effusion seen?"): -0.5,
    ("img2", "Is the heart enlarged?"): 0.5,
    ("img2", "Is there cardiomegaly?"): 1.5,
    ("img0", "Is there a pneumothorax?"): -3.0,
    ("img0", "Any pneumothorax?"): 1.0,
    ("img0", "Is a pneumothorax seen?"): 2.0,
    # blanked images: only q1's answer changes (yes -> no)
    ("blank", "Is there edema?"): -1.0,
    ("blank", "Is there an effusion?"): -1.0,
    ("blank", "Is the heart enlarged?"): 1.0,
    ("blank", "Is there a pneumothorax?"): -1.0,
    # another patient's image (the next question of another patient, cyclically):
    # q1 -> img1 (changes), q2 -> img2 (same), q3 -> img0 (changes), q4 -> img1 (same)
    ("img1", "Is there edema?"): -2.0,
    ("img2", "Is there an effusion?"): -1.0,
    ("img0", "Is the heart enlarged?"): -1.0,
    ("img1", "Is there a pneumothorax?"): -1.0,
}


@pytest.fixture(scope="module")
def evaluated():
    vlm = TableVLM(TABLE)
    report, rows = evaluate_questions(vlm, IMAGES, QUESTIONS, seed=0)
    return vlm, report, rows


def _close(estimate, value: float, n: int) -> None:
    assert estimate.value == pytest.approx(value) and estimate.n == n
    assert estimate.low <= estimate.value <= estimate.high


def test_every_metric_of_all_questions_against_hand_counts(evaluated):
    _, report, _ = evaluated
    r = report["all"]
    assert (r["groups"], r["pairs"], r["flips"]) == (4, 7, 2)
    _close(r["flip_rate"], 2 / 4, 4)  # q1, q4
    _close(r["pairwise_flip_rate"], 3 / 7, 7)  # q1: 1 of 2, q4: 2 of 2
    # |2-1| + |2+0.5| + |-1+2| + |-1+0.5| + |0.5-1.5| + |-3-1| + |-3-2| = 15, over 7 pairs
    _close(r["margin_difference"], 15 / 7, 7)
    # correct answers: q1 2/3, q2 3/3, q3 0/2, q4 2/3; originals: q1, q2 right
    _close(r["accuracy"], 7 / 11, 11)
    _close(r["original_accuracy"], 2 / 4, 4)
    _close(r["text_only_agreement"], 3 / 4, 4)  # only q1 changes with a blank image
    _close(r["swap_sensitivity"], 2 / 4, 4)  # q1 and q3 change with another patient's image
    assert r["na"] == {}
    # the intervals resample patients: P1 holds two questions
    assert r["flip_rate"].clusters == 3 and r["flip_rate"].method.startswith("cluster")
    assert r["items"] == {
        "id": ["q1", "q2", "q3", "q4"],
        "patient": ["P1", "P2", "P3", "P1"],
        "flip": [True, False, False, True],
    }


def test_the_model_is_asked_every_variant_and_each_control_on_the_right_image(evaluated):
    vlm, _, _ = evaluated
    asked = [pair for call in vlm.calls for pair in call]
    assert len(asked) == 11 + 4 + 4  # every question and paraphrase, then the two controls
    assert set(asked) == set(TABLE)


def test_the_margins_stage_counts_every_text_asked():
    from tests.progress_helpers import Recorder

    track = Recorder()
    vlm = TableVLM(TABLE)
    evaluate_questions(vlm, IMAGES, QUESTIONS, seed=0, track=track, description="baseline")
    track.check_complete()
    (stage,) = track.stages
    # 11 questions and paraphrases, then the 4 originals blanked and on swapped images
    assert (stage.description, stage.total) == ("baseline", 11 + 4 + 4)
    assert stage.counts == [len(call) for call in vlm.calls]
    # one patient: no swap control, so fewer texts
    track = Recorder()
    one = [q for q in QUESTIONS if q.record.patient_id == "P1"]
    evaluate_questions(TableVLM(TABLE), IMAGES, one, track=track)
    track.check_complete()
    assert track.stages[0].total == 6 + 2


def test_swap_pairs_each_question_with_another_patients_image():
    assert swap_rows(QUESTIONS) == [1, 2, 0, 1]
    cyclic = [
        ImageQuestion(_set(f"c{i}", p, "Is it?", ["It is?"], True, ["lexical"]), 10 + i)
        for i, p in enumerate(["a", "a", "b", "c"])
    ]
    assert swap_rows(cyclic) == [12, 12, 13, 10]  # the next other patient, wrapping round
    alone = [ImageQuestion(_set(q.record.question_id, "P", "Is it?", ["It is?"], True,
                                ["lexical"]), q.image) for q in QUESTIONS]  # fmt: skip
    assert swap_rows(alone) is None
    # two patients whose questions are on one image: swapping changes nothing, so no swap
    same_image = [ImageQuestion(q.record, 0) for q in QUESTIONS]
    assert swap_rows(same_image) is None


def test_views_from_heldout_flags_split_a_records_variants(evaluated):
    _, report, _ = evaluated
    held, ind = report["heldout"], report["in_distribution"]
    # held out: q1's second paraphrase (a flip) and both of q2's
    assert (held["groups"], held["pairs"], held["items"]["id"]) == (2, 3, ["q1", "q2"])
    _close(held["flip_rate"], 1 / 2, 2)
    _close(held["pairwise_flip_rate"], 1 / 3, 3)
    _close(held["margin_difference"], (2.5 + 1.0 + 0.5) / 3, 3)
    _close(held["accuracy"], 4 / 5, 5)
    _close(held["text_only_agreement"], 1 / 2, 2)
    _close(held["swap_sensitivity"], 1 / 2, 2)
    # one question per patient here: Wilson intervals
    assert held["flip_rate"].method == "wilson"
    low, high = wilson_interval(1, 2)
    assert (held["flip_rate"].low, held["flip_rate"].high) == pytest.approx((low, high))
    # in distribution: q1's first paraphrase, q3, and q4 (two flips)
    assert (ind["groups"], ind["pairs"], ind["items"]["id"]) == (3, 4, ["q1", "q3", "q4"])
    _close(ind["flip_rate"], 1 / 3, 3)
    _close(ind["pairwise_flip_rate"], 2 / 4, 4)
    _close(ind["margin_difference"], (1 + 1 + 4 + 5) / 4, 4)
    _close(ind["accuracy"], 4 / 7, 7)
    _close(ind["text_only_agreement"], 2 / 3, 3)
    _close(ind["swap_sensitivity"], 2 / 3, 3)


def test_strategy_rows(evaluated):
    _, report, _ = evaluated
    rows = {r["label"]: r for r in report["by_strategy"]}
    assert list(rows) == ["lexical", "register", "syntactic", "voice"]
    lexical = rows["lexical"]  # q1's first, q2's first, q4's second paraphrase (a flip)
    assert (lexical["groups"], lexical["pairs"]) == (3, 3)
    assert lexical["flip_rate"].value == pytest.approx(1 / 3)
    assert lexical["margin_difference"].value == pytest.approx((1 + 1 + 5) / 3)
    assert rows["syntactic"]["flip_rate"].value == 1.0  # q1's second, q4's first
    assert rows["register"]["flip_rate"].value == rows["voice"]["flip_rate"].value == 0.0


def _groups(flags: dict[str, list[bool]] | None = None) -> list[AnswerGroup]:
    out = []
    for gid, answers in (("a", [True, False, True]), ("b", [True, True])):
        out.append(
            AnswerGroup(
                group_id=gid,
                study_id=f"s{gid}",
                original_question="Is there edema?",
                original_answer=True,
                original_margin=None,
                ground_truth=None if gid == "b" else True,
                variants=tuple(AnswerVariant(f"v{i}", "lexical", a) for i, a in enumerate(answers)),
            )
        )
    return out


def test_views_are_left_out_where_the_flags_do_not_label_every_paraphrase():
    groups = _groups()
    assert list(views(groups, None)) == ["all"]
    both = views(groups, {"a": [True, False, False], "b": [True, True]})
    assert [len(g.variants) for g in both["heldout"]] == [1, 2]
    assert [v.question for v in both["in_distribution"][0].variants] == ["v1", "v2"]
    assert [g.group_id for g in both["in_distribution"]] == ["a"]  # b has none
    only_in = views(groups, {"a": [False] * 3, "b": [False] * 2})
    assert list(only_in) == ["all", "in_distribution"]
    assert list(views(groups, {"a": [True, False, False]})) == ["all"]  # b unlabelled
    assert list(views(groups, {"a": [True], "b": [True, True]})) == ["all"]  # a short


def test_missing_family_views_are_explained_in_the_report_and_table():
    """A file whose records do not all flag held-out families gets no family views, and
    the report says why instead of leaving the views out silently."""
    groups = _groups()
    assert family_view_gap(groups, {"a": [True, False, False], "b": [True, True]}) is None
    assert family_view_gap(groups, None) is None  # a file that labels no families
    partial = family_view_gap(groups, {"a": [True, False, False]})
    assert partial == "1 of 2 records lack a heldout_family flag per paraphrase (e.g. 'b')"
    report = evaluate_groups(groups, heldout={"a": [True, False, False]}, n_boot=50)
    assert "heldout" not in report and report["all"]["na"]["heldout"] == partial
    assert f"n/a heldout: {partial}" in eval_table(report)
    labelled = evaluate_groups(groups, heldout={"a": [True] * 3, "b": [True] * 2}, n_boot=50)
    assert "heldout" in labelled and "heldout" not in labelled["all"]["na"]


def test_recorded_answers_give_na_with_reasons_and_the_table_shows_them():
    report = evaluate_groups(_groups(), n_boot=200)
    r = report["all"]
    assert r["flip_rate"].value == pytest.approx(1 / 2) and r["flips"] == 1
    assert r["pairwise_flip_rate"].value == pytest.approx(1 / 5)
    assert r["margin_difference"] is r["accuracy"] is r["original_accuracy"] is None
    assert r["text_only_agreement"] is r["swap_sensitivity"] is None
    assert r["na"] == {
        "margin_difference": NO_MARGINS,
        "accuracy": NO_TRUTH,
        "original_accuracy": NO_TRUTH,
        "text_only_agreement": NO_IMAGES,
        "swap_sensitivity": NO_IMAGES,
    }
    table = eval_table(report)
    lines = table.splitlines()
    row = next(line for line in lines if line.startswith("| all |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["all", "2"] and cells[2].startswith("50.0 [")
    assert cells[4:] == ["n/a", "n/a", "n/a", "n/a"]
    for metric, reason in r["na"].items():
        assert f"n/a {metric}: {reason}" in lines
    strategy = next(line for line in lines if line.startswith("| strategy: lexical |"))
    assert strategy.rstrip().endswith("| n/a | n/a | – | – |")
    json.loads(dumps_json(jsonable(report)))  # results.json-ready


def test_the_table_of_a_model_run_has_every_view_and_no_reasons(evaluated):
    _, report, _ = evaluated
    table = eval_table(report)
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[:4] == ["view", "all", "heldout", "in_distribution"]
    assert rows[4:] == [f"strategy: {s}" for s in ("lexical", "register", "syntactic", "voice")]
    assert "n/a" not in table
    assert "| all | 4 | 50.0 [" in table and "| 2.14 [" in table  # 15/7 logits


def test_swap_is_na_with_one_patient_and_text_only_is_still_measured():
    one = [ImageQuestion(replace(q.record, patient_id="P"), q.image) for q in QUESTIONS]
    report, rows = evaluate_questions(TableVLM(TABLE), IMAGES, one)
    r = report["all"]
    assert r["swap_sensitivity"] is None and r["na"] == {"swap_sensitivity": ONE_PATIENT}
    _close(r["text_only_agreement"], 3 / 4, 4)
    assert all(row["margin_swapped_image"] is None for row in rows)
    assert "n/a swap_sensitivity: " + ONE_PATIENT in eval_table(report)


def test_margin_rows_and_csv(evaluated, tmp_path):
    _, _, rows = evaluated
    assert len(rows) == 11
    first = rows[:3]
    assert [(r["question_id"], r["variant"], r["strategy"]) for r in first] == [
        ("q1", 0, "original"),
        ("q1", 1, "lexical"),
        ("q1", 2, "syntactic"),
    ]
    assert [r["margin"] for r in first] == [2.0, 1.0, -0.5]
    assert [r["answer"] for r in first] == ["yes", "yes", "no"]
    assert {r["label"] for r in first} == {"yes"}
    assert [r["heldout_family"] for r in first] == [None, False, True]
    assert (first[0]["margin_blank_image"], first[0]["margin_swapped_image"]) == (-1.0, -2.0)
    assert first[1]["margin_blank_image"] is first[1]["margin_swapped_image"] is None
    originals = [r for r in rows if r["variant"] == 0]
    assert [r["margin_swapped_image"] for r in originals] == [-2.0, -1.0, -1.0, -1.0]
    assert [r["patient_id"] for r in originals] == ["P1", "P2", "P3", "P1"]
    path = tmp_path / "margins.csv"
    write_margins(rows, path)
    with path.open() as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == 11 and list(back[0]) == list(rows[0])
    assert back[0]["margin"] == "2.000000" and back[1]["margin_blank_image"] == ""
    assert back[2]["heldout_family"] == "True" and back[0]["heldout_family"] == ""
    with pytest.raises(DataError, match="no margin rows"):
        write_margins([], tmp_path / "none.csv")


def test_model_answers_keeps_margins_and_controls_aligned():
    groups, controls = model_answers(TableVLM(TABLE), IMAGES, QUESTIONS)
    assert [g.group_id for g in groups] == ["q1", "q2", "q3", "q4"]
    assert groups[3].margins == (-3.0, 1.0, 2.0) and groups[3].ground_truth is True
    np.testing.assert_allclose(controls["blank"], [-1, -1, 1, -1])
    np.testing.assert_allclose(controls["swap"], [-2, -1, -1, -1])


def test_questions_that_cannot_be_evaluated_are_refused():
    with pytest.raises(DataError, match="no questions to evaluate"):
        evaluate_questions(TableVLM(TABLE), IMAGES, [])
    twice = [QUESTIONS[0], ImageQuestion(Q1, 1)]
    with pytest.raises(DataError, match="question id 'q1' repeats"):
        evaluate_questions(TableVLM(TABLE), IMAGES, twice)


def test_external_medgemma_answers_through_evaluate_groups():
    """The recorded MedGemma answers (no margins, no images): 63 groups, PSF-Med flip rate
    20/63 (the source's README), accuracy of the originals 41/63 (summary_statistics.json
    "baseline_accuracy" 0.6508), margins and image controls n/a with the reason."""
    if not EXTERNAL.exists():
        pytest.skip(f"{EXTERNAL} is absent")
    groups, _ = read_answer_records(EXTERNAL)
    report = evaluate_groups(groups, n_boot=200)
    assert list(report) == ["all", "by_strategy"]
    r = report["all"]
    assert (r["groups"], r["flips"]) == (63, 20)
    _close(r["flip_rate"], 20 / 63, 63)
    assert r["original_accuracy"].value == pytest.approx(41 / 63)
    assert r["margin_difference"] is None and r["na"]["margin_difference"] == NO_MARGINS
    assert r["text_only_agreement"] is r["swap_sensitivity"] is None
    assert r["na"]["text_only_agreement"] == r["na"]["swap_sensitivity"] == NO_IMAGES
    assert set(r["na"]) == {"margin_difference", "text_only_agreement", "swap_sensitivity"}
    assert len(report["by_strategy"]) > 1
    assert sum(row["pairs"] for row in report["by_strategy"]) == r["pairs"]
    table = eval_table(report)
    assert "| all | 63 | 31.7 [" in table
    assert f"n/a margin_difference: {NO_MARGINS}" in table
    assert f"n/a swap_sensitivity: {NO_IMAGES}" in table
    assert not any(math.isnan(r[k].value) for k in ("flip_rate", "accuracy"))
