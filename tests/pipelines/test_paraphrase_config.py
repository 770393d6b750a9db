"""Every field of the paraphrase study's config changes what the study does, through the
stage functions that read it. The questions are a small phantom world's own paraphrase
sets, bound to its images as a questions file would be (a saved world read as an
image-study source, built by the sim API in the test); the study never renders one."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch

from mechtune.data.builders.paraphrase import image_paraphrase_sets
from mechtune.data.sources import open_source
from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae_saelens import save_saelens
from mechtune.pipelines import paraphrase as par
from mechtune.pipelines.questions import BoundQuestions
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings

N = 120


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    folder = tmp_path_factory.mktemp("world") / "world"
    save_world(make_world(WorldConfig.seeded(N, 0)), folder)
    return folder


@pytest.fixture(scope="module")
def vqa():
    return par.load_yes_no_vlm("phantom:vqa")


@pytest.fixture(scope="module")
def bound(world_dir, vqa):
    """The world's own sets of every split (val/test twice: in-distribution and held-out
    families), with split labels, as `sim export` writes them into questions.jsonl."""
    source = open_source(world_dir)
    items = source.studies()
    rows = {
        split: [(i, s) for i, s in enumerate(items) if source.split_of(s) == split]
        for split in ("train", "val", "test")
    }
    sets = image_paraphrase_sets(rows["train"], "train", heldout=False, seed=0)
    for split in ("val", "test"):
        for heldout in (False, True):
            sets += image_paraphrase_sets(rows[split], split, heldout=heldout, seed=0)
    pixels = [source.load_image(s, vqa.image_mode) for s in items]
    corpus = sorted({source.report_text(s) or "" for _, s in rows["train"]})
    return BoundQuestions(
        images=vqa.prepare_images(pixels),
        sets=sets,
        pixels=pixels,
        corpus=[c for c in corpus if c],
        split_labels=True,
        source=source,
    )


@pytest.fixture(scope="module")
def par_base():
    return par.ParaphraseStudyConfig(sae_reports=30, analysis_sets=10)


def _ids(sets):
    return [q.record.question_id for q in sets]


def test_max_questions_and_eval_split_pick_the_study_sets(bound, par_base):
    train, test = par.study_sets(bound, par_base)
    assert {q.record.split for q in train} == {"train"}
    assert {q.record.split for q in test} == {"test"}
    capped_train, capped_test = par.study_sets(bound, replace(par_base, max_questions=5))
    assert _ids(capped_train) == _ids(train)[:5] and _ids(capped_test) == _ids(test)[:5]
    _, val = par.study_sets(bound, replace(par_base, eval_split="val"))
    assert {q.record.split for q in val} == {"val"}
    assert {q.record.study_id for q in val}.isdisjoint(q.record.study_id for q in test)


def test_the_study_refuses_questions_without_split_labels(bound, par_base):
    with pytest.raises(DataError, match="needs questions labelled with splits"):
        par.study_sets(replace(bound, split_labels=False), par_base)
    only_train = bound.subset([q for q in bound.sets if q.record.split == "train"])
    with pytest.raises(DataError, match="0 test-split record"):
        par.study_sets(only_train, par_base)


def test_sae_reports_analysis_sets_and_seed_pick_their_samples(bound, par_base):
    corpus = par.sae_corpus(bound, par_base)
    assert len(corpus) == 30
    assert len(par.sae_corpus(bound, replace(par_base, sae_reports=10))) == 10
    assert par.sae_corpus(bound, replace(par_base, seed=1)) != corpus
    train, _ = par.study_sets(bound, par_base)
    assert len(par.analysis_questions(train, par_base)) == 10
    assert len(par.analysis_questions(train, replace(par_base, analysis_sets=4))) == 4
    assert par.analysis_questions(train, replace(par_base, seed=1)) != par.analysis_questions(
        train, par_base
    )


def test_half_width_reaches_the_analysis(par_base):
    assert par.analysis_config(par_base).half_width == 1
    assert par.analysis_config(replace(par_base, half_width=2)).half_width == 2


def test_auc_shuffles_reach_the_analysis(par_base):
    """auc_shuffles turns on the shuffled-label control of the analysis
    (tests/interp/test_sae_analysis_shuffles.py checks what it computes)."""
    assert par.analysis_config(par_base).shuffles == 0
    assert par.analysis_config(replace(par_base, auc_shuffles=20)).shuffles == 20


def test_random_ranges_add_random_ranges_of_the_sae_width(par_base):
    plain, none = par.study_ranges(par_base, [2, 3], 8)
    assert none is None and plain == par.layer_ranges([2, 3], 8, par_base.ranges)
    ranges, drawn = par.study_ranges(replace(par_base, random_ranges=3), [2, 3], 8)
    assert drawn is not None and list(ranges)[:4] == list(par_base.ranges)
    random = {k: v for k, v in ranges.items() if k.startswith("random-")}
    assert list(random) == ["random-0", "random-1", "random-2"] == list(drawn.ranges)
    assert all(len(v) == 2 and v[1] == v[0] + 1 and v != (2, 3) for v in random.values())
    assert len(set(random.values())) == 3
    # drawn with the study's seed
    _, other = par.study_ranges(replace(par_base, random_ranges=3, seed=4), [2, 3], 8)
    assert other is not None and other.seed == 4 and drawn.seed == 0


def test_lora_and_seeds_reach_each_run(par_base):
    lora = ConsistencyConfig(lora=LoraSettings(rank=4), steps=9)
    config = replace(par_base, lora=lora, seeds=(2, 3))
    run = par.run_config(config, (1, 2), seed=3)
    assert (run.lora.rank, run.steps, run.lora.layers, run.seed) == (4, 9, (1, 2), 3)


def test_ranges_pick_the_trained_layer_ranges():
    assert list(par.layer_ranges([3, 4], 6, ("sae", "early"))) == ["sae", "early"]


class _Stop(Exception):
    pass


def test_model_device_and_dtype_reach_the_model_load(monkeypatch, bound, par_base, tmp_path):
    seen = []

    def record(spec, *, device, dtype):
        seen.append((spec, device, dtype))
        raise _Stop

    monkeypatch.setattr(par, "load_yes_no_vlm", record)
    config = replace(par_base, model="hf:/some/vlm")
    with pytest.raises(_Stop):
        par.run_paraphrase_study(config, bound, tmp_path, device="cuda:1", dtype="bfloat16")
    assert seen == [("hf:/some/vlm", "cuda:1", "bfloat16")]


@pytest.fixture(scope="module")
def sae_base(par_base):
    return replace(par_base, sae_width=16, sae_k=4, sae_steps=2, max_questions=6)


@pytest.mark.parametrize(
    ("name", "value"),
    [("sae_width", 24), ("sae_k", 2), ("sae_steps", 3), ("model", "phantom:x"), ("seed", 5)],
)
def test_sae_fields_change_the_saes(vqa, bound, sae_base, name, value):
    train, _ = par.study_sets(bound, sae_base)
    before, _, trained = par.study_saes(vqa, bound, train, sae_base)
    after, _, _ = par.study_saes(vqa, bound, train, replace(sae_base, **{name: value}))
    assert trained
    assert before[0].config != after[0].config or not all(
        (a.w_dec.shape == b.w_dec.shape) and bool((a.w_dec == b.w_dec).all())
        for a, b in zip(before.values(), after.values(), strict=True)
    )
    if name == "model":
        assert after[0].config.model == "phantom:x"


def test_sae_layers_pick_the_blocks_that_get_saes(vqa, bound, sae_base):
    train, _ = par.study_sets(bound, sae_base)
    saes, reports, _ = par.study_saes(vqa, bound, train, replace(sae_base, sae_layers=(4, 1)))
    assert sorted(saes) == sorted(reports) == [1, 4]
    assert par.analysis_layers(sae_base, 6) == list(range(6))
    with pytest.raises(ConfigError, match=r"sae_layers \[9\]: the model has blocks 0..5"):
        par.analysis_layers(replace(sae_base, sae_layers=(9,)), 6)


def test_saes_and_sae_variant_load_the_dictionaries_instead_of_training(
    vqa, bound, sae_base, tmp_path
):
    train, _ = par.study_sets(bound, sae_base)
    trained, _, _ = par.study_saes(vqa, bound, train, replace(sae_base, sae_layers=(2, 3)))
    for layer, sae in trained.items():
        save_saelens(sae, tmp_path / f"layer_{layer}_width_16_a")
        save_saelens(sae, tmp_path / f"layer_{layer}_width_16_b")
    loading = replace(par.ParaphraseStudyConfig(), saes=str(tmp_path), sae_variant="width_16_a")
    loaded, reports, trained_here = par.study_saes(vqa, bound, train, loading)
    assert not trained_here and reports == {} and sorted(loaded) == [2, 3]
    for layer in (2, 3):
        assert torch.equal(loaded[layer].w_dec, trained[layer].w_dec)
    # sae_layers also filters the loaded folders
    only, _, _ = par.study_saes(vqa, bound, train, replace(loading, sae_layers=(3,)))
    assert sorted(only) == [3]
    # without a variant, two folders for one layer are refused, naming both
    with pytest.raises(DataError, match="two SAEs for layer 2"):
        par.study_saes(vqa, bound, train, replace(loading, sae_variant=None))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": ()}, "seeds must be distinct ints"),
        ({"ranges": ("all", "all")}, "ranges must name distinct layer ranges"),
        ({"ranges": ("middle",)}, "ranges must name distinct layer ranges"),
        ({"max_questions": 1}, "max_questions must be >= 2"),
        ({"model": "medgemma"}, "model must be a VLM spec SCHEME:NAME, got 'medgemma'"),
        ({"analysis_sets": 1}, "analysis_sets must be >= 2"),
        ({"sae_k": 20, "sae_width": 16}, r"sae_k \(20\) must be in \[1, sae_width \(16\)\]"),
        ({"sae_layers": ()}, "sae_layers must be distinct block indices"),
        ({"sae_layers": (1, 1)}, "sae_layers must be distinct block indices"),
        ({"saes": "x", "sae_width": 16, "sae_k": 4}, "sae_width, sae_k set the SAEs the study"),
        ({"sae_variant": "w16"}, "sae_variant picks among the folders of saes"),
        (
            {"lora": ConsistencyConfig(lora=LoraSettings(layers=(1,)))},
            "lora.lora.layers and lora.seed are set per run",
        ),
        ({"lora": ConsistencyConfig(seed=2)}, "lora.layers and lora.seed are set per run"),
        ({"eval_split": "train"}, "eval_split must be 'val'"),
        ({"auc_shuffles": -1}, r"auc_shuffles must be an int >= 0 \(0: off\), got -1"),
        ({"random_ranges": True}, "random_ranges must be an int >= 0"),
        (
            {"random_ranges": 2, "ranges": ("all", "late")},
            r"random_ranges \(2\) are a control for the SAE range: add sae to ranges",
        ),
    ],
)
def test_paraphrase_config_refuses_bad_values(change, message):
    with pytest.raises(ConfigError, match=message):
        par.ParaphraseStudyConfig(**change)


def test_recipes_take_model_data_questions_and_refuse_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: phantom:vqa\ndata: runs/export\nquestions: runs/export/questions.jsonl\n"
        "max_questions: 100\nsae_layers: [3, 1]\nlora:\n  lora: {rank: 4}\n"
        "random_ranges: 3\nauc_shuffles: 20\n"
    )
    loaded = par.load_paraphrase_recipe(recipe)
    assert (loaded.config.random_ranges, loaded.config.auc_shuffles) == (3, 20)
    assert loaded.data is not None and loaded.data.as_posix() == "runs/export"
    assert loaded.questions is not None and loaded.questions.name == "questions.jsonl"
    assert (loaded.config.max_questions, loaded.config.lora.lora.rank) == (100, 4)
    assert loaded.config.sae_layers == (1, 3)
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
    "seed": "test_sae_reports_analysis_sets_and_seed_pick_their_samples",
    "max_questions": "test_max_questions_and_eval_split_pick_the_study_sets",
    "eval_split": "test_max_questions_and_eval_split_pick_the_study_sets",
    "sae_reports": "test_sae_reports_analysis_sets_and_seed_pick_their_samples",
    "analysis_sets": "test_sae_reports_analysis_sets_and_seed_pick_their_samples",
    "half_width": "test_half_width_reaches_the_analysis",
    "auc_shuffles": "test_auc_shuffles_reach_the_analysis",
    "random_ranges": "test_random_ranges_add_random_ranges_of_the_sae_width",
    "lora": "test_lora_and_seeds_reach_each_run",
    "seeds": "test_lora_and_seeds_reach_each_run",
    "ranges": "test_ranges_pick_the_trained_layer_ranges",
    "sae_width": "test_sae_fields_change_the_saes",
    "sae_k": "test_sae_fields_change_the_saes",
    "sae_steps": "test_sae_fields_change_the_saes",
    "sae_layers": "test_sae_layers_pick_the_blocks_that_get_saes",
    "saes": "test_saes_and_sae_variant_load_the_dictionaries_instead_of_training",
    "sae_variant": "test_saes_and_sae_variant_load_the_dictionaries_instead_of_training",
}


def test_table_covers_every_field():
    assert set(PARAPHRASE_FIELDS) == {f.name for f in fields(par.ParaphraseStudyConfig)}


FIELD_TESTS = {"mechtune.pipelines.paraphrase_config.ParaphraseStudyConfig": PARAPHRASE_FIELDS}
