import pytest

pytest.importorskip("medspacy")

import json
import sys
from pathlib import Path

from mechtune.data.ontology import load_ontology
from mechtune.data.polarity_check import LabelledText, Mention, PolarityChecker
from mechtune.data.polarity_eval import (
    accuracy_by_category,
    load_reference_sentences,
    score_reference,
)
from mechtune.data.schema import Finding
from mechtune.data.text import realise, realise_absence_affirmative, realise_question

pytestmark = pytest.mark.clinical
FIXTURES = Path(__file__).parent / "fixtures"
DEV = load_reference_sentences(FIXTURES / "negation_scope.yaml")
HELDOUT = load_reference_sentences(FIXTURES / "negation_scope_heldout.yaml")

CONDITIONS = ["pleural_effusion", "pneumothorax", "edema", "cardiomegaly", "support_devices"]


@pytest.fixture(scope="module")
def checker():
    return PolarityChecker()


def _items(kinds, polarity):
    onto = load_ontology()
    items = []
    for cond in CONDITIONS:
        sides = [None, *onto.condition(cond).laterality[:1]]
        for kind in kinds:
            for fam in onto.families_of(kind, condition=cond):
                for side in sides:
                    finding = Finding(cond, polarity == "affirmed", side)
                    text = realise(finding, fam)
                    items.append(LabelledText(text, (Mention(cond, polarity),), fam.id))
    return items


def test_every_negation_family_reads_as_negated(checker):
    items = _items(("negation", "clause_negation"), "negated")
    report = checker.check(items)
    assert report.disagree == 0 and report.unmatched == 0, report.examples
    families = {f.id for f in load_ontology().families_of("negation")}
    families |= {f.id for f in load_ontology().families_of("clause_negation")}
    assert set(report.by_family) == families
    positions = {load_ontology().family(f).position for f in report.by_family}
    assert positions == {"pre", "post"}


def test_every_affirmative_family_reads_as_affirmed(checker):
    report = checker.check(_items(("affirmative", "clause_affirmative"), "affirmed"))
    assert report.disagree == 0 and report.unmatched == 0, report.examples


def test_questions_and_paraphrases_are_matched_and_not_negated(checker):
    onto = load_ontology()
    items = [
        LabelledText(realise_question(c, f.id, s), (Mention(c, "affirmed"),), f.id)
        for c in ("atelectasis", "pneumothorax", "edema", "support_devices")
        for kind in ("question", "paraphrase")
        for f in onto.families_of(kind, condition=c)
        for s in range(2)
    ]
    report = checker.check(items)
    assert report.disagree == 0 and report.unmatched == 0, report.examples


def test_longest_target_wins(checker):
    # "a partly collapsed lung" (atelectasis, lay) contains "collapsed lung" (pneumothorax).
    found = checker.detect("Does this patient have a partly collapsed lung?")
    assert found == {"atelectasis": [False]}


def test_absence_affirmative_sentences_agree(checker):
    items = [
        LabelledText(
            realise_absence_affirmative(c, f.id, i), (Mention(c, "absence_affirmative"),), f.id
        )
        for c in CONDITIONS
        for f in load_ontology().families_of("absence_affirmative")
        for i in range(3)
    ]
    report = checker.check(items)
    assert report.agree == len(items) and report.disagree == 0
    assert report.by_polarity == {"absence_affirmative": {"agree": len(items)}}


def test_postposed_cue_does_not_reach_an_earlier_clause(checker):
    text = "Pneumonia present, consolidation absent and cardiomegaly noted."
    item = LabelledText(
        text,
        (
            Mention("pneumonia", "affirmed"),
            Mention("consolidation", "negated"),
            Mention("cardiomegaly", "affirmed"),
        ),
    )
    report = checker.check([item])
    assert report.agree == 3, report.examples


def test_every_clause_break_ends_a_backward_scope(checker):
    # The default backward cue "free" must stop at the nearest break, not the first one.
    text = "Cardiomegaly, consolidation, pleural effusion and a device-free chest."
    mentions = (
        Mention("cardiomegaly", "affirmed"),
        Mention("consolidation", "affirmed"),
        Mention("pleural_effusion", "affirmed"),
        Mention("support_devices", "absence_affirmative"),
    )
    report = checker.check([LabelledText(text, mentions)])
    assert report.agree == 4, report.examples


def test_wrong_label_is_a_disagreement_with_an_example(checker):
    items = [
        LabelledText("No pneumothorax.", (Mention("pneumothorax", "affirmed"),), "neg.no"),
        LabelledText(
            "Small left pleural effusion.", (Mention("pleural_effusion", "affirmed"),), "aff.bare"
        ),
        LabelledText("Heart looks big.", (Mention("cardiomegaly", "affirmed"),), "odd"),
        LabelledText("No edema.", (Mention("edema", "negated"),), "neg.no"),
        LabelledText(
            "No pneumothorax. Clear lungs.", (Mention("consolidation", "absence_affirmative"),)
        ),
    ]
    report = checker.check(items)
    assert (report.n_texts, report.n_mentions) == (5, 5)
    assert (report.agree, report.disagree, report.unmatched) == (2, 2, 1)
    assert report.disagreement_rate == pytest.approx(2 / 4)
    assert report.examples[0] == {
        "text": "No pneumothorax.",
        "condition": "pneumothorax",
        "expected": "affirmed",
        "detected": "negated",
        "family": "neg.no",
    }
    assert report.examples[1]["detected"] == "negation cue"
    assert report.by_family == {
        "aff.bare": {"agree": 1},
        "neg.no": {"disagree": 1, "agree": 1},
        "odd": {"unmatched": 1},
        "unknown": {"disagree": 1},
    }
    assert report.by_polarity["affirmed"] == {"disagree": 1, "agree": 1, "unmatched": 1}
    assert not report.passes(0.02) and report.passes(0.5)
    assert report.to_dict()["disagreement_rate"] == pytest.approx(0.5)
    assert len(checker.check(items, max_examples=1).examples) == 1


def test_a_condition_mentioned_twice_agrees_only_if_both_agree(checker):
    text = "Pneumothorax is seen. Pneumothorax has resolved."
    report = checker.check([LabelledText(text, (Mention("pneumothorax", "affirmed"),))])
    assert report.disagree == 1 and report.examples[0]["detected"] == "mixed"


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "medspacy", None)
    from mechtune.data import polarity_check

    assert not polarity_check.clinical_available()
    with pytest.raises(ImportError, match=r"pip install 'mechtune\[clinical\]'"):
        polarity_check.PolarityChecker()


def test_mention_polarity_is_validated():
    with pytest.raises(ValueError, match="polarity must be one of"):
        Mention("edema", "maybe")


def test_every_clause_family_pair_reads_right_in_a_list(checker):
    # MCQ options join one clause per condition (builders.polarity._join): every mix of
    # an affirmative and a negation clause family must read as labelled, in every order.
    # A cue-less clause ("{x}") failed this: "No A, B and C" reads as three absences.
    from itertools import product

    from mechtune.data.builders.polarity import _join

    onto = load_ontology()
    conds = ("pneumothorax", "cardiomegaly", "atelectasis")
    items = []
    for caff, cneg in product(
        onto.families_of("clause_affirmative"), onto.families_of("clause_negation")
    ):
        for vec in product((0, 1), repeat=3):
            clauses = [
                realise(Finding(c, bool(v)), caff if v else cneg)
                for c, v in zip(conds, vec, strict=True)
            ]
            mentions = tuple(
                Mention(c, "affirmed" if v else "negated") for c, v in zip(conds, vec, strict=True)
            )
            items.append(LabelledText(_join(clauses), mentions, f"{caff.id}+{cneg.id}"))
    report = checker.check(items)
    assert report.n_mentions == 3 * 8 * len(onto.families_of("clause_affirmative")) * len(
        onto.families_of("clause_negation")
    )
    assert (report.disagree, report.uncertain, report.unmatched) == (0, 0, 0), report.examples


# --- real report language: the hand-labelled fixtures --------------------------------------


@pytest.mark.parametrize(
    "sentence",
    [pytest.param(s, id=f"dev-{i}-{s.category}") for i, s in enumerate(DEV)]
    + [pytest.param(s, id=f"heldout-{i}-{s.category}") for i, s in enumerate(HELDOUT)],
)
def test_each_fixture_sentence_reads_as_labelled(checker, sentence):
    found = checker.read(sentence.text)
    got = {c: found.get(c) for c in sentence.expected}
    assert got == {c: [v] for c, v in sentence.expected.items()}, sentence.text


@pytest.mark.parametrize("fixture", [DEV, HELDOUT], ids=["dev", "heldout"])
def test_accuracy_per_cue_category(checker, fixture):
    # Every sentence reads right today, so the floor is 100% per category: a lower one
    # would let a regression in one category hide behind the others. A deliberate change
    # that costs accuracy must edit this test and docs/results.md together.
    table = accuracy_by_category(score_reference(checker, fixture))
    assert set(table) - {"all"} == {s.category for s in fixture}
    wrong = {k: [(w.text, w.condition, w.detected) for w in v.wrong] for k, v in table.items()}
    assert all(acc.accuracy == 1.0 for acc in table.values()), wrong
    assert table["list_negation"].mentions >= 20 and table["uncertainty"].mentions >= 12


def test_case03_a_negated_list_negates_every_item(checker):
    assert checker.detect("No pneumothorax, pleural effusion, or consolidation.") == {
        "pneumothorax": [True],
        "pleural_effusion": [True],
        "consolidation": [True],
    }
    assert checker.detect("There is no pleural effusion, pneumothorax, or pulmonary edema.") == {
        "pleural_effusion": [True],
        "pneumothorax": [True],
        "edema": [True],
    }


@pytest.mark.parametrize(
    ("text", "condition"),
    [
        ("The study is negative for pneumothorax.", "pneumothorax"),
        ("The lungs are free of consolidation.", "consolidation"),
        ("Chest radiograph without pneumothorax.", "pneumothorax"),
        ("The right pleural effusion has resolved.", "pleural_effusion"),
        ("Cardiomegaly is absent.", "cardiomegaly"),
    ],
)
def test_case06_common_negation_phrasings(checker, text, condition):
    assert checker.detect(text) == {condition: [True]}


def test_uncertain_is_not_a_negation_in_detect(checker):
    text = "Pneumothorax cannot be excluded. No pleural effusion."
    assert checker.read(text) == {"pneumothorax": ["uncertain"], "pleural_effusion": ["negated"]}
    assert checker.detect(text) == {"pneumothorax": [False], "pleural_effusion": [True]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # per-item marking: a repeated cue, or a bare finding before the cue
        (
            "No pleural effusion, pulmonary edema, no atelectasis",
            {"pleural_effusion": "negated", "edema": "affirmed", "atelectasis": "negated"},
        ),
        (
            "Pleural effusion, no edema, atelectasis",
            {"pleural_effusion": "affirmed", "edema": "negated", "atelectasis": "affirmed"},
        ),
        (
            "Cardiomegaly, pneumothorax absent, free of support devices",
            {"cardiomegaly": "affirmed", "pneumothorax": "negated", "support_devices": "negated"},
        ),
        # ... but an "or" list still shares the cue
        (
            "Cardiomegaly, no pleural effusion, pneumothorax, or consolidation.",
            {
                "cardiomegaly": "affirmed",
                "pleural_effusion": "negated",
                "pneumothorax": "negated",
                "consolidation": "negated",
            },
        ),
        # a size or grade word starts a new finding after a forward cue, not before a
        # backward one
        (
            "No effusion, small left pneumothorax.",
            {"pleural_effusion": "negated", "pneumothorax": "affirmed"},
        ),
        (
            "Small bilateral pleural effusions and atelectasis have resolved.",
            {"pleural_effusion": "negated", "atelectasis": "negated"},
        ),
        # an unmarked list under one cue: all three absent, whatever the label said
        (
            "Negative for lung opacity, enlarged cardiomediastinum and pneumothorax.",
            {
                "lung_opacity": "negated",
                "enlarged_cardiomediastinum": "negated",
                "pneumothorax": "negated",
            },
        ),
        ("Neither pleural effusion nor pneumothorax is present.", {"pleural_effusion": "negated"}),
    ],
)
def test_list_marking_rules(checker, text, expected):
    found = checker.read(text)
    assert {c: found[c] for c in expected} == {c: [v] for c, v in expected.items()}


def test_rule_resource_drops_only_existing_defaults_and_uses_known_categories(checker):
    from mechtune.data.polarity_rules import rule_resource

    context = checker.nlp.get_pipe("medspacy_context")
    defaults = json.loads(Path(context.DEFAULT_RULES_FILEPATH).read_text())["context_rules"]
    literals = {r["literal"] for r in defaults}
    spec = rule_resource()
    assert {d["literal"] for d in spec["drop"]} <= literals
    assert all(d["why"] for d in spec["drop"])
    known = {
        "NEGATED_EXISTENCE",
        "POSSIBLE_EXISTENCE",
        "HYPOTHETICAL",
        "AFFIRMED_EXISTENCE",
        "PSEUDO_NEGATION",
        "GRADED_FINDING",
        "CLAUSE_BREAK",
    }
    assert {r["category"] for r in spec["rules"]} == known
    # a cue stands in report text on its own: none of them is a finding's name
    onto = load_ontology()
    names = {p.lower() for c in onto.pathologies for p in (c.name, *c.synonyms)}
    assert not names & {r["literal"].lower() for r in spec["rules"]}
