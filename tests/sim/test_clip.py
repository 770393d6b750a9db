import numpy as np
import pytest
import torch

from mechtune.sim.clip import PhantomCLIP, PhantomCLIPConfig, default_checkpoint, load_default
from mechtune.sim.text_tower import MiniLMTower, minilm_path
from mechtune.sim.train_clip import (
    TrainCLIPConfig,
    compare_checkpoints,
    soft_clip_loss,
    train_phantom_clip,
)


@pytest.fixture(scope="module")
def text():
    return MiniLMTower().eval()


def test_text_tower_matches_sentence_transformers(text):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    sentences = ["Small left pleural effusion.", "No left pleural effusion.", "Normal heart size."]
    ours = text.encode(sentences)
    theirs = torch.tensor(st.encode(sentences))
    assert torch.allclose(ours, theirs, atol=1e-5)
    # The genuine negation blind spot this project studies (REFERENCE §3).
    assert float(ours[0] @ ours[1]) == pytest.approx(0.86, abs=0.01)


def test_soft_clip_loss_against_hand_computation():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0]]), dim=-1)
    scale = torch.tensor(2.0)
    eye = torch.eye(2, dtype=torch.bool)
    logits = scale * image @ texts.T
    expected = (
        torch.nn.functional.cross_entropy(logits, torch.arange(2))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    ) / 2
    assert torch.allclose(soft_clip_loss(image, texts, scale, eye)["loss"], expected)
    # Two items with the same findings: each row's target splits evenly between them.
    same = torch.ones(2, 2, dtype=torch.bool)
    terms = soft_clip_loss(image, texts, scale, same)
    i2t = -(0.5 * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(terms["image_to_text"], i2t)


def test_checkpoint_round_trip(tmp_path, text):
    model = PhantomCLIP(PhantomCLIPConfig(), text=text)
    with torch.no_grad():
        model.text_center.normal_()
        model.logit_scale.fill_(3.0)
    model.save(tmp_path, extra={"note": "test"})
    again = PhantomCLIP.load(tmp_path, text=text)
    images = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(model.encode_images(images), again.encode_images(images))
    assert torch.equal(again.text_center, model.text_center)
    assert compare_checkpoints(tmp_path, tmp_path) == 0.0


def test_training_is_deterministic(text):
    config = TrainCLIPConfig(n_studies=200, steps=3, batch_size=32)
    a, log = train_phantom_clip(config, text=text)
    b, _ = train_phantom_clip(config, text=text)
    for (name, x), (_, y) in zip(
        a.trainable_state().items(), b.trainable_state().items(), strict=True
    ):
        assert torch.equal(x, y), name
    assert log["history"][0]["step"] == 0 and len(log["history"]) == 2


def test_shipped_checkpoint_loads_and_sees(text):
    model = load_default(text=text)
    assert model.config.image_size == 128
    assert (default_checkpoint() / "config.json").is_file()
    assert float(model.logit_scale.detach().exp()) > 5


@pytest.mark.slow
def test_retraining_from_seed_reproduces_the_shipped_weights(tmp_path, text):
    import json

    meta = json.loads((default_checkpoint() / "config.json").read_text())
    config = TrainCLIPConfig.from_dict(meta["train"]["config"])
    model, _ = train_phantom_clip(config, text=text)
    model.save(tmp_path)
    assert compare_checkpoints(tmp_path, default_checkpoint()) < 1e-4
