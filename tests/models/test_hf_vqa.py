import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mechtune.errors import DataError
from mechtune.models.hf_vqa import (
    DEFAULT_INSTRUCTION,
    GEMMA_LORA,
    AnswerTokenError,
    HFYesNoVLM,
    YesNoPrompt,
    answer_variants,
    as_pil_images,
    resolve_answer_tokens,
)
from mechtune.models.yes_no import YesNoVLM, capture_block_outputs, layer_of_parameter
from tests.tiny_gemma import TEXT_LAYERS, tiny_gemma

QUESTIONS = [
    "Is there edema?",
    "Is there any pleural effusion at the right costophrenic angle?",
    "Does the chest show cardiomegaly or a pneumothorax?",
]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


@pytest.fixture(scope="module")
def vlm(gemma_dir):
    return HFYesNoVLM.from_pretrained(gemma_dir, dtype=torch.float32)


@pytest.fixture
def images():
    """Three images of different sizes and kinds: RGB array, grey array, PIL."""
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, (28, 28), dtype=np.uint8),
        Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)),
    ]


def _manual_margin(vlm, image, question, yes_tokens, no_tokens) -> float:
    """One row alone, by hand: the processor's own chat-template tokenization (no padding),
    a plain forward pass, and logsumexp over the named tokens."""
    processor, model = vlm.processor, vlm.model
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image).convert("RGB")
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": pil},
                {"type": "text", "text": f"{question} {DEFAULT_INSTRUCTION}"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert inputs["input_ids"].shape[0] == 1 and bool(inputs["attention_mask"].all())
    logits = model(**inputs).logits[0, -1]
    yes_ids = processor.tokenizer.convert_tokens_to_ids(yes_tokens)
    no_ids = processor.tokenizer.convert_tokens_to_ids(no_tokens)
    return float(logits[yes_ids].logsumexp(-1) - logits[no_ids].logsumexp(-1))


def test_tiny_gemma_reloads_with_the_language_blocks_as_layers(vlm):
    from transformers import Gemma3ForConditionalGeneration

    assert isinstance(vlm, YesNoVLM)
    assert isinstance(vlm.module, Gemma3ForConditionalGeneration)
    assert vlm.layers is vlm.model.model.language_model.layers
    assert len(vlm.layers) == TEXT_LAYERS
    assert vlm.layers_pattern == "language_model.layers"
    assert vlm.lora_targets == GEMMA_LORA
    assert "torchvision" not in sys.modules


def test_prompt_is_the_chat_template_with_generation_prompt(vlm):
    text = vlm.prompts(["Is there edema?"])[0]
    assert text.startswith("<bos><start_of_turn>user\n<start_of_image>")
    assert text.endswith("Is there edema? Answer yes or no.<end_of_turn>\n<start_of_turn>model\n")
    plain = HFYesNoVLM(
        vlm.model, vlm.processor, prompt=YesNoPrompt(instruction=None, system="Be brief.")
    )
    text = plain.prompts(["Is there edema?"])[0]
    assert "Be brief.\n\n<start_of_image>Is there edema?<end_of_turn>" in text
    with pytest.raises(ValueError, match="instruction"):
        YesNoPrompt(instruction="  ")


def test_batched_margins_equal_a_manual_forward_per_row(vlm, images):
    with torch.no_grad():
        margins = vlm.margin(images, QUESTIONS)
        manual = [
            _manual_margin(vlm, image, q, ["Yes", "yes", "▁yes"], ["No", "no", "▁No", "▁no"])
            for image, q in zip(images, QUESTIONS, strict=True)
        ]
        lengths = vlm.encode(images, QUESTIONS)["attention_mask"].sum(-1)
    assert margins.shape == (3,) and margins.dtype == torch.float32
    assert len(set(lengths.tolist())) == 3  # rows really were padded differently
    assert torch.allclose(margins, torch.tensor(manual), atol=1e-4, rtol=0)
    assert (margins[:, None] - margins[None, :]).abs().max() > 1e-3  # rows are not alike


def test_first_reduce_uses_the_canonical_tokens(vlm, images):
    first = HFYesNoVLM(vlm.model, vlm.processor, reduce="first")
    with torch.no_grad():
        margins = first.margin(images[:2], QUESTIONS[:2])
        manual = [
            _manual_margin(vlm, image, q, ["Yes"], ["No"])
            for image, q in zip(images[:2], QUESTIONS[:2], strict=True)
        ]
    assert torch.allclose(margins, torch.tensor(manual), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="reduce"):
        HFYesNoVLM(vlm.model, vlm.processor, reduce="mean")  # type: ignore[arg-type]


def test_first_token_logits_give_the_margin_in_one_pass(gemma_dir, images):
    """margin == margin_from_logits(first_token_logits): the full-vocabulary logits at the
    answer position, reduced as ``reduce`` says (logsumexp over the spellings, or the
    canonical tokens), from the model loaded through its spec."""
    from mechtune.models.vlm_spec import load_yes_no_vlm

    vlm = load_yes_no_vlm(f"hf:{gemma_dir}")
    tokenizer = vlm.processor.tokenizer
    vocab = vlm.model.config.text_config.vocab_size
    with torch.no_grad():
        logits = vlm.first_token_logits(images, QUESTIONS)
        margins = vlm.margin(images, QUESTIONS)
        manual = [
            _manual_margin(vlm, image, q, ["Yes", "yes", "▁yes"], ["No", "no", "▁No", "▁no"])
            for image, q in zip(images, QUESTIONS, strict=True)
        ]
    assert logits.shape == (3, vocab) and logits.dtype == torch.float32
    assert torch.equal(vlm.margin_from_logits(logits), margins)
    assert torch.allclose(margins, torch.tensor(manual), atol=1e-4, rtol=0)
    yes, no = tokenizer.convert_tokens_to_ids("Yes"), tokenizer.convert_tokens_to_ids("No")
    assert vlm.answer_ids == (yes, no)
    first = HFYesNoVLM(vlm.model, vlm.processor, reduce="first")
    assert first.answer_ids == (yes, no)
    assert torch.equal(first.margin_from_logits(logits), logits[:, yes] - logits[:, no])
    with torch.no_grad():
        assert torch.equal(first.margin(images, QUESTIONS), logits[:, yes] - logits[:, no])
    assert vlm.first_token_logits([], []).shape == (0, vocab)
    # differentiable: the cross-entropy over the vocabulary reaches the language blocks
    vlm.model.zero_grad(set_to_none=True)
    try:
        target = torch.tensor([yes, no])
        loss = torch.nn.functional.cross_entropy(
            vlm.first_token_logits(images[:2], QUESTIONS[:2]), target
        )
        loss.backward()
        grads = [p.grad for p in vlm.layers[-1].parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    finally:
        vlm.model.zero_grad(set_to_none=True)


def test_answer_tokens_keep_only_single_token_spellings(vlm):
    tokenizer = vlm.processor.tokenizer
    assert answer_variants("yes") == ("Yes", "yes", "YES", " Yes", " yes", " YES")
    yes = resolve_answer_tokens(tokenizer, "yes")
    no = resolve_answer_tokens(tokenizer, "no")
    # " Yes", "YES", " YES", "NO", " NO" are several tokens in the tiny vocabulary.
    assert yes.variants == ("Yes", "yes", " yes")
    assert no.variants == ("No", "no", " No", " no")
    assert yes.ids == tuple(tokenizer.convert_tokens_to_ids(["Yes", "yes", "▁yes"]))
    assert yes.canonical == tokenizer.convert_tokens_to_ids("Yes")
    assert (vlm.yes, vlm.no) == (yes, no)
    # Spellings that share an id count once.
    assert resolve_answer_tokens(tokenizer, "yes", ["yes", "yes", "YES"]).ids == (yes.ids[1],)


def test_answer_tokens_error_when_no_spelling_is_one_token(vlm):
    tokenizer = vlm.processor.tokenizer
    with pytest.raises(AnswerTokenError, match="'maybe'"):
        resolve_answer_tokens(tokenizer, "maybe")
    with pytest.raises(AnswerTokenError, match="'YES'"):
        resolve_answer_tokens(tokenizer, "yes", ["YES", " Yes"])
    with pytest.raises(AnswerTokenError, match="affirmative"):
        HFYesNoVLM(vlm.model, vlm.processor, yes_word="affirmative")


def test_margin_is_differentiable(vlm, images):
    model = vlm.model
    model.zero_grad(set_to_none=True)
    try:
        vlm.margin(images[:2], QUESTIONS[:2]).sum().backward()
        for block in (vlm.layers[0], vlm.layers[-1], model.model.vision_tower):
            grads = [p.grad for p in block.parameters()]
            assert all(g is not None for g in grads)
            assert sum(float(g.abs().sum()) for g in grads) > 0
    finally:
        model.zero_grad(set_to_none=True)


def test_lora_reaches_only_language_block_1(gemma_dir, images):
    from peft import LoraConfig, get_peft_model

    vlm = HFYesNoVLM.from_pretrained(gemma_dir, dtype=torch.float32)
    with torch.no_grad():
        before = vlm.margin(images, QUESTIONS)
    config = LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=list(vlm.lora_targets),
        layers_to_transform=[1],
        layers_pattern=vlm.layers_pattern,
    )
    peft_model = get_peft_model(vlm.module, config)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all(".language_model.layers.1." in n for n in names)
    assert not any("vision_tower" in n for n in names)
    assert {layer_of_parameter(n, vlm.layers_pattern) for n in names} == {1}
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert adapted == set(GEMMA_LORA)

    # peft adapts the model in place: the adapter's margin runs through LoRA.
    margins = vlm.margin(images, QUESTIONS)
    assert torch.allclose(margins.detach(), before, atol=1e-6)  # lora_B starts at zero
    margins.sum().backward()
    lora_b = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and float(g.abs().sum()) > 0 for g in lora_b)


def test_lora_on_every_language_block_stays_out_of_the_vision_tower(gemma_dir):
    from peft import LoraConfig, get_peft_model

    vlm = HFYesNoVLM.from_pretrained(gemma_dir, dtype=torch.float32)
    config = LoraConfig(
        r=2,
        target_modules=list(vlm.lora_targets),
        layers_to_transform=list(range(len(vlm.layers))),
        layers_pattern=vlm.layers_pattern,
    )
    names = [n for n, p in get_peft_model(vlm.module, config).named_parameters() if "lora_" in n]
    layers = {layer_of_parameter(n, vlm.layers_pattern) for n in names}
    assert layers == set(range(TEXT_LAYERS))
    assert not any("vision_tower" in n for n in names)


def test_readout_positions_mark_the_last_position(vlm, images):
    mask = vlm.readout_positions(images, QUESTIONS)
    length = vlm.encode(images, QUESTIONS)["input_ids"].shape[1]
    assert mask.shape == (3, length) and mask.dtype == torch.bool
    assert mask[:, -1].all() and int(mask.sum()) == 3
    with capture_block_outputs(vlm, [0, TEXT_LAYERS - 1]) as states, torch.no_grad():
        vlm.margin(images, QUESTIONS)
    assert states[0].shape == (3, length, 32)
    assert states[TEXT_LAYERS - 1][mask].shape == (3, 32)


def test_blank_images_keep_type_and_size(vlm, images):
    blank = vlm.blank_images(images)
    assert isinstance(blank, list) and len(blank) == 3
    assert isinstance(blank[0], np.ndarray) and blank[0].shape == (40, 50, 3)
    assert blank[1].shape == (28, 28) and blank[1].dtype == np.uint8
    assert isinstance(blank[2], Image.Image) and blank[2].size == images[2].size
    assert all(np.asarray(b).max() == 0 for b in blank)
    stacked = np.random.default_rng(1).integers(0, 256, (2, 30, 30), dtype=np.uint8)
    blank_stack = vlm.blank_images(stacked)
    assert blank_stack.shape == stacked.shape and not blank_stack.any()
    with torch.no_grad():
        blank_margins = vlm.margin(blank, QUESTIONS)
        assert blank_margins.shape == (3,)
        assert not torch.allclose(blank_margins, vlm.margin(images, QUESTIONS), atol=1e-4)
        assert vlm.margin(blank_stack, QUESTIONS[:2]).shape == (2,)


def test_bad_inputs_are_named(vlm, images):
    with pytest.raises(ValueError, match="2 images but 3 questions"):
        vlm.margin(images[:2], QUESTIONS)
    with pytest.raises(ValueError, match="uint8"):
        as_pil_images([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(DataError, match="batch"):
        as_pil_images(images[2])
    assert vlm.margin([], []).shape == (0,)
    assert vlm.readout_positions([], []).shape == (0, 0)


def test_consistency_lora_trains_only_the_chosen_gemma_block(gemma_dir, images, tmp_path):
    """Two consistency-LoRA steps on block 1: its LoRA weights move; no base weight, no other
    block and nothing in the vision tower changes."""
    from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample
    from mechtune.train.lora import LoraSettings, active_layers, lm_lora_site
    from mechtune.train.methods import paraphrase_trainer

    vlm = HFYesNoVLM.from_pretrained(gemma_dir, dtype=torch.float32)
    base = {n: p.detach().clone() for n, p in vlm.module.named_parameters()}
    config = ConsistencyConfig(
        lora=LoraSettings(layers=(1,), rank=2, alpha=4),
        lr=1e-2,
        steps=2,
        batch_size=2,
        checkpoint_every=2,
    )
    examples = [
        ConsistencyExample(0, QUESTIONS[0], ("Any edema?",), True),
        ConsistencyExample(1, QUESTIONS[1], ("Is the right angle blunted?",), False),
    ]
    trainer = paraphrase_trainer(
        "consistency-lora", vlm, images, examples, config, tmp_path / "run"
    )
    assert active_layers(trainer.model, lm_lora_site(vlm)) == [1]
    lora_before = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
    history = trainer.fit()
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    moved = [n for n, (_, p) in trainer.params.items() if not torch.equal(p, lora_before[n])]
    assert moved and all(".layers.1." in n and "lora_" in n for n in moved)
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            continue
        original = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(p, base[original]), name
    assert (tmp_path / "run").exists()


def test_medgemma_recipe_matches_the_released_adapter():
    """recipes/consistency-medgemma-mimic.yaml: rank 16, alpha 32, dropout 0.05, lr 2e-4,
    batch 1 x 8 accumulation steps, the first-token vocabulary loss and the seven Gemma
    projections, read whole as a study recipe (``paraphrase train --layers 15-19`` sets the
    layers, and the study its ranges around the SAE peak 17 +- half_width 2)."""
    from pathlib import Path

    from mechtune.models.hf_vqa import MEDGEMMA_4B_ID
    from mechtune.pipelines.paraphrase import load_paraphrase_recipe

    recipe_path = Path(__file__).parents[2] / "recipes" / "consistency-medgemma-mimic.yaml"
    study = load_paraphrase_recipe(recipe_path).config
    assert study.model == f"hf:{MEDGEMMA_4B_ID}"
    assert study.half_width == 2 and 17 in (study.sae_layers or ())
    config = study.lora
    assert config.lora.target_modules == GEMMA_LORA
    assert config.lora.layers is None
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (16, 32, 0.05)
    assert (config.batch_size, config.grad_accum, config.answer_loss) == (1, 8, "vocab")
    assert config.lr == 2e-4
