"""Every field of the negation study config changes what the study does, through the stage
functions that read it; cross-field constraints are checked at construction."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from mechtune.errors import ConfigError
from mechtune.eval import negation_study as neg
from mechtune.models.spec import load_dual_encoder
from mechtune.train.loop import LoopConfig

N = 80  # studies of the small worlds


@pytest.fixture(scope="module")
def neg_base():
    return neg.NegationStudyConfig(world_studies=N, trace_max_pairs=50)


@pytest.fixture(scope="module")
def neg_world(neg_base):
    return neg.study_world(neg_base)


@pytest.fixture(scope="module")
def phantom():
    return load_dual_encoder("phantom:default")


def _ids(world):
    return [s.study_id for s in world.studies]


# -- NegationStudyConfig ------------------------------------------------------------------


def test_world_fields_change_the_world(neg_base, neg_world):
    bigger = neg.study_world(replace(neg_base, world_studies=N + 20))
    assert len(bigger.studies) == N + 20 and len(neg_world.studies) == N
    other = neg.study_world(replace(neg_base, world_seed=1))
    assert [s.findings for s in other.studies] != [s.findings for s in neg_world.studies]
    assert other.acquisitions != neg_world.acquisitions


def test_trace_fields_change_the_traced_pairs(neg_base, neg_world, phantom):
    base = neg.train_trace_pairs(neg_world, phantom, neg_base)
    more = neg.train_trace_pairs(neg_world, phantom, replace(neg_base, trace_per_study=2))
    assert more.candidates > base.candidates
    capped = neg.train_trace_pairs(neg_world, phantom, replace(neg_base, trace_max_pairs=5))
    assert len(capped.pairs) == 5 < len(base.pairs)
    assert capped.pairs == base.pairs[:5]


def test_balance_polarity_changes_the_training_claims(neg_base, neg_world):
    balanced = neg.training_data(neg_world, neg_base)
    drawn = neg.training_data(neg_world, replace(neg_base, balance_polarity=False))
    assert len(balanced.claims) > len(drawn.claims)


def test_methods_and_seeds_make_the_run_plan(neg_base):
    config = replace(neg_base, methods=("zero-shot", "nast"), seeds=(3, 4))
    assert neg.run_plan(config) == [("zero-shot", 3), ("nast", 3), ("nast", 4)]
    assert neg.run_plan(replace(config, methods=("negclip",))) == [("negclip", 3), ("negclip", 4)]


def test_loop_reaches_every_run_with_the_run_seed(neg_base):
    config = replace(neg_base, loop=LoopConfig(steps=7, lr=1e-3))
    run = neg.run_config(config, seed=5)
    assert (run.steps, run.lr, run.seed) == (7, 1e-3, 5)


def test_eval_split_picks_the_evaluated_patients(neg_base, neg_world, phantom):
    test = neg.evaluate_run(phantom, neg_world, neg_base)
    val = neg.evaluate_run(phantom, neg_world, replace(neg_base, eval_split="val"))
    test_ids = set(test["items"]["claims"]["id"])
    val_ids = set(val["items"]["claims"]["id"])
    assert test_ids and val_ids and not test_ids & val_ids


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ("bogus",)}, "methods must name distinct registered negation methods"),
        ({"methods": ()}, "methods must name"),
        ({"methods": ("nast", "nast")}, "methods must name distinct"),
        ({"seeds": ()}, r"seeds must be distinct ints >= 0 \(at least one\), got \[\]"),
        ({"seeds": (1, 1)}, r"got \[1, 1\]"),
        ({"world_studies": 10}, "world_studies must be >= 50, got 10"),
        ({"trace_per_study": 0}, "trace_per_study must be >= 1"),
        ({"trace_max_pairs": 0}, "trace_max_pairs must be >= 1"),
        ({"eval_split": "train"}, "eval_split must be 'val'"),
        ({"loop": LoopConfig(seed=3)}, r"loop.seed \(3\) is not read"),
    ],
)
def test_negation_config_refuses_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        neg.NegationStudyConfig(**change)


NEGATION_FIELDS = {
    "world_studies": "test_world_fields_change_the_world",
    "world_seed": "test_world_fields_change_the_world",
    "trace_per_study": "test_trace_fields_change_the_traced_pairs",
    "trace_max_pairs": "test_trace_fields_change_the_traced_pairs",
    "balance_polarity": "test_balance_polarity_changes_the_training_claims",
    "methods": "test_methods_and_seeds_make_the_run_plan",
    "seeds": "test_methods_and_seeds_make_the_run_plan",
    "loop": "test_loop_reaches_every_run_with_the_run_seed",
    "eval_split": "test_eval_split_picks_the_evaluated_patients",
}


def test_tables_cover_every_field():
    assert set(NEGATION_FIELDS) == {f.name for f in fields(neg.NegationStudyConfig)}


FIELD_TESTS = {
    "mechtune.eval.negation_study.NegationStudyConfig": NEGATION_FIELDS,
}
