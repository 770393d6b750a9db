"""A tiny random Gemma3ForConditionalGeneration + Gemma3Processor, built offline.

The tokenizer is a real ``GemmaTokenizer`` (byte-fallback BPE, spaces as "▁") over a
small vocabulary: every ASCII letter, digit and common punctuation mark is a token, plus
the 256 byte-fallback tokens, so any English question tokenizes. A few words are merged
into single tokens. For the answer words the merges are chosen so that some case and
leading-space variants are one token and others are not:

- one token: ``yes``, ``Yes``, `` yes``, ``no``, ``No``, `` no``, `` No``;
- several tokens: `` Yes``, ``YES``, `` YES``, ``NO``, `` NO``.

The chat template follows Gemma 3's turn format (``<start_of_turn>user ... <end_of_turn>``,
an image item written as ``<start_of_image>``, which the processor expands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

IMAGE_SIZE = 32
PATCH_SIZE = 8
MM_TOKENS_PER_IMAGE = 4  # (32/8)=4 patches a side, pooled 2x2: sqrt(4) divides 4
TEXT_LAYERS = 3
VISION_LAYERS = 2

SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'-:;()\n▁")
MERGED_WORDS = [
    "yes",
    "Yes",
    "▁yes",
    "no",
    "No",
    "▁no",
    "▁No",
    "user",
    "model",
    "Is",
    "Does",
    "▁there",
    "▁is",
    "▁a",
    "▁the",
    "▁any",
    "▁or",
    "▁of",
    "▁Answer",
    "▁pleural",
    "▁effusion",
    "▁edema",
    "▁chest",
    "▁show",
    "▁evidence",
    "▁pneumothorax",
    "▁cardiomegaly",
    "▁right",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}"
)


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    merges: list[tuple[str, str]] = []

    def build(word: str) -> None:
        # "▁word" = "▁" + "word", so the bare word's merges never block the spaced one.
        if word in vocab:
            return
        left, right = ("▁", word[1:]) if word.startswith("▁") else (word[:-1], word[-1])
        build(left)
        build(right)
        merges.append((left, right))
        vocab[word] = len(vocab)

    # Longest words first: their merges then outrank the short words' (one token each).
    for word in sorted(MERGED_WORDS, key=len, reverse=True):
        build(word)
    return vocab, merges


def tiny_gemma_processor() -> Any:
    """A ``Gemma3Processor`` (PIL image processor, 32 px; GemmaTokenizer; chat template)."""
    from tokenizers import AddedToken
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor, GemmaTokenizer

    vocab, merges = _vocab_and_merges()
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False)
                for t in ("<start_of_turn>", "<end_of_turn>")
            ]
        }
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )


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
