import re

import pytest

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding
from mechtune.data.text import realise, realise_absence_affirmative, realise_question

POLARITY_INVERTING = re.compile(
    r"\b(no|not|without|absent|free of|negative|excluded?|rule[sd]? out|normal|resolved)\b"
)


def test_phrase_with_attributes_and_article():
    f = Finding("pleural_effusion", True, "left", None, "small")
    assert realise(f, "aff.there_is") == "There is a small left pleural effusion."
    assert realise(f, "aff.bare") == "Small left pleural effusion."
    zone = Finding("consolidation", True, "right", "upper", "large")
    assert realise(zone, "aff.bare") == "Large right upper zone consolidation."


def test_number_agreement():
    bilateral = Finding("pleural_effusion", True, "bilateral", None, "small")
    assert realise(bilateral, "aff.there_is") == "There are small bilateral pleural effusions."
    assert realise(Finding("support_devices", True), "aff.is_seen") == "Support devices are seen."
    assert realise(Finding("edema", False), "neg.resolved") == "Pulmonary edema has resolved."
    assert realise_question("support_devices", "q.is_there") == "Are there support devices?"
    assert realise_question("pneumothorax", "q.is_there") == "Is there a pneumothorax?"
    assert realise_question("cardiomegaly", "q.is_there") == "Is there cardiomegaly?"


def test_negated_and_contralateral():
    assert realise(Finding("pneumothorax", False, "right"), "neg.no") == "No right pneumothorax."
    assert realise(Finding("pneumothorax", False), "neg.not_seen") == "Pneumothorax is not seen."


def test_family_must_match_polarity():
    with pytest.raises(ValueError, match="cannot state a present finding"):
        realise(Finding("edema", True), "neg.no")
    with pytest.raises(ValueError, match="cannot state an absent finding"):
        realise(Finding("edema", False), "aff.bare")


def test_clauses_are_not_capitalised_and_sentences_are():
    assert realise(Finding("edema", False), "cneg.no") == "no pulmonary edema"
    assert realise_absence_affirmative("cardiomegaly", "caffeq.bare") == "normal heart size"
    assert realise_absence_affirmative("cardiomegaly", "affeq.bare") == "Normal heart size."


@pytest.mark.parametrize("condition", [c.id for c in load_ontology().pathologies])
def test_no_paraphrase_template_inverts_polarity(condition):
    onto = load_ontology()
    for fam in (*onto.families_of("question"), *onto.families_of("paraphrase")):
        for syn in range(3):
            text = realise_question(condition, fam.id, syn).lower()
            assert text.endswith("?")
            assert not POLARITY_INVERTING.search(text), (fam.id, text)


def test_every_statement_family_realises_for_every_condition():
    onto = load_ontology()
    for cond in onto.pathologies:
        side = cond.laterality[0] if cond.laterality else None
        sev = cond.severities[0] if cond.severities else None
        for fam in onto.families_of("affirmative"):
            assert realise(Finding(cond.id, True, side, None, sev), fam).endswith(".")
        for fam in onto.families_of("negation", condition=cond.id):
            text = realise(Finding(cond.id, False, side if side != "bilateral" else None), fam)
            assert text[0].isupper() and text.endswith(".")
