"""Every field of the negation study config changes what the study does, through the stage
functions of mechtune.pipelines.negation that read it; recipes refuse unknown keys."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from mechtune.data.sources import open_source
from mechtune.errors import ConfigError
from mechtune.pipelines import negation as neg
from mechtune.pipelines.negation_config import load_recipe
from mechtune.pipelines.negation_study import run_negation_study, run_plan
from mechtune.train.negation import LoopConfig
from tests.progress_helpers import Recorder

N = 80  # studies of the small world


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    folder = tmp_path_factory.mktemp("neg_recipe") / "world"
    save_world(make_world(WorldConfig.seeded(N, 0)), folder)
    return folder


@pytest.fixture(scope="module")
def base():
    return neg.NegationStudyConfig(trace_max_pairs=50)


@pytest.fixture(scope="module")
def phantom():
    return neg.RunOptions().load("phantom:default")


@pytest.fixture(scope="module")
def data(world_dir, phantom):
    return neg.study_data(phantom, open_source(world_dir), "phantom:default", neg.RunOptions())


def _pairs(build):
    return [(p.correct, p.foil, p.image) for p in build.pairs]


def test_data_seed_and_trace_fields_change_the_traced_pairs(base, data, phantom):
    def pairs(config):
        return neg.trace_pairs(
            phantom,
            data,
            seed=config.data_seed,
            per_study=config.trace_per_study,
            max_pairs=config.trace_max_pairs,
        )

    first = pairs(base)
    more = pairs(replace(base, trace_per_study=2))
    assert more.candidates > first.candidates
    capped = pairs(replace(base, trace_max_pairs=5))
    assert len(capped.pairs) == 5 < len(first.pairs) and _pairs(capped) == _pairs(first)[:5]
    assert _pairs(pairs(replace(base, data_seed=1))) != _pairs(first)
    # only train-split items are traced
    train_rows = {i for i, _ in data.rows("train")}
    assert {p.image for p in first.pairs} <= train_rows


def test_balance_polarity_and_data_seed_change_the_training_claims(base, data):
    balanced = neg.training_data(data, base)
    drawn = neg.training_data(data, replace(base, balance_polarity=False))
    assert len(balanced.claims) > len(drawn.claims)
    reworded = neg.training_data(data, replace(base, data_seed=3))
    assert [c.candidates for c in reworded.claims] != [c.candidates for c in balanced.claims]


def test_methods_and_seeds_make_the_run_plan(base):
    config = replace(base, methods=("zero-shot", "nast"), seeds=(3, 4))

    def plan(recipe):
        return [(r.method, r.seed) for r in run_plan(recipe)]

    assert plan(config) == [("zero-shot", 3), ("nast", 3), ("nast", 4)]
    assert plan(replace(config, methods=("negclip",))) == [("negclip", 3), ("negclip", 4)]


def test_eval_split_probes_and_data_seed_reach_the_evaluation(base, data, phantom):
    test = neg.evaluate_model(phantom, data, split="test", seed=0)
    val = neg.evaluate_model(phantom, data, split="val", seed=0)
    test_ids = set(test["items"]["claims"]["id"])
    val_ids = set(val["items"]["claims"]["id"])
    assert test_ids and val_ids and not test_ids & val_ids
    assert "probes" not in test
    probed = neg.evaluate_model(phantom, data, split="test", seed=0, probes=True)
    assert probed["probes"] and probed["claims"] == test["claims"]
    reseeded = neg.evaluate_model(phantom, data, split="test", seed=1)
    assert reseeded["items"]["claims"]["correct"] != test["items"]["claims"]["correct"] or (
        reseeded["items"]["polarity_mcq"] != test["items"]["polarity_mcq"]
    )


def test_study_runs_every_method_with_the_loop_and_writes_its_table(tmp_path, world_dir):
    """model, data, methods, seeds, eval_split, probes and loop all reach one small study."""
    config = neg.NegationStudyConfig(
        model="phantom:default",
        data=str(world_dir),
        methods=("zero-shot", "uniform-lora"),
        seeds=(2,),
        trace_max_pairs=20,
        eval_split="val",
        probes=True,
        loop=LoopConfig(steps=2, caption_batch=4, claim_batch=4, checkpoint_every=1),
    )
    track = Recorder()
    results = run_negation_study(
        config, open_source(world_dir), tmp_path, neg.RunOptions(), track=track
    )
    assert set(results["runs"]) == {"zero-shot", "uniform-lora"}
    # a stage for each long step, each counted to its end
    track.check_complete()
    assert [s.description for s in track.stages] == [
        "embed images",
        "trace distinct text pairs",
        "evaluate val: embed texts",
        "train uniform-lora (seed 2)",
        "evaluate val: embed texts",
    ]
    assert track.stages[0].total == N
    traced = results["trace"]["counts"]["used"]
    assert 0 < track.stages[1].total <= traced
    (train,) = track.named("train")
    history = json.loads((tmp_path / "runs/uniform-lora/seed2/train.json").read_text())["history"]
    assert train.fields == [{"loss": pytest.approx(h["loss"])} for h in history]
    (lora,) = results["runs"]["uniform-lora"]
    assert lora["seed"] == 2 and lora["split"] == "val" and lora["probes"]
    assert results["config"]["loop"]["steps"] == 2
    assert (
        tmp_path / "runs" / "uniform-lora" / "seed2" / "adapter" / "adapter_config.json"
    ).is_file()
    assert "uniform-lora" in (tmp_path / "table.md").read_text()
    assert results["data"]["layout"] == "phantom-world"
    with pytest.raises(Exception, match="bogus"):
        run_negation_study(replace(config, model="bogus:x"), open_source(world_dir), tmp_path / "b")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ("bogus",)}, "methods must name distinct registered negation methods"),
        ({"methods": ()}, "methods must name"),
        ({"methods": ("nast", "nast")}, "methods must name distinct"),
        ({"seeds": ()}, r"seeds must be distinct ints >= 0 \(at least one\), got \[\]"),
        ({"seeds": (1, 1)}, r"got \[1, 1\]"),
        ({"data_seed": -1}, "data_seed must be >= 0, got -1"),
        ({"trace_per_study": 0}, "trace_per_study must be >= 1"),
        ({"trace_max_pairs": 0}, "trace_max_pairs must be >= 1"),
        ({"eval_split": "train"}, "eval_split must be 'val'"),
        ({"loop": LoopConfig(seed=3)}, r"loop.seed \(3\) is not read"),
    ],
)
def test_negation_config_refuses_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        neg.NegationStudyConfig(**change)


def test_recipes_refuse_unknown_keys_naming_the_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: phantom:default\nwolrd_seed: 3\nloop: {stpes: 2, lora: {rnak: 2}}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown recipe keys") as err:
        load_recipe(bad)
    for key in ("wolrd_seed", "loop.stpes", "loop.lora.rnak"):
        assert key in str(err.value)
    bad.write_text("loop: {steps: {a: 1}}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml"):
        load_recipe(bad)
    bad.write_text("loop: {steps: abc, lora: {rank: 2}}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: loop\.steps must be an integer, got 'abc'"):
        load_recipe(bad)
    bad.write_text("trace_max_pairs: 2.5\n")
    with pytest.raises(ConfigError, match=r"trace_max_pairs must be an integer, got 2\.5"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping"):
        load_recipe(bad)
    full = tmp_path / "full.yaml"
    full.write_text("model: hf:/m\ndata: some/folder\nloop: {lora: null}\n")
    recipe = load_recipe(full)
    assert (recipe.model, recipe.data, recipe.loop.lora) == ("hf:/m", "some/folder", None)


def test_recipe_model_and_data_are_what_the_commands_open(tmp_path, world_dir):
    """A recipe's model and data keys are used unless --model / --data are given."""
    from pathlib import Path

    from mechtune.cli.negation import _data_path, _recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: hf:/somewhere\ndata: {world_dir}\n")
    assert _recipe(recipe, None, None).model == "hf:/somewhere"
    assert _data_path(_recipe(recipe, None, None)) == world_dir
    assert _recipe(recipe, "phantom:default", Path("x")).model == "phantom:default"
    assert _data_path(_recipe(recipe, None, Path("x"))) == Path("x")
    with pytest.raises(ConfigError, match="no data: pass --data"):
        _data_path(_recipe(None, None, None))


NEGATION_FIELDS = {
    "model": "test_recipe_model_and_data_are_what_the_commands_open",
    "data": "test_recipe_model_and_data_are_what_the_commands_open",
    "methods": "test_methods_and_seeds_make_the_run_plan",
    "seeds": "test_methods_and_seeds_make_the_run_plan",
    "data_seed": "test_data_seed_and_trace_fields_change_the_traced_pairs",
    "trace_per_study": "test_data_seed_and_trace_fields_change_the_traced_pairs",
    "trace_max_pairs": "test_data_seed_and_trace_fields_change_the_traced_pairs",
    "eval_split": "test_eval_split_probes_and_data_seed_reach_the_evaluation",
    "balance_polarity": "test_balance_polarity_and_data_seed_change_the_training_claims",
    "probes": "test_eval_split_probes_and_data_seed_reach_the_evaluation",
    "loop": "test_study_runs_every_method_with_the_loop_and_writes_its_table",
}


def test_table_covers_every_field():
    from tests.cli.test_freeform_cli import FIELD_TESTS as FREEFORM
    from tests.pipelines.test_negation_controls import FIELDS as CONTROL_FIELDS
    from tests.pipelines.test_negation_grid import FIELDS as GRID_FIELDS
    from tests.pipelines.test_negation_holdout import NEGATION_HOLDOUT_FIELDS

    freeform_fields = FREEFORM["mechtune.pipelines.negation_config.NegationStudyConfig"]
    tables = (
        NEGATION_FIELDS,
        CONTROL_FIELDS,
        GRID_FIELDS,
        freeform_fields,
        NEGATION_HOLDOUT_FIELDS,
    )
    assert sum(map(len, tables)) == len({k for t in tables for k in t})  # each field once
    assert {k for t in tables for k in t} == {f.name for f in fields(neg.NegationStudyConfig)}


FIELD_TESTS = {"mechtune.pipelines.negation_config.NegationStudyConfig": NEGATION_FIELDS}
