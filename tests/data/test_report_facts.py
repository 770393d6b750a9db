"""The report-fact extractor on report sentences: exact findings, status, attributes."""

import pytest

pytest.importorskip("medspacy")

from pathlib import Path

from mechtune.data.ontology import load_ontology
from mechtune.data.polarity_check import PolarityChecker, quiet_spacy
from mechtune.data.polarity_eval import load_reference_sentences
from mechtune.data.polarity_rules import entity_verdicts
from mechtune.data.report_facts import FactExtractor
from mechtune.data.report_targets import NOT_A_FINDING, extra_targets, parse_label
from mechtune.data.schema import Finding, Study
from mechtune.eval.report_facts import facts, judge_by_study, load_gold

pytestmark = pytest.mark.clinical
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fx():
    return FactExtractor()


def F(condition, present, laterality=None, zone=None, severity=None):
    return Finding(condition, present, laterality, zone, severity)


CASES = [
    # two sides, two sizes: two findings
    (
        "Small left and moderate right pleural effusions.",
        [
            F("pleural_effusion", True, "left", None, "small"),
            F("pleural_effusion", True, "right", None, "moderate"),
        ],
    ),
    (
        "There is a small left and a moderate right pleural effusion.",
        [
            F("pleural_effusion", True, "left", None, "small"),
            F("pleural_effusion", True, "right", None, "moderate"),
        ],
    ),
    # one degree before two sides grades both; equal sides make one bilateral finding
    (
        "Small left and right pleural effusions.",
        [F("pleural_effusion", True, "bilateral", None, "small")],
    ),
    ("Left and right lower lobe consolidation.", [F("consolidation", True, "bilateral", "lower")]),
    # a list under one negation
    (
        "No pneumothorax, pleural effusion, or consolidation.",
        [F("pneumothorax", False), F("pleural_effusion", False), F("consolidation", False)],
    ),
    (
        "Pneumothorax and pleural effusion are not seen.",
        [F("pneumothorax", False), F("pleural_effusion", False)],
    ),
    # bilateral where allowed, else a left and a right finding
    (
        "Small bilateral pleural effusions.",
        [F("pleural_effusion", True, "bilateral", None, "small")],
    ),
    (
        "Bilateral pneumothoraces.",
        [F("pneumothorax", True, "left"), F("pneumothorax", True, "right")],
    ),
    ("Moderate bibasilar atelectasis.", [F("atelectasis", True, "bilateral", "basal", "moderate")]),
    ("Atelectasis at the lung bases.", [F("atelectasis", True, "bilateral", "basal")]),
    # sides and zones after the finding; a preposition's object is not the next finding's
    ("Consolidation in the right lower lobe.", [F("consolidation", True, "right", "lower")]),
    ("No pneumothorax is seen on the left.", [F("pneumothorax", False, "left")]),
    (
        "Pneumothorax on the right and left pleural effusion.",
        [F("pneumothorax", True, "right"), F("pleural_effusion", True, "left")],
    ),
    # zones the condition lacks: basal -> lower, apical dropped for pneumothorax
    ("Right basilar consolidation.", [F("consolidation", True, "right", "lower")]),
    ("Tiny left apical pneumothorax.", [F("pneumothorax", True, "left", None, "small")]),
    # degrees on each scale, ranges to the upper end, a degree of a change is not a size
    (
        "Left-sided small-to-moderate pleural effusion.",
        [F("pleural_effusion", True, "left", None, "moderate")],
    ),
    ("Moderate to large right pneumothorax.", [F("pneumothorax", True, "right", None, "large")]),
    ("Trace right pleural effusion.", [F("pleural_effusion", True, "right", None, "small")]),
    ("Severe cardiomegaly.", [F("cardiomegaly", True, None, None, "severe")]),
    ("Small cardiomegaly.", [F("cardiomegaly", True, None, None, "mild")]),
    ("Massive left pleural effusion.", [F("pleural_effusion", True, "left", None, "large")]),
    (
        "The pleural effusion is moderate in size.",
        [F("pleural_effusion", True, None, None, "moderate")],
    ),
    ("Mildly increased left pleural effusion.", [F("pleural_effusion", True, "left")]),
    ("Right rib fracture is large.", [F("fracture", True, "right")]),
    # temporal wording
    (
        "No change in the small left pleural effusion.",
        [F("pleural_effusion", True, "left", None, "small")],
    ),
    ("Unchanged moderate cardiomegaly.", [F("cardiomegaly", True, None, None, "moderate")]),
    ("Persistent right lower lobe pneumonia.", [F("pneumonia", True, "right", "lower")]),
    ("New left pneumothorax.", [F("pneumothorax", True, "left")]),
    ("Decreased right pleural effusion.", [F("pleural_effusion", True, "right")]),
    ("Improved mild pulmonary edema.", [F("edema", True, None, None, "mild")]),
    ("The right pneumothorax has resolved.", [F("pneumothorax", False, "right")]),
    ("Resolved left lower lobe pneumonia.", [F("pneumonia", False, "left")]),
    ("Interval resolution of the left pleural effusion.", [F("pleural_effusion", False, "left")]),
    ("Left basilar atelectasis is no longer seen.", [F("atelectasis", False, "left")]),
    # absence in affirmative words and predicate forms
    ("Heart size is normal.", [F("cardiomegaly", False)]),
    ("Normal heart size.", [F("cardiomegaly", False)]),
    ("The lungs are clear.", [F("consolidation", False)]),
    ("Costophrenic angles are sharp.", [F("pleural_effusion", False)]),
    ("Clear lung fields.", [F("lung_lesion", False), F("lung_opacity", False)]),
    ("The heart is mildly enlarged.", [F("cardiomegaly", True, None, None, "mild")]),
    ("The heart is not enlarged.", [F("cardiomegaly", False)]),
    ("The lungs are not clear.", []),
    ("Device-free chest.", [F("support_devices", False)]),
    # mixed; present wins over absent on the same side; the summary label is never read
    (
        "Moderate cardiomegaly, small bilateral effusions and bibasilar atelectasis.",
        [
            F("cardiomegaly", True, None, None, "moderate"),
            F("pleural_effusion", True, "bilateral", None, "small"),
            F("atelectasis", True, "bilateral", "basal"),
        ],
    ),
    (
        "No pleural effusion. Small left pleural effusion.",
        [F("pleural_effusion", True, "left", None, "small")],
    ),
    (
        "No left pleural effusion. Right pleural effusion.",
        [F("pleural_effusion", False, "left"), F("pleural_effusion", True, "right")],
    ),
    ("No acute cardiopulmonary process.", []),
    ("Support devices are unchanged.", [F("support_devices", True)]),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_findings_of_a_sentence(fx, text, expected):
    assert sorted(f.key() for f in fx.findings(text)) == sorted(f.key() for f in expected)


# The report-side vocabulary (resources/report_vocabulary.yaml): CheXpert-style mention
# phrases the ontology does not list, with the traps each must not fall into.
VOCABULARY_CASES = [
    # devices: specific phrases, singular and plural, present or negated
    ("The tip of the nasogastric tube projects over the stomach.", [F("support_devices", True)]),
    ("Dual-lead pacemaker is unchanged.", [F("support_devices", True)]),
    ("Left PICC with tip at the cavoatrial junction.", [F("support_devices", True)]),
    ("Tracheostomy tube in standard position.", [F("support_devices", True)]),
    ("Right chest tubes remain in place.", [F("support_devices", True)]),
    ("Intra-aortic balloon pump tip at the aortic knob.", [F("support_devices", True)]),
    ("No endotracheal or enteric tube is seen.", [F("support_devices", False)]),
    # removal negates a device (the CheXpert labeler's "removal of" / "removed")...
    ("The feeding tube has been removed.", [F("support_devices", False)]),
    ("Interval removal of the left chest tube.", [F("support_devices", False)]),
    # ... and a device still there wins
    (
        "The endotracheal tube has been removed. A right PICC line remains in place.",
        [F("support_devices", True)],
    ),
    # "line", "tube" and implants in other senses are not devices
    (
        "There is a left apical pneumothorax with a visible pleural line.",
        [F("pneumothorax", True, "left")],
    ),
    ("The trachea is midline.", []),
    ("Sternotomy wires and mediastinal clips from prior bypass surgery.", []),
    ("Tracheostomy in place.", []),
    # lung lesion: nodule, mass; not outside the lung, not a calcified granuloma
    ("A 9 mm nodule in the left lower lobe.", [F("lung_lesion", True, "left", "lower")]),
    ("Spiculated right upper lobe mass.", [F("lung_lesion", True, "right", "upper")]),
    ("No suspicious nodules or masses.", [F("lung_lesion", False)]),
    ("Soft tissue mass in the right supraclavicular region.", []),
    ("A calcified nodule in the right upper lobe is unchanged, compatible with a granuloma.", []),
    ("No mass effect on the trachea.", []),
    # lung opacity, alone and beside the conditions it may be
    ("Patchy right basilar opacity.", [F("lung_opacity", True, "right", "lower")]),
    ("Hazy opacification of the left lung base.", [F("lung_opacity", True, "left", "lower")]),
    ("Increasing bilateral perihilar opacities.", [F("lung_opacity", True, "bilateral")]),
    (
        "Left lower lobe opacity, likely atelectasis, though pneumonia cannot be excluded.",
        [F("lung_opacity", True, "left", "lower")],
    ),
    (
        "No focal opacity to suggest pneumonia.",
        [F("lung_opacity", False), F("pneumonia", False)],
    ),
    (
        "Hazy right basilar airspace opacity without consolidation.",
        [F("lung_opacity", True, "right", "lower"), F("consolidation", False)],
    ),
    (
        "Consolidative opacity in the left upper lobe.",
        [F("consolidation", True, "left", "upper"), F("lung_opacity", True, "left", "upper")],
    ),
    (
        "Nodular opacity in the right lower lobe.",
        [F("lung_lesion", True, "right", "lower"), F("lung_opacity", True, "right", "lower")],
    ),
    # atelectasis: collapse, atelectatic; not a vertebral collapse
    ("Right middle lobe collapse.", [F("atelectasis", True, "right", "middle")]),
    ("Atelectatic changes at the left base.", [F("atelectasis", True, "left", "basal")]),
    ("Compression collapse of a lower thoracic vertebral body.", []),
    # heart and mediastinum: a stated size of the silhouette
    (
        "Cardiac silhouette remains severely enlarged.",
        [F("cardiomegaly", True, None, None, "severe")],
    ),
    ("Stable cardiac enlargement.", [F("cardiomegaly", True)]),
    ("The heart is normal in size.", [F("cardiomegaly", False)]),
    ("Heart size is at the upper limits of normal.", []),
    ("The cardiomediastinal silhouette is widened.", [F("enlarged_cardiomediastinum", True)]),
    ("Normal mediastinal silhouette.", [F("enlarged_cardiomediastinum", False)]),
    (
        "The mediastinal and hilar contours are unremarkable.",
        [F("enlarged_cardiomediastinum", False)],
    ),
    # bones: a negated broader abnormality rules a fracture out; nothing else does
    ("No acute bony abnormality is seen.", [F("fracture", False)]),
    ("The visualized osseous structures are unremarkable.", [F("fracture", False)]),
    ("Osseous abnormality of the left humerus.", []),
    (
        "No acute osseous abnormality. Healed left rib fractures.",
        [F("fracture", True, "left")],
    ),
    # pleura: scarring and plaques are Pleural Other; a pericardial effusion is no
    # pleural effusion
    ("Apical pleural scarring on the right.", [F("pleural_other", True, "right")]),
    (
        "Calcified pleural plaques along the left hemidiaphragm.",
        [F("pleural_other", True, "left")],
    ),
    (
        "Small pericardial effusion and small left pleural effusion.",
        [F("pleural_effusion", True, "left", None, "small")],
    ),
    ("Mild vascular congestion.", [F("edema", True, None, None, "mild")]),
    ("No pulmonary congestion.", [F("edema", False)]),
    ("No evidence of an infectious process.", [F("pneumonia", False)]),
]


@pytest.mark.parametrize(
    ("text", "expected"), VOCABULARY_CASES, ids=[c[0] for c in VOCABULARY_CASES]
)
def test_report_vocabulary_findings(fx, text, expected):
    assert sorted(f.key() for f in fx.findings(text)) == sorted(f.key() for f in expected)


# Predicate forms: coordination of two predicates or two subjects, a singular subject,
# and a size restated after a comma ("now small"); any other comma still stops the walk.
GRAMMAR_CASES = [
    (
        "The lungs are clear and well expanded.",
        [F("consolidation", False), F("atelectasis", False)],
    ),
    (
        "Heart size and pulmonary vascularity are normal.",
        [F("cardiomegaly", False), F("edema", False)],
    ),
    (
        "The heart size and cardiomediastinal silhouette are not enlarged.",
        [F("cardiomegaly", False), F("enlarged_cardiomediastinum", False)],
    ),
    (
        "The heart and mediastinum are within normal limits.",
        [F("cardiomegaly", False), F("enlarged_cardiomediastinum", False)],
    ),
    ("The left lung is clear.", [F("consolidation", False, "left")]),
    ("The right costophrenic angle is sharp.", [F("pleural_effusion", False, "right")]),
    ("The left lung is fully expanded.", [F("pneumothorax", False, "left")]),
    (
        "The right pneumothorax has decreased, now small.",
        [F("pneumothorax", True, "right", None, "small")],
    ),
    (
        "Left pleural effusion, small right pneumothorax.",
        [F("pleural_effusion", True, "left"), F("pneumothorax", True, "right", None, "small")],
    ),
    # the ontology's "a pleural plaque" takes a plural, though pleural thickening does not
    ("Bilateral pleural plaques.", [F("pleural_other", True, "bilateral")]),
]


@pytest.mark.parametrize(("text", "expected"), GRAMMAR_CASES, ids=[c[0] for c in GRAMMAR_CASES])
def test_coordinated_singular_and_restated_predicates(fx, text, expected):
    assert sorted(f.key() for f in fx.findings(text)) == sorted(f.key() for f in expected)


def test_a_hedged_broader_finding_says_nothing_about_the_condition(fx):
    # "osseous abnormality" rules a fracture out only when negated: hedged or present,
    # it gives no mention, under any uncertain policy
    for text in ("An osseous abnormality cannot be excluded.", "Osseous abnormality."):
        assert fx.mentions(text) == []
        assert fx.findings(text, uncertain="present") == ()


def test_unmention_phrases_displace_the_mention_inside_them(fx):
    with quiet_spacy():
        doc = fx.nlp("Small pericardial effusion. Calcified nodules. No mass effect.")
    assert [(e.text, e.label_) for e in doc.ents] == [
        ("pericardial effusion", NOT_A_FINDING),
        ("Calcified nodules", NOT_A_FINDING),
        ("mass effect", NOT_A_FINDING),
    ]


def test_the_polarity_check_does_not_read_the_report_vocabulary():
    # the report-side targets and rules belong to the extractor: the polarity check
    # finds no device in a device name and still reads its own phrase as affirmed
    checker = PolarityChecker()
    assert checker.read("Endotracheal tube and right PICC line in place.") == {}
    assert checker.read("Support devices have been removed.") == {"support_devices": ["affirmed"]}
    assert FactExtractor().findings("Support devices have been removed.") == (
        F("support_devices", False),
    )


def test_uncertain_mentions_follow_the_policy(fx):
    text = "Small left pleural effusion. Right pleural effusion cannot be excluded. Possible pneumonia."
    assert [m.status for m in fx.mentions(text)] == ["present", "uncertain", "uncertain"]
    assert fx.findings(text) == (F("pleural_effusion", True, "left", None, "small"),)
    assert fx.findings(text, uncertain="present") == (
        F("pleural_effusion", True, "left", None, "small"),
        F("pleural_effusion", True, "right"),
        F("pneumonia", True),
    )
    assert fx.findings(text, uncertain="absent") == (
        F("pleural_effusion", True, "left", None, "small"),
        F("pleural_effusion", False, "right"),
        F("pneumonia", False),
    )
    # a definite statement beats a hedged one
    hedged = "No pneumothorax. A small pneumothorax cannot be excluded."
    assert fx.findings(hedged, uncertain="present") == (F("pneumothorax", False),)


@pytest.mark.parametrize(
    "text",
    [
        "Pneumothorax cannot be excluded.",
        "Possible left lower lobe pneumonia.",
        "Findings may represent atelectasis.",
        "Questionable right pleural effusion.",
        "Likely bibasilar atelectasis.",
        "Findings concerning for pneumonia.",
        "Superimposed infection cannot be excluded.",
        "Pulmonary edema versus pneumonia.",
        "Evaluate for pneumothorax.",
    ],
)
def test_hedges_give_uncertain_mentions(fx, text):
    statuses = {m.status for m in fx.mentions(text)}
    assert statuses == {"uncertain"}
    assert fx.findings(text) == ()


def test_mentions_carry_their_sentence_and_offsets(fx):
    text = "Heart size is normal.  Small left and moderate right pleural effusions."
    ms = fx.mentions(text)
    assert [(m.condition, m.status, m.laterality, m.severity) for m in ms] == [
        ("cardiomegaly", "absent", None, None),
        ("pleural_effusion", "present", "left", "small"),
        ("pleural_effusion", "present", "right", "moderate"),
    ]
    assert text[ms[0].start : ms[0].end] == "Heart size is normal"
    assert text[ms[1].start : ms[1].end] == "pleural effusions" == text[ms[2].start : ms[2].end]
    assert ms[1].sentence == "Small left and moderate right pleural effusions."


def _example(literal, pattern):
    """The text a target was written for: the literal, or its pattern's required words
    (the first of a set: "lungs" of lungs/lung) with "is" for the copula."""
    if pattern is None:
        return literal
    out = []
    for p in pattern:
        if p.get("OP") == "*":
            out.append("is")
        elif p.get("OP") != "?":
            word = p.get("LOWER", p.get("ORTH"))
            out.append(word["IN"][0] if isinstance(word, dict) else word)
    return " ".join(out)


def test_every_extra_target_matches_its_own_phrase(fx):
    # plurals and predicate patterns are written for medspacy's tokenizer: each must read
    targets = extra_targets()
    assert {"heart size is normal", "heart is enlarged", "pneumothoraces"} <= {
        _example(lit, pat) for lit, _, pat in targets
    }
    for literal, label, pattern in targets:
        text = _example(literal, pattern)
        with quiet_spacy():
            doc = fx.nlp(f"{text}.")
        assert [e.label_ for e in doc.ents] == [label], text
        conditions, _ = parse_label(label)
        assert all(load_ontology().has_condition(c) for c in conditions)


def test_a_negation_inside_a_predicate_target_is_read_by_the_extractor(fx):
    with quiet_spacy():
        doc = fx.nlp("The heart is not enlarged.")
    assert [v for _, v in entity_verdicts(doc)] == ["negated"]  # the polarity check's reading
    assert [v for _, v in entity_verdicts(doc, inside=False)] == ["affirmed"]
    assert fx.findings("The heart is not enlarged.") == (F("cardiomegaly", False),)


def test_status_agrees_with_the_polarity_check():
    # on every hand-labelled sentence of the polarity check, each condition the checker
    # finds gets the same reading from the extractor (which may find more: "normal heart
    # size" states cardiomegaly absent)
    checker, extractor = PolarityChecker(), FactExtractor()
    status = {"affirmed": "present", "negated": "absent", "uncertain": "uncertain"}
    for name in ("negation_scope.yaml", "negation_scope_heldout.yaml"):
        for sentence in load_reference_sentences(FIXTURES / name):
            mine: dict[str, set[str]] = {}
            for m in extractor.mentions(sentence.text):
                mine.setdefault(m.condition, set()).add(m.status)
            for condition, verdicts in checker.read(sentence.text).items():
                assert mine.get(condition) == {status[v] for v in verdicts}, sentence.text


def test_the_gold_set_reads_without_false_facts(fx):
    # a regression guard: the extractor's facts on the hand-written gold set are all true
    # (experiments/report_facts_eval.py reports precision and recall with intervals)
    gold = load_gold(FIXTURES / "report_sentences.yaml")
    assert len(gold) >= 60
    for sentence in gold:
        found = fx.findings(sentence.text)
        Study("s", "p", found)
        want = facts(sentence.findings)
        for kind, got in facts(found).items():
            assert got <= want[kind], (sentence.text, kind, got - want[kind])


def test_phantom_reports_read_back_their_findings(fx):
    from mechtune.sim.world import WorldConfig, world_studies

    onto = load_ontology()
    for study in world_studies(WorldConfig.seeded(150, 3)):
        found = fx.findings(study.report)
        judge = judge_by_study(study.findings)
        for kind, got in facts(found).items():
            assert all(judge(kind, f) for f in got), (study.report, kind, got)
        present = {
            f.key() for f in study.findings if f.present and not onto.condition(f.condition).summary
        }
        assert present == {f.key() for f in found if f.present}, study.report


def test_hard_wrapped_reports_read_as_one_line(fx):
    text = (
        "FINDINGS:\n There is a small left\npleural effusion.\n\n"
        "IMPRESSION:\n  Moderate right pleural\n   effusion."
    )
    ms = fx.mentions(text)
    assert [(m.laterality, m.severity) for m in ms] == [("left", "small"), ("right", "moderate")]
    assert text[ms[0].start : ms[0].end] == "pleural effusion"
    assert text[ms[1].start : ms[1].end] == "pleural\n   effusion"
    assert ms[0].sentence.endswith("There is a small left pleural effusion.")
    assert "\n" not in ms[0].sentence
