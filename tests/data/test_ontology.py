import re

import pytest

from mechtune.data.ontology import CUE_KINDS, PARAPHRASE_STRATEGIES, load_ontology

# REFERENCE §1: the NAST released mapping of absence to an affirmative equivalent.
NAST_EQUIVALENTS = {
    "Atelectasis": "well-aerated expanded lungs",
    "Cardiomegaly": "normal heart size",
    "Consolidation": "clear lung parenchyma",
    "Edema": "normal pulmonary vascularity",
    "Enlarged Cardiomediastinum": "normal mediastinal contours",
    "Fracture": "intact bony structures",
    "Lung Lesion": "homogeneous lung parenchyma",
    "Lung Opacity": "well-aerated lung fields",
    "Pleural Effusion": "sharp costophrenic angles",
    "Pleural Other": "smooth pleural surfaces",
    "Pneumonia": "aerated alveoli",
    "Pneumothorax": "fully expanded lungs",
    "Support Devices": "device-free chest",
}
NEGATION_CUE = re.compile(r"\b(no|not|without|absent|free of|negative|resolved|none)\b", re.I)


def test_thirteen_conditions_plus_no_finding():
    onto = load_ontology()
    assert len(onto.conditions) == 14
    assert len(onto.pathologies) == 13
    assert {c.column for c in onto.pathologies} == set(NAST_EQUIVALENTS)
    assert onto.condition("No Finding").summary


@pytest.mark.parametrize("column", sorted(NAST_EQUIVALENTS))
def test_nast_equivalent_first_and_extra_ones_present(column):
    cond = load_ontology().condition(column)
    assert cond.absent_affirmative[0] == NAST_EQUIVALENTS[column]
    assert 2 <= len(cond.absent_affirmative) <= 3


def test_affirmative_equivalents_carry_no_negation_cue():
    for cond in load_ontology().pathologies:
        for phrase in cond.absent_affirmative:
            assert not NEGATION_CUE.search(phrase), (cond.id, phrase)


def test_lookup_by_id_and_column_and_unknown():
    onto = load_ontology()
    assert onto.condition("pleural_effusion") is onto.condition("Pleural Effusion")
    with pytest.raises(KeyError, match="unknown condition 'Bogus'"):
        onto.condition("Bogus")


def test_attributes_make_clinical_sense():
    onto = load_ontology()
    assert onto.condition("cardiomegaly").laterality == ()
    assert onto.condition("cardiomegaly").severities == ("mild", "moderate", "severe")
    assert onto.condition("pleural_effusion").severities == ("small", "moderate", "large")
    assert "bilateral" in onto.condition("pleural_effusion").laterality
    assert "bilateral" not in onto.condition("pneumothorax").laterality
    assert onto.condition("support_devices").severities == ()


def test_family_ids_unique_and_kinds_known():
    onto = load_ontology()
    ids = [f.id for f in onto.families]
    assert len(ids) == len(set(ids))
    assert {f.kind for f in onto.families} <= set(CUE_KINDS)


@pytest.mark.parametrize("kind", ["affirmative", "negation", "clause_negation", "paraphrase"])
def test_every_kind_keeps_families_on_both_sides_of_the_holdout(kind):
    onto = load_ontology()
    assert onto.families_of(kind, heldout=False)
    assert onto.families_of(kind, heldout=True)


def test_heldout_paraphrase_families_cover_every_strategy():
    onto = load_ontology()
    for heldout in (False, True):
        strategies = {f.strategy for f in onto.families_of("paraphrase", heldout=heldout)}
        assert strategies == set(PARAPHRASE_STRATEGIES)


def test_negation_families_include_the_issue_list():
    ids = {f.id for f in load_ontology().families_of("negation")}
    for required in (
        "neg.no",
        "neg.without",
        "neg.absent",
        "neg.free_of",
        "neg.negative_for",
        "neg.no_evidence",
        "neg.not_seen",
        "neg.resolved",
    ):
        assert required in ids


def test_family_condition_exclusion():
    onto = load_ontology()
    devices = {f.id for f in onto.families_of("negation", condition="support_devices")}
    assert "neg.resolved" not in devices
    assert "neg.resolved" in {f.id for f in onto.families_of("negation", condition="edema")}
