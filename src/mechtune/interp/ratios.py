"""Ratios over pairs whose denominators can be small: one rule for every such metric.

Causal tracing's CTE(l, p) = (S_corr - S^{l,p}) / (S_corr - S_foil) and the SAE patch
recovery (m_patched - m_para) / (m_orig - m_para) both divide a pair's effect by the pair's
own gap g = (clean - corrupt). Such normalised metrics are "overly sharp" when the gap is
small (Heimersheim & Nanda 2024, "How to use and interpret activation patching",
arXiv 2404.15255, section on metrics): a near-tie pair turns a wobble of its numerator into
a huge ratio, and a plain mean over pairs is then decided by that one pair. Zhang & Nanda
2024 (arXiv 2309.16042) likewise prefer metrics that stay linear in the effect. The rule
used here, the same for every ratio over pairs in mechtune:

1. **Relative exclusion.** A pair whose |g| is below ``min_gap_share`` times the median |g|
   of the pairs is excluded and counted (``excluded_small_gap``); a gap of exactly 0 is
   always excluded (``excluded_zero_gap``). The floor is relative to the pairs' own gaps,
   not an absolute epsilon, so scaling every score by a constant changes nothing.
2. **The aggregate is a ratio of sums**, sum_i sign(g_i) * num_i / sum_i |g_i|, i.e. the
   mean of the per-pair ratios r_i weighted by w_i = |g_i| / sum_j |g_j|. This is the
   convention of normalising the *mean* effect by the *mean* gap (as the IOI patching
   metric of ARENA / TransformerLens does: the batch-mean logit difference, normalised by
   the clean and corrupted batch means). A pair counts in proportion to its gap, so a
   near-tie cannot dominate however large its own ratio is.
3. **Reported beside it:** the median of the per-pair ratios over the kept pairs
   (unweighted, robust to outliers of any kind), and the share of the aggregate that the
   top 5% of pairs carry: sum of the largest ceil(5% * n) |w_i r_i| over sum_i |w_i r_i|.
   A share near 1 says a few pairs drive the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mechtune.errors import ConfigError, DataError

MIN_GAP_SHARE = 0.1  # default: exclude gaps below a tenth of the median gap
TOP_FRACTION = 0.05  # "top 5% of pairs" in the driving-pairs share


def check_min_gap_share(value: float, name: str = "min_gap_share") -> None:
    """``ConfigError`` unless ``0 <= value <= 1`` (a share of the median gap)."""
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ConfigError(f"{name} must be in [0, 1] (a share of the median gap), got {value}")


def keep_by_gap(gaps: np.ndarray, min_gap_share: float) -> tuple[np.ndarray, dict[str, int], float]:
    """Which pairs a ratio over ``gaps`` ``[P]`` may use (rule 1 of the module docstring).

    Returns ``(kept [P] bool, counts by reason, floor)``, where the floor is
    ``min_gap_share * median |gap|``. Raises ``DataError`` on a non-finite gap.
    """
    check_min_gap_share(min_gap_share)
    gaps = np.asarray(gaps, dtype=np.float64)
    if not np.isfinite(gaps).all():
        bad = int(np.flatnonzero(~np.isfinite(gaps))[0])
        raise DataError(f"pair {bad}: the gap (clean - corrupt) is {gaps[bad]}, not a number")
    size = np.abs(gaps)
    floor = float(min_gap_share * np.median(size)) if len(size) else 0.0
    zero = size == 0
    small = ~zero & (size < floor)
    counts = {"excluded_small_gap": int(small.sum()), "excluded_zero_gap": int(zero.sum())}
    return ~(zero | small), counts, floor


def gap_weights(gaps: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``[P]`` weights |g_i| / sum over kept |g_j| (0 for excluded pairs)."""
    size = np.where(kept, np.abs(np.asarray(gaps, dtype=np.float64)), 0.0)
    total = size.sum()
    return size / total if total > 0 else size


def weighted_ratio(ratios: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ratio of sums: ``sum_i w_i r_i / sum_i w_i`` per entry of ``ratios [P, ...]``.

    Entries where a pair's ratio is NaN (e.g. a token role that pair lacks) leave that pair
    out of both sums; an entry no pair has is NaN.
    """
    r = np.asarray(ratios, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape((-1,) + (1,) * (r.ndim - 1))
    use = np.isfinite(r) & (w > 0)
    num = np.where(use, w * np.where(use, r, 0.0), 0.0).sum(0)
    den = np.where(use, w, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def median_ratio(ratios: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Median over the kept pairs of ``ratios [P, ...]`` (NaN entries ignored)."""
    r = np.asarray(ratios, dtype=np.float64)
    flat = r[np.asarray(kept, dtype=bool)].reshape(-1, int(np.prod(r.shape[1:])))
    out = np.full(flat.shape[1], np.nan)
    for j in range(flat.shape[1]):
        column = flat[:, j][np.isfinite(flat[:, j])]
        if len(column):
            out[j] = np.median(column)
    return out.reshape(r.shape[1:])


def top_share(
    ratios: np.ndarray, weights: np.ndarray, fraction: float = TOP_FRACTION
) -> np.ndarray:
    """Share of the aggregate carried by the top ``fraction`` of pairs, per entry.

    Contributions are c_i = w_i r_i (they sum to the ratio of sums). With n pairs that
    have a finite ratio and positive weight, k = ceil(fraction * n) and the share is the
    sum of the k largest |c_i| over sum_i |c_i| (NaN when every contribution is 0).
    """
    r = np.asarray(ratios, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    flat = r.reshape(len(r), -1)
    out = np.full(flat.shape[1], np.nan)
    for j in range(flat.shape[1]):
        use = np.isfinite(flat[:, j]) & (w > 0)
        contrib = np.sort(np.abs(w[use] * flat[use, j]))[::-1]
        total = contrib.sum()
        if len(contrib) and total > 0:
            k = max(1, math.ceil(fraction * len(contrib)))
            out[j] = contrib[:k].sum() / total
    return out.reshape(r.shape[1:])


@dataclass
class RatioSummary:
    """A ratio over pairs aggregated by the module's rule; every array is float64."""

    weighted: np.ndarray  # [...] ratio of sums (the primary aggregate)
    median: np.ndarray  # [...] median over kept pairs
    top_share: np.ndarray  # [...] share carried by the top 5% of pairs
    ratios: np.ndarray  # [P, ...] per-pair ratios (inf/NaN for a zero gap)
    weights: np.ndarray  # [P] normalised gap weights, 0 for excluded pairs
    kept: np.ndarray  # [P] bool
    floor: float  # the gap floor: min_gap_share * median |gap|
    counts: dict[str, int] = field(default_factory=dict)


def summarise_ratios(
    numerators: np.ndarray, gaps: np.ndarray, min_gap_share: float = MIN_GAP_SHARE
) -> RatioSummary:
    """Per-pair ratios ``numerators [P, ...] / gaps [P]`` aggregated by the module's rule.

    ``counts`` has ``aggregated``, ``excluded_small_gap`` and ``excluded_zero_gap``.
    Raises ``DataError`` when no pair is left.
    """
    num = np.asarray(numerators, dtype=np.float64)
    g = np.asarray(gaps, dtype=np.float64)
    if num.shape[:1] != g.shape:
        raise DataError(f"numerators {num.shape} and gaps {g.shape} disagree on the pair count")
    kept, counts, floor = keep_by_gap(g, min_gap_share)
    if not kept.any():
        raise DataError(
            f"no pair left to aggregate: {len(g)} pairs, {counts['excluded_zero_gap']} with a "
            f"zero gap and {counts['excluded_small_gap']} below {min_gap_share} x the median gap"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = num / g.reshape((-1,) + (1,) * (num.ndim - 1))
    weights = gap_weights(g, kept)
    return RatioSummary(
        weighted=weighted_ratio(ratios, weights),
        median=median_ratio(ratios, kept),
        top_share=top_share(ratios, weights),
        ratios=ratios,
        weights=weights,
        kept=kept,
        floor=floor,
        counts={"aggregated": int(kept.sum()), **counts},
    )


__all__ = [
    "MIN_GAP_SHARE",
    "TOP_FRACTION",
    "RatioSummary",
    "check_min_gap_share",
    "gap_weights",
    "keep_by_gap",
    "median_ratio",
    "summarise_ratios",
    "top_share",
    "weighted_ratio",
]
