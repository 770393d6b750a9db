"""The free-form claim sets: the packaged file is frozen (both halves' hashes pinned), in
no template family, split into disjoint halves that cover every kind and polarity; the
loader names the file, set and value of every fault; matching reads ground truth in three
values, skips what a source cannot ground by reason and caps studies per set."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from mechtune.data.freeform import (
    HALVES,
    KINDS,
    half_hash,
    load_freeform,
    normalise_text,
    packaged_path,
    parse_assertion,
)
from mechtune.data.freeform_match import (
    SourceAttributes,
    assertion_truth,
    grounds,
    match_sets,
)
from mechtune.data.schema import Finding, Study
from mechtune.errors import ConfigError, DataError

# Recorded in docs/results.md; a change here means the frozen set was edited.
PINNED = {
    "val": "b909dd72b84315b1afc00d20f32e64208c6fd486a7bb5239afa8f9f23e2e3599",
    "test": "dc7994310dbf048778af75b598d40af111159752667a4d99d71881e9893b36c2",
}


def test_the_packaged_halves_are_frozen():
    sets = load_freeform()
    assert sets.hashes() == PINNED
    assert len(sets.sets) >= 200
    assert Counter(s.half for s in sets.sets) == {"val": 121, "test": 121}
    assert "written by hand for mechtune, 2026-12; never trained on" in (
        packaged_path().read_text(encoding="utf-8")
    )


def test_the_hash_sees_any_edit_but_not_the_layout():
    half = load_freeform().half("test")
    edited = [*half]
    first = edited[0]
    edited[0] = type(first)(**{**first.__dict__, "correct": type(first.correct)("Edited.", ())})
    assert half_hash(edited) != half_hash(half)
    assert half_hash(list(reversed(half))) == half_hash(half)  # order of sets is not content


def test_the_halves_are_disjoint_and_cover_every_kind_and_polarity():
    sets = load_freeform()
    val, test = sets.half("val"), sets.half("test")
    assert not {s.set_id for s in val} & {s.set_id for s in test}
    texts = {h: {normalise_text(t) for s in sets.half(h) for t in s.candidates} for h in HALVES}
    assert not texts["val"] & texts["test"]
    cover = {h: Counter((k, s.polarity) for s in sets.half(h) for k in s.kinds) for h in HALVES}
    for key, n in (cover["val"] + cover["test"]).items():
        assert cover["val"][key] and cover["test"][key], (key, n)
    assert {k for k, _ in cover["val"]} == set(KINDS)
    for h in HALVES:  # polarity stays balanced within each half
        polarity = Counter(s.polarity for s in sets.half(h))
        assert abs(polarity["affirmative"] - polarity["negated"]) <= 2


def _template_sentences() -> set[str]:
    """Every sentence mechtune's template generators write for phantom worlds of a few
    seeds: claim sets and captions (all phrasing families), the polarity MCQs' options,
    paraphrase questions, absence equivalents, normal-study lines and the reports."""
    from mechtune.data.builders.contextual import ContextualConfig, study_records
    from mechtune.data.builders.paraphrase import ParaphraseConfig, _study_sets
    from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
    from mechtune.data.ontology import load_ontology
    from mechtune.data.text import realise_absence_affirmative
    from mechtune.sim.world import WorldConfig, world_studies

    onto = load_ontology()
    out: set[str] = set(onto.normal_study) | set(onto.mcq_stems)
    for cond in onto.pathologies:
        for fam in onto.families_of("absence_affirmative"):
            for i in range(len(cond.absent_affirmative)):
                out.add(realise_absence_affirmative(cond.id, fam.id, i))
    for seed in (0, 1, 2):
        for study in world_studies(WorldConfig.seeded(400, seed)):
            claims, captions = study_records(
                study, ContextualConfig(seed=seed), split_of=lambda _s: "test"
            )
            out.update(t for c in claims for t in c.candidates)
            out.update(c.text for c in captions)
            if passes_row_filter(study, PolarityConfig(seed=seed)):
                mcq = make_mcq(study, PolarityConfig(seed=seed), "test")
                out.update(mcq.negated_options + mcq.affirmative_options)
            for heldout in (False, True):
                for q in _study_sets(study, "test", heldout, ParaphraseConfig(seed=seed)):
                    out.update((q.question, *q.paraphrases))
            out.add(study.report or "")
    sentences = set()
    for text in out:
        sentences.add(normalise_text(text))
        sentences.update(normalise_text(p) for p in re.split(r"(?<=[.?!;])\s+", text))
    return sentences - {""}


def test_no_free_form_text_is_a_template_sentence():
    templates = _template_sentences()
    assert normalise_text("No pneumothorax.") in templates  # the generators are covered
    clashes = []
    for cs in load_freeform().sets:
        for text in cs.candidates:
            parts = {normalise_text(text)}
            parts.update(normalise_text(p) for p in re.split(r"(?<=[.?!;])\s+", text))
            clashes += [(cs.set_id, p) for p in parts if p in templates]
    assert not clashes


# -- the loader --------------------------------------------------------------------------

GOOD = {
    "id": "u1",
    "half": "val",
    "polarity": "affirmative",
    "kinds": ["side"],
    "conditions": ["pneumothorax"],
    "attributes": ["laterality"],
    "correct": {"text": "Left pneumothorax present.", "truth": ["+pneumothorax left"]},
    "foils": [{"text": "No pneumothorax at all.", "truth": ["-pneumothorax"]}],
}


def _write(tmp_path, rows, name="sets.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _with(**changes):
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (
            _with(correct={"text": "x", "truth": ["+pneumothoraxx left"]}),
            "unknown condition 'pneumothoraxx'",
        ),
        (_with(correct={"text": "x", "truth": ["+pneumothorax upleft"]}), "'upleft'"),
        (_with(correct={"text": "x", "truth": ["+pneumothorax apical"]}), "zone 'apical'"),
        (_with(polarity="positive"), "'positive'"),
        (_with(kinds=["sidee"]), "sidee"),
        (_with(foils=[]), "needs at least one foil"),
        (_with(half="train"), "'train'"),
        (_with(polarity="negated"), "polarity 'negated'"),
        (_with(kinds=["size"]), "kinds ['size']"),
        (_with(attributes=[]), "attributes []"),
        (
            _with(foils=[{"text": "Right pneumothorax too.", "truth": ["+cardiomegaly"]}]),
            "asserts nothing the correct claim rules out",
        ),
        ({k: v for k, v in GOOD.items() if k != "foils"}, "missing field(s) ['foils']"),
    ],
)
def test_a_bad_set_names_the_file_line_id_and_value(tmp_path, row, needle):
    path = _write(tmp_path, [_with(id="u0"), row])
    with pytest.raises(DataError) as err:
        load_freeform(path)
    message = str(err.value)
    assert str(path) in message and "line 2" in message and "(id u1)" in message
    assert needle in message


def test_a_duplicate_id_names_both_places(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "correct": {**GOOD["correct"], "text": "Other."}}])
    with pytest.raises(DataError, match=r"line 2: duplicate id 'u1' \(first at line 1\)"):
        load_freeform(path)


def test_yaml_errors_name_the_line_of_the_set(tmp_path):
    text = packaged_path().read_text(encoding="utf-8")
    start, end = text.index("- id: ff002"), text.index("- id: ff003")
    line = text[:start].count("\n") + 1
    block = text[start:end].replace("kinds: [plain]", "kinds: [plian]")
    path = tmp_path / "copy.yaml"
    path.write_text(text[:start] + block, encoding="utf-8")
    with pytest.raises(DataError, match=rf"copy.yaml, line {line} \(id ff002\): kinds .*plian"):
        load_freeform(path)


def test_a_users_file_of_the_same_schema_loads(tmp_path):
    sets = load_freeform(_write(tmp_path, [GOOD, _with(id="u2", half="test")]))
    assert [s.set_id for s in sets.half("val")] == ["u1"]
    assert sets.half("test")[0].correct.truth == (Finding("pneumothorax", True, "left"),)


# -- matching ----------------------------------------------------------------------------


def study(sid, *findings, patient=None):
    return Study(sid, patient or f"p{sid}", tuple(findings))


F = Finding
LEFT_PTX = study(
    "a", F("pneumothorax", True, "left", severity="small"), F("pleural_effusion", False)
)
BILATERAL = study("b", F("pleural_effusion", True, "bilateral", severity="small"))
NO_SIDE = study("c", F("pneumothorax", True), F("pleural_effusion", False, "left"))
NORMAL = study("d", F("pneumothorax", False), F("pleural_effusion", False))


@pytest.mark.parametrize(
    ("assertion", "expected"),
    [
        # LEFT_PTX: present on the left only, small
        ("+pneumothorax left", {"a": True, "c": None, "d": False, "b": None}),
        ("+pneumothorax right", {"a": False, "c": None, "d": False}),
        ("+pneumothorax left small", {"a": True}),
        ("+pneumothorax left large", {"a": False}),
        ("+pneumothorax", {"a": True, "c": True, "d": False, "b": None}),
        ("-pneumothorax", {"a": False, "c": False, "d": True, "b": None}),
        ("-pneumothorax right", {"a": True, "c": None, "d": True}),  # contralateral
        ("-pneumothorax left", {"a": False, "d": True}),
        # bilateral effusion: exactly both sides
        ("+pleural_effusion bilateral", {"b": True, "a": False, "d": False}),
        ("+pleural_effusion left", {"b": False}),
        ("-pleural_effusion left", {"b": False, "c": True, "a": True}),
        ("-pleural_effusion right", {"c": None}),  # stated absent on the left only
        ("+pleural_effusion right", {"c": None}),
        ("+pleural_effusion left", {"c": False}),
    ],
)
def test_assertion_truth_by_hand(assertion, expected):
    studies = {s.study_id: s for s in (LEFT_PTX, BILATERAL, NO_SIDE, NORMAL)}
    for sid, value in expected.items():
        assert assertion_truth(parse_assertion(assertion), studies[sid]) is value, sid


def _set(tmp_path, **changes):
    return load_freeform(_write(tmp_path, [_with(**changes)])).sets[0]


def test_a_set_is_grounded_only_when_the_correct_claim_is_true_and_every_foil_false(tmp_path):
    cs = load_freeform(
        _write(
            tmp_path,
            [
                _with(
                    foils=[
                        {"text": "Right one.", "truth": ["+pneumothorax right"]},
                        {"text": "None.", "truth": ["-pneumothorax"]},
                    ]
                )
            ],
        )
    ).sets[0]
    assert grounds(cs, LEFT_PTX)
    assert not grounds(cs, NORMAL)  # correct claim false
    assert not grounds(cs, NO_SIDE)  # correct claim undecided (no side)


def test_skips_are_counted_by_reason_and_the_cap_is_deterministic(tmp_path):
    rows = [
        GOOD,  # needs a side of pneumothorax
        _with(  # needs nothing but absence
            id="u2",
            polarity="negated",
            kinds=["plain"],
            attributes=[],
            correct={"text": "No air.", "truth": ["-pneumothorax"]},
            foils=[{"text": "Air.", "truth": ["+pneumothorax"]}],
        ),
        _with(  # no study has a fracture stated
            id="u3",
            kinds=["plain"],
            conditions=["fracture"],
            attributes=[],
            correct={"text": "Broken rib.", "truth": ["+fracture"]},
            foils=[{"text": "Ribs fine.", "truth": ["-fracture"]}],
        ),
    ]
    sets = load_freeform(_write(tmp_path, rows)).half("val")
    labels_only = [study(f"s{i}", F("pneumothorax", i % 3 == 0)) for i in range(30)]
    match = match_sets(sets, labels_only, max_studies=5)
    assert match.skipped == {"u1": "source_lacks_laterality", "u3": "condition_not_in_source"}
    assert match.skip_counts()["source_lacks_laterality"] == 1
    assert [cs.set_id for cs, _ in match.items] == ["u2"] * 5 and match.capped == 1
    # the same five studies whatever the source's order; a bigger cap keeps them
    again = match_sets(sets, list(reversed(labels_only)), max_studies=5)
    assert [s.study_id for _, s in again.items] == [s.study_id for _, s in match.items]
    wider = match_sets(sets, labels_only, max_studies=8)
    assert len(wider.items) == 8
    assert {s.study_id for _, s in match.items} <= {s.study_id for _, s in wider.items}
    # with sides in the source the first set is grounded by the left pneumothoraces only
    sided = [*labels_only, LEFT_PTX]
    found = match_sets(sets, sided, max_studies=5, source=SourceAttributes.of(sided))
    assert [s.study_id for cs, s in found.items if cs.set_id == "u1"] == ["a"]
    nothing = match_sets(sets, [NORMAL], max_studies=5, source=SourceAttributes.of(sided))
    assert nothing.skipped["u1"] == "no_matching_study"
    with pytest.raises(ConfigError, match="freeform_max_studies"):
        match_sets(sets, labels_only, max_studies=0)
