import math
from contextlib import nullcontext

import pytest
import torch

from mechtune.models.spec import load_dual_encoder
from mechtune.train.lora import LoraSettings, active_layers, apply_text_lora, lora_parameters
from mechtune.train.losses import ClaimLoss, ContrastiveLoss, NASTLoss, NegationBatch
from mechtune.train.scaling import block_scales, scaled_gradients
from tests.tiny_models import tiny_clip


@pytest.fixture()
def clip(tmp_path):
    return load_dual_encoder(f"hf:{tiny_clip(tmp_path)}")


def test_lora_lands_in_text_blocks_only(clip):
    model = apply_text_lora(clip.model, LoraSettings(rank=2, alpha=4))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("text_model.encoder.layers" in n and "lora_" in n for n in names)
    assert not any("vision_model" in n for n in names)
    assert active_layers(model) == [0, 1]
    targets = {n.split(".lora_")[0].split(".")[-1] for n in names}
    assert targets == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_lora_restricted_to_chosen_blocks(clip):
    model = apply_text_lora(clip.model, LoraSettings(rank=2, layers=(1,)))
    assert active_layers(model) == [1]
    with pytest.raises(ValueError, match=r"LoRA layers \[6\] out of range: .* blocks 0..5"):
        apply_text_lora(load_dual_encoder("phantom:default").model, LoraSettings(layers=(6, 1)))


def test_lora_on_minilm_targets_attention_and_mlp():
    enc = load_dual_encoder("phantom:default")
    model = apply_text_lora(enc.model, LoraSettings(rank=4))
    names = list(lora_parameters(model))
    assert {n.split(".lora_")[0].split("layer.")[1].split(".", 1)[1] for n in names} == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    assert active_layers(model) == list(range(6))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "image_encoder" in n)


def test_gradients_are_scaled_by_alpha_power_beta():
    enc = load_dual_encoder("phantom:default")
    model = apply_text_lora(enc.model, LoraSettings(rank=2))
    torch.manual_seed(0)
    for _, p in lora_parameters(model).values():  # make B non-zero so A gets gradients
        torch.nn.init.normal_(p, std=0.02)
    tokens = enc.tokenize(["There is no pleural effusion.", "Severe pulmonary edema."])

    def grads(scales=None):
        model.zero_grad()
        ctx = scaled_gradients(model, scales) if scales is not None else nullcontext()
        with ctx:
            enc.encode_tokens(tokens).square().sum().backward()
        return {n: p.grad.clone() for n, (_, p) in lora_parameters(model).items()}

    alpha = torch.tensor([0.3, 1.0, 0.0, 0.5, 0.25, 0.8, 0.1])
    beta = 2.0
    scales = block_scales(alpha, beta, 6)
    plain, scaled = grads(), grads(scales)
    for name, (layer, _) in lora_parameters(model).items():
        factor = float(alpha[layer + 1]) ** beta
        assert torch.allclose(scaled[name], plain[name] * factor, atol=1e-7), name
    assert block_scales(alpha, 0.0, 6).eq(1).all()  # beta = 0 is uniform LoRA
    # hooks are gone after the block
    assert torch.equal(grads()[next(iter(plain))], plain[next(iter(plain))])


def test_a_block_with_alpha_zero_does_not_move(clip):
    model = apply_text_lora(clip.model, LoraSettings(rank=2))
    for _, (_, p) in lora_parameters(model).items():
        torch.nn.init.normal_(p, std=0.05)
    before = {n: p.detach().clone() for n, (_, p) in lora_parameters(model).items()}
    opt = torch.optim.AdamW(
        [p for _, (_, p) in lora_parameters(model).items()], lr=1e-2, weight_decay=0.0
    )
    tokens = clip.tokenize(["there is no edema .", "there is severe edema ."])
    scales = block_scales([0.5, 0.0, 1.0], 1.0, 2)
    for _ in range(3):
        opt.zero_grad()
        with scaled_gradients(model, scales):
            clip.encode_tokens(tokens).sum().backward()
        opt.step()
    for name, (layer, p) in lora_parameters(model).items():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (layer == 1), (name, layer)


def test_block_scales_validation():
    with pytest.raises(ValueError, match="expected 3"):
        block_scales([0.1, 0.2], 1.0, 2)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        block_scales([0.1, 2.0, 0.3], 1.0, 2)


def test_losses_against_hand_computation():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    text = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.6, 0.8]]), dim=-1)
    scale = 10.0
    # logits = 10 * [[0.8, 0.6], [0.6, 0.8]]: every row and column puts 8 on the target
    expected = -math.log(math.exp(8) / (math.exp(8) + math.exp(6)))
    assert ContrastiveLoss()(image, text, scale)["clip"].item() == pytest.approx(expected, rel=1e-6)

    cands = torch.stack([text, text.flip(0)], dim=1)  # [B=2, K=2, D]: correct first
    mask = torch.tensor([[True, True], [True, False]])
    claim = ClaimLoss()(image, cands, mask, scale)["claim"].item()
    # row 0: logits (8, 6) -> CE = expected; row 1: only the correct candidate -> CE = 0
    assert claim == pytest.approx(expected / 2, rel=1e-6)

    terms = NASTLoss(lam=0.25)(NegationBatch(image, text, image, cands, mask, scale))
    assert terms["loss"].item() == pytest.approx(0.25 * expected + 0.75 * expected / 2, rel=1e-6)
    assert set(terms) == {"clip", "claim", "loss"}
    with pytest.raises(ValueError, match=r"lam \(lambda\) must be in \[0, 1\]"):
        NASTLoss(lam=1.5)


def test_update_norms_and_share(clip):
    from peft.tuners.lora import LoraLayer

    from mechtune.eval.update_share import top_blocks, update_share
    from mechtune.train.lora import lora_update_norms

    model = apply_text_lora(clip.model, LoraSettings(rank=2, alpha=4))
    assert lora_update_norms(model) == {0: 0.0, 1: 0.0}  # peft initialises B to zero
    expected = {}
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "fc1")) and isinstance(module, LoraLayer):
            torch.nn.init.constant_(module.lora_B["default"].weight, 0.1)
            layer = int(name.split("layers.")[1].split(".")[0])
            delta = (4 / 2) * module.lora_B["default"].weight @ module.lora_A["default"].weight
            expected[layer] = expected.get(layer, 0.0) + float(delta.norm())
    norms = lora_update_norms(model)
    assert norms.keys() == expected.keys()
    for layer, value in expected.items():
        assert norms[layer] == pytest.approx(value, rel=1e-6)
    assert top_blocks([0.1, 0.5, 0.3], 2) == [1, 2]
    share = update_share({0: 1.0, 1: 3.0, 2: 0.0}, [0.9, 0.1, 0.5], 1)
    assert share == pytest.approx(0.25)
    with pytest.raises(ValueError, match="zero everywhere"):
        update_share({0: 0.0}, [1.0], 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        top_blocks([0.1, 0.2, 0.3], 4)


def test_negclip_loss_against_hand_computation():
    from mechtune.train.losses import NegCLIPLoss

    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # one caption row (image e0, caption e0) and two claim rows: image e1 with correct e1
    # and hard negative e0; image e0 with correct e0 and no negative (masked out)
    cands = torch.stack([torch.stack([e1, e0]), torch.stack([e0, e1])])  # [C=2, K=2, D]
    mask = torch.tensor([[True, True], [True, False]])
    batch = NegationBatch(e0[None], e0[None], torch.stack([e1, e0]), cands, mask, 2.0)
    # images: e0, e1, e0; texts: positives e0, e1, e0, then the one hard negative e0.
    # i2t logits (scale 2): image e0 -> (2, 0, 2, 2); image e1 -> (0, 2, 0, 0).
    a, b = math.exp(2), 1.0
    i2t = (-math.log(a / (3 * a + b)) - math.log(a / (a + 3 * b)) - math.log(a / (3 * a + b))) / 3
    # t2i logits: text e0 -> (2, 0, 2); text e1 -> (0, 2, 0); text e0 -> (2, 0, 2)
    t2i = (-math.log(a / (2 * a + b)) - math.log(a / (a + 2 * b)) - math.log(a / (2 * a + b))) / 3
    out = NegCLIPLoss()(batch)
    assert out["negclip_i2t"].item() == pytest.approx(i2t, rel=1e-6)
    assert out["negclip_t2i"].item() == pytest.approx(t2i, rel=1e-6)
    assert out["loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_create_loss_builds_the_named_loss_from_the_config():
    from mechtune.errors import ConfigError
    from mechtune.train.consistency import ConsistencyConfig
    from mechtune.train.losses import NegCLIPLoss, VocabConsistencyLoss, create_loss
    from mechtune.train.negation import LoopConfig

    assert isinstance(create_loss("negclip", LoopConfig()), NegCLIPLoss)
    nast = create_loss("nast", LoopConfig(lam=0.3))
    assert isinstance(nast, NASTLoss) and nast.lam == 0.3
    consistency = create_loss("consistency", ConsistencyConfig(consistency_weight=2.5))
    assert isinstance(consistency, VocabConsistencyLoss) and consistency.weight == 2.5
    with pytest.raises(
        ConfigError, match=r"loss must be one of \('nast', 'negclip', 'consistency'\), got 'bogus'"
    ):
        create_loss("bogus", LoopConfig())


def test_adam_undoes_gradient_scaling_but_not_learning_rate_scaling(clip):
    """Why LoopConfig.scaling exists: with AdamW, multiplying a block's gradients by a
    constant leaves its update (almost) unchanged; per-block learning rates do not."""
    from mechtune.train.methods import NegationData, negation_trainer
    from mechtune.train.negation import CaptionExample, ClaimExample, LoopConfig

    caps = [CaptionExample("there is no edema .", 0), CaptionExample("no pneumothorax .", 1)]
    claims = [ClaimExample(("there is no edema .", "there is severe edema ."), 0)]
    images = torch.nn.functional.normalize(
        torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )

    def block1_update(scaling, alpha, tmp):
        torch.manual_seed(0)
        enc = load_dual_encoder(f"hf:{clip_dir_of(clip)}")
        cfg = LoopConfig(
            steps=3,
            caption_batch=2,
            claim_batch=1,
            lr=1e-2,
            beta=1.0,
            checkpoint_every=3,
            scaling=scaling,
            lora=LoraSettings(rank=2, alpha=4),
        )
        trainer = negation_trainer("nast", enc, images, NegationData(caps, claims), alpha, cfg, tmp)
        for _, p in lora_parameters(trainer.model).values():
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(3))
        start = {
            n: p.detach().clone()
            for n, (blk, p) in lora_parameters(trainer.model).items()
            if blk == 1
        }
        trainer.fit()
        return sum(
            float((p.detach() - start[n]).norm())
            for n, (blk, p) in lora_parameters(trainer.model).items()
            if blk == 1
        )

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        full_g = block1_update("gradient", [1.0, 1.0, 1.0], f"{d}/a")
        tenth_g = block1_update("gradient", [1.0, 1.0, 0.1], f"{d}/b")
        tenth_lr = block1_update("lr", [1.0, 1.0, 0.1], f"{d}/c")
    assert tenth_g == pytest.approx(full_g, rel=0.05)  # Adam normalises the factor away
    assert tenth_lr == pytest.approx(0.1 * full_g, rel=0.2)


def clip_dir_of(encoder):
    return encoder.model.config._name_or_path
