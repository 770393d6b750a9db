from collections import Counter

import pytest

from mechtune.data.ontology import load_ontology
from mechtune.data.splits import patient_split
from mechtune.data.synthetic import SyntheticConfig, sample_studies

N = 6000


@pytest.fixture(scope="module")
def studies():
    return list(sample_studies(SyntheticConfig(n_studies=N, seed=0)))


def test_deterministic_by_seed(studies):
    again = list(sample_studies(SyntheticConfig(n_studies=200, seed=0)))
    assert again == studies[:200]
    other = list(sample_studies(SyntheticConfig(n_studies=200, seed=1)))
    assert other != studies[:200]


def test_every_condition_stated(studies):
    ids = {c.id for c in load_ontology().conditions}
    for s in studies[:500]:
        assert {f.condition for f in s.findings} == ids


def test_no_finding_semantics(studies):
    for s in studies:
        pathology = any(
            f.present for f in s.findings if f.condition not in ("no_finding", "support_devices")
        )
        assert s.label("no_finding") is (not pathology)


# Rough MIMIC-CXR-JPG CheXpert label rates; the sampler should land nearby.
TARGETS = {
    "support_devices": 0.30,
    "pleural_effusion": 0.24,
    "cardiomegaly": 0.20,
    "atelectasis": 0.20,
    "edema": 0.12,
    "pneumothorax": 0.04,
    "fracture": 0.02,
}


def test_prevalence_is_plausible(studies):
    rate = Counter(f.condition for s in studies for f in s.findings if f.present)
    for cond, target in TARGETS.items():
        assert 0.4 * target < rate[cond] / N < 1.6 * target, (cond, rate[cond] / N)


def test_co_occurrence(studies):
    def p(a, given=None):
        pool = [s for s in studies if given is None or s.label(given)]
        return sum(bool(s.label(a)) for s in pool) / len(pool)

    assert p("edema", given="cardiomegaly") > 2 * p("edema")
    assert p("consolidation", given="pneumonia") > 4 * p("consolidation")
    assert p("pneumothorax", given="fracture") > 3 * p("pneumothorax")


def test_patients_have_several_studies_in_one_split(studies):
    by_patient = Counter(s.patient_id for s in studies)
    assert max(by_patient.values()) > 1
    assert len(by_patient) < N


def test_patient_split_is_hash_based_and_balanced():
    splits = Counter(patient_split(f"p{i}", 0) for i in range(20000))
    assert abs(splits["train"] / 20000 - 0.8) < 0.02
    assert patient_split("p1", 0) == patient_split("p1", 0)
    with pytest.raises(ValueError, match="sum"):
        patient_split("p1", 0, (0.5, 0.5, 0.5))


SYNTHETIC_FIELD_CHANGES = {"n_studies": 50, "seed": 1, "max_studies_per_patient": 1}


def test_every_synthetic_field_has_a_change_test():
    import dataclasses

    assert {f.name for f in dataclasses.fields(SyntheticConfig)} == set(SYNTHETIC_FIELD_CHANGES)


@pytest.mark.parametrize("field", sorted(SYNTHETIC_FIELD_CHANGES))
def test_changing_a_synthetic_field_changes_the_studies(field):
    before = list(sample_studies(SyntheticConfig(n_studies=40)))
    after = list(
        sample_studies(SyntheticConfig(**{"n_studies": 40, field: SYNTHETIC_FIELD_CHANGES[field]}))
    )
    assert before != after


def test_max_studies_per_patient_bounds_each_patient():
    for cap in (1, 2):
        studies = sample_studies(SyntheticConfig(n_studies=300, max_studies_per_patient=cap))
        assert max(Counter(s.patient_id for s in studies).values()) == cap


def test_synthetic_config_refuses_bad_values():
    from mechtune.errors import ConfigError

    with pytest.raises(ConfigError, match="n_studies must be >= 0"):
        SyntheticConfig(n_studies=-1)
    with pytest.raises(ConfigError, match="max_studies_per_patient must be >= 1"):
        SyntheticConfig(max_studies_per_patient=0)


FIELD_TESTS = {
    "mechtune.data.synthetic.SyntheticConfig": {
        f: "test_changing_a_synthetic_field_changes_the_studies" for f in SYNTHETIC_FIELD_CHANGES
    },
}
