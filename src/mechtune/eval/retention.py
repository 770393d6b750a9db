"""Retention: a fix that breaks general alignment is not a fix.

Drift of the text tower on everyday, non-medical sentences: the cosine between each
sentence's embedding before and after fine-tuning (1.0 = unchanged).
"""

from __future__ import annotations

from importlib import resources

import torch

from mechtune.errors import DataError
from mechtune.eval.metrics import Estimate, bootstrap_mean


def general_sentences() -> list[str]:
    """The packaged everyday sentences (comments and blank lines dropped)."""
    text = resources.files("mechtune.eval").joinpath("resources", "general_sentences.txt")
    lines = text.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def embedding_drift(before: torch.Tensor, after: torch.Tensor) -> Estimate:
    """Mean cosine between matching rows of two ``[N, D]`` embedding tables, with a CI."""
    if before.shape != after.shape:
        raise DataError(
            f"embedding tables differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}"
        )
    cos = torch.nn.functional.cosine_similarity(before, after, dim=-1)
    return bootstrap_mean(cos.detach().numpy())
