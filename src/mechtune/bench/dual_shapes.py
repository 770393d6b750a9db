"""Random-weight dual encoders of real architectures and sizes, behind mechtune's adapters.

Nothing is downloaded: each model is built from a transformers config class, directly on
the device in the dtype asked for (``with torch.device(device): cls._from_config(config,
dtype=dtype)``; never built on the CPU and moved), with a tokenizer built offline by the
``tokenizers`` library whose vocabulary has the real size (the template words of
:mod:`mechtune.bench.clinical_text`, padded with filler tokens), so embedding matrices are
real-size. ``scale="tiny"`` builds the same classes at toy widths for CPU smoke tests.

- **BiomedCLIP shape** (:func:`biomedclip_shape`): transformers
  ``VisionTextDualEncoderModel`` = a PubMedBERT-base text tower (12 layers, hidden 768,
  12 heads, MLP 3072, texts truncated to BiomedCLIP's 256-token context) + a ViT-B/16 at
  224 (12 layers, 768, 12 heads, 3072), both projected to 512
  (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; REFERENCE §6), behind
  :class:`~mechtune.models.hf_dual.VisionTextDualEncoder`.
- **MedSigLIP shape** (:func:`medsiglip_shape`): transformers ``SiglipModel`` at 448 px with
  64 text tokens and SigLIP so400m widths in both towers, behind
  :class:`~mechtune.models.hf_dual.SiglipDualEncoder`.

``*_config(scale)`` returns the HF config alone, so a test can count parameters on the
meta device.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from mechtune.bench.clinical_text import WORDS
from mechtune.errors import ConfigError
from mechtune.models.hf_dual import HFDualEncoder, SiglipDualEncoder, VisionTextDualEncoder
from mechtune.models.precision import resolve_device, resolve_dtype

SCALES = ("tiny", "real")

# -- BiomedCLIP (PubMedBERT-base + ViT-B/16) ----------------------------------------------------
# PubMedBERT's uncased vocabulary size. Assumed: 30,522 is BERT-base-uncased's size and
# what we believe microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract's config.json
# declares; it could not be checked offline.
PUBMEDBERT_VOCAB_SIZE = 30_522
# PubMedBERT's position table (max_position_embeddings 512, BERT-base's; assumed as
# above). BiomedCLIP truncates texts at 256 tokens (open_clip context_length 256).
PUBMEDBERT_POSITIONS = 512
BIOMEDCLIP_CONTEXT = 256
BIOMEDCLIP_IMAGE_SIZE = 224
BIOMEDCLIP_EMBED_DIM = 512
# BiomedCLIP normalises images with OpenAI CLIP's mean and std (its open_clip config).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BERT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}
VIT_B16: dict[str, Any] = {**BERT_BASE, "image_size": BIOMEDCLIP_IMAGE_SIZE, "patch_size": 16}

# -- MedSigLIP-448 (SigLIP so400m widths) -----------------------------------------------------
# Assumed widths: those of a SigLIP so400m config (google/siglip-so400m-patch14-384:
# hidden 1152, MLP 4304, 27 layers, 16 heads, patch 14), in both towers, at MedSigLIP's 448
# px and 64 text tokens. The vocabulary, 32,000, is transformers' SiglipTextConfig default
# and SigLIP's SentencePiece size, also assumed for MedSigLIP.
SO400M: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
}
SIGLIP_VOCAB_SIZE = 32_000
MEDSIGLIP_TEXT_TOKENS = 64
MEDSIGLIP_IMAGE_SIZE = 448
MEDSIGLIP_PATCH = 14

# Toy widths of the tiny scale (same classes, seconds on a CPU).
TINY: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
TINY_IMAGE_SIZE = 32
TINY_CONTEXT = 64

BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
SIGLIP_SPECIALS = {"<pad>": 0, "</s>": 1, "<unk>": 2}


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {SCALES}, got {scale!r}")


def _vocabulary(specials: dict[str, int], size: int | None) -> dict[str, int]:
    """Special tokens at their ids, every template word at the lowest free ids, then
    ``[unusedN]`` fillers until the ids are contiguous and (unless ``size`` is None) there
    are ``size`` entries. Raises ConfigError when ``size`` is too small."""
    vocab = dict(specials)
    used = set(specials.values())
    free = (i for i in itertools.count() if i not in used)
    for word in WORDS:
        vocab[word] = next(free)
    if size is not None and size < len(vocab):
        raise ConfigError(f"vocab_size {size} is below the {len(vocab)} tokens needed")
    target = max(size or 0, max(vocab.values()) + 1)
    for k in itertools.count():
        if len(vocab) >= target:
            break
        vocab[f"[unused{k}]"] = next(free)
    return vocab


def bert_tokenizer(vocab_size: int | None = PUBMEDBERT_VOCAB_SIZE) -> Any:
    """An uncased BERT WordPiece tokenizer over the template words, BERT's special-token
    ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103) and filler tokens up to
    ``vocab_size`` entries (None: just the tokens needed). Built offline with
    ``tokenizers``; returns a transformers ``PreTrainedTokenizerFast`` (offsets and
    special-tokens masks, as token roles need)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocabulary(BERT_SPECIALS, vocab_size)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 101), ("[SEP]", 102)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def siglip_tokenizer(vocab_size: int | None = SIGLIP_VOCAB_SIZE) -> Any:
    """A word-level tokenizer with SigLIP's token conventions (``</s>`` appended, padding
    with ``</s>``, as ``tests/tiny_models.tiny_siglip``), filler tokens up to
    ``vocab_size`` entries (None: just the tokens needed)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocabulary(SIGLIP_SPECIALS, vocab_size)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>"
    )


def biomedclip_config(scale: str = "real") -> Any:
    """The ``VisionTextDualEncoderConfig`` of the BiomedCLIP shape (see the module
    docstring); ``"tiny"``: 2 text layers and 1 vision layer of width 32, ViT at 32 px,
    projection 16, the vocabulary just the template tokens. Raises ConfigError for
    another scale."""
    from transformers import BertConfig, VisionTextDualEncoderConfig, ViTConfig

    _check_scale(scale)
    if scale == "real":
        text = BertConfig(
            **BERT_BASE,
            vocab_size=PUBMEDBERT_VOCAB_SIZE,
            max_position_embeddings=PUBMEDBERT_POSITIONS,
            pad_token_id=BERT_SPECIALS["[PAD]"],
        )
        vision = ViTConfig(**VIT_B16)
        dim = BIOMEDCLIP_EMBED_DIM
    else:
        text = BertConfig(
            **TINY,
            vocab_size=len(_vocabulary(BERT_SPECIALS, None)),
            num_hidden_layers=2,
            max_position_embeddings=TINY_CONTEXT,
            pad_token_id=BERT_SPECIALS["[PAD]"],
        )
        vision = ViTConfig(**TINY, num_hidden_layers=1, image_size=TINY_IMAGE_SIZE, patch_size=8)
        dim = 16
    return VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=dim)


def medsiglip_config(scale: str = "real") -> Any:
    """The ``SiglipConfig`` of the MedSigLIP shape (see the module docstring); ``"tiny"``:
    2 text layers and 1 vision layer of width 32 at 32 px, 64 text positions kept (the
    padding rule depends on it). Raises ConfigError for another scale."""
    from transformers import SiglipConfig

    _check_scale(scale)
    ids = {"pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None}
    if scale == "real":
        text = {**SO400M, **ids, "vocab_size": SIGLIP_VOCAB_SIZE}
        vision = {**SO400M, "image_size": MEDSIGLIP_IMAGE_SIZE, "patch_size": MEDSIGLIP_PATCH}
    else:
        text = {
            **TINY,
            **ids,
            "vocab_size": len(_vocabulary(SIGLIP_SPECIALS, None)),
            "num_hidden_layers": 2,
        }
        vision = {**TINY, "num_hidden_layers": 1, "image_size": TINY_IMAGE_SIZE, "patch_size": 8}
    text["max_position_embeddings"] = MEDSIGLIP_TEXT_TOKENS
    return SiglipConfig(text_config=text, vision_config=vision)


def build_on_device(
    model_class: Any,
    config: Any,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> Any:
    """``model_class`` from ``config`` with random weights, created on ``device`` in
    ``dtype`` (None: float32) by transformers' ``_from_config`` under ``torch.device``:
    the weights are allocated and initialised there, never on the CPU first. ``"meta"``
    allocates nothing (parameter counts). In eval mode. Raises ConfigError for a bad
    device or dtype."""
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype) or torch.float32
    torch.manual_seed(seed)
    with torch.device(where):
        model = model_class._from_config(config, dtype=torch_dtype)
    return model.eval()


def biomedclip_shape(
    scale: str = "real",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> VisionTextDualEncoder:
    """A BiomedCLIP-shape :class:`~mechtune.models.hf_dual.VisionTextDualEncoder` on
    ``device`` in ``dtype`` (random weights; see :func:`biomedclip_config`): texts
    truncated at 256 tokens (64 tiny), images through a ViT processor at the tower's size
    with OpenAI CLIP's mean/std. Raises ConfigError for a bad scale, device or dtype."""
    from transformers import VisionTextDualEncoderModel, ViTImageProcessorPil

    config = biomedclip_config(scale)
    model = build_on_device(VisionTextDualEncoderModel, config, device, dtype, seed)
    size = int(config.vision_config.image_size)
    processor = ViTImageProcessorPil(
        size={"height": size, "width": size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    tokenizer = bert_tokenizer(PUBMEDBERT_VOCAB_SIZE if scale == "real" else None)
    return VisionTextDualEncoder(
        model,
        tokenizer,
        processor,
        max_length=BIOMEDCLIP_CONTEXT if scale == "real" else TINY_CONTEXT,
        processor_source="bench",
    )


def medsiglip_shape(
    scale: str = "real",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> SiglipDualEncoder:
    """A MedSigLIP-shape :class:`~mechtune.models.hf_dual.SiglipDualEncoder` on ``device``
    in ``dtype`` (random weights; see :func:`medsiglip_config`): texts padded to 64 tokens,
    images through SigLIP's processor at the tower's size. Raises ConfigError for a bad
    scale, device or dtype."""
    from transformers import SiglipModel

    config = medsiglip_config(scale)
    model = build_on_device(SiglipModel, config, device, dtype, seed)
    tokenizer = siglip_tokenizer(SIGLIP_VOCAB_SIZE if scale == "real" else None)
    return SiglipDualEncoder(model, tokenizer, processor_source="bench")


SHAPES: dict[str, Callable[..., HFDualEncoder]] = {
    "biomedclip": biomedclip_shape,
    "medsiglip": medsiglip_shape,
}
CONFIGS: dict[str, Callable[[str], Any]] = {
    "biomedclip": biomedclip_config,
    "medsiglip": medsiglip_config,
}


def dual_shape(
    name: str,
    scale: str = "real",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> HFDualEncoder:
    """The shape ``name`` (a key of :data:`SHAPES`). Raises ConfigError for another name."""
    if name not in SHAPES:
        raise ConfigError(f"unknown dual-encoder shape {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name](scale, device, dtype, seed)


__all__ = [
    "CONFIGS",
    "SCALES",
    "SHAPES",
    "bert_tokenizer",
    "biomedclip_config",
    "biomedclip_shape",
    "build_on_device",
    "dual_shape",
    "medsiglip_config",
    "medsiglip_shape",
    "siglip_tokenizer",
]
