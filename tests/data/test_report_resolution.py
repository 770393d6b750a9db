"""Resolution of report mentions into findings, the merge with labels, and the attribute
lexicon: pure code, no medspacy needed (the extractor itself: test_report_facts.py)."""

import random
import sys

import pytest

from mechtune.data.ontology import load_ontology
from mechtune.data.report_facts import (
    FactExtractor,
    Mention,
    merge_findings,
    resolve_mentions,
)
from mechtune.data.report_modifiers import (
    Group,
    lexicon,
    ontology_attributes,
    parse_lexicon,
)
from mechtune.data.report_targets import parse_label, plural
from mechtune.data.schema import Finding, RecordError, Study
from mechtune.errors import ConfigError, DataError, MissingExtraError


def m(condition, status, laterality=None, zone=None, severity=None):
    return Mention(condition, status, laterality, zone, severity, "s.", 0, 1)


def keys(findings):
    return sorted(f.key() for f in findings)


# -- resolve_mentions ------------------------------------------------------------------------


def test_present_wins_over_absent_on_the_same_side():
    out = resolve_mentions([m("pneumothorax", "absent"), m("pneumothorax", "present", "left")])
    assert keys(out) == [("pneumothorax", True, "left", None, None)]


def test_an_absence_on_the_other_side_is_kept():
    out = resolve_mentions(
        [
            m("pleural_effusion", "present", "right", None, "moderate"),
            m("pleural_effusion", "absent", "left"),
        ]
    )
    assert keys(out) == [
        ("pleural_effusion", False, "left", None, None),
        ("pleural_effusion", True, "right", None, "moderate"),
    ]


def test_two_sides_become_bilateral_only_when_they_agree_and_the_ontology_allows():
    same = [m("pleural_effusion", "present", s, None, "small") for s in ("left", "right")]
    assert keys(resolve_mentions(same)) == [("pleural_effusion", True, "bilateral", None, "small")]
    differ = [
        m("pleural_effusion", "present", "left", None, "small"),
        m("pleural_effusion", "present", "right", None, "moderate"),
    ]
    assert len(resolve_mentions(differ)) == 2
    # pneumothorax has no bilateral side in the ontology: a left and a right finding
    ptx = [m("pneumothorax", "present", s) for s in ("left", "right")]
    assert keys(resolve_mentions(ptx)) == [
        ("pneumothorax", True, "left", None, None),
        ("pneumothorax", True, "right", None, None),
    ]


def test_the_most_specific_attributes_win():
    out = resolve_mentions(
        [
            m("atelectasis", "present"),
            m("atelectasis", "present", "left", "basal"),
            m("atelectasis", "present", None, None, "mild"),
            m("atelectasis", "present", "left", "lower"),
        ]
    )
    # the first stated zone of the side wins; the side-less mention lends its severity
    assert keys(out) == [("atelectasis", True, "left", "basal", "mild")]
    sided_first = resolve_mentions(
        [
            m("atelectasis", "present", None, None, "mild"),
            m("atelectasis", "present", "left", None, "severe"),
        ]
    )
    assert keys(sided_first) == [("atelectasis", True, "left", None, "severe")]
    bilateral = resolve_mentions(
        [m("atelectasis", "present", "bilateral", "basal"), m("atelectasis", "present", "left")]
    )
    assert keys(bilateral) == [("atelectasis", True, "bilateral", "basal", None)]


def test_a_sideless_absence_absorbs_sided_ones():
    out = resolve_mentions([m("pneumothorax", "absent", "left"), m("pneumothorax", "absent")])
    assert keys(out) == [("pneumothorax", False, None, None, None)]


def test_uncertain_policy():
    mentions = [
        m("pleural_effusion", "present", "left", None, "small"),
        m("pleural_effusion", "uncertain", "right"),
        m("pneumonia", "uncertain", "right", "lower", "mild"),
        m("pneumothorax", "absent"),
        m("pneumothorax", "uncertain", "left", None, "small"),
    ]
    assert keys(resolve_mentions(mentions, "skip")) == [
        ("pleural_effusion", True, "left", None, "small"),
        ("pneumothorax", False, None, None, None),
    ]
    # a definite statement beats a hedged one: the pneumothorax stays absent
    assert keys(resolve_mentions(mentions, "present")) == [
        ("pleural_effusion", True, "left", None, "small"),
        ("pleural_effusion", True, "right", None, None),
        ("pneumonia", True, "right", "lower", "mild"),
        ("pneumothorax", False, None, None, None),
    ]
    assert keys(resolve_mentions(mentions, "absent")) == [
        ("pleural_effusion", False, "right", None, None),
        ("pleural_effusion", True, "left", None, "small"),
        ("pneumonia", False, "right", None, None),
        ("pneumothorax", False, None, None, None),
    ]
    with pytest.raises(ConfigError, match="uncertain must be one of skip, present, absent"):
        resolve_mentions(mentions, "maybe")


def _random_mention(rng):
    cond = rng.choice(load_ontology().pathologies)
    present = rng.random() < 0.5
    return m(
        cond.id,
        rng.choice(["present", "absent", "uncertain"]),
        rng.choice([None, *cond.laterality]),
        rng.choice([None, *cond.zones]) if present else None,
        rng.choice([None, *cond.severities]) if present else None,
    )


@pytest.mark.parametrize("policy", ["skip", "present", "absent"])
def test_resolved_findings_are_always_study_valid(policy):
    rng = random.Random(0)
    for _ in range(400):
        mentions = [_random_mention(rng) for _ in range(rng.randint(0, 8))]
        out = resolve_mentions(mentions, policy)
        Study("s", "p", out)  # raises on a duplicate or a present/absent clash
        stated = {x.condition for x in mentions if policy != "skip" or x.status != "uncertain"}
        assert {f.condition for f in out} == stated


def test_mention_status_is_validated():
    with pytest.raises(ConfigError, match=r"Mention\.status must be one of"):
        m("edema", "maybe")


# -- merge_findings --------------------------------------------------------------------------


def test_labels_win_for_existence_and_reports_give_attributes():
    labels = [
        Finding("pleural_effusion", True),
        Finding("pneumothorax", False),
        Finding("edema", True),
        Finding("cardiomegaly", False),
    ]
    report = [
        Finding("pleural_effusion", True, "left", None, "small"),
        Finding("pleural_effusion", True, "right", None, "moderate"),
        Finding("pneumothorax", True, "right", None, "large"),  # labels say absent
        Finding("edema", False),  # labels say present
        Finding("cardiomegaly", False),
        Finding("atelectasis", True, "left", "basal", "mild"),  # labels silent
    ]
    assert merge_findings(labels, report) == (
        Finding("pleural_effusion", True, "left", None, "small"),
        Finding("pleural_effusion", True, "right", None, "moderate"),
        Finding("pneumothorax", False),
        Finding("edema", True),
        Finding("cardiomegaly", False),
        Finding("atelectasis", True, "left", "basal", "mild"),
    )


def test_an_absent_label_keeps_its_full_cover():
    out = merge_findings([Finding("pneumothorax", False)], [Finding("pneumothorax", False, "left")])
    assert out == (Finding("pneumothorax", False),)


def test_merge_rejects_inputs_that_are_not_study_valid():
    clash = [Finding("edema", True), Finding("edema", False)]
    with pytest.raises(RecordError, match="both present and absent"):
        merge_findings([], clash)


def test_merged_findings_are_study_valid_and_keep_label_existence():
    rng = random.Random(1)
    onto = load_ontology()
    for _ in range(300):
        labels = [Finding(c.id, rng.random() < 0.5) for c in onto.conditions if rng.random() < 0.5]
        report = resolve_mentions([_random_mention(rng) for _ in range(6)])
        merged = merge_findings(labels, report)
        study = Study("s", "p", merged)
        for f in labels:
            assert study.label(f.condition) is f.present
        for f in report:
            if f.condition not in {x.condition for x in labels}:
                assert f in merged


# -- the lexicon and the ontology's attributes -----------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("pleural effusion", "pleural effusions"),
        ("pulmonary opacity", "pulmonary opacities"),
        ("pulmonary mass", "pulmonary masses"),
        ("pneumothorax", "pneumothoraces"),
        ("fractured rib", "fractured ribs"),
        ("airway", "airways"),
    ],
)
def test_plural(phrase, expected):
    assert plural(phrase) == expected


def test_labels_name_conditions_and_absence():
    assert parse_label("pleural_effusion") == (("pleural_effusion",), False)
    assert parse_label("lung_lesion+lung_opacity|absent") == (
        ("lung_lesion", "lung_opacity"),
        True,
    )


def _group(sides=(), zones=(), degrees=()):
    return Group(list(sides), list(zones), list(degrees))


def test_group_reads_two_sides_as_bilateral_and_a_range_as_its_upper_end():
    assert _group(["left", "right"]).laterality == "bilateral"
    assert _group(["bilateral", "left"]).laterality == "bilateral"
    assert _group(["right"]).laterality == "right"
    assert _group(degrees=[1, 2]).degree == 2 and _group(degrees=[3, 2]).degree == 3


def test_ontology_attributes_keep_only_what_the_condition_allows():
    onto = load_ontology()
    attrs = ontology_attributes
    # bilateral pneumothorax: the ontology has left and right only -> two findings
    assert attrs(onto.condition("pneumothorax"), _group(["bilateral"], ["apical"], [1])) == [
        ("left", None, "small"),
        ("right", None, "small"),
    ]
    # basal -> lower, apical -> upper where only the coarser zone exists
    consolidation = onto.condition("consolidation")
    assert attrs(consolidation, _group(["right"], ["basal"], [3])) == [("right", "lower", "large")]
    assert attrs(consolidation, _group(zones=["apical"])) == [(None, "upper", None)]
    # atelectasis keeps basal; its grade scale maps degree 1 to mild
    assert attrs(onto.condition("atelectasis"), _group(["left"], ["basal"], [1])) == [
        ("left", "basal", "mild")
    ]
    # no side, zone or scale for cardiomegaly but its grade; none at all for devices
    assert attrs(onto.condition("cardiomegaly"), _group(["right"], ["lower"], [2])) == [
        (None, None, "moderate")
    ]
    assert attrs(onto.condition("support_devices"), _group(["left"], ["upper"], [3])) == [
        (None, None, None)
    ]
    # a bilateral lung lesion (left/right only) -> two; pleural thickening keeps bilateral
    assert len(attrs(onto.condition("lung_lesion"), _group(["bilateral"]))) == 2
    assert attrs(onto.condition("pleural_other"), _group(["bilateral"])) == [
        ("bilateral", None, None)
    ]


def test_every_attribute_read_is_one_the_ontology_allows():
    # exhaustive over every condition and every combination of lexicon values
    lex = lexicon()
    sides = {a["laterality"] for a in lex.words.values() if "laterality" in a}
    zones = {a["zone"] for a in lex.words.values() if "zone" in a}
    for cond in load_ontology().pathologies:
        for side in [None, *sides]:
            for zone in [None, *zones]:
                for degree in (None, 1, 2, 3):
                    group = _group([side] if side else [], [zone] if zone else [])
                    group.degrees = [degree] if degree else []
                    for s, z, sev in ontology_attributes(cond, group):
                        Finding(cond.id, True, s, z, sev)  # raises if not allowed


def _raw_lexicon():
    from importlib import resources

    import yaml

    text = resources.files("mechtune.data").joinpath("resources/report_modifiers.yaml")
    return yaml.safe_load(text.read_text("utf-8"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["words"].update(lefty={"laterality": "sinister"}), "word 'lefty'"),
        (lambda r: r["words"].update(huge={"degree": 4}), "word 'huge'"),
        (lambda r: r["words"].update(odd={"size": 1}), "word 'odd'"),
        (lambda r: r["after_words"].append(True), "after_words has non-word entries"),
        (lambda r: r["degrees"]["size"].update({3: "huge"}), "degrees.size must map"),
        (lambda r: r.pop("copulas"), "needs the keys"),
    ],
)
def test_a_bad_lexicon_is_refused_with_the_word_named(edit, message):
    raw = _raw_lexicon()
    edit(raw)
    with pytest.raises(DataError, match=message):
        parse_lexicon(raw)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "medspacy", None)
    with pytest.raises(
        MissingExtraError,
        match=r"reading facts from reports needs medspacy: "
        r"pip install 'mechtune\[clinical\]'",
    ):
        FactExtractor()
