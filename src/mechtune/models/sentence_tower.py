"""A sentence-transformers text tower paired with any image encoder.

This is how a LiT-style model plugs in: a locked (or LoRA-tuned) sentence-transformers
BERT with mean pooling, an image encoder that maps images to the same space, and an
optional fixed centring vector. The phantom CLIP is one such model; ``SentenceTowerCLIP``
builds others from any sentence-transformers folder and any ``nn.Module`` image encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechtune.errors import DataError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.minilm import MiniLMTower
from mechtune.models.precision import unit


def check_mean_pooling(folder: str | Path) -> None:
    """Refuse sentence-transformers folders whose pooling is not plain mean pooling."""
    config = Path(folder) / "1_Pooling" / "config.json"
    if not config.is_file():
        raise DataError(
            f"{folder}: no 1_Pooling/config.json; is this a sentence-transformers model folder?"
        )
    pooling = json.loads(config.read_text(encoding="utf-8"))
    if not pooling.get("pooling_mode_mean_tokens", False):
        raise DataError(f"{config}: only mean pooling is supported, got {pooling}")


class SentenceTowerCLIP(nn.Module):
    """``image_encoder`` (images -> ``[B, D]``) + a sentence-transformers BERT tower."""

    text_center: torch.Tensor

    def __init__(
        self,
        text_folder: str | Path,
        image_encoder: nn.Module,
        center: torch.Tensor | None = None,
        logit_scale: float = 1 / 0.07,
    ) -> None:
        super().__init__()
        check_mean_pooling(text_folder)
        self.text = MiniLMTower(text_folder)
        self.image_encoder = image_encoder
        dim = self.text.dim
        self.register_buffer("text_center", torch.zeros(dim) if center is None else center)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)).log())

    def center_text(self, raw: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(raw - self.text_center, dim=-1)


class SentenceTowerDualEncoder(DualEncoder):
    """Dual-encoder adapter over a ``SentenceTowerCLIP``."""

    def __init__(self, model: SentenceTowerCLIP) -> None:
        super().__init__(model, model.text.tokenizer, max_length=model.text.max_length)

    @torch.no_grad()
    def encode_images(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Images as the image encoder takes them (a tensor or array batch; no
        preprocessing of its own) -> ``[B, D]`` L2-normalised float32 on the CPU."""
        x = images if torch.is_tensor(images) else torch.as_tensor(images)
        return unit(self.model.image_encoder(x.to(self.device))).cpu()

    def _image_features(self, batch: Any) -> torch.Tensor:
        return self.model.image_encoder(torch.as_tensor(batch).to(self.device))

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        # center_text normalises (raw - centre); the base normalises in float32.
        return self.model.text(**tokens) - self.model.text_center

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "adapter": type(self).__name__,
            "image_encoder": type(self.model.image_encoder).__name__,
        }

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())
