"""Facts, truth and pooled precision/recall of the report-fact scorer, by hand."""

from collections import Counter
from pathlib import Path

import pytest

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding
from mechtune.errors import DataError
from mechtune.eval.metrics import proportion
from mechtune.eval.report_facts import (
    FACT_KINDS,
    Tally,
    facts,
    judge_by_study,
    load_gold,
    score_gold,
)

GOLD = Path(__file__).parents[1] / "data/fixtures/report_sentences.yaml"


def test_facts_cut_findings_per_attribute():
    out = facts(
        [
            Finding("pleural_effusion", True, "left", None, "small"),
            Finding("pneumothorax", False, "right"),
            Finding("atelectasis", True, "bilateral", "basal"),
            Finding("edema", False),
        ],
        uncertain=["pneumonia"],
    )
    assert set(out) == set(FACT_KINDS)
    assert out["existence"] == {
        ("pleural_effusion", True),
        ("pneumothorax", False),
        ("atelectasis", True),
        ("edema", False),
    }
    assert out["present"] == {("pleural_effusion", True), ("atelectasis", True)}
    assert out["absent"] == {("pneumothorax", False), ("edema", False)}
    assert out["laterality"] == {
        ("pleural_effusion", True, "left"),
        ("pneumothorax", False, "right"),
        ("atelectasis", True, "bilateral"),
    }
    assert out["zone"] == {("atelectasis", "basal")}
    assert out["severity"] == {("pleural_effusion", "small")}
    assert out["uncertain"] == {("pneumonia",)}


def test_judge_by_a_complete_truth():
    judge = judge_by_study(
        [
            Finding("pleural_effusion", True, "left", None, "small"),
            Finding("pneumothorax", False),
            Finding("atelectasis", True, "bilateral", "basal", "mild"),
        ]
    )
    assert judge("existence", ("pleural_effusion", True))
    assert not judge("existence", ("pleural_effusion", False))
    assert judge("absent", ("pneumothorax", False)) and not judge("present", ("pneumothorax", True))
    assert judge("laterality", ("pleural_effusion", True, "left"))
    assert not judge("laterality", ("pleural_effusion", True, "right"))
    # an absence on the side the effusion is not on is true; on its side, false
    assert judge("laterality", ("pleural_effusion", False, "right"))
    assert not judge("laterality", ("pleural_effusion", False, "left"))
    assert not judge("laterality", ("atelectasis", False, "left"))  # bilateral covers left
    assert judge("zone", ("atelectasis", "basal")) and not judge("zone", ("atelectasis", "lower"))
    assert judge("severity", ("pleural_effusion", "small"))
    assert not judge("severity", ("pleural_effusion", "moderate"))
    assert not judge("uncertain", ("pneumonia",))


def test_tally_pools_over_texts_with_texts_as_clusters():
    t = Tally()
    gold = {("a", True), ("b", False)}
    t.add("one", {("a", True), ("c", True)}, gold, gold.__contains__)  # 1/2 true, 1/2 found
    t.add("two", set(), {("d", True)}, {("d", True)}.__contains__)  # nothing extracted
    t.add("three", {("e", True)}, {("e", True)}, {("e", True)}.__contains__)
    p, r = t.precision(), t.recall()
    assert (p.value, p.n) == (2 / 3, 3) and (r.value, r.n) == (2 / 4, 4)
    # the text with nothing extracted is no unit of precision; texts are the clusters
    expected = proportion([1, 1], [2, 1])
    assert (p.low, p.high, p.method) == (expected.low, expected.high, expected.method)
    assert t.false == [("one", ("c", True))]
    assert sorted(t.misses) == [("one", ("b", False)), ("two", ("d", True))]
    assert Tally().precision().n == 0


def test_score_gold_counts_each_kind():
    gold = load_gold(GOLD)[:3]
    perfect = [(s.findings, s.uncertain) for s in gold]
    tallies = score_gold(perfect, gold)
    for kind, t in tallies.items():
        assert t.false == [] and t.misses == [], kind
    empty = score_gold([((), ()) for _ in gold], gold)
    assert sum(empty["existence"].found) == 0
    assert sum(empty["existence"].n_stated) == sum(len(s.findings) for s in gold)


def test_the_shipped_gold_set_covers_the_issue_phrasings():
    gold = load_gold(GOLD)
    assert len(gold) >= 60
    text = " ".join(s.text.lower() for s in gold)
    for phrase in (
        "bilateral",
        "small left and moderate right",
        "no change in",
        "resolved",
        "cannot be excluded",
        "no pneumothorax, pleural effusion, or",
    ):
        assert phrase in text, phrase
    assert {s.vocabulary for s in gold} == {"ontology", "outside"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sentences: 3", "expected a mapping with a 'sentences' list"),
        ("sentences:\n  - {category: x}", "sentence 0: needs a 'text' string"),
        ("sentences:\n  - {text: a, vocabulary: odd}", "vocabulary must be"),
        (
            "sentences:\n  - {text: a, vocabulary: ontology, findings: "
            "[{condition: cardiomegaly, present: true, laterality: left}]}",
            r"sentence 0 \('a'\).*laterality 'left' not allowed",
        ),
        (
            "sentences:\n  - {text: a, vocabulary: ontology, findings: "
            "[{condition: edema, present: true}, {condition: edema, present: false}]}",
            "both present and absent",
        ),
    ],
)
def test_a_malformed_gold_file_names_the_entry(tmp_path, body, message):
    path = tmp_path / "gold.yaml"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        load_gold(path)


HELDOUT = Path(__file__).parents[1] / "data/fixtures/report_sentences_heldout.yaml"
GOLD_CATEGORIES = (
    "list",
    "two_sided",
    "bilateral",
    "severity",
    "zone",
    "temporal_present",
    "temporal_absent",
    "uncertain",
    "affirmative_absence",
    "device",
    "mixed",
    "negation",
)


def test_the_heldout_gold_set_is_a_valid_independent_test_set():
    header = GOLD.read_text("utf-8").split("\nsentences:")[0]
    assert all(c in header for c in GOLD_CATEGORIES)  # the main set's categories
    gold = load_gold(HELDOUT)
    assert len(gold) >= 60
    counts = Counter(s.category for s in gold)
    assert set(counts) == set(GOLD_CATEGORIES)
    assert min(counts.values()) >= 2, counts
    outside = sum(s.vocabulary == "outside" for s in gold) / len(gold)
    assert 0.25 <= outside <= 0.45, outside
    onto = load_ontology()
    for s in gold:
        for f in s.findings:
            assert isinstance(f, Finding) and Finding.from_dict(f.to_dict()) == f
        stated = {f.condition for f in s.findings}
        for c in s.uncertain:  # load_gold does not check these: hedged-only ontology ids
            assert onto.has_condition(c) and onto.condition(c).id == c, (s.text, c)
            assert c not in stated, (s.text, c)
        assert "no_finding" not in stated | s.uncertain, s.text
    texts = [" ".join(s.text.lower().split()) for s in gold]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {" ".join(s.text.lower().split()) for s in load_gold(GOLD)}
    joined = " ".join(texts)
    for phrase in ("bilateral", "small left and moderate right", "no change in", "resolved"):
        assert phrase in joined, phrase
    assert "cannot be excluded" in joined and "interval resolution" in joined
