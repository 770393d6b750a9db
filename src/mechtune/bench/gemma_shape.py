"""A random-weight MedGemma-4B: the real architecture and size, built from configs.

MedGemma-4B (``google/medgemma-4b-it``) is a ``Gemma3ForConditionalGeneration``. Its shape,
from the public Gemma 3 4B config as recorded in ``../shared/REFERENCE.md`` §6 (each value
set through a documented field of transformers 5's ``Gemma3TextConfig`` /
``SiglipVisionConfig``; the parameter count below confirms the widths):

- **language model:** 34 decoder blocks, hidden 2560, MLP 10240, 8 query heads and 4
  key/value heads of width 256 (``query_pre_attn_scalar`` 256), vocabulary 262,208 rows
  (262,144 text tokens plus room for the image tokens), tied input/output embeddings;
  five sliding-window blocks then one global block, repeated (``layer_types``: block
  ``i`` is global when ``(i + 1) % 6 == 0``, transformers' own default pattern). The
  window (1024) and the RoPE bases (10^4 local, 10^6 global with linear scaling 8) are
  the public config's as remembered, not confirmed offline; they change no parameter
  and, with prompts of about 290 tokens, no cost;
- **vision tower:** SigLIP so400m, 27 blocks, hidden 1152, MLP 4304, 16 heads, patch 14 at
  896 px (4096 patches), no pooling head; the projector average-pools the patches to
  ``mm_tokens_per_image`` = 256 image tokens and projects them to 2560.

:func:`medgemma_config` gives that config (``scale="real"``) or the same classes at toy
size (``scale="tiny"``: 6 blocks with the same sliding/global pattern, 32 px images, 4
image tokens), so a parameter count needs no memory: build it under
``torch.device("meta")``. The real count is 4,300,079,472, the figure the README gives
for MedGemma-4B.

:func:`medgemma_processor` is a ``Gemma3Processor`` built offline: a ``GemmaTokenizer``
(byte-fallback BPE, spaces as "▁") whose first ids are Gemma's special tokens, then the
256 byte tokens, ASCII characters and a few merged words (so any English question
tokenizes and "Yes"/"yes"/"No"/"no" are single tokens), padded at ``scale="real"`` with
unreachable filler tokens ``<unused{i}>`` to Gemma 3's 262,144 text tokens, so the
tokenizer is as large as the real one (its ids differ: here ``<image_soft_token>`` is id
9, not 262,144); a PIL image processor at the image size; and a chat template in Gemma
3's turn format whose image item becomes ``<start_of_image>``, which the processor
expands to the image tokens.

:func:`build_medgemma` puts the model straight onto the device in the dtype
(``torch.device`` as the default device while transformers' ``_from_config(cfg,
dtype=...)`` allocates and initialises it; no CPU copy is made) and wraps it in
mechtune's own adapter, :class:`~mechtune.models.hf_vqa.HFYesNoVLM`, so a benchmark runs
the code paths a user's model runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from mechtune.errors import ConfigError
from mechtune.models.hf_vqa import HFYesNoVLM

SCALES = ("tiny", "real")
MEDGEMMA_4B_PARAMETERS = 4_300_079_472  # the README's figure for google/medgemma-4b-it
GEMMA3_TEXT_TOKENS = 262_144  # Gemma 3's text vocabulary
GEMMA3_VOCAB_ROWS = 262_208  # the language model's embedding rows (HF config vocab_size)
SLIDING_WINDOW_PATTERN = 6  # five sliding-window blocks, then one global block


@dataclass(frozen=True)
class GemmaShape:
    """The sizes that differ between the scales (everything else is Gemma 3's)."""

    text_layers: int
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int
    vision_layers: int
    vision_hidden: int
    vision_mlp: int
    vision_heads: int
    image_size: int
    patch_size: int
    mm_tokens_per_image: int
    tokenizer_size: int | None  # pad the tokenizer to this many tokens (None: no padding)
    vocab_rows: int | None  # the embedding rows (None: the tokenizer's length)


SHAPES: dict[str, GemmaShape] = {
    "real": GemmaShape(
        text_layers=34,
        hidden=2560,
        mlp=10240,
        heads=8,
        kv_heads=4,
        head_dim=256,
        sliding_window=1024,
        vision_layers=27,
        vision_hidden=1152,
        vision_mlp=4304,
        vision_heads=16,
        image_size=896,
        patch_size=14,
        mm_tokens_per_image=256,
        tokenizer_size=GEMMA3_TEXT_TOKENS,
        vocab_rows=GEMMA3_VOCAB_ROWS,
    ),
    # A window shorter than the prompts, so the sliding blocks really slide; (32/8)^2 = 16
    # patches pooled to 4 tokens (sqrt(4) divides 32/8, as the projector needs).
    "tiny": GemmaShape(
        text_layers=6,
        hidden=32,
        mlp=64,
        heads=2,
        kv_heads=1,
        head_dim=16,
        sliding_window=16,
        vision_layers=2,
        vision_hidden=32,
        vision_mlp=64,
        vision_heads=2,
        image_size=32,
        patch_size=8,
        mm_tokens_per_image=4,
        tokenizer_size=None,
        vocab_rows=None,
    ),
}

# -- tokenizer --------------------------------------------------------------------------------

SPECIAL_TOKENS = (
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
)
CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'-:;()\n▁")
# Words merged into one token. For the answer words the merges are chosen so that some
# case and leading-space spellings are one token (yes, Yes, ▁yes, no, No, ▁no, ▁No) and
# others are not (▁Yes, YES, NO, ...), as in a real vocabulary.
MERGED_WORDS = (
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
)

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


def gemma_vocab(size: int | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of the offline Gemma tokenizer: special tokens (ids 0-9, in
    :data:`SPECIAL_TOKENS` order), the 256 byte-fallback tokens, :data:`CHARACTERS`, the
    :data:`MERGED_WORDS` with the merges that build them, then, when ``size`` is given,
    filler tokens ``<unused{i}>`` up to ``size`` entries. No merge produces a filler, so
    fillers never appear in an encoding; they only make the vocabulary real-sized.
    Raises ConfigError when ``size`` is smaller than the base vocabulary."""
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
    if size is not None:
        if size < len(vocab):
            raise ConfigError(f"size must be >= {len(vocab)} (the base vocabulary), got {size}")
        base = len(vocab)
        vocab.update({f"<unused{i}>": base + i for i in range(size - base)})
    return vocab, merges


def _shape(scale: str) -> GemmaShape:
    if scale not in SHAPES:
        raise ConfigError(f"scale must be one of {SCALES}, got {scale!r}")
    return SHAPES[scale]


def medgemma_processor(scale: str = "real") -> Any:
    """A ``Gemma3Processor``: the :func:`gemma_vocab` GemmaTokenizer (262,144 tokens at
    ``scale="real"``), a PIL image processor resizing to the shape's image size (896 px)
    and the chat template, with ``image_seq_length`` = ``mm_tokens_per_image``. Built
    offline in well under a second. Raises ConfigError for an unknown scale."""
    from tokenizers import AddedToken
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor, GemmaTokenizer

    shape = _shape(scale)
    vocab, merges = gemma_vocab(shape.tokenizer_size)
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=cast(Any, merges),  # (left, right) pairs, which tokenizers' BPE takes
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
    size = {"height": shape.image_size, "width": shape.image_size}
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=shape.mm_tokens_per_image,
    )


def medgemma_config(scale: str = "real") -> Any:
    """The ``Gemma3Config`` of MedGemma-4B (``"real"``) or of its toy twin (``"tiny"``),
    token ids matching :func:`medgemma_processor`'s tokenizer. Cheap: no tokenizer or
    weights are built. Raises ConfigError for an unknown scale."""
    from transformers import Gemma3Config

    shape = _shape(scale)
    vocab, _ = gemma_vocab(shape.tokenizer_size)
    # The tokenizer adds nothing beyond gemma_vocab (its special tokens are in it).
    rows = shape.vocab_rows if shape.vocab_rows is not None else len(vocab)
    layer_types = [
        "full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
        for i in range(shape.text_layers)
    ]
    return Gemma3Config(
        text_config={
            "vocab_size": rows,
            "hidden_size": shape.hidden,
            "intermediate_size": shape.mlp,
            "num_hidden_layers": shape.text_layers,
            "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "query_pre_attn_scalar": shape.head_dim,
            "sliding_window": shape.sliding_window,
            "layer_types": layer_types,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
            "pad_token_id": vocab["<pad>"],
            "bos_token_id": vocab["<bos>"],
            "eos_token_id": vocab["<eos>"],
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": shape.vision_hidden,
            "intermediate_size": shape.vision_mlp,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": shape.vision_heads,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
            "vision_use_head": False,  # Gemma 3 pools the patches itself
        },
        mm_tokens_per_image=shape.mm_tokens_per_image,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
    )


def medgemma_model(
    scale: str = "real",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Any:
    """A random ``Gemma3ForConditionalGeneration`` of :func:`medgemma_config`, allocated
    and initialised on ``device`` in ``dtype`` (on ``"meta"``: shapes only), in eval mode.

    transformers zero-initialises the image projection, which would make every image
    give the same answer; it is drawn from N(0, 1 / vision_hidden) instead, so each
    projected image token has about the variance of its input. Raises ConfigError for an
    unknown scale."""
    from transformers import Gemma3ForConditionalGeneration

    config = medgemma_config(scale)
    torch.manual_seed(seed)
    with torch.device(device):
        model: Any = Gemma3ForConditionalGeneration._from_config(config, dtype=dtype)
    if torch.device(device).type != "meta":
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            projection.normal_(std=1.0 / math.sqrt(config.vision_config.hidden_size))
    return model.eval()


def build_medgemma(
    scale: str = "real",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    processor: Any | None = None,
) -> HFYesNoVLM:
    """:func:`medgemma_model` and :func:`medgemma_processor` behind mechtune's
    :class:`~mechtune.models.hf_vqa.HFYesNoVLM` (margins over the single-token spellings
    of yes/no, ``logits_to_keep=1``). At ``"real"`` the weights take 8.0 GiB (8.6 GB) in
    bfloat16. ``processor``: one built earlier by :func:`medgemma_processor` at the same
    scale, to share between models (it holds no per-model state)."""
    model = medgemma_model(scale, device=device, dtype=dtype, seed=seed)
    return HFYesNoVLM(model, processor if processor is not None else medgemma_processor(scale))


def parameter_count(scale: str = "real") -> dict[str, int]:
    """Parameters of the model on the meta device (no memory): ``total`` (the tied
    embedding counted once), ``language_model``, ``vision_tower`` and ``projector``."""
    model = medgemma_model(scale, device="meta")
    parts = {
        "language_model": model.model.language_model,
        "vision_tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
    }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    return {"total": sum(p.numel() for p in model.parameters()), **counts}


def random_images(count: int, size: int, seed: int = 0) -> list[Any]:
    """``count`` random ``[size, size, 3]`` uint8 images (numpy), one per question."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def image_size(scale: str) -> int:
    """The shape's image side in pixels (896 at ``"real"``)."""
    return _shape(scale).image_size


def questions(count: int) -> Sequence[str]:
    """``count`` chest X-ray yes/no questions, cycling through a fixed list."""
    base = (
        "Is there a pleural effusion?",
        "Does the chest show cardiomegaly?",
        "Is there evidence of pneumothorax?",
        "Is there any edema?",
        "Is there a right pleural effusion?",
        "Does the chest show any evidence of edema?",
    )
    return [base[i % len(base)] for i in range(count)]


__all__ = [
    "CHAT_TEMPLATE",
    "GEMMA3_TEXT_TOKENS",
    "GEMMA3_VOCAB_ROWS",
    "MEDGEMMA_4B_PARAMETERS",
    "SCALES",
    "SHAPES",
    "SPECIAL_TOKENS",
    "GemmaShape",
    "build_medgemma",
    "gemma_vocab",
    "image_size",
    "medgemma_config",
    "medgemma_model",
    "medgemma_processor",
    "parameter_count",
    "questions",
    "random_images",
]
