import re

import pytest

from mechtune.data.builders.contextual import ContextualConfig, _counterfactuals, build_contextual
from mechtune.data.builders.paraphrase import ParaphraseConfig, build_paraphrase
from mechtune.data.builders.polarity import PolarityConfig, build_polarity, passes_row_filter
from mechtune.data.io import read_manifest, read_table
from mechtune.data.ontology import PARAPHRASE_STRATEGIES, load_ontology
from mechtune.data.schema import Finding, Study
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import DataError

N = 1500


def _studies(n=N, seed=0):
    return list(sample_studies(SyntheticConfig(n_studies=n, seed=seed)))


def _labelled(pid, present, absent):
    return Study(
        f"s-{pid}",
        pid,
        tuple([Finding(c, True) for c in present] + [Finding(c, False) for c in absent]),
    )


# --- polarity -------------------------------------------------------------------------


def test_row_filter_needs_two_present_and_three_absent():
    cfg = PolarityConfig()
    ok = _labelled("a", ["edema", "cardiomegaly"], ["fracture", "pneumothorax", "pneumonia"])
    assert passes_row_filter(ok, cfg)
    assert not passes_row_filter(
        _labelled("b", ["edema"], ["fracture", "pneumothorax", "pneumonia", "atelectasis"]), cfg
    )
    assert not passes_row_filter(
        _labelled("c", ["edema", "cardiomegaly"], ["fracture", "pneumothorax"]), cfg
    )
    # "No Finding" is not one of the 13 conditions and does not count.
    assert not passes_row_filter(
        _labelled("d", ["edema", "cardiomegaly"], ["fracture", "pneumothorax", "no_finding"]), cfg
    )


@pytest.fixture(scope="module")
def polarity_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("polarity")
    result = build_polarity(_studies(), out, PolarityConfig(seed=3))
    return result, read_table(out / "mcq.parquet")


def test_polarity_counts_every_study(polarity_rows):
    result, rows = polarity_rows
    c = result.counts
    assert c["studies"] == N
    assert c["filtered_out_by_row_filter"] + len(rows) == N
    assert len(rows) > 100


def test_polarity_options(polarity_rows):
    _, rows = polarity_rows
    onto = load_ontology()
    for row in rows:
        labels = [tuple(v) for v in row["labels"]]
        assert len(row["conditions"]) == 3 and len(labels) == 4
        assert len(set(labels)) == 4, "options must be distinct"
        truth = labels[row["correct_index"]]
        for vec in labels:
            if vec != truth:
                assert 1 <= sum(a != b for a, b in zip(vec, truth, strict=True)) <= 3
        # the correct vector is the study's labels
        assert all(onto.condition(c) for c in row["conditions"])


def _clauses(text):
    return re.split(r", | and ", text.rstrip("."))


def test_polarity_forms_differ_only_in_how_absence_is_phrased(polarity_rows):
    _, rows = polarity_rows
    onto = load_ontology()
    for row in rows:
        for vec, neg, aff in zip(
            row["labels"], row["negated_options"], row["affirmative_options"], strict=True
        ):
            nc, ac = _clauses(neg), _clauses(aff)
            assert len(nc) == len(ac) == 3, (neg, aff)
            for cond, v, n_clause, a_clause in zip(row["conditions"], vec, nc, ac, strict=True):
                if v:
                    assert n_clause == a_clause
                else:
                    equivalents = {e.lower() for e in onto.condition(cond).absent_affirmative}
                    assert a_clause.lower() in equivalents, (a_clause, cond)
                    assert n_clause != a_clause


def test_polarity_correct_position_is_balanced(polarity_rows):
    result, rows = polarity_rows
    positions = result.counts["correct_index"]
    assert set(positions) == {"0", "1", "2", "3"}
    assert min(positions.values()) > len(rows) / 8


# --- contextual -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def contextual(tmp_path_factory):
    out = tmp_path_factory.mktemp("contextual")
    result = build_contextual(_studies(), out, ContextualConfig(seed=1))
    return result, read_table(out / "claims.parquet"), read_table(out / "captions.parquet")


@pytest.mark.parametrize(
    "kind,fact",
    [
        ("present", Finding("pleural_effusion", True, "left", None, "small")),
        ("present", Finding("consolidation", True, "right", "upper", "moderate")),
        ("present", Finding("cardiomegaly", True, severity="mild")),
        ("contralateral", Finding("pneumothorax", True, "left", None, "large")),
        ("absent", Finding("edema", False)),
        ("absent", Finding("pneumothorax", False, "right")),
    ],
)
def test_counterfactuals_change_exactly_one_attribute(kind, fact):
    correct, options = _counterfactuals(kind, fact)
    for attr, cf in options:
        changed = {
            "existence": cf.present != correct.present,
            "laterality": cf.laterality != correct.laterality,
            "severity": cf.severity != correct.severity,
        }
        if attr == "existence":
            # stating presence or absence keeps the side; an absent finding has no severity
            assert changed["existence"] and not changed["laterality"]
        else:
            assert [k for k, v in changed.items() if v] == [attr]
            assert cf.zone == correct.zone


def test_claim_negatives_differ_in_one_word_for_side_and_severity(contextual):
    _, claims, _ = contextual
    seen = set()
    for row in claims:
        for neg, attr in zip(row["negatives"], row["flipped"], strict=True):
            if attr in ("laterality", "severity"):
                a, b = row["correct"].split(), neg.split()
                assert len(a) == len(b)
                diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
                assert len(diff) == 1, (row["correct"], neg)
                seen.add(attr)
    assert seen == {"laterality", "severity"}


def test_contralateral_claims(contextual):
    _, claims, _ = contextual
    contra = [r for r in claims if r["contralateral"]]
    assert contra
    for r in contra:
        assert r["polarity"] == "negated"
        assert set(r["flipped"]) == {"existence", "laterality"}


def test_heldout_families_never_leak_into_train(contextual):
    _, claims, captions = contextual
    onto = load_ontology()
    for row in [*claims, *captions]:
        heldout = [onto.family(f).heldout for f in row["families"]]
        assert all(h == row["heldout_family"] for h in heldout), row
        if row["split"] == "train":
            assert not row["heldout_family"]
    assert any(r["heldout_family"] for r in claims)
    assert {r["split"] for r in claims if r["heldout_family"]} <= {"val", "test"}


def test_eval_facts_appear_in_both_family_pools(contextual):
    _, claims, _ = contextual
    ids = {r["claim_set_id"] for r in claims if r["split"] != "train"}
    for i in ids:
        twin = i[:-1] + ("h" if i.endswith("i") else "i")
        assert twin in ids


def test_captions_are_true_and_contain_a_negation(contextual):
    _, _, captions = contextual
    assert captions
    for c in captions:
        assert "negated" in c["polarities"]


def test_max_pairs_stops_early(tmp_path):
    result = build_contextual(_studies(400), tmp_path, max_pairs=500)
    assert 500 <= result.counts["pairs"] < 600
    assert result.counts["studies"] < 400


def test_max_negatives_none_keeps_every_counterfactual(tmp_path):
    s = Study("s", "p", (Finding("pleural_effusion", True, "left", None, "small"),))
    build_contextual(
        [s],
        tmp_path,
        ContextualConfig(
            max_negatives=None, absent_per_study=0, contralateral=False, captions=False
        ),
    )
    (row,) = read_table(tmp_path / "claims.parquet")
    assert sorted(row["flipped"]) == ["existence", "laterality", "severity", "severity"]


# --- paraphrase -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def paraphrases(tmp_path_factory):
    out = tmp_path_factory.mktemp("paraphrase")
    studies = _studies()
    build_paraphrase(studies, out, ParaphraseConfig(seed=2))
    return {s.study_id: s for s in studies}, read_table(out / "paraphrases.parquet")


def test_paraphrase_sets(paraphrases):
    studies, rows = paraphrases
    onto = load_ontology()
    for row in rows:
        assert 4 <= len(row["paraphrases"]) <= 6
        assert set(row["strategies"]) == set(PARAPHRASE_STRATEGIES)
        assert len(set(row["paraphrases"])) == len(row["paraphrases"])
        assert row["question"] not in row["paraphrases"]
        assert row["answer"] == studies[row["study_id"]].label(row["condition"])
        assert row["question"].startswith(("Is there", "Are there"))
        heldout = [onto.family(f).heldout for f in row["families"]]
        assert heldout == row["heldout_family"]
        if row["split"] == "train":
            assert not any(heldout)
    assert any(all(r["heldout_family"]) for r in rows)
    answers = [r["answer"] for r in rows]
    assert 0.2 < sum(answers) / len(answers) < 0.8


# --- outputs --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_same_seed_same_bytes(tmp_path, fmt):
    studies = _studies(300)
    for name in ("a", "b"):
        build_contextual(studies, tmp_path / name, fmt=fmt)
        build_polarity(studies, tmp_path / name / "pol", fmt=fmt)
    for rel in (
        f"claims.{fmt}",
        f"captions.{fmt}",
        "manifest.json",
        f"pol/mcq.{fmt}",
        "pol/manifest.json",
    ):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    build_contextual(studies, tmp_path / "c", ContextualConfig(seed=9), fmt=fmt)
    assert (tmp_path / "c" / f"claims.{fmt}").read_bytes() != (
        tmp_path / "a" / f"claims.{fmt}"
    ).read_bytes()


def test_manifest_records_config_counts_and_hashes(tmp_path):
    build_polarity(_studies(300), tmp_path, PolarityConfig(seed=4))
    m = read_manifest(tmp_path)
    assert m["kind"] == "polarity"
    assert m["config"]["seed"] == 4
    assert m["counts"]["studies"] == 300
    assert set(m["files"]) == {"mcq.parquet"}
    assert len(m["content_hash"]) == 64


def test_failed_build_leaves_no_partial_files(tmp_path):
    def broken():
        yield from _studies(50)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        build_contextual(broken(), tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- every builder setting changes what is built ------------------------------------------

# For each config class: every field, with a value that must change the tables written.
# The meta-test (tests/test_settings_sweep.py) reads FIELD_TESTS below.
BUILDER_FIELD_CHANGES = {
    PolarityConfig: {
        "seed": 1,
        "n_conditions": 4,
        "n_options": 3,
        "min_present": 1,
        "min_absent": 11,
        "max_flips": 1,
        "families": "heldout",
        "split_fractions": (0.5, 0.25, 0.25),
    },
    ParaphraseConfig: {
        "seed": 1,
        "questions_per_study": 3,
        "min_paraphrases": 1,
        "max_paraphrases": 4,
        "original_family": "q.does_show",
        "heldout_eval": False,
        "split_fractions": (0.5, 0.25, 0.25),
    },
    ContextualConfig: {
        "seed": 1,
        "max_negatives": 1,
        "absent_per_study": 1,
        "lateral_absent_rate": 0.0,
        "contralateral": False,
        "heldout_eval": False,
        "captions": False,
        "split_fractions": (0.5, 0.25, 0.25),
    },
}
BUILDERS = {
    PolarityConfig: build_polarity,
    ParaphraseConfig: build_paraphrase,
    ContextualConfig: build_contextual,
}


@pytest.fixture(scope="module")
def few_studies():
    return _studies(150)


def _built(studies, out, config):
    """Every table the builder wrote, as rows (the manifest aside)."""
    result = BUILDERS[type(config)](studies, out, config, fmt="jsonl")
    return {name: read_table(out / name) for name in sorted(result.files)}


def test_every_builder_field_has_a_change_test():
    import dataclasses

    for cls, changes in BUILDER_FIELD_CHANGES.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(changes), cls.__name__


@pytest.mark.parametrize(
    ("cls", "field"),
    [(cls, f) for cls, changes in BUILDER_FIELD_CHANGES.items() for f in sorted(changes)],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_changing_a_builder_field_changes_the_tables(tmp_path, few_studies, cls, field):
    before = _built(few_studies, tmp_path / "a", cls())
    after = _built(few_studies, tmp_path / "b", cls(**{field: BUILDER_FIELD_CHANGES[cls][field]}))
    assert before != after
    assert any(before.values()) and any(after.values())  # not two empty builds


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        # 3 conditions, at most 1 flip: only 3 distinct wrong options exist (this looped).
        ({"max_flips": 1, "n_options": 5}, r"n_options must be in \[2, 4\].*max_flips = 1"),
        ({"n_conditions": 2, "max_flips": 2, "n_options": 5}, r"n_options must be in \[2, 4\]"),
        ({"n_options": 1}, "n_options must be in"),
        ({"max_flips": 4}, r"max_flips must be in \[1, n_conditions = 3\]"),
        ({"n_conditions": 14, "max_flips": 1}, r"n_conditions must be in \[1, 13\]"),
        ({"min_present": -1, "min_absent": 5}, "min_present and min_absent must be >= 0"),
        ({"min_present": 1, "min_absent": 1}, r"min_present \+ min_absent must be in \[n_cond"),
        ({"min_present": 7, "min_absent": 7}, r"min_present \+ min_absent must be in .*, 13\]"),
        ({"families": "some"}, "families must be one of"),
    ],
)
def test_polarity_config_checks_its_fields_together(kw, message):
    from mechtune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        PolarityConfig(**kw)


def test_the_largest_allowed_option_count_builds(tmp_path, few_studies):
    """n_options at its bound: every study gets all reachable, distinct options."""
    rows = _built(few_studies, tmp_path, PolarityConfig(max_flips=1, n_options=4))["mcq.jsonl"]
    assert rows
    for row in rows:
        labels = [tuple(v) for v in row["labels"]]
        truth = labels[row["correct_index"]]
        assert len(set(labels)) == 4
        assert all(sum(a != b for a, b in zip(v, truth, strict=True)) <= 1 for v in labels)


@pytest.mark.parametrize(
    ("cls", "kw", "message"),
    [
        (ParaphraseConfig, {"min_paraphrases": 5, "max_paraphrases": 4}, "min_paraphrases <= max"),
        (ParaphraseConfig, {"min_paraphrases": 0}, "1 <= min_paraphrases"),
        (ParaphraseConfig, {"questions_per_study": 0}, "questions_per_study must be >= 1"),
        (ParaphraseConfig, {"original_family": "lex.synonym"}, "not a question family"),
        (ParaphraseConfig, {"original_family": "q.nope"}, "original_family 'q.nope'"),
        (ContextualConfig, {"absent_per_study": 0}, "captions=True needs absent_per_study >= 1"),
        (ContextualConfig, {"max_negatives": 0}, "max_negatives must be >= 1 or None"),
        (ContextualConfig, {"lateral_absent_rate": 1.5}, r"lateral_absent_rate must be in \[0"),
    ],
)
def test_builder_configs_refuse_bad_values_at_construction(cls, kw, message):
    from mechtune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        cls(**kw)


FIELD_TESTS = {
    f"{cls.__module__}.{cls.__name__}": {
        f: "test_changing_a_builder_field_changes_the_tables" for f in changes
    }
    for cls, changes in BUILDER_FIELD_CHANGES.items()
}


@pytest.mark.parametrize(
    ("build", "table"),
    [(build_polarity, "mcq"), (build_contextual, "claims"), (build_paraphrase, "paraphrases")],
)
def test_builders_take_the_source_split(tmp_path, build, table):
    """A source's own split (MIMIC's split file, a manifest column) replaces the hash split."""
    studies = list(sample_studies(SyntheticConfig(n_studies=40, seed=3)))
    rule = {s.study_id: ("val" if i % 2 else "test") for i, s in enumerate(studies)}
    build(studies, tmp_path / "a", split_of=lambda s: rule[s.study_id])
    rows = read_table(tmp_path / "a" / f"{table}.parquet")
    assert rows and all(r["split"] == rule[r["study_id"]] for r in rows)
    assert {r["split"] for r in rows} == {"val", "test"}
    with pytest.raises(DataError, match=r"study 's00000000'.*'validate' is not one of"):
        build(studies, tmp_path / "b", split_of=lambda s: "validate")
