import hashlib
import json
from pathlib import Path

import pytest
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world
from mechtune.train.checkpoint import load_trained
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings, lora_parameters
from mechtune.train.losses import (
    BinaryConsistencyLoss,
    NASTLoss,
    NegCLIPLoss,
    VocabConsistencyLoss,
)
from mechtune.train.methods import (
    METHODS,
    NegationData,
    methods_for,
    negation_examples,
    register,
    run_method,
)
from mechtune.train.negation import ClaimExample, LoopConfig
from tests.tiny_models import tiny_clip
from tests.train.test_trainer import CAPTIONS, CLAIMS


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_studies=60, seed=0))


def split_rows(world, split="train"):
    return [(int(i), world.studies[int(i)]) for i in world.indices(split)]


def test_examples_come_from_train_patients_and_train_families(world):
    data = negation_examples(split_rows(world), seed=world.config.seed)
    train_rows = set(world.indices("train").tolist())
    assert data.captions and data.claims
    assert {c.image for c in data.captions} <= train_rows
    assert {c.image for c in data.claims} <= train_rows
    assert all(len(c.candidates) >= 2 for c in data.claims)
    held = negation_examples(split_rows(world, "test"), "test", seed=0, heldout=True)
    assert {c.image for c in held.claims} <= set(world.indices("test").tolist())
    with pytest.raises(ConfigError, match=r"split must be one of .*, got 'dev'"):
        negation_examples(split_rows(world), "dev", seed=0)


def _digest(data: NegationData) -> tuple[int, int, int, str]:
    blob = json.dumps(
        [
            [[c.text, c.image] for c in data.captions],
            [[list(c.candidates), c.image] for c in data.claims],
            [[list(c.candidates), c.image] for c in data.mcq],
        ]
    )
    return (
        len(data.captions),
        len(data.claims),
        len(data.mcq),
        hashlib.sha256(blob.encode()).hexdigest()[:16],
    )


@pytest.mark.parametrize(
    ("world_seed", "split", "kw", "expected"),
    [
        (0, "train", {}, (51, 264, 10, "5785ce679f32d387")),
        (0, "train", {"balance_polarity": False}, (51, 176, 10, "b645c6d4feac6db0")),
        (0, "test", {"heldout": True}, (3, 16, 1, "91610a1282ecf37b")),
        (3, "val", {}, (7, 32, 5, "82f178fe4b6e4b0b")),
    ],
)
def test_examples_are_those_the_world_based_builder_gave(world_seed, split, kw, expected):
    """Frozen from the World-based negation_examples of 2026-11-30 (it read the split from
    the world and the seed and split fractions from its config): the same captions, claim
    sets and MCQ options, in the same order."""
    w = make_world(WorldConfig(n_studies=60, seed=world_seed))
    data = negation_examples(split_rows(w, split), split, seed=world_seed, **kw)
    assert _digest(data) == expected


def test_seed_drives_the_examples(world):
    a = negation_examples(split_rows(world), seed=0)
    b = negation_examples(split_rows(world), seed=1)
    assert _digest(a) != _digest(b)
    assert {c.image for c in a.claims} == {c.image for c in b.claims}


def test_registry():
    assert methods_for("negation") == [
        "effective-lr",
        "nast",
        "negbench",
        "negclip",
        "random-alpha",
        "uniform-lora",
        "zero-shot",
    ]
    assert METHODS["effective-lr"].lr_from_alpha and METHODS["effective-lr"].overrides == {
        "beta": 0.0
    }
    assert not METHODS["random-alpha"].overrides and not METHODS["nast"].lr_from_alpha
    assert methods_for("paraphrase") == ["consistency-lora"]
    assert METHODS["consistency-lora"].config is ConsistencyConfig
    assert METHODS["negclip"].overrides == {"beta": 0.0, "lora": None}
    assert METHODS["negbench"].data == "mcq"
    with pytest.raises(ConfigError, match="unknown negation method 'bogus'"):
        run_method("bogus", None, None, None, [], LoopConfig(), "x")
    with pytest.raises(ConfigError, match="unknown negation method 'consistency-lora'"):
        run_method("consistency-lora", None, None, None, [], LoopConfig(), "x")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "nast"}, "method 'nast' is already registered"),
        ({"task": "vqa"}, "unknown task 'vqa'"),
        ({"loss": "focal"}, "loss must be one of"),
        ({"data": "captions"}, "data must be one of"),
        ({"loss": None}, "data must be one of"),
        ({"overrides": {"bta": 0.0}}, r"overrides \['bta'\] are not fields of LoopConfig"),
        (
            {"task": "paraphrase", "data": "paraphrase_sets", "lr_from_alpha": True},
            "lr_from_alpha needs the negation task's alpha",
        ),
    ],
)
def test_register_refuses_bad_entries(kw, message):
    args = {"name": "new", "task": "negation", "loss": "nast", "data": "claim_sets", **kw}
    with pytest.raises(ConfigError, match=message):
        register(**args)
    assert "new" not in METHODS


def test_balancing_repeats_claim_sets_and_adds_or_drops_none(world):
    data = negation_examples(split_rows(world), seed=0)
    raw = negation_examples(split_rows(world), seed=0, balance_polarity=False)
    assert len(data.claims) > len(raw.claims)
    assert set(data.claims) == set(raw.claims)  # repeats only, nothing new or dropped


MCQ = [
    ClaimExample(("no edema and no pneumothorax .", "edema .", "pneumothorax .", "rib ."), 0),
    ClaimExample(("no cardiomegaly .", "cardiomegaly .", "edema .", "no edema ."), 1),
]
# The loss each training method must call, and the candidate counts K it may see (claim
# sets have 2 or 3 candidates here, MCQ options 4).
EXPECTED_LOSS = {
    "uniform-lora": (NASTLoss, {2, 3}),
    "nast": (NASTLoss, {2, 3}),
    "random-alpha": (NASTLoss, {2, 3}),
    "effective-lr": (NASTLoss, {2, 3}),
    "negclip": (NegCLIPLoss, {2, 3}),
    "negbench": (NASTLoss, {4}),
    "consistency-lora": (VocabConsistencyLoss, None),  # the default answer_loss, "vocab"
}
SPIED = (NASTLoss, NegCLIPLoss, VocabConsistencyLoss, BinaryConsistencyLoss)


def test_every_training_method_calls_its_registered_loss(tmp_path, monkeypatch):
    """A spy on every loss's forward: each method calls exactly the loss it is
    registered with (create_loss built from its config), once per step, on its data."""
    trained = {n for n, m in METHODS.items() if m.loss is not None}
    assert trained == set(EXPECTED_LOSS)
    calls: list[tuple[str, int | None]] = []
    for cls in SPIED:
        original = cls.forward

        def spy(self, *args, _original=original, **kwargs):
            batch = args[0]
            k = batch.candidates.shape[1] if hasattr(batch, "candidates") else None
            calls.append((type(self).__name__, k))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spy)
    folder = tiny_clip(tmp_path / "clip")
    images = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    data = NegationData(CAPTIONS, CLAIMS, MCQ)
    config = LoopConfig(steps=2, caption_batch=2, claim_batch=2, checkpoint_every=2)
    for name in sorted(trained - {"consistency-lora"}):
        calls.clear()
        enc = load_dual_encoder(f"hf:{folder}")
        run_method(name, enc, images, data, [1.0, 1.0, 1.0], config, tmp_path / name)
        cls, ks = EXPECTED_LOSS[name]
        assert [c for c, _ in calls] == [cls.__name__] * 2, name
        assert {k for _, k in calls} <= ks, name

    from mechtune.sim.vqa import load_default_vqa
    from mechtune.train.methods import run_paraphrase_method
    from tests.train.test_consistency import EXAMPLES, _images

    # consistency-lora calls the loss of its config's answer_loss, once per micro-batch
    for answer_loss, cls, grad_accum in (
        ("vocab", VocabConsistencyLoss, 1),
        ("binary", BinaryConsistencyLoss, 2),
    ):
        calls.clear()
        vqa = load_default_vqa()
        pconfig = ConsistencyConfig(
            lora=LoraSettings(layers=(5,)),
            steps=2,
            batch_size=2,
            grad_accum=grad_accum,
            answer_loss=answer_loss,
        )
        run_paraphrase_method(
            "consistency-lora", vqa, _images(vqa), EXAMPLES, pconfig, tmp_path / answer_loss
        )
        assert calls == [(cls.__name__, None)] * 2 * grad_accum, answer_loss


def test_zero_shot_changes_nothing_and_nast_trains_only_weighted_blocks(world, tmp_path):
    enc = load_dual_encoder("phantom:default")
    data = negation_examples(split_rows(world), seed=0)
    with torch.no_grad():
        images = enc.encode_images(world.images)
        before = enc.encode_texts(["No pneumothorax."])
    run_method("zero-shot", enc, images, data, torch.ones(7), LoopConfig(), tmp_path / "z")
    assert torch.equal(enc.encode_texts(["No pneumothorax."]), before)
    assert not (tmp_path / "z").exists()

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
    data = negation_examples(split_rows(world), seed=0)
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
    with pytest.raises(DataError, match=r"no training examples \(mcq\) for negbench"):
        run_method(
            "negbench",
            load_dual_encoder("phantom:default"),
            images,
            NegationData(data.captions, data.claims, []),
            torch.ones(7),
            config,
            tmp_path / "empty",
        )


SENTENCES = ["there is no pleural effusion .", "severe edema .", "no pneumothorax ."]


@pytest.mark.parametrize(
    ("method", "saved"), [("uniform-lora", "adapter"), ("negclip", "weights.safetensors")]
)
def test_trained_result_reloads_to_the_same_text_embeddings(tmp_path, method, saved):
    folder = tiny_clip(tmp_path / "clip")
    images = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    config = LoopConfig(
        steps=3,
        caption_batch=2,
        claim_batch=2,
        lr=5e-2,
        checkpoint_every=2,
        lora=LoraSettings(rank=2, alpha=4),
    )
    trained = load_dual_encoder(f"hf:{folder}")
    run_method(
        method, trained, images, NegationData(CAPTIONS, CLAIMS), [1.0] * 3, config, tmp_path / "run"
    )
    out = tmp_path / "run"
    assert (out / saved).exists()
    if saved == "adapter":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {
            p.name for p in (out / "adapter").iterdir()
        }
        assert not (out / "weights.safetensors").exists()
    else:
        assert not (out / "adapter").exists()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    info = json.loads((out / "train.json").read_text())
    assert info["method"] == method and info["step"] == 3
    assert [h["step"] for h in info["history"]] == [1, 2, 3]
    # the config as trained: with the method's overrides applied
    assert info["config"]["beta"] == 0.0
    assert (info["config"]["lora"] is None) == (method == "negclip")

    fresh = load_dual_encoder(f"hf:{folder}")
    untrained = fresh.encode_texts(SENTENCES)
    reloaded = load_trained(fresh, out)
    assert reloaded is fresh
    want = trained.encode_texts(SENTENCES)
    assert torch.equal(reloaded.encode_texts(SENTENCES), want)
    assert not torch.allclose(untrained, want)  # training moved the text tower


def test_load_trained_refuses_other_folders(tmp_path):
    from safetensors.torch import save_file

    enc = load_dual_encoder(f"hf:{tiny_clip(tmp_path / 'clip')}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: neither a peft adapter"):
        load_trained(enc, empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"vision_model.post_layernorm.weight": torch.ones(16)}, bad / "weights.safetensors")
    with pytest.raises(DataError, match=r"'vision_model.post_layernorm.weight' is not a parameter"):
        load_trained(enc, bad)
    name = "text_model.encoder.layers.0.mlp.fc1.bias"
    save_file({name: torch.ones(3)}, bad / "weights.safetensors")
    with pytest.raises(DataError, match=r"has shape \(3,\)"):
        load_trained(enc, bad)


def test_a_bf16_model_trains_with_float32_losses(tmp_path, monkeypatch):
    seen = []
    original = NASTLoss.forward

    def spy(self, batch):
        seen.append(
            {
                t.dtype
                for t in (
                    batch.caption_image,
                    batch.caption_text,
                    batch.claim_image,
                    batch.candidates,
                )
            }
        )
        return original(self, batch)

    monkeypatch.setattr(NASTLoss, "forward", spy)
    enc = load_dual_encoder(f"hf:{tiny_clip(tmp_path / 'clip')}")
    enc.model.to(torch.bfloat16)
    images = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    config = LoopConfig(
        steps=1,
        caption_batch=2,
        claim_batch=2,
        checkpoint_every=1,
        lora=LoraSettings(rank=2, alpha=4),
    )
    run_method(
        "nast", enc, images, NegationData(CAPTIONS, CLAIMS), [1.0] * 3, config, tmp_path / "run"
    )
    assert seen == [{torch.float32}]
    info = json.loads((tmp_path / "run" / "train.json").read_text())
    assert torch.isfinite(torch.tensor(info["history"][0]["loss"]))


def test_phantom_recipe_matches_the_code_defaults():
    from dataclasses import replace

    from mechtune.pipelines.negation_config import NegationStudyConfig, load_recipe

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes" / "nast-phantom.yaml")
    assert recipe.data == "runs/phantom-mimic"
    assert replace(recipe, data=None) == NegationStudyConfig()
