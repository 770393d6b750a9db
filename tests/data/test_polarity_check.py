import sys

import pytest

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding
from mechtune.data.text import realise, realise_absence_affirmative

pytest.importorskip("medspacy")

from mechtune.data.polarity_check import (
    LabelledText,
    Mention,
    PolarityChecker,
)

CONDITIONS = ["pleural_effusion", "pneumothorax", "edema", "cardiomegaly", "consolidation"]


@pytest.fixture(scope="module")
def checker():
    return PolarityChecker()


def _items(kind, polarity):
    onto = load_ontology()
    items = []
    for cond in CONDITIONS:
        side = "left" if "left" in onto.condition(cond).laterality else None
        for fam in onto.families_of(kind, condition=cond):
            finding = Finding(cond, polarity == "affirmed", side)
            items.append(LabelledText(realise(finding, fam), (Mention(cond, polarity),), fam.id))
    return items


def test_every_negation_family_reads_as_negated(checker):
    report = checker.check(_items("negation", "negated"))
    assert report.n_mentions > 50
    assert report.disagree == 0 and report.unmatched == 0, report.examples
    assert set(report.by_family) >= {"neg.no", "neg.absent", "neg.not_seen", "neg.resolved"}


def test_every_affirmative_family_reads_as_affirmed(checker):
    report = checker.check(_items("affirmative", "affirmed"))
    assert report.disagree == 0 and report.unmatched == 0, report.examples


def test_absence_affirmative_sentences_agree(checker):
    items = [
        LabelledText(
            realise_absence_affirmative(c, "affeq.bare", i),
            (Mention(c, "absence_affirmative"),),
            "affeq.bare",
        )
        for c in CONDITIONS
        for i in range(3)
    ]
    report = checker.check(items)
    assert report.agree == len(items) and report.disagree == 0


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


def test_wrong_label_is_a_disagreement_with_an_example(checker):
    items = [
        LabelledText("No pneumothorax.", (Mention("pneumothorax", "affirmed"),), "neg.no"),
        LabelledText(
            "Small left pleural effusion.", (Mention("pleural_effusion", "affirmed"),), "aff.bare"
        ),
        LabelledText("Heart looks big.", (Mention("cardiomegaly", "affirmed"),), "odd"),
    ]
    report = checker.check(items)
    assert (report.agree, report.disagree, report.unmatched) == (1, 1, 1)
    assert report.disagreement_rate == pytest.approx(0.5)
    assert report.examples[0]["text"] == "No pneumothorax."
    assert report.examples[0]["detected"] == "negated"
    assert report.by_family["neg.no"] == {"disagree": 1}
    assert not report.passes(0.02) and report.passes(0.5)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "medspacy", None)
    from mechtune.data import polarity_check

    assert not polarity_check.clinical_available()
    with pytest.raises(ImportError, match=r"pip install 'mechtune\[clinical\]'"):
        polarity_check.PolarityChecker()


def test_mention_polarity_is_validated():
    with pytest.raises(ValueError, match="polarity must be one of"):
        Mention("edema", "maybe")
