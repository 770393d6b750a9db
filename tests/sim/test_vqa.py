import numpy as np
import pytest
import torch

from mechtune.models.yes_no import YesNoVLM, capture_block_outputs, layer_of_parameter
from mechtune.sim.train_clip import compare_checkpoints
from mechtune.sim.train_vqa import (
    TrainVQAConfig,
    question_table,
    train_phantom_vqa,
    world_paraphrase_sets,
)
from mechtune.sim.vqa import PhantomVQA, default_vqa_checkpoint, load_default_vqa
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
    sets = world_paraphrase_sets(world, "val", heldout=True)
    assert sets and all(all(s.heldout_family) for s in sets)
    assert {s.answer for s in sets} == {True, False}
    assert all(world.studies[int(s.image_ref)].study_id == s.study_id for s in sets)
    again = world_paraphrase_sets(world, "val", heldout=True)
    assert again == sets


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
