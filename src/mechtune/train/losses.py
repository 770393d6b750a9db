"""Losses as modules returning named terms (NAST, arXiv 2602.12498, §4).

- ``ContrastiveLoss``: symmetric CLIP loss on (image, caption) batches;
- ``ClaimLoss``: cross-entropy of the correct claim (candidate 0) against its hard
  negatives, over padded candidate sets;
- ``NASTLoss``: lambda * L_CLIP + (1 - lambda) * L_claim.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mechtune.errors import ConfigError


class ContrastiveLoss(nn.Module):
    def forward(
        self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float
    ) -> dict[str, torch.Tensor]:
        """``image, text: [B, D]`` normalised, row i matching row i."""
        logits = scale * image @ text.T
        target = torch.arange(len(image), device=image.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return {"clip": loss}


class ClaimLoss(nn.Module):
    def forward(
        self,
        image: torch.Tensor,
        candidates: torch.Tensor,
        mask: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        """``image: [B, D]``, ``candidates: [B, K, D]`` (index 0 correct), ``mask: [B, K]``
        True for real candidates (claim sets have different sizes)."""
        logits = scale * torch.einsum("bd,bkd->bk", image, candidates)
        logits = logits.masked_fill(~mask, float("-inf"))
        target = torch.zeros(len(image), dtype=torch.long, device=image.device)
        return {"claim": F.cross_entropy(logits, target)}


class NegCLIPLoss(nn.Module):
    """NegCLIP (Yuksekgonul et al., 2023): the contrastive loss with each claim set's hard
    negatives added to the batch's text side. Image i must pick its correct claim among all
    correct claims *and* all hard negatives; each correct claim must pick its image."""

    def forward(
        self,
        image: torch.Tensor,
        candidates: torch.Tensor,
        mask: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        positives = candidates[:, 0]  # [B, D]
        negatives = candidates[:, 1:][mask[:, 1:]]  # [N, D]
        texts = torch.cat([positives, negatives])
        target = torch.arange(len(image), device=image.device)
        i2t = F.cross_entropy(scale * image @ texts.T, target)
        t2i = F.cross_entropy(scale * positives @ image.T, target)
        return {"negclip": (i2t + t2i) / 2, "loss": (i2t + t2i) / 2}


class NASTLoss(nn.Module):
    def __init__(self, lam: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"lambda must be in [0, 1], got {lam}")
        self.lam = lam
        self.clip = ContrastiveLoss()
        self.claim = ClaimLoss()

    def forward(
        self,
        image: torch.Tensor,
        captions: torch.Tensor,
        claim_image: torch.Tensor,
        candidates: torch.Tensor,
        mask: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        terms = {
            **self.clip(image, captions, scale),
            **self.claim(claim_image, candidates, mask, scale),
        }
        terms["loss"] = self.lam * terms["clip"] + (1 - self.lam) * terms["claim"]
        return terms
