"""The random-weight MedGemma-4B shape: its real size on the meta device (no memory),
its real-size tokenizer and processor, and the toy scale through mechtune's adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechtune.bench.gemma_shape import (
    GEMMA3_TEXT_TOKENS,
    MEDGEMMA_4B_PARAMETERS,
    build_medgemma,
    gemma_vocab,
    medgemma_config,
    medgemma_model,
    medgemma_processor,
    parameter_count,
    random_images,
)
from mechtune.errors import ConfigError
from mechtune.models.hf_vqa import HFYesNoVLM
from mechtune.models.yes_no import edit_block_output


def test_real_shape_has_medgemma_4b_sizes_and_parameter_count() -> None:
    """REFERENCE §6 shapes; the count is the README's 4,300,079,472 exactly (the tied
    output embedding counted once), built on the meta device."""
    counts = parameter_count("real")
    assert counts["total"] == MEDGEMMA_4B_PARAMETERS == 4_300_079_472
    assert (
        counts["language_model"] + counts["vision_tower"] + counts["projector"] == counts["total"]
    )
    # by hand: embeddings + 34 blocks (attention, MLP, 4 block norms, q/k norms) + final norm
    d, mlp, q, kv, hd = 2560, 10240, 8 * 256, 4 * 256, 256
    block = d * q + 2 * d * kv + q * d + 3 * d * mlp + 4 * d + 2 * hd
    assert counts["language_model"] == 262_208 * d + 34 * block + d
    model = medgemma_model("real", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    text, vision = model.config.text_config, model.config.vision_config
    assert len(model.model.language_model.layers) == text.num_hidden_layers == 34
    assert (text.hidden_size, text.intermediate_size, text.head_dim) == (2560, 10240, 256)
    assert (text.num_attention_heads, text.num_key_value_heads) == (8, 4)
    assert model.lm_head.weight.shape == (262_208, 2560)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    full = [i for i, kind in enumerate(text.layer_types) if kind == "full_attention"]
    assert full == [5, 11, 17, 23, 29]
    assert text.layer_types.count("sliding_attention") == 29 and text.sliding_window == 1024
    assert len(model.model.vision_tower.encoder.layers) == vision.num_hidden_layers == 27
    assert (vision.hidden_size, vision.intermediate_size, vision.num_attention_heads) == (
        1152,
        4304,
        16,
    )
    assert (vision.image_size, vision.patch_size, model.config.mm_tokens_per_image) == (
        896,
        14,
        256,
    )
    assert model.dtype == torch.bfloat16


def test_real_processor_has_the_gemma3_vocabulary_and_expands_one_image() -> None:
    processor = medgemma_processor("real")
    tokenizer = processor.tokenizer
    assert len(tokenizer) == GEMMA3_TEXT_TOKENS == 262_144
    config = medgemma_config("real")
    assert config.image_token_index == tokenizer.image_token_id
    assert (config.boi_token_index, config.eoi_token_index) == (
        tokenizer.boi_token_id,
        tokenizer.eoi_token_id,
    )
    base = len(gemma_vocab()[0])
    ids = tokenizer.encode("Is there a small <unused7> pleural effusion?", add_special_tokens=False)
    assert max(ids) < base  # filler tokens are never produced
    vlm_prompt = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there?"}]}
    ]
    text = processor.apply_chat_template(vlm_prompt, add_generation_prompt=True, tokenize=False)
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    out = processor(text=[text], images=[[image]], add_special_tokens=False, return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    assert ids.count(tokenizer.image_token_id) == 256
    assert ids.count(tokenizer.boi_token_id) == ids.count(tokenizer.eoi_token_id) == 1
    assert tuple(out["pixel_values"].shape) == (1, 3, 896, 896)
    assert int(out["token_type_ids"].sum()) == 256


def test_tiny_build_through_the_adapter_computes_margins() -> None:
    vlm = build_medgemma("tiny", dtype=torch.float32, seed=0)
    assert isinstance(vlm, HFYesNoVLM)
    assert len(vlm.layers) == 6
    assert vlm.model.config.text_config.layer_types[5] == "full_attention"
    images = random_images(3, 32, seed=0)
    questions = [
        "Is there a pleural effusion?",
        "Is there any edema?",
        "Is there a pleural effusion?",
    ]
    positions = []
    with torch.no_grad(), edit_block_output(vlm.model.lm_head, lambda x: positions.append(x.shape)):
        logits = vlm.first_token_logits(images, questions)
        margin = vlm.margin(images, questions)
    assert all(shape[1] == 1 for shape in positions)  # logits_to_keep=1 reaches the model
    assert logits.shape == (3, len(vlm.processor.tokenizer)) and logits.dtype == torch.float32
    assert margin.shape == (3,) and torch.isfinite(margin).all()
    torch.testing.assert_close(margin, vlm.margin_from_logits(logits))
    # the image projection is not zero: the same question on another image answers otherwise
    assert abs(float(margin[0] - margin[2])) > 1e-4


def test_dtype_and_device_are_those_of_construction() -> None:
    vlm = build_medgemma("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in vlm.model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        margin = vlm.margin(random_images(2, 32), ["Is there any edema?"] * 2)
    assert margin.dtype == torch.float32
    assert all(p.device.type == "meta" for p in medgemma_model("tiny", device="meta").parameters())


def test_unknown_scale_and_small_vocabulary_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"scale must be one of \('tiny', 'real'\), got 'huge'"):
        medgemma_config("huge")
    with pytest.raises(ConfigError, match=r"size must be >= 448 \(the base vocabulary\), got 10"):
        gemma_vocab(10)
