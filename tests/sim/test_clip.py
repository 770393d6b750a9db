import numpy as np
import pytest
import torch

from mechtune.models.minilm import MiniLMTower, minilm_path
from mechtune.sim.clip import PhantomCLIP, PhantomCLIPConfig, default_checkpoint, load_default
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


# --- every setting changes the model or the run ----------------------------------------

CLIP_MODEL_FIELD_CHANGES = {
    "image_size": 64,
    "embed_dim": 32,
    "stem_patch": 8,
    "channels": (16, 32, 32),
    "hidden": 64,
}


def _encoder_fingerprint(config):
    """Seeded weights and outputs of the image tower a config builds: shapes and bytes."""
    from mechtune.sim.clip import ImageEncoder

    torch.manual_seed(0)
    encoder = ImageEncoder(config)
    size = config.image_size
    images = np.random.default_rng(0).integers(0, 256, (2, size, size), dtype=np.uint8)
    with torch.no_grad():
        out = encoder(torch.from_numpy(images))
    assert out.shape == (2, config.embed_dim)
    return {k: (tuple(v.shape), v.numpy().tobytes()) for k, v in encoder.state_dict().items()}, (
        out.numpy().tobytes()
    )


@pytest.mark.parametrize("field", sorted(CLIP_MODEL_FIELD_CHANGES))
def test_changing_a_phantom_clip_field_changes_the_image_tower(field):
    before = _encoder_fingerprint(PhantomCLIPConfig())
    after = _encoder_fingerprint(PhantomCLIPConfig(**{field: CLIP_MODEL_FIELD_CHANGES[field]}))
    assert before != after


def test_a_phantom_clip_config_survives_save_and_load(tmp_path, text):
    config = PhantomCLIPConfig(hidden=64, channels=(16, 32, 32))
    model = PhantomCLIP(config, text=text)
    model.save(tmp_path)
    again = PhantomCLIP.load(tmp_path, text=text)
    assert again.config == config
    images = np.zeros((1, 128, 128), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(model.encode_images(images), again.encode_images(images))


def test_phantom_clip_config_checks_its_fields(text):
    from mechtune.errors import ConfigError
    from mechtune.models.minilm import MINILM_ID

    with pytest.raises(ConfigError, match=r"image_size 100 must be divisible by .* = 16"):
        PhantomCLIPConfig(image_size=100)
    with pytest.raises(ConfigError, match="channels must be one or more positive widths"):
        PhantomCLIPConfig(channels=())
    with pytest.raises(ConfigError, match="hidden must be >= 1"):
        PhantomCLIPConfig(hidden=0)
    # The image embedding is compared with the text tower's: the widths must agree.
    with pytest.raises(ConfigError, match="embed_dim 32 must equal the text tower's width 384"):
        PhantomCLIP(PhantomCLIPConfig(embed_dim=32), text=text)
    # text_model was a record nothing read: old checkpoints load, other towers are refused.
    legacy = {**PhantomCLIPConfig().to_dict(), "text_model": MINILM_ID}
    assert PhantomCLIPConfig.from_dict(legacy) == PhantomCLIPConfig()
    with pytest.raises(ConfigError, match="text_model 'bert-base-uncased'"):
        PhantomCLIPConfig.from_dict({**legacy, "text_model": "bert-base-uncased"})


TRAIN_CLIP_BASE = {"n_studies": 40, "steps": 2, "batch_size": 8, "warmup_steps": 1, "threads": 1}
TRAIN_CLIP_FIELD_CHANGES = {
    "seed": 1,
    "n_studies": 48,
    "steps": 3,
    "batch_size": 16,
    "lr": 1e-2,
    "weight_decay": 0.5,
    "warmup_steps": 2,
    "negative_rate": 1.0,
    "threads": 2,  # proven to reach torch, below
    "model": PhantomCLIPConfig(image_size=64, hidden=64),
}


def _trained_fingerprint(text, **changes):
    model, log = train_phantom_clip(TrainCLIPConfig(**{**TRAIN_CLIP_BASE, **changes}), text=text)
    state = {k: (tuple(v.shape), v.numpy().tobytes()) for k, v in model.trainable_state().items()}
    return state, log["history"], log["train_studies"]


@pytest.fixture(scope="module")
def trained_base(text):
    return _trained_fingerprint(text)


def test_every_train_clip_field_has_a_change_test():
    import dataclasses

    assert {f.name for f in dataclasses.fields(TrainCLIPConfig)} == set(TRAIN_CLIP_FIELD_CHANGES)
    assert {f.name for f in dataclasses.fields(PhantomCLIPConfig)} == set(CLIP_MODEL_FIELD_CHANGES)


@pytest.mark.parametrize("field", sorted(set(TRAIN_CLIP_FIELD_CHANGES) - {"threads"}))
def test_changing_a_train_clip_field_changes_the_weights(text, trained_base, field):
    after = _trained_fingerprint(text, **{field: TRAIN_CLIP_FIELD_CHANGES[field]})
    assert after != trained_base


@pytest.mark.parametrize("threads", [1, 2])
def test_train_clip_threads_reach_torch(text, threads):
    """``threads`` only sets speed: it must be the torch thread count while training."""
    seen = []
    before = torch.get_num_threads()
    config = TrainCLIPConfig(**{**TRAIN_CLIP_BASE, "steps": 1, "threads": threads})
    train_phantom_clip(config, text=text, progress=lambda *_: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {threads}
    assert torch.get_num_threads() == before  # restored afterwards


def test_the_training_world_is_rendered_at_the_model_image_size(text):
    from mechtune.errors import ConfigError, DataError
    from mechtune.sim.world import WorldConfig, make_world

    config = TrainCLIPConfig(seed=3, model=PhantomCLIPConfig(image_size=64))
    world = config.world_config()
    assert (world.render.size, world.seed, world.report.seed) == (64, 3, 3)
    with pytest.raises(DataError, match=r"world images are \[128, 128\] pixels .* 64"):
        train_phantom_clip(
            TrainCLIPConfig(**{**TRAIN_CLIP_BASE, "model": PhantomCLIPConfig(image_size=64)}),
            world=make_world(WorldConfig(n_studies=20)),
            text=text,
        )
    for kw, message in [
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"negative_rate": 1.5}, r"negative_rate must be in \[0, 1\]"),
        ({"model": PhantomCLIPConfig(image_size=16, stem_patch=4)}, "model.image_size must"),
        ({"lr": 0.0}, "lr must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainCLIPConfig(**kw)


FIELD_TESTS = {
    "mechtune.sim.clip.PhantomCLIPConfig": {
        f: "test_changing_a_phantom_clip_field_changes_the_image_tower"
        for f in CLIP_MODEL_FIELD_CHANGES
    },
    "mechtune.sim.train_clip.TrainCLIPConfig": {
        **{
            f: "test_changing_a_train_clip_field_changes_the_weights"
            for f in TRAIN_CLIP_FIELD_CHANGES
        },
        "threads": "test_train_clip_threads_reach_torch",
    },
}
