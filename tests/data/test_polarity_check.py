import pytest

pytest.importorskip("medspacy")

import sys

from mechtune.data.ontology import load_ontology
from mechtune.data.polarity_check import LabelledText, Mention, PolarityChecker
from mechtune.data.schema import Finding
from mechtune.data.text import realise, realise_absence_affirmative, realise_question

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


def test_empty_report():
    from mechtune.data.polarity_check import PolarityReport

    report = PolarityReport()
    assert report.disagreement_rate == 0.0 and report.passes(0.0)


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
