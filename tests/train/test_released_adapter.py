"""The released adapter ``saillab/medgemma-4b-targeted-lora-mimic-mt-12k``, reproduced in
shape on the tiny random Gemma 3 (REFERENCE §2; its model card): rank 16, alpha 32,
dropout 0.05, lr 2e-4, batch 1 x grad-accum 8, the seven q/k/v/o/gate/up/down projections
of language layers 15-19 of 34, first-token cross-entropy + symmetric KL."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mechtune.models.hf_vqa import GEMMA_LORA, HFYesNoVLM, vlm_site
from mechtune.models.vlm_spec import load_yes_no_vlm
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample
from mechtune.train.lora import LoraSettings, LoraSite, apply_lora
from mechtune.train.methods import run_paraphrase_method
from tests.tiny_gemma import TEXT_LAYERS, tiny_gemma

# The card's recipe at MedGemma-4B's depth.
MEDGEMMA_LAYERS, MEDGEMMA_DEPTH = range(15, 20), 34


def scaled_layers(layers: range, depth: int, to_depth: int) -> tuple[int, ...]:
    """Blocks of a ``depth``-block model at the same relative depth in a ``to_depth`` one."""
    return tuple(sorted({round(i * to_depth / depth) for i in layers}))


LAYERS = scaled_layers(MEDGEMMA_LAYERS, MEDGEMMA_DEPTH, TEXT_LAYERS)  # (1, 2) of 3
RECIPE = ConsistencyConfig(
    lora=LoraSettings(rank=16, alpha=32, dropout=0.05, layers=LAYERS, target_modules=GEMMA_LORA),
    lr=2e-4,
    batch_size=1,
    grad_accum=8,
    consistency_weight=1.0,
    answer_loss="vocab",
    steps=2,
    checkpoint_every=2,
)
QUESTIONS = [
    ("Is there a pleural effusion?", ("Is there any effusion?", "Does the chest show effusion?")),
    ("Is there cardiomegaly?", ("Does the chest show cardiomegaly?",)),
    ("Is there edema?", ("Is there evidence of edema?",)),
    ("Is there a pneumothorax?", ("Does the chest show a pneumothorax?",)),
]


def lora_formula(model: torch.nn.Module, layers: tuple[int, ...], rank: int) -> int:
    """Sum over the adapted Linear layers (the seven projections of the chosen language
    blocks) of r * (in + out): A is [r, in], B is [out, r] (Hu et al. 2021, §4.1)."""
    pattern = re.compile(rf"language_model\.layers\.(\d+)\..*\.({'|'.join(GEMMA_LORA)})$")
    total, seen = 0, set()
    for name, module in model.named_modules():
        match = pattern.search(name)
        if match and int(match.group(1)) in layers:
            assert isinstance(module, torch.nn.Linear), name
            total += rank * (module.in_features + module.out_features)
            seen.add((int(match.group(1)), match.group(2)))
    assert seen == {(layer, t) for layer in layers for t in GEMMA_LORA}
    return total


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny Gemma 3 loaded through its spec and trained with the recipe."""
    folder = tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))
    out = tmp_path_factory.mktemp("run")
    vlm = load_yes_no_vlm(f"hf:{folder}")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in QUESTIONS]
    examples = [ConsistencyExample(i, q, p, i % 2 == 0) for i, (q, p) in enumerate(QUESTIONS)]
    run_paraphrase_method("consistency-lora", vlm, images, examples, RECIPE, out)
    return folder, out, vlm, images


def test_the_recipe_is_the_cards(trained):
    _, out, _, _ = trained
    assert LAYERS == (1, 2)
    info = json.loads((out / "train.json").read_text())
    assert info["config"] == RECIPE.to_dict() and info["step"] == RECIPE.steps
    # batch 1 x grad-accum 8: each step's loss is the mean over 8 micro-batches
    assert len(info["history"]) == 2 and all(np.isfinite(h["loss"]) for h in info["history"])


def test_adapter_config_has_the_cards_settings(trained):
    _, out, _, _ = trained
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.05)
    assert sorted(config["target_modules"]) == sorted(GEMMA_LORA)
    assert config["layers_to_transform"] == list(LAYERS)
    pattern = config["layers_pattern"]
    assert (pattern if isinstance(pattern, str) else pattern[0]) == "language_model.layers"
    assert config["peft_type"] == "LORA" and config["bias"] == "none"


def test_adapter_weights_sit_in_the_chosen_language_blocks_only(trained):
    _, out, _, _ = trained
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert weights and not any("vision_tower" in k or "multi_modal" in k for k in weights)
    blocks = {int(re.search(r"language_model\.layers\.(\d+)\.", k).group(1)) for k in weights}
    assert blocks == set(LAYERS)
    assert all(re.search(r"\.lora_[AB]\.weight$", k) for k in weights)


def test_trainable_parameters_match_the_formula(trained):
    from transformers import AutoModelForImageTextToText

    folder, out, vlm, _ = trained
    fresh = AutoModelForImageTextToText.from_pretrained(folder)
    want = lora_formula(fresh, LAYERS, 16)
    # by hand: hidden 32, 2 query heads and 1 KV head of 16, MLP 64:
    # q 32+32, k 32+16, v 32+16, o 32+32, gate 32+64, up 32+64, down 64+32 = 512 per block
    assert want == 16 * 512 * len(LAYERS)
    trainable = sum(p.numel() for p in vlm.module.parameters() if p.requires_grad)
    saved = sum(
        t.numel() for t in load_file(str(out / "adapter" / "adapter_model.safetensors")).values()
    )
    assert trainable == saved == want


def test_adapter_loads_with_peft_on_a_fresh_base_and_gives_the_same_margins(trained):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, out, vlm, images = trained
    texts = [q for q, _ in QUESTIONS] + [p[0] for _, p in QUESTIONS]
    rows = images + images
    base = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        untrained = HFYesNoVLM(base, processor).margin(rows, texts)
        PeftModel.from_pretrained(base, str(out / "adapter"))  # injected into base's modules
        loaded = HFYesNoVLM(base.eval(), processor).margin(rows, texts)
        ours = vlm.margin(rows, texts)
    assert torch.allclose(loaded, ours, rtol=0, atol=1e-6)
    assert (ours - untrained).abs().max() > 1e-4  # the adapter changed the answers


def test_at_medgemma_shapes_the_recipe_trains_the_cards_4_4m_parameters():
    """MedGemma-4B's shapes (REFERENCE §6; built on the meta device, no weights): the
    recipe's peft adapter has 4,382,720 trainable parameters, the card's "4.4M, 0.10% of
    base" of 4,300,079,472."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config={
            "vocab_size": 262208,
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": MEDGEMMA_DEPTH,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
        },
        vision_config={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 896,
            "vision_use_head": False,
        },
        mm_tokens_per_image=256,
    )
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    layers = tuple(MEDGEMMA_LAYERS)
    want = lora_formula(model, layers, 16)
    site = vlm_site(model)
    lora_site = LoraSite(site.layers_pattern, site.lora_targets, len(site.block_list(model)))
    settings = LoraSettings(
        rank=16, alpha=32, dropout=0.05, layers=layers, target_modules=GEMMA_LORA
    )
    peft_model = apply_lora(model, lora_site, settings)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert total == 4_300_079_472
    assert trainable == want == 4_382_720
    assert round(100 * trainable / total, 2) == 0.10
