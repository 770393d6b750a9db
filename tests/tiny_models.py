"""Tiny random-weight models of the real Hugging Face classes, built offline."""

from __future__ import annotations

from pathlib import Path

import torch

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


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIPModel (2 text layers, ViT 32px) with a WordLevel tokenizer, save_pretrained."""
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
            "num_hidden_layers": 2,
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
    return folder
