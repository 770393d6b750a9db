"""Tiny random-weight models of the real Hugging Face classes, built offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

WORDS = [
    "there",
    "is",
    "no",
    "a",
    "small",
    "large",
    "severe",
    "mild",
    "moderate",
    "visible",
    "clear",
    "evidence",
    "of",
    "for",
    "negative",
    "positive",
    "not",
    "clearly",
    "seen",
    "left",
    "right",
    "pleural",
    "effusion",
    "pneumothorax",
    "edema",
    "pulmonary",
    "cardiomegaly",
    "consolidation",
    "support",
    "devices",
    "rib",
    "fracture",
    ".",
]


def tiny_clip(folder: Path, seed: int = 0, text_layers: int = 2) -> Path:
    """A CLIPModel (``text_layers`` text layers, ViT 32px) with a WordLevel tokenizer,
    save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    vocab["<eos>"] = len(vocab)  # EOS has the highest id: legacy argmax pooling finds it
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", vocab["<eos>"])]
    )
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "eos_token_id": 2,
            "bos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    clip_image_processor(32).save_pretrained(folder)
    return folder


def clip_image_processor(size: int) -> Any:
    """transformers' torchvision-free CLIP processor: shortest edge to ``size``, centre
    crop, bicubic, CLIP mean/std."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def _word_level(vocab: dict[str, int], single: str, specials: list[tuple[str, int]]) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return tok


def tiny_siglip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A ``SiglipModel`` (2 text layers, 64 text positions as MedSigLIP; ViT
    ``image_size`` px) with SigLIP's token conventions: ``</s>`` appended, and padding
    *with* ``</s>`` (SiglipTokenizer's ``pad_token``), its ``SiglipImageProcessorPil``
    saved beside it. ``save_pretrained`` into ``folder``."""
    from transformers import (
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
    )

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = _word_level(vocab, "$A </s>", [("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>"
    )
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "num_hidden_layers": 2,
            "max_position_embeddings": 64,
            "pad_token_id": 1,
            "eos_token_id": 1,
            "bos_token_id": None,
        },
        vision_config={
            **small,
            "num_hidden_layers": 1,
            "image_size": image_size,
            "patch_size": 8,
        },
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(
        folder
    )
    return folder


def tiny_vision_text_dual_encoder(folder: Path, seed: int = 0) -> Path:
    """A ``VisionTextDualEncoderModel``: a tiny random BERT (with its pooler) over the
    packaged WordPiece vocabulary, a tiny ViT at 32 px, projections to 16, and a
    ``ViTImageProcessorPil``. ``save_pretrained`` into ``folder``."""
    from transformers import (
        BertConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    tokenizer = wordpiece_tokenizer()
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    text = BertConfig(
        **small,
        vocab_size=tokenizer.vocab_size,
        num_hidden_layers=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = ViTConfig(**small, num_hidden_layers=1, image_size=32, patch_size=8)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=16)
    torch.manual_seed(seed)
    model = VisionTextDualEncoderModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# -- one tokenizer of each family mechtune supports, built offline ----------------------------

REPORT_CORPUS = [
    "There is no pleural effusion.",
    "There is a pleural effusion.",
    "There is a small left pleural effusion.",
    "No pneumothorax.",
    "Large pneumothorax.",
    "There is mild pulmonary edema.",
    "Severe pulmonary edema.",
    "Negative for cardiomegaly.",
    "Positive for cardiomegaly.",
    "No evidence of consolidation.",
    "Clear evidence of consolidation.",
    "Edema is not seen.",
    "Edema is clearly seen.",
]
# Every letter, digit and mark as a word of its own, so each "x</w>" exists and no text
# falls back to the unknown token (CLIP's unknown token is its EOS).
ALPHABET_LINE = " ".join("abcdefghijklmnopqrstuvwxyz0123456789.,;:'-()")


def clip_bpe_tokenizer() -> Any:
    """A real transformers ``CLIPTokenizer``: byte-level BPE whose word-final tokens end in
    ``</w>`` (the period is ``.</w>``), with CLIP's normaliser and pre-tokenizer, trained on
    a few report sentences."""
    import json
    import tempfile

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    split = Regex(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
        r"""[^\s\p{L}\p{N}]+"""
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*REPORT_CORPUS * 10, ALPHABET_LINE], trainer)
    with tempfile.TemporaryDirectory() as folder:
        tok.model.save(folder)
        vocab = json.loads(Path(folder, "vocab.json").read_text(encoding="utf-8"))
        lines = Path(folder, "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def gemma_tokenizer() -> Any:
    """A SentencePiece-style byte-fallback BPE (``GemmaTokenizer``, spaces as "▁", left
    padding), the vocabulary of ``tests/tiny_gemma.py``, adding <bos> and <eos>."""
    from transformers import GemmaTokenizer

    from tests.tiny_gemma import _vocab_and_merges

    vocab, merges = _vocab_and_merges()
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=True)


def clip_with_tokenizer(tokenizer: Any, seed: int = 0) -> Any:
    """``HFCLIPDualEncoder`` over a tiny random ``CLIPModel`` sized to ``tokenizer``; EOS is
    the tokenizer's (transformers' current rule: the first EOS position is pooled)."""
    from transformers import CLIPConfig, CLIPModel

    from mechtune.models.hf_dual import HFCLIPDualEncoder

    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return HFCLIPDualEncoder(CLIPModel(config).eval(), tokenizer)


# -- an offline stand-in for open_clip's BiomedCLIP (open_clip itself needs torchvision) ------
# The classes below mirror mlfoundations/open_clip src/open_clip/hf_model.py (HFTextEncoder,
# its poolers) and model.py (CustomTextCLIP.encode_text) and tokenizer.py (HFTokenizer pads
# every text to context_length). Class names matter: mechtune's site table is keyed by them.


class ClsLastHiddenStatePooler(nn.Module):
    cls_token_position = 0

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        return x.last_hidden_state[:, self.cls_token_position, :]


class ClsPooler(nn.Module):
    def __init__(self, use_pooler_output: bool = True) -> None:
        super().__init__()
        self.cls_token_position = 0
        self.use_pooler_output = use_pooler_output

    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.modeling_outputs import (
            BaseModelOutputWithPooling,
            BaseModelOutputWithPoolingAndCrossAttentions,
        )

        if (
            self.use_pooler_output
            and isinstance(
                x, BaseModelOutputWithPooling | BaseModelOutputWithPoolingAndCrossAttentions
            )
            and x.pooler_output is not None
        ):
            return x.pooler_output
        return x.last_hidden_state[:, self.cls_token_position, :]


class MeanPooler(nn.Module):
    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        masked_output = x.last_hidden_state * attention_mask.unsqueeze(-1)
        return masked_output.sum(dim=1) / attention_mask.sum(-1, keepdim=True)


class MaxPooler(nn.Module):  # a pooler mechtune does not trace
    def forward(self, x: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        return x.last_hidden_state.max(1).values


class HFTextEncoder(nn.Module):
    def __init__(self, transformer: nn.Module, pooler: nn.Module, output_dim: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.config = transformer.config
        self.pooler = pooler
        self.proj = nn.Linear(self.config.hidden_size, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn_mask = (x != self.config.pad_token_id).long()
        out = self.transformer(input_ids=x, attention_mask=attn_mask)
        return self.proj(self.pooler(out, attn_mask))


class CustomTextCLIP(nn.Module):
    def __init__(self, text: HFTextEncoder, output_dim: int) -> None:
        super().__init__()
        self.text = text
        self.visual = nn.Sequential(nn.Flatten(), nn.LazyLinear(output_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(text)
        return nn.functional.normalize(features, dim=-1) if normalize else features


class HFTokenizerStandIn:
    """open_clip's ``HFTokenizer`` call: every text padded to ``context_length``."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: Any, context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(
            texts,
            return_tensors="pt",
            max_length=context_length or self.context_length,
            padding="max_length",
            truncation=True,
        ).input_ids


def wordpiece_tokenizer() -> Any:
    """The BERT WordPiece tokenizer packaged with the phantom MiniLM (uncased, 30,522)."""
    from transformers import AutoTokenizer

    from mechtune.models.minilm import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def tiny_openclip(pooler: str = "cls", context_length: int = 48, seed: int = 0) -> Any:
    """``OpenCLIPDualEncoder`` over a BiomedCLIP-shaped stand-in: a tiny random BERT with
    the WordPiece tokenizer padded to ``context_length``; ``pooler`` one of ``cls``
    (ClsLastHiddenStatePooler, BiomedCLIP's), ``cls_pooler`` (ClsPooler on BERT's pooler
    output), ``mean``, ``max``."""
    from transformers import BertConfig, BertModel

    from mechtune.models.open_clip_adapter import OpenCLIPDualEncoder

    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=context_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    bert = BertModel(config, add_pooling_layer=pooler == "cls_pooler")
    poolers = {
        "cls": ClsLastHiddenStatePooler,
        "cls_pooler": ClsPooler,
        "mean": MeanPooler,
        "max": MaxPooler,
    }
    model = CustomTextCLIP(HFTextEncoder(bert, poolers[pooler](), 16), 16)
    model.encode_image(torch.zeros(1, 3, 4, 4))  # materialise the lazy image projection
    return OpenCLIPDualEncoder(model.eval(), HFTokenizerStandIn(tokenizer, context_length))
