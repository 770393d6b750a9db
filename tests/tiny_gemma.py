"""A tiny random Gemma3ForConditionalGeneration + Gemma3Processor, built offline.

The tokenizer is a real ``GemmaTokenizer`` (byte-fallback BPE, spaces as "▁") over a
small vocabulary: every ASCII letter, digit and common punctuation mark is a token, plus
the 256 byte-fallback tokens, so any English question tokenizes. A few words are merged
into single tokens. For the answer words the merges are chosen so that some case and
leading-space variants are one token and others are not:

- one token: ``yes``, ``Yes``, `` yes``, ``no``, ``No``, `` no``, `` No``;
- several tokens: `` Yes``, ``YES``, `` YES``, ``NO``, `` NO``.

The chat template follows Gemma 3's turn format (``<start_of_turn>user ... <end_of_turn>``,
an image item written as ``<start_of_image>``, which the processor expands). Vocabulary,
merges and template live in :mod:`mechtune.bench.gemma_shape`, whose real-size MedGemma
uses the same ones padded to Gemma 3's 262,144 tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mechtune.bench.gemma_shape import SHAPES, gemma_vocab, medgemma_processor

# The processor (tokenizer, 32 px images, 4 image tokens, chat template) is the toy
# MedGemma shape's; the model here is smaller still (3 LM blocks) and saved to a folder.
IMAGE_SIZE = SHAPES["tiny"].image_size
PATCH_SIZE = SHAPES["tiny"].patch_size
MM_TOKENS_PER_IMAGE = SHAPES["tiny"].mm_tokens_per_image
TEXT_LAYERS = 3
VISION_LAYERS = 2


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    return gemma_vocab()


def tiny_gemma_processor() -> Any:
    """A ``Gemma3Processor`` (PIL image processor, 32 px; GemmaTokenizer; chat template):
    :func:`mechtune.bench.gemma_shape.medgemma_processor` at ``scale="tiny"``."""
    return medgemma_processor("tiny")


def tiny_gemma(folder: Path, seed: int = 0) -> Path:
    """A Gemma3ForConditionalGeneration (3 LM blocks, 2 SigLIP blocks, 32 px images, 4
    image tokens) and its processor, ``save_pretrained`` to ``folder``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    processor = tiny_gemma_processor()
    tokenizer = processor.tokenizer
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "max_position_embeddings": 512,
            # A window shorter than the prompts, so the sliding layers really slide.
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": VISION_LAYERS,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "vision_use_head": False,  # as in Gemma 3: the pooling head is unused
        },
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    # transformers zero-initialises the image projection (images would change nothing).
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
