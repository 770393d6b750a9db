"""Held-out findings (issue 18): every training text about a held-out condition is
removed (claim sets, caption sentences, MCQs), by its record or by its words, and the
removals are counted; claim sets carry their polarity and negation twin."""

from __future__ import annotations

import re

import pytest

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
from mechtune.data.mentions import check_conditions, condition_phrases, mentions, sentences
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding, Study
from mechtune.errors import ConfigError
from mechtune.sim.world import WorldConfig, make_world
from mechtune.train.negation_data import REMOVED_KEYS, negation_examples


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_studies=80, seed=0))


def split_rows(world, split="train"):
    return [(int(i), world.studies[int(i)]) for i in world.indices(split)]


@pytest.mark.parametrize(
    ("text", "about"),
    [
        ("Small left pneumothorax.", True),
        ("No pneumothoraces.", True),  # the Latin plural
        ("Pneumothoraxes are absent.", True),
        ("The lungs fully expanded to the chest wall.", True),  # absence, in affirmative words
        ("Fully-expanded lungs.", True),  # hyphen for space
        ("A pleural air collection on the right.", True),  # a synonym
        ("There is AIR AROUND THE LUNG.", True),  # the lay term, any case
        ("No pleural effusion.", False),
        ("Hydropneumothorax is a different word.", False),  # whole words only
        ("Well-aerated expanded lungs.", False),  # atelectasis' phrase, not pneumothorax's
    ],
)
def test_mentions_read_names_synonyms_plurals_and_absence_wording(text, about):
    assert mentions(text, ["pneumothorax"]) is about
    assert mentions(text, []) is False


def test_condition_phrases_come_from_the_ontology_and_the_report_vocabulary():
    onto = load_ontology().condition("pneumothorax")
    phrases = condition_phrases("pneumothorax")
    assert {"pneumothorax", "fully expanded lungs", "air in the pleural space"} <= set(phrases)
    assert len(phrases) == len({onto.name, *onto.synonyms, onto.lay_term, *onto.absent_affirmative})
    # the report vocabulary adds what the ontology lacks (edema: "vascular congestion")
    from mechtune.data.report_vocabulary import report_vocabulary

    extra = {
        p
        for kind in ("mentions", "absent", "absent_if_negated")
        for p, owners in report_vocabulary().phrases[kind].items()
        if "edema" in owners
    }
    assert "vascular congestion" in extra and extra <= set(condition_phrases("edema"))
    assert mentions("Mild vascular congestion.", ["edema"])


def test_check_conditions_names_the_field_and_value():
    assert check_conditions(["Pneumothorax", "edema"]) == ("pneumothorax", "edema")
    with pytest.raises(ConfigError, match=r"holdout_conditions: 'pneumo' is not a condition"):
        check_conditions(["pneumo"])
    with pytest.raises(ConfigError, match=r"holdout_conditions: 'no_finding' is a summary"):
        check_conditions(["no_finding"])
    with pytest.raises(ConfigError, match=r"holdout_conditions: 'pneumothorax' is named twice"):
        check_conditions(["pneumothorax", "Pneumothorax"])
    with pytest.raises(ConfigError, match="holdout_conditions must be a list"):
        check_conditions("pneumothorax")


def _texts(data):
    return (
        [c.text for c in data.captions]
        + [t for c in data.claims for t in c.candidates]
        + [t for c in data.mcq for t in c.candidates]
    )


# An independent check of the words: any of these substrings, in any case.
PNEUMOTHORAX_WORDS = re.compile(
    r"pneumothora|pleural air|air in the pleural|air around the lung|fully expanded|"
    r"apposed to the chest wall",
    re.IGNORECASE,
)


def test_holding_pneumothorax_out_removes_every_text_about_it_and_counts_it(world):
    rows = split_rows(world)
    full = negation_examples(rows, seed=0, balance_polarity=False)
    held = negation_examples(rows, seed=0, balance_polarity=False, holdout=["pneumothorax"])
    assert any(PNEUMOTHORAX_WORDS.search(t) for t in _texts(full))  # the world has some
    assert not any(PNEUMOTHORAX_WORDS.search(t) for t in _texts(held))
    assert full.removed == {} and list(held.removed) == list(REMOVED_KEYS)

    # the counts, by hand from the builders' records
    contextual, polarity = ContextualConfig(seed=0), PolarityConfig(seed=0, families="train")
    sets, caps, mcqs, sentences_about = 0, 0, 0, 0
    for _, study in rows:
        claim_sets, captions = study_records(study, contextual, split_of=lambda _s: "train")
        sets += sum(cs.condition == "pneumothorax" for cs in claim_sets if not cs.heldout_family)
        for cap in captions:
            about = [c == "pneumothorax" for c in cap.conditions]
            sentences_about += sum(about)
            caps += all(about)
        if passes_row_filter(study, polarity):
            mcqs += "pneumothorax" in make_mcq(study, polarity, "train").conditions
    assert sets and mcqs and sentences_about  # a non-trivial case (no caption is all about it)
    assert held.removed == {
        "claim_sets": sets,
        "captions": caps,
        "caption_sentences": sentences_about,
        "mcq": mcqs,
        "by_label_only": 0,  # the generated words always name it
    }
    assert len(full.claims) - len(held.claims) == sets
    assert len(full.captions) - len(held.captions) == caps
    assert len(full.mcq) - len(held.mcq) == mcqs
    # a shortened caption keeps its other sentence, word for word
    kept = {c.text for c in held.captions} - {c.text for c in full.captions}
    assert len(kept) == sentences_about - caps
    whole = {s for c in full.captions for s in sentences(c.text)}
    assert all(set(sentences(t)) <= whole for t in kept)
    # the rest is untouched: same claim sets, in order
    assert [c for c in full.claims if not any(map(PNEUMOTHORAX_WORDS.search, c.candidates))] == (
        held.claims
    )


def test_a_record_that_names_the_condition_is_removed_even_when_the_words_do_not():
    """A labelling or vocabulary gap: the record says pneumothorax, the words say nothing
    the matcher knows. The text goes, and ``by_label_only`` counts it."""
    from mechtune.train import negation_data

    drop = negation_data._Holdout(["pneumothorax"])
    from mechtune.data.schema import Caption

    caption = Caption(
        caption_id="s-cap-i",
        study_id="s",
        patient_id="p",
        text="Collapsed lung apex. No edema.",
        conditions=("pneumothorax", "edema"),
        polarities=("affirmative", "negated"),
        families=("a", "b"),
        heldout_family=False,
        split="train",
    )
    assert drop.caption_text(caption) is None
    assert drop.keeps_mcq(["pneumothorax", "edema"], ["Collapsed lung apex."]) is False
    assert drop.keeps_mcq(["edema"], ["No edema."]) is True
    assert drop.counts == {
        "claim_sets": 0,
        "captions": 1,
        "caption_sentences": 2,
        "mcq": 1,
        "by_label_only": 2,
    }


def test_claim_sets_carry_their_polarity_and_negation_twin():
    study = Study(
        "s1",
        "p1",
        (
            Finding("pneumothorax", True, "left", None, "small"),
            Finding("edema", False),
            Finding("cardiomegaly", False),
        ),
    )
    claim_sets, _ = study_records(study, ContextualConfig(seed=0), split_of=lambda _s: "train")
    data = negation_examples([(0, study)], seed=0, balance_polarity=False)
    by_text = {c.candidates: c for c in data.claims}
    for cs in claim_sets:
        example = by_text[cs.candidates]
        assert example.polarity == cs.polarity
        assert cs.flipped[example.twin - 1] == "existence"
        # the twin is worded in the other polarity's family
        kinds = [load_ontology().family(f).kind for f in cs.families]
        assert kinds[0] != kinds[example.twin]
        assert {kinds[0], kinds[example.twin]} == {"affirmative", "negation"}
    assert {c.polarity for c in data.claims} == {"affirmative", "negated"}
    assert all(c.polarity is None and c.twin is None for c in data.mcq)
