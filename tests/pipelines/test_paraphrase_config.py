"""Every field of the paraphrase study's config changes what the study does, through the
stage functions that read it; the study reads images from an image-study source (here a
saved phantom world, built by the sim API in the test) and never renders one."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from mechtune.data.sources import open_source
from mechtune.errors import ConfigError, DataError
from mechtune.pipelines import paraphrase as par
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings

N = 120  # studies of the small world (its first half is >= MIN_STUDIES)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    folder = tmp_path_factory.mktemp("world") / "world"
    save_world(make_world(WorldConfig.seeded(N, 0)), folder)
    return folder


@pytest.fixture(scope="module")
def source(world_dir):
    return open_source(world_dir)


@pytest.fixture(scope="module")
def par_base():
    return par.ParaphraseStudyConfig(sae_reports=30, analysis_sets=10)


@pytest.fixture(scope="module")
def items(source, par_base):
    return par.study_items(source, par_base)


def test_max_studies_takes_the_first_items_of_the_source(source, par_base):
    assert len(par.study_items(source, par_base)) == N
    first = par.study_items(source, replace(par_base, max_studies=60))
    assert [s.study_id for s in first] == [s.study_id for s in source.studies()[:60]]
    with pytest.raises(DataError, match="max_studies is 200 but the source has 120 items"):
        par.study_items(source, replace(par_base, max_studies=200))


def test_the_first_half_of_a_world_asks_what_the_half_world_asks(source):
    """The demo reads the first n // 2 studies of its world(n): the questions must be those
    of world(n // 2), the world the study rendered before it read sources."""
    from mechtune.sim.train_vqa import world_paraphrase_sets
    from mechtune.sim.world import WorldConfig, make_world

    half = make_world(WorldConfig.seeded(N // 2, 0))
    config = par.ParaphraseStudyConfig(max_studies=N // 2)
    items = par.study_items(source, config)
    train, evaluation = par.study_questions(source, items, config)
    expected = world_paraphrase_sets(half, "train", heldout=False)
    assert [(q.record, q.image) for q in train] == [(q.record, q.image) for q in expected]
    expected = world_paraphrase_sets(half, "test", heldout=True)
    assert [(q.record, q.image) for q in evaluation["heldout"]] == [
        (q.record, q.image) for q in expected
    ]
    vqa = par.load_yes_no_vlm("phantom:vqa")
    images = par.study_images(vqa, source, items)
    assert bool((images == vqa.embed_images(half.images)).all())


def _questions(bound):
    return [(q.record.question_id, q.record.question, q.image) for q in bound]


def test_question_fields_change_the_questions(source, items, par_base):
    train, evaluation = par.study_questions(source, items, par_base)
    one_train, _ = par.study_questions(source, items, replace(par_base, questions_per_study=1))
    assert len(one_train) < len(train)
    _, val = par.study_questions(source, items, replace(par_base, eval_split="val"))
    for name in ("in_distribution", "heldout"):
        assert {q.record.study_id for q in val[name]}.isdisjoint(
            q.record.study_id for q in evaluation[name]
        )
    reseeded, _ = par.study_questions(source, items, replace(par_base, seed=3))
    assert _questions(reseeded) != _questions(train)
    assert {q.record.study_id for q in train} == {
        s.study_id for _, s in par.split_rows(source, items, "train")
    }


def test_sae_reports_analysis_sets_and_seed_pick_their_samples(source, items, par_base):
    corpus = par.sae_corpus(source, items, par_base)
    assert len(corpus) == 30
    assert len(par.sae_corpus(source, items, replace(par_base, sae_reports=10))) == 10
    assert par.sae_corpus(source, items, replace(par_base, seed=1)) != corpus
    train, _ = par.study_questions(source, items, par_base)
    assert len(par.analysis_questions(train, par_base)) == 10
    assert len(par.analysis_questions(train, replace(par_base, analysis_sets=4))) == 4
    assert par.analysis_questions(train, replace(par_base, seed=1)) != par.analysis_questions(
        train, par_base
    )


def test_half_width_reaches_the_analysis(par_base):
    assert par.analysis_config(par_base).half_width == 1
    assert par.analysis_config(replace(par_base, half_width=2)).half_width == 2


def test_lora_and_seeds_reach_each_run(par_base):
    lora = ConsistencyConfig(lora=LoraSettings(rank=4), steps=9)
    config = replace(par_base, lora=lora, seeds=(2, 3))
    run = par.run_config(config, (1, 2), seed=3)
    assert (run.lora.rank, run.steps, run.lora.layers, run.seed) == (4, 9, (1, 2), 3)


def test_ranges_pick_the_trained_layer_ranges():
    assert list(par.layer_ranges([3, 4], 6, ("sae", "early"))) == ["sae", "early"]


class _Stop(Exception):
    pass


def test_model_device_and_dtype_reach_the_model_load(monkeypatch, source, par_base, tmp_path):
    seen = []

    def record(spec, *, device, dtype):
        seen.append((spec, device, dtype))
        raise _Stop

    monkeypatch.setattr(par, "load_yes_no_vlm", record)
    config = replace(par_base, model="hf:/some/vlm")
    with pytest.raises(_Stop):
        par.run_paraphrase_study(config, source, tmp_path, device="cuda:1", dtype="bfloat16")
    assert seen == [("hf:/some/vlm", "cuda:1", "bfloat16")]


@pytest.fixture(scope="module")
def sae_inputs(source, items, par_base):
    vqa = par.load_yes_no_vlm("phantom:vqa")
    train, _ = par.study_questions(source, items, par_base)
    return vqa, par.study_images(vqa, source, items), train[:6]


@pytest.mark.parametrize(
    ("name", "value"), [("sae_width", 24), ("sae_k", 2), ("sae_steps", 3), ("model", "phantom:x")]
)
def test_sae_fields_change_the_saes(par_base, sae_inputs, name, value):
    vqa, images, train = sae_inputs
    base = replace(par_base, sae_width=16, sae_k=4, sae_steps=2)
    before, _ = par.train_layer_saes(vqa, images, train, base)
    after, _ = par.train_layer_saes(vqa, images, train, replace(base, **{name: value}))
    assert before[0].config != after[0].config or not all(
        (a.w_dec.shape == b.w_dec.shape) and bool((a.w_dec == b.w_dec).all())
        for a, b in zip(before.values(), after.values(), strict=True)
    )
    if name == "model":
        assert after[0].config.model == "phantom:x"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": ()}, "seeds must be distinct ints"),
        ({"ranges": ("all", "all")}, "ranges must name distinct layer ranges"),
        ({"ranges": ("middle",)}, "ranges must name distinct layer ranges"),
        ({"max_studies": 5}, "max_studies must be >= 50"),
        ({"model": "medgemma"}, "model must be a VLM spec SCHEME:NAME, got 'medgemma'"),
        ({"analysis_sets": 1}, "analysis_sets must be >= 2"),
        ({"sae_k": 20, "sae_width": 16}, r"sae_k \(20\) must be in \[1, sae_width \(16\)\]"),
        (
            {"lora": ConsistencyConfig(lora=LoraSettings(layers=(1,)))},
            "lora.lora.layers and lora.seed are set per run",
        ),
        ({"lora": ConsistencyConfig(seed=2)}, "lora.layers and lora.seed are set per run"),
        ({"eval_split": "train"}, "eval_split must be 'val'"),
    ],
)
def test_paraphrase_config_refuses_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        par.ParaphraseStudyConfig(**change)


def test_recipes_take_model_and_data_and_refuse_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: phantom:vqa\ndata: runs/world\nmax_studies: 100\nlora:\n  lora: {rank: 4}\n"
    )
    loaded = par.load_paraphrase_recipe(recipe)
    assert loaded.data is not None and loaded.data.as_posix() == "runs/world"
    assert (loaded.config.max_studies, loaded.config.lora.lora.rank) == (100, 4)
    recipe.write_text("world_studies: 100\nlora:\n  rnak: 4\n")
    with pytest.raises(
        ConfigError, match=r"r.yaml: unknown recipe keys \['world_studies', 'lora.rnak'\]"
    ):
        par.load_paraphrase_recipe(recipe)
    recipe.write_text("model: nowhere:x\n")
    with pytest.raises(ConfigError, match=r"r.yaml: bad yes/no VLM spec 'nowhere:x'"):
        par.load_paraphrase_recipe(recipe)
    recipe.write_text("data: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"r.yaml: data must be a path"):
        par.load_paraphrase_recipe(recipe)


PARAPHRASE_FIELDS = {
    "model": "test_model_device_and_dtype_reach_the_model_load",
    "seed": "test_question_fields_change_the_questions",
    "max_studies": "test_max_studies_takes_the_first_items_of_the_source",
    "questions_per_study": "test_question_fields_change_the_questions",
    "eval_split": "test_question_fields_change_the_questions",
    "sae_reports": "test_sae_reports_analysis_sets_and_seed_pick_their_samples",
    "analysis_sets": "test_sae_reports_analysis_sets_and_seed_pick_their_samples",
    "half_width": "test_half_width_reaches_the_analysis",
    "lora": "test_lora_and_seeds_reach_each_run",
    "seeds": "test_lora_and_seeds_reach_each_run",
    "ranges": "test_ranges_pick_the_trained_layer_ranges",
    "sae_width": "test_sae_fields_change_the_saes",
    "sae_k": "test_sae_fields_change_the_saes",
    "sae_steps": "test_sae_fields_change_the_saes",
}


def test_table_covers_every_field():
    assert set(PARAPHRASE_FIELDS) == {f.name for f in fields(par.ParaphraseStudyConfig)}


FIELD_TESTS = {"mechtune.pipelines.paraphrase.ParaphraseStudyConfig": PARAPHRASE_FIELDS}
