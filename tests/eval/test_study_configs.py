"""Every field of the two study configs changes what the study does, through the stage
functions that read it; cross-field constraints are checked at construction."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from mechtune.errors import ConfigError
from mechtune.eval import negation_study as neg
from mechtune.eval import paraphrase_study as par
from mechtune.models.spec import load_dual_encoder
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings
from mechtune.train.negation import LoopConfig

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


# -- ParaphraseStudyConfig ----------------------------------------------------------------


@pytest.fixture(scope="module")
def par_base():
    return par.ParaphraseStudyConfig(world_studies=N, sae_reports=30, analysis_sets=10)


@pytest.fixture(scope="module")
def par_world(par_base):
    return par.study_world(par_base)


def _questions(bound):
    return [(q.record.question_id, q.record.question, q.image) for q in bound]


def test_paraphrase_world_fields_change_the_world(par_base, par_world):
    assert len(par.study_world(replace(par_base, world_studies=N + 10)).studies) == N + 10
    other = par.study_world(replace(par_base, world_seed=2))
    assert other.acquisitions != par_world.acquisitions
    assert [s.findings for s in other.studies] != [s.findings for s in par_world.studies]


def test_question_fields_change_the_questions(par_base, par_world):
    train, evaluation = par.study_questions(par_world, par_base)
    one_train, _ = par.study_questions(par_world, replace(par_base, questions_per_study=1))
    assert len(one_train) < len(train)
    _, val = par.study_questions(par_world, replace(par_base, eval_split="val"))
    for name in ("in_distribution", "heldout"):
        assert {q.record.study_id for q in val[name]}.isdisjoint(
            q.record.study_id for q in evaluation[name]
        )


def test_sae_reports_and_analysis_sets_pick_their_samples(par_base, par_world):
    assert len(par.sae_corpus(par_world, par_base)) == 30
    assert len(par.sae_corpus(par_world, replace(par_base, sae_reports=10))) == 10
    train, _ = par.study_questions(par_world, par_base)
    assert len(par.analysis_questions(train, par_base)) == 10
    assert len(par.analysis_questions(train, replace(par_base, analysis_sets=4))) == 4


def test_half_width_reaches_the_analysis(par_base):
    assert par.analysis_config(par_base).half_width == 1
    assert par.analysis_config(replace(par_base, half_width=2)).half_width == 2


def test_lora_and_seeds_reach_each_run(par_base):
    config = replace(
        par_base, lora=ConsistencyConfig(lora=LoraSettings(rank=4), steps=9), seeds=(2, 3)
    )
    run = par.run_config(config, (1, 2), seed=3)
    assert (run.lora.rank, run.steps, run.lora.layers, run.seed) == (4, 9, (1, 2), 3)


def test_ranges_pick_the_trained_layer_ranges():
    assert list(par.layer_ranges([3, 4], 6, ("sae", "early"))) == ["sae", "early"]


@pytest.fixture(scope="module")
def sae_inputs(par_base, par_world):
    from mechtune.sim.vqa import load_default_vqa

    vqa = load_default_vqa()
    train, _ = par.study_questions(par_world, par_base)
    return vqa, vqa.embed_images(par_world.images), train[:6]


@pytest.mark.parametrize(("name", "value"), [("sae_width", 24), ("sae_k", 2), ("sae_steps", 3)])
def test_sae_fields_change_the_saes(par_base, sae_inputs, name, value):
    vqa, images, train = sae_inputs
    base = replace(par_base, sae_width=16, sae_k=4, sae_steps=2)
    before, _ = par.train_layer_saes(vqa, images, train, base)
    after, _ = par.train_layer_saes(vqa, images, train, replace(base, **{name: value}))
    assert before[0].config != after[0].config or not all(
        (a.w_dec.shape == b.w_dec.shape) and bool((a.w_dec == b.w_dec).all())
        for a, b in zip(before.values(), after.values(), strict=True)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": ()}, "seeds must be distinct ints"),
        ({"ranges": ("all", "all")}, "ranges must name distinct layer ranges"),
        ({"ranges": ("middle",)}, "ranges must name distinct layer ranges"),
        ({"world_studies": 5}, "world_studies must be >= 50"),
        ({"analysis_sets": 1}, "analysis_sets must be >= 2"),
        ({"sae_k": 20, "sae_width": 16}, r"sae_k \(20\) must be in \[1, sae_width \(16\)\]"),
        (
            {"lora": ConsistencyConfig(lora=LoraSettings(layers=(1,)))},
            "lora.lora.layers and lora.seed are set per run",
        ),
        ({"lora": ConsistencyConfig(seed=2)}, "lora.lora.layers and lora.seed are set per run"),
        ({"eval_split": "train"}, "eval_split must be 'val'"),
    ],
)
def test_paraphrase_config_refuses_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        par.ParaphraseStudyConfig(**change)


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
PARAPHRASE_FIELDS = {
    "world_studies": "test_paraphrase_world_fields_change_the_world",
    "world_seed": "test_paraphrase_world_fields_change_the_world",
    "questions_per_study": "test_question_fields_change_the_questions",
    "eval_split": "test_question_fields_change_the_questions",
    "sae_reports": "test_sae_reports_and_analysis_sets_pick_their_samples",
    "analysis_sets": "test_sae_reports_and_analysis_sets_pick_their_samples",
    "half_width": "test_half_width_reaches_the_analysis",
    "lora": "test_lora_and_seeds_reach_each_run",
    "seeds": "test_lora_and_seeds_reach_each_run",
    "ranges": "test_ranges_pick_the_trained_layer_ranges",
    "sae_width": "test_sae_fields_change_the_saes",
    "sae_k": "test_sae_fields_change_the_saes",
    "sae_steps": "test_sae_fields_change_the_saes",
}


def test_tables_cover_every_field():
    assert set(NEGATION_FIELDS) == {f.name for f in fields(neg.NegationStudyConfig)}
    assert set(PARAPHRASE_FIELDS) == {f.name for f in fields(par.ParaphraseStudyConfig)}


FIELD_TESTS = {
    "mechtune.eval.negation_study.NegationStudyConfig": NEGATION_FIELDS,
    "mechtune.eval.paraphrase_study.ParaphraseStudyConfig": PARAPHRASE_FIELDS,
}
