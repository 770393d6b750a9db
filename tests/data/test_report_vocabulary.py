"""The report-side vocabulary and the targets built from it: pure code, no medspacy needed
(the extractor reading them: test_report_facts.py)."""

import copy
from importlib import resources

import pytest
import yaml

from mechtune.data.ontology import load_ontology
from mechtune.data.report_targets import (
    ABSENCE,
    ABSENT_IF_NEGATED,
    MENTION,
    NOT_A_FINDING,
    extra_targets,
    label,
    label_kind,
    parse_label,
    predicate_parts,
    singular,
)
from mechtune.data.report_vocabulary import (
    KINDS,
    SOURCES,
    ontology_phrases,
    parse_vocabulary,
    report_vocabulary,
)
from mechtune.errors import DataError


def _raw():
    text = resources.files("mechtune.data").joinpath("resources/report_vocabulary.yaml")
    return yaml.safe_load(text.read_text("utf-8"))


def test_every_phrase_names_a_condition_and_a_known_source():
    vocab = report_vocabulary()
    conditions = {c.id for c in load_ontology().pathologies}
    assert set(vocab.phrases) == set(KINDS)
    n = 0
    for kind, phrases in vocab.phrases.items():
        for phrase, cids in phrases.items():
            assert set(cids) <= conditions
            for cid in cids:
                assert vocab.sources[(kind, cid, phrase)].partition(":")[0] in SOURCES
                n += 1
    assert n == len(vocab.sources) > 100


def test_the_vocabulary_leaves_the_ontology_alone():
    # report-only words: none is an ontology phrase, so generated text cannot change
    taken = ontology_phrases()
    for phrases in report_vocabulary().phrases.values():
        assert not set(phrases) & set(taken)
    assert "opacity" not in taken and "endotracheal tube" not in taken


def test_a_phrase_under_two_conditions_names_both():
    vocab = report_vocabulary()
    assert vocab.phrases["mentions"]["nodular opacity"] == ("lung_lesion", "lung_opacity")
    targets = {lit: lab for lit, lab, pat in extra_targets() if pat is None}
    assert targets["nodular opacities"] == "lung_lesion+lung_opacity"
    assert targets["consolidative opacity"] == "consolidation+lung_opacity"


def _edit(path, value):
    def apply(raw):
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return apply


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _edit(["conditions", "lung_nodule"], {"mentions": {}}),
            "'lung_nodule' is not a condition",
        ),
        (_edit(["conditions", "no_finding"], {"mentions": {}}), "'no_finding' is not a condition"),
        (_edit(["conditions", "edema", "synonyms"], {}), "edema must map some of"),
        (
            _edit(["conditions", "edema", "mentions", "Kerley lines"], "chexpert: x"),
            "edema.mentions 'Kerley lines': a phrase must be a lower-case string",
        ),
        (
            _edit(["conditions", "edema", "mentions", "a congested lung"], "chexpert: x"),
            "drop the article",
        ),
        (
            _edit(["conditions", "edema", "mentions", "interstitial edema"], "chexpert: edema"),
            r"already an ontology phrase of \['edema'\]",
        ),
        (
            _edit(["conditions", "edema", "mentions", "fluid overload"], "a guess"),
            "source must be '<source>: <note>'",
        ),
        (
            _edit(["conditions", "pneumonia", "absent", "opacity"], "mechtune: x"),
            r"\['opacity'\] stand in both mentions and absent",
        ),
        (
            _edit(["conditions", "edema", "not_findings", "mass effect"], "mechtune: x"),
            "edema.not_findings 'mass effect' holds no mention of edema",
        ),
        (_edit(["context_rules"], [{"literal": "gone"}]), "category must be one of"),
        (
            _edit(
                ["context_rules"],
                [{"literal": "gone", "category": "NEGATED_EXISTENCE", "direction": "BACKWARD"}],
            ),
            "allowed_types must list condition ids",
        ),
        (
            _edit(
                ["context_rules"],
                [
                    {
                        "literal": "gone",
                        "category": "NEGATED_EXISTENCE",
                        "direction": "BACKWARD",
                        "allowed_types": ["devices"],
                    }
                ],
            ),
            "allowed_types must list condition ids",
        ),
    ],
)
def test_a_bad_vocabulary_is_refused_with_the_entry_named(edit, message):
    raw = copy.deepcopy(_raw())
    edit(raw)
    with pytest.raises(DataError, match=message):
        parse_vocabulary(raw)


def test_the_extractors_context_rules_are_limited_to_devices():
    rules = report_vocabulary().context_rules
    assert {r["literal"] for r in rules} == {"has been removed", "removal of"}
    assert all(r["allowed_types"] == ["support_devices"] for r in rules)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("lungs", "lung"),
        ("angles", "angle"),
        ("opacities", "opacity"),
        ("mass", "mass"),
        ("sulci", "sulci"),
        ("apparatus", "apparatus"),
        ("parenchyma", "parenchyma"),
    ],
)
def test_singular(word, expected):
    assert singular(word) == expected


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("normal heart size", (["heart", "size"], ["normal"])),
        ("well-expanded lungs", (["lungs"], ["well", "-", "expanded"])),
        ("heart size within normal limits", (["heart", "size"], ["within", "normal", "limits"])),
        ("heart is normal in size", (["heart"], ["normal", "in", "size"])),
        ("pericardial effusion", None),
    ],
)
def test_predicate_parts(phrase, expected):
    assert predicate_parts(phrase) == expected


def test_labels_of_every_kind_round_trip():
    assert label(MENTION, ["lung_opacity", "lung_lesion"]) == "lung_lesion+lung_opacity"
    assert label(ABSENCE, ["cardiomegaly"]) == "cardiomegaly|absent"
    assert label(ABSENT_IF_NEGATED, ["fracture"]) == "fracture|absent_if_negated"
    assert label(NOT_A_FINDING, ["pleural_effusion"]) == NOT_A_FINDING
    for lab, kind, parsed in [
        ("lung_lesion+lung_opacity", MENTION, (("lung_lesion", "lung_opacity"), False)),
        ("cardiomegaly|absent", ABSENCE, (("cardiomegaly",), True)),
        ("fracture|absent_if_negated", ABSENT_IF_NEGATED, (("fracture",), False)),
        (NOT_A_FINDING, NOT_A_FINDING, ((), False)),
    ]:
        assert label_kind(lab) == kind
        assert parse_label(lab) == parsed


def _by_literal():
    return {lit: (lab, pat) for lit, lab, pat in extra_targets()}


def test_coordinated_targets_name_every_condition_of_their_parts():
    targets = _by_literal()
    subjects = "heart size and mediastinal contours are normal (coordinated)"
    assert targets[subjects][0] == "cardiomegaly+enlarged_cardiomediastinum|absent"
    predicates = "lungs is well - expanded and clear (coordinated)"
    assert targets[predicates][0] == "atelectasis+consolidation|absent"
    # the pattern: subject, copula, then each predicate after an optional negation and
    # degree adverb, joined by an optional comma and "and"
    pattern = targets[predicates][1]
    assert pattern[0] == {"LOWER": {"IN": ["lungs", "lung"]}}
    assert [p.get("LOWER") for p in pattern if "OP" not in p] == [
        {"IN": ["lungs", "lung"]},
        "well",
        "expanded",
        "and",
        "clear",
    ]
    # mentions coordinate with mentions only, absences with absences
    kinds = {label_kind(lab) for lit, (lab, _) in targets.items() if "(coordinated)" in lit}
    assert kinds == {MENTION, ABSENCE}


def test_plurals_of_article_synonyms_and_report_phrases():
    targets = _by_literal()
    # "a pleural plaque" takes an article: countable, though pleural thickening is not
    assert targets["pleural plaques"] == ("pleural_other", None)
    assert targets["chest tubes"] == ("support_devices", None)
    assert targets["osseous abnormalities"] == ("fracture|absent_if_negated", None)
    assert targets["pericardial effusions"] == (NOT_A_FINDING, None)
    # no plural for a phrase with "and", a preposition, or an already plural head
    assert "tubes and liness" not in targets
    assert "widening of the mediastinums" not in targets
    assert "consolidationses" not in targets
    # nor for a literal the polarity check's pipeline already matches
    assert "pleural effusions" not in targets
