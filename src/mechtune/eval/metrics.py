"""Metrics with confidence intervals: retrieval recall, claim accuracy, linear probes.

Pure functions over arrays; tests check each against a brute-force computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Estimate:
    """A mean with a percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def pct(self) -> str:
        """``"84.2 [81.0, 87.1]"`` in percent."""
        if self.n == 0:
            return "n/a"
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> Estimate:
    """Mean of ``values`` with a (1 - alpha) percentile bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def retrieval_hits(similarity: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Per query: is ``target[i]`` among the top-k columns of ``similarity[i]``?

    Ties are broken against the target (a column scoring equal to the target ranks
    above it), so a constant similarity never counts as a hit.
    ``similarity: [Q, C]``, ``target: [Q]`` -> bool ``[Q]``.
    """
    target_score = similarity[np.arange(len(target)), target]
    rank = (similarity >= target_score[:, None]).sum(1) - 1  # others at least as good
    return rank < k


def claim_hits(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per claim set: does candidate 0 (the correct claim) score strictly highest?"""
    return np.array([bool(s[0] > np.max(s[1:])) for s in scores], dtype=bool)


def pairwise_hits(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per claim set: for each negative, does the correct claim score strictly higher?"""
    return [s[0] > s[1:] for s in scores]


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    *,
    l2: float = 1e-3,
    steps: int = 200,
) -> float:
    """Accuracy of a multinomial logistic regression (full-batch L-BFGS) on embeddings."""
    classes = np.unique(np.concatenate([train_y, test_y]))
    lookup = {c: i for i, c in enumerate(classes)}
    ytr = torch.tensor([lookup[c] for c in train_y])
    yte = torch.tensor([lookup[c] for c in test_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(xtr.shape[1], len(classes), generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == yte).float().mean())
