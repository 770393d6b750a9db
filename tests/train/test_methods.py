import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.loop import LoopConfig
from mechtune.train.lora import LoraSettings, lora_parameters
from mechtune.train.methods import METHODS, methods_for, negation_examples, run_method


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_studies=60, seed=0))


def test_examples_come_from_train_patients_and_train_families(world):
    data = negation_examples(world)
    train_rows = set(world.indices("train").tolist())
    assert data.captions and data.claims
    assert {c.image for c in data.captions} <= train_rows
    assert {c.image for c in data.claims} <= train_rows
    assert all(len(c.candidates) >= 2 for c in data.claims)
    held = negation_examples(world, split="test", heldout=True)
    assert {c.image for c in held.claims} <= set(world.indices("test").tolist())


def test_registry():
    assert {"zero-shot", "uniform-lora", "nast"} <= set(methods_for("negation"))
    assert methods_for("paraphrase") == ["consistency-lora"]
    assert METHODS["consistency-lora"].config is ConsistencyConfig
    with pytest.raises(ConfigError, match="unknown negation method 'bogus'"):
        run_method("bogus", None, None, None, [], LoopConfig(), "x")
    with pytest.raises(ConfigError, match="unknown negation method 'consistency-lora'"):
        run_method("consistency-lora", None, None, None, [], LoopConfig(), "x")


def test_balancing_repeats_claim_sets_and_adds_or_drops_none(world):
    data = negation_examples(world)
    raw = negation_examples(world, balance_polarity=False)
    assert len(data.claims) > len(raw.claims)
    assert set(data.claims) == set(raw.claims)  # repeats only, nothing new or dropped


def test_zero_shot_changes_nothing_and_nast_trains_only_weighted_blocks(world, tmp_path):
    enc = load_dual_encoder("phantom:default")
    data = negation_examples(world)
    with torch.no_grad():
        images = enc.encode_images(world.images)
        before = enc.encode_texts(["No pneumothorax."])
    run_method("zero-shot", enc, images, data, torch.ones(7), LoopConfig(), tmp_path / "z")
    assert torch.equal(enc.encode_texts(["No pneumothorax."]), before)

    alpha = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # only block 2 (alpha[3]) learns
    config = LoopConfig(
        steps=2,
        caption_batch=4,
        claim_batch=4,
        lr=1e-2,
        beta=1.0,
        checkpoint_every=2,
        lora=LoraSettings(rank=2, alpha=4),
    )
    run_method("nast", enc, images, data, alpha, config, tmp_path / "n")
    b_by_layer = {}
    for name, (layer, p) in lora_parameters(enc.model).items():
        if "lora_B" in name:
            b_by_layer[layer] = b_by_layer.get(layer, 0.0) + float(p.detach().abs().sum())
    # peft starts B at zero: only blocks with a non-zero gradient scale leave zero
    assert {b for b, v in b_by_layer.items() if v > 0} == {2}


def test_negclip_and_negbench_run_and_train_what_they_should(world, tmp_path):
    enc = load_dual_encoder("phantom:default")
    data = negation_examples(world)
    assert data.mcq and all(len(m.candidates) == 4 for m in data.mcq)
    with torch.no_grad():
        images = enc.encode_images(world.images)
    config = LoopConfig(
        steps=1,
        caption_batch=4,
        claim_batch=4,
        lr=1e-3,
        checkpoint_every=1,
        lora=LoraSettings(rank=2, alpha=4),
    )
    before = {n: p.detach().clone() for n, p in enc.model.named_parameters()}
    run_method("negclip", enc, images, data, torch.ones(7), config, tmp_path / "negclip")
    changed = {n for n, p in enc.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("text.bert.encoder.layer." in n for n in changed)
    assert not any("image_encoder" in n or "embeddings" in n for n in changed)

    enc2 = load_dual_encoder("phantom:default")
    run_method("negbench", enc2, images, data, torch.ones(7), config, tmp_path / "negbench")
    assert lora_parameters(enc2.model)


def test_phantom_recipe_matches_the_code_defaults():
    from pathlib import Path

    from mechtune.eval.negation_study import NegationStudyConfig, load_recipe

    root = Path(__file__).resolve().parents[2]
    assert load_recipe(root / "recipes" / "nast-phantom.yaml") == NegationStudyConfig()
    with pytest.raises(ValueError, match="needs real data"):
        load_recipe(root / "recipes" / "nast-biomedclip-mimic.yaml")
