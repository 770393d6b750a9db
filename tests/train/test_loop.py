import pytest
import torch

from mechtune.models.spec import load_dual_encoder
from mechtune.train.loop import CaptionExample, ClaimExample, LoopConfig, Trainer
from mechtune.train.lora import LoraSettings, lora_parameters
from tests.tiny_models import tiny_clip

CAPTIONS = [
    CaptionExample("there is no pleural effusion .", 0),
    CaptionExample("there is small pleural effusion .", 1),
    CaptionExample("no pneumothorax .", 2),
]
CLAIMS = [
    ClaimExample(("there is no edema .", "there is severe edema ."), 0),
    ClaimExample(("large pneumothorax .", "no pneumothorax .", "small pneumothorax ."), 1),
    ClaimExample(("negative for cardiomegaly .", "positive for cardiomegaly ."), 2),
]


def _trainer(folder, out, **kw):
    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    settings = dict(
        steps=6,
        caption_batch=3,
        claim_batch=2,
        lr=1e-2,
        checkpoint_every=3,
        lora=LoraSettings(rank=2, alpha=4, dropout=0.1),
    )
    config = LoopConfig(**{**settings, **kw})
    trainer = Trainer(enc, [0.2, 1.0, 0.5], config, out)
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    images = torch.nn.functional.normalize(
        torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    return trainer, images


def _weights(trainer):
    return {n: p.detach().clone() for n, (_, p) in lora_parameters(trainer.model).items()}


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    straight, images = _trainer(folder, tmp_path / "a")
    straight.fit(images, CAPTIONS, CLAIMS)

    first, images = _trainer(folder, tmp_path / "b")
    first.fit(images, CAPTIONS, CLAIMS, stop_after=4)  # killed after step 4; last ckpt: 3
    assert [p.name for p in first.checkpoints()] == ["step_000003"]
    resumed, images = _trainer(folder, tmp_path / "b")
    resumed.fit(images, CAPTIONS, CLAIMS, resume=True)
    assert resumed.step == 6
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_loss_goes_down_and_terms_are_logged(tmp_path):
    trainer, images = _trainer(
        tiny_clip(tmp_path / "clip"),
        tmp_path / "run",
        beta=0.0,
        steps=30,
        claim_batch=3,
        lr=3e-2,
        checkpoint_every=30,
        lora=LoraSettings(rank=2, alpha=4),
    )
    history = trainer.fit(images, CAPTIONS, CLAIMS)
    assert set(history[0]) == {"step", "clip", "claim", "loss"}
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < first


def test_empty_data_is_refused(tmp_path):
    trainer, images = _trainer(tiny_clip(tmp_path / "clip"), tmp_path / "run")
    with pytest.raises(ValueError, match="at least one caption and one claim set"):
        trainer.fit(images, [], CLAIMS)


def test_checkpoint_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import CLIPModel

    folder = tiny_clip(tmp_path / "clip")
    trainer, images = _trainer(folder, tmp_path / "run")
    trainer.fit(images, CAPTIONS, CLAIMS)
    last = trainer.checkpoints()[-1]
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(folder), last / "peft")
    ours = dict(trainer.model.named_parameters())
    for name, p in loaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(p, ours[name]), name
