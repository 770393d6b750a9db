import numpy as np
import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.models.yes_no import YesNoVLM, capture_block_outputs, layer_of_parameter
from mechtune.sim.clip import PhantomCLIPConfig, default_checkpoint
from mechtune.sim.train_clip import compare_checkpoints
from mechtune.sim.train_vqa import (
    TrainVQAConfig,
    question_table,
    train_phantom_vqa,
    world_paraphrase_sets,
)
from mechtune.sim.vqa import PhantomVQA, PhantomVQAConfig, default_vqa_checkpoint, load_default_vqa
from mechtune.sim.world import WorldConfig, make_world


@pytest.fixture(scope="module")
def vqa() -> PhantomVQA:
    return load_default_vqa()


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_studies=120, seed=0))


def test_is_a_yes_no_vlm(vqa) -> None:
    assert isinstance(vqa, YesNoVLM)
    assert len(vqa.layers) == 6
    name = "question.bert.encoder.layer.4.attention.self.query.weight"
    assert dict(vqa.named_parameters())[name] is not None
    assert layer_of_parameter(name, vqa.layers_pattern) == 4
    assert layer_of_parameter("head.image.weight", vqa.layers_pattern) is None


def test_margin_from_pixels_equals_margin_from_embeddings(vqa, world) -> None:
    questions = ["Is there a pleural effusion?", "Is there evidence of cardiomegaly?"]
    pixels = world.images[:2]
    with torch.no_grad():
        direct = vqa.margin(pixels, questions)
        cached = vqa.margin(vqa.embed_images(pixels), questions)
        logits = vqa.answer_logits(pixels, questions)
    assert direct.shape == (2,)
    torch.testing.assert_close(direct, cached)
    torch.testing.assert_close(direct, logits[:, 0] - logits[:, 1])


def test_first_token_logits_are_the_answer_head_and_vocab_ce_is_binary_ce(world) -> None:
    """phantom:vqa's answer vocabulary is its 2-way head (V = 2, ids (0, 1)): the margin
    is margin_from_logits(first_token_logits), and the vocabulary cross-entropy towards
    the answer equals the binary cross-entropy on the margin, in value and gradient."""
    from mechtune.models.vlm_spec import load_yes_no_vlm
    from mechtune.train.losses import (
        BinaryConsistencyLoss,
        ConsistencyBatch,
        VocabConsistencyLoss,
    )

    vqa = load_yes_no_vlm("phantom:vqa")
    questions = ["Is there a pleural effusion?", "Is there edema?", "Any pneumothorax?"]
    paraphrases = ["Is pleural fluid seen?", "Is edema visible?", "Is there air outside the lung?"]
    emb = vqa.prepare_images(list(world.images[:3]))
    with torch.no_grad():
        logits = vqa.first_token_logits(emb, questions)
        margins = vqa.margin(emb, questions)
    assert logits.shape == (3, 2) and logits.dtype == torch.float32
    assert vqa.answer_ids == (0, 1)
    assert torch.equal(vqa.margin_from_logits(logits), margins)

    head = vqa.head.logits.weight
    answer = torch.tensor([True, False, True])
    values, grads = [], []
    for loss in (VocabConsistencyLoss(0.5), BinaryConsistencyLoss(0.5)):
        head.grad = None
        lo, lp = vqa.first_token_logits(emb, questions), vqa.first_token_logits(emb, paraphrases)
        batch = ConsistencyBatch(
            lo, lp, vqa.margin_from_logits(lo), vqa.margin_from_logits(lp), answer, vqa.answer_ids
        )
        terms = loss(batch)
        terms["loss"].backward()
        values.append(terms)
        grads.append(head.grad.clone())
    head.grad = None
    for key in ("answer_ce", "symmetric_kl", "loss"):
        assert values[0][key].item() == pytest.approx(values[1][key].item(), rel=1e-6), key
    assert float(grads[0].abs().sum()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_margin_is_independent_of_batch_padding(vqa, world) -> None:
    short, long = "Is there edema?", "On this radiograph, is there a pleural effusion?"
    emb = vqa.embed_images(world.images[:2])
    with torch.no_grad():
        together = vqa.margin(emb, [short, long])
        alone = torch.cat([vqa.margin(emb[:1], [short]), vqa.margin(emb[1:], [long])])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_readout_positions_and_blank_images(vqa, world) -> None:
    questions = ["Is there edema?", "Does the chest X-ray show a pleural effusion?"]
    mask = vqa.readout_positions(world.images[:2], questions)
    tokens = vqa.question.tokenize(questions)
    assert mask.dtype == torch.bool and mask.shape == tokens["input_ids"].shape
    assert mask[0].sum() < mask[1].sum()
    with capture_block_outputs(vqa, [2]) as states, torch.no_grad():
        vqa.margin(world.images[:2], questions)
    assert states[2].shape[:2] == mask.shape
    blank = vqa.blank_images(world.images[:2])
    assert blank.shape == world.images[:2].shape and blank.max() == 0
    blank_emb = vqa.blank_images(vqa.embed_images(world.images[:2]))
    torch.testing.assert_close(blank_emb, vqa.embed_images(blank))


def test_bad_images_are_named(vqa) -> None:
    with pytest.raises(ValueError, match="uint8 \\[B, H, W\\]"):
        vqa.margin(np.zeros((1, 8, 8), dtype=np.float32), ["Is there edema?"])
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        vqa.margin(np.zeros((2, 128, 128), dtype=np.uint8), ["Is there edema?"])


def test_save_load_round_trip(vqa, tmp_path) -> None:
    vqa.save(tmp_path / "m")
    again = PhantomVQA.load(tmp_path / "m", text=vqa.question)
    for (name, a), (_, b) in zip(
        vqa.head.state_dict().items(), again.head.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match=r"expected model\.safetensors"):
        PhantomVQA.load(tmp_path / "missing")


def test_question_table_and_paraphrase_sets(world) -> None:
    idx = world.indices("train")
    table = question_table(world, idx)
    assert len(table.labels) + table.skipped_uncertain == len(idx) * len(table.conditions)
    bound = world_paraphrase_sets(world, "val", heldout=True)
    sets = [q.record for q in bound]
    assert sets and all(all(s.heldout_family) for s in sets)
    assert {s.answer for s in sets} == {True, False}
    assert all(world.studies[q.image].study_id == q.record.study_id for q in bound)
    # the record keeps the study's own image reference; the row is the typed binding
    assert all(q.record.image_ref == world.studies[q.image].image_ref for q in bound)
    again = world_paraphrase_sets(world, "val", heldout=True)
    assert again == bound


def test_shipped_head_answers_its_register(vqa) -> None:
    import json

    meta = json.loads((default_vqa_checkpoint() / "config.json").read_text())
    assert meta["train"]["val_register_accuracy"]["balanced_accuracy"] > 0.9


def test_training_is_deterministic(world, tmp_path) -> None:
    config = TrainVQAConfig(n_studies=120, steps=5, batch_size=32)
    a, log = train_phantom_vqa(config, world=world)
    b, _ = train_phantom_vqa(config, world=world, text=a.question)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    assert compare_checkpoints(tmp_path / "a", tmp_path / "b") == 0.0
    assert log["train_pairs"] > 0 and len(log["history"]) >= 1


@pytest.mark.slow
def test_rebuilding_the_shipped_head_is_bit_identical(tmp_path) -> None:
    model, log = train_phantom_vqa(TrainVQAConfig())
    model.save(tmp_path / "vqa", extra={"train": log})
    assert compare_checkpoints(tmp_path / "vqa", default_vqa_checkpoint()) == 0.0


# --- every setting changes the model or the run ----------------------------------------

VQA_MODEL_FIELD_CHANGES = {
    "hidden": 32,
    "image": PhantomCLIPConfig(hidden=64),  # the nested config reaches the image tower
}


def _vqa_fingerprint(text, config):
    torch.manual_seed(0)
    model = PhantomVQA(config, text=text)
    return {k: (tuple(v.shape), v.numpy().tobytes()) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("field", sorted(VQA_MODEL_FIELD_CHANGES))
def test_changing_a_phantom_vqa_field_changes_the_model(vqa, field):
    before = _vqa_fingerprint(vqa.question, PhantomVQAConfig())
    changed = PhantomVQAConfig(**{field: VQA_MODEL_FIELD_CHANGES[field]})
    after = _vqa_fingerprint(vqa.question, changed)
    assert before != after
    model = PhantomVQA(changed, text=vqa.question)
    if field == "image":
        assert model.image_encoder.head[1].out_features == 64
        # ... and it is checked against the checkpoint the weights come from.
        with pytest.raises(ConfigError, match=r"image\.hidden = 64 here, 512 there"):
            model.load_image_tower(default_checkpoint())
    else:
        assert model.head.logits.in_features == 32


def test_phantom_vqa_config_checks_its_fields(vqa, tmp_path):
    from mechtune.models.minilm import MINILM_ID

    with pytest.raises(ConfigError, match="hidden must be >= 1"):
        PhantomVQAConfig(hidden=0)
    with pytest.raises(ConfigError, match=r"image\.embed_dim 32 must equal the question"):
        PhantomVQA(PhantomVQAConfig(image=PhantomCLIPConfig(embed_dim=32)), text=vqa.question)
    legacy = {**PhantomVQAConfig().to_dict(), "text_model": MINILM_ID}
    legacy["image"]["text_model"] = MINILM_ID
    assert PhantomVQAConfig.from_dict(legacy) == PhantomVQAConfig()
    with pytest.raises(ConfigError, match="text_model 'other/model'"):
        PhantomVQAConfig.from_dict({**legacy, "text_model": "other/model"})
    # A non-default head survives save and load.
    small = PhantomVQA(PhantomVQAConfig(hidden=32), text=vqa.question)
    small.save(tmp_path / "small")
    assert PhantomVQA.load(tmp_path / "small", text=vqa.question).config.hidden == 32


TRAIN_VQA_BASE = {"n_studies": 60, "steps": 2, "batch_size": 8, "threads": 1}
TRAIN_VQA_FIELD_CHANGES = {
    "seed": 1,
    "n_studies": 70,
    "steps": 3,
    "batch_size": 16,
    "lr": 1e-2,
    "weight_decay": 0.5,
    "hidden": 32,
    "families": ("q.is_there",),
    "threads": 2,  # proven to reach torch, below
}


def _trained_vqa(text, **changes):
    model, log = train_phantom_vqa(TrainVQAConfig(**{**TRAIN_VQA_BASE, **changes}), text=text)
    state = {k: (tuple(v.shape), v.numpy().tobytes()) for k, v in model.head.state_dict().items()}
    return state, log["history"], log["val_register_accuracy"], log["train_pairs"]


@pytest.fixture(scope="module")
def trained_vqa_base(vqa):
    return _trained_vqa(vqa.question)


def test_every_vqa_field_has_a_change_test():
    import dataclasses

    assert {f.name for f in dataclasses.fields(TrainVQAConfig)} == set(TRAIN_VQA_FIELD_CHANGES)
    assert {f.name for f in dataclasses.fields(PhantomVQAConfig)} == set(VQA_MODEL_FIELD_CHANGES)


@pytest.mark.parametrize("field", sorted(set(TRAIN_VQA_FIELD_CHANGES) - {"threads"}))
def test_changing_a_train_vqa_field_changes_the_head(vqa, trained_vqa_base, field):
    after = _trained_vqa(vqa.question, **{field: TRAIN_VQA_FIELD_CHANGES[field]})
    assert after != trained_vqa_base


@pytest.mark.parametrize("threads", [1, 2])
def test_train_vqa_threads_reach_torch(vqa, threads):
    seen = []
    config = TrainVQAConfig(**{**TRAIN_VQA_BASE, "steps": 1, "threads": threads})
    train_phantom_vqa(
        config, text=vqa.question, progress=lambda *_: seen.append(torch.get_num_threads())
    )
    assert seen and set(seen) == {threads}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"families": ()}, "families must name at least one question family"),
        ({"families": ("lex.synonym",)}, "families: 'lex.synonym' is not a question family"),
        ({"batch_size": 1}, r"batch_size must be >= 2 \(half yes, half no"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"hidden": 0}, "hidden must be >= 1"),
    ],
)
def test_train_vqa_config_refuses_bad_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainVQAConfig(**kw)


def test_train_vqa_refuses_a_world_of_another_image_size(vqa):
    from mechtune.errors import DataError
    from mechtune.sim.render import RenderConfig

    small = make_world(WorldConfig(n_studies=20, render=RenderConfig(size=64)))
    with pytest.raises(DataError, match=r"world images are \[64, 64\] pixels"):
        train_phantom_vqa(TrainVQAConfig(**TRAIN_VQA_BASE), world=small, text=vqa.question)


FIELD_TESTS = {
    "mechtune.sim.vqa.PhantomVQAConfig": {
        f: "test_changing_a_phantom_vqa_field_changes_the_model" for f in VQA_MODEL_FIELD_CHANGES
    },
    "mechtune.sim.train_vqa.TrainVQAConfig": {
        **{f: "test_changing_a_train_vqa_field_changes_the_head" for f in TRAIN_VQA_FIELD_CHANGES},
        "threads": "test_train_vqa_threads_reach_torch",
    },
}
