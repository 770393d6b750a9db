import pytest

from mechtune.data.schema import (
    Caption,
    ClaimSet,
    Finding,
    MCQPair,
    ParaphraseSet,
    RecordError,
    Study,
)


def _study(**kw):
    base = dict(
        study_id="s1",
        patient_id="p1",
        findings=(Finding("pneumothorax", True, "left", None, "small"), Finding("edema", False)),
    )
    base.update(kw)
    return Study(**base)


def test_finding_validates_attributes():
    with pytest.raises(
        RecordError, match=r"Finding\('cardiomegaly'\): laterality 'left' not allowed"
    ):
        Finding("cardiomegaly", True, "left")
    with pytest.raises(RecordError, match="severity 'huge' not allowed"):
        Finding("pleural_effusion", True, severity="huge")
    with pytest.raises(RecordError, match="an absent finding has no severity"):
        Finding("pleural_effusion", False, severity="small")
    with pytest.raises(RecordError, match="unknown condition"):
        Finding("bogus", True)


def test_finding_normalises_column_names():
    assert Finding("Pleural Effusion", True).condition == "pleural_effusion"


def test_study_rejects_contradictions_but_allows_contralateral_absence():
    _study(
        findings=(Finding("pneumothorax", True, "left"), Finding("pneumothorax", False, "right"))
    )
    with pytest.raises(RecordError, match="both present and absent on the same side"):
        _study(findings=(Finding("pneumothorax", True, "left"), Finding("pneumothorax", False)))
    with pytest.raises(RecordError, match="duplicate finding"):
        _study(findings=(Finding("edema", False), Finding("edema", False)))
    with pytest.raises(RecordError, match="empty patient_id"):
        _study(patient_id="")


def test_study_labels():
    s = _study()
    assert s.label("pneumothorax") is True
    assert s.label("edema") is False
    assert s.label("fracture") is None


@pytest.mark.parametrize(
    "record",
    [
        _study(report="Small left pneumothorax.", image_ref="img/1.png"),
        ClaimSet(
            "c1",
            "s1",
            "p1",
            "pneumothorax",
            "Small left pneumothorax.",
            ("No left pneumothorax.", "Small right pneumothorax."),
            ("existence", "laterality"),
            ("aff.bare", "neg.no", "aff.bare"),
            "affirmative",
            False,
        ),
        Caption(
            "k1",
            "s1",
            "p1",
            "Small left pneumothorax. No edema.",
            ("pneumothorax", "edema"),
            ("affirmative", "negated"),
            ("aff.bare", "neg.no"),
            False,
        ),
        MCQPair(
            "m1",
            "s1",
            "p1",
            "Which?",
            ("edema", "fracture"),
            ((1, 0), (0, 0)),
            ("Edema and no fracture.", "No edema and no fracture."),
            ("Edema and intact ribs.", "Clear interstitium and intact ribs."),
            0,
        ),
        ParaphraseSet(
            "q1",
            "s1",
            "p1",
            "edema",
            "Is there pulmonary edema?",
            ("Pulmonary edema?",),
            ("register",),
            ("reg.terse",),
            True,
        ),
    ],
)
def test_round_trip(record):
    d = record.to_dict()
    assert type(record).from_dict(d) == record
    assert all(not isinstance(v, tuple) for v in d.values())


def test_from_dict_errors_name_the_record_and_field():
    with pytest.raises(RecordError, match=r"ClaimSet: unknown field\(s\) \['bogus'\]"):
        ClaimSet.from_dict({"bogus": 1})
    with pytest.raises(RecordError, match=r"ClaimSet: .*missing"):
        ClaimSet.from_dict({"claim_set_id": "x"})


def test_claim_set_invariants():
    args = dict(
        claim_set_id="c",
        study_id="s",
        patient_id="p",
        condition="edema",
        correct="No pulmonary edema.",
        polarity="negated",
        heldout_family=False,
    )
    with pytest.raises(RecordError, match="a negative equals the correct claim"):
        ClaimSet(
            **args,
            negatives=("No pulmonary edema.",),
            flipped=("existence",),
            families=("neg.no", "neg.no"),
        )
    with pytest.raises(RecordError, match="unknown flipped attribute 'zone'"):
        ClaimSet(**args, negatives=("Edema.",), flipped=("zone",), families=("neg.no", "aff.bare"))
    cs = ClaimSet(
        **args,
        negatives=("Pulmonary edema.",),
        flipped=("existence",),
        families=("neg.no", "aff.bare"),
    )
    assert cs.candidate_polarities() == ("negated", "affirmative")


def test_mcq_invariants():
    with pytest.raises(RecordError, match="not distinct"):
        MCQPair("m", "s", "p", "Q", ("edema",), ((1,), (1,)), ("a", "b"), ("c", "d"), 0)
    with pytest.raises(RecordError, match="correct_index 2 out of range"):
        MCQPair("m", "s", "p", "Q", ("edema",), ((1,), (0,)), ("a", "b"), ("c", "d"), 2)


def test_paraphrase_invariants():
    with pytest.raises(RecordError, match="a paraphrase equals the question"):
        ParaphraseSet("q", "s", "p", "edema", "Edema?", ("Edema?",), ("register",), (), True)
    with pytest.raises(RecordError, match="answer must be bool"):
        ParaphraseSet(
            "q", "s", "p", "edema", "Edema?", ("Is there edema?",), ("lexical",), (), "yes"
        )
