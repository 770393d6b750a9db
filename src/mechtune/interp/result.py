"""Aggregate causal-tracing scores by token role and layer; save and load the result.

Per pair, CTE(l, p) is averaged over the positions of each role (``[L+1, R]``, NaN for a
role the pair lacks) and then over the pair's roles (its per-layer CTE). Because CTE is a
ratio with the pair's own gap S_corr - S_foil in the denominator, pairs are aggregated by
the rule of :mod:`mechtune.interp.ratios`: a pair whose |gap| is below ``min_gap_share``
times the median |gap| is excluded and counted; the per-layer effect ``cte_layer`` is the
ratio of sums (the gap-weighted mean of the per-pair CTE), with the median over pairs and
the share carried by the top 5% of pairs reported beside it. ``alpha`` is NAST's gradient
weight, min-max normalise(CTE_l) (arXiv 2602.12498), computed from ``cte_layer``; other
sources and normalisations: :mod:`mechtune.interp.alpha`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import ConfigError, DataError
from mechtune.interp.alpha import normalise
from mechtune.interp.pairs import ROLES, infer_roles
from mechtune.interp.ratios import (
    MIN_GAP_SHARE,
    TOP_FRACTION,
    check_min_gap_share,
    summarise_ratios,
    weighted_ratio,
)
from mechtune.interp.tracing import PairScores, TracePair, trace_scores
from mechtune.models.dual_encoder import DualEncoder

TENSORS = "trace.safetensors"
META = "trace.json"
TENSOR_FIELDS = (
    "cte",
    "cte_layer",
    "cte_layer_low",
    "cte_layer_high",
    "cte_layer_median",
    "top5_share",
    "alpha",
    "pair_cte",
    "pair_weight",
    "s_correct",
    "s_foil",
)
AGGREGATION = {
    "cte_layer": "ratio of sums over kept pairs: sum_i sign(g_i) (S_corr - S^l)_i / "
    "sum_i |g_i|, g = S_corr - S_foil (the |g|-weighted mean of the per-pair CTE)",
    "cte_layer_median": "median over kept pairs of the per-pair CTE",
    "top5_share": "share of sum_i |w_i CTE_i| carried by the top 5% of kept pairs",
    "alpha": "min-max normalised cte_layer (NAST's alpha_l)",
    "exclusion": "pairs with |g| < min_gap_share x median |g| (or g = 0) are excluded",
    "interval": "95% percentile bootstrap of cte_layer over kept pairs",
}


@dataclass(frozen=True)
class TraceConfig:
    """Settings of :func:`trace` and :func:`aggregate`.

    ``min_gap_share``: a pair whose |S_corr - S_foil| is below this share of the median
    |S_corr - S_foil| over the traced pairs is excluded (0 excludes only exact ties);
    ``batch_pairs``: text pairs traced per batched pass; ``seed`` and ``n_boot``: the
    bootstrap of the per-layer interval.
    """

    min_gap_share: float = MIN_GAP_SHARE
    batch_pairs: int = 16
    seed: int = 0
    n_boot: int = 1000

    def __post_init__(self) -> None:
        check_min_gap_share(self.min_gap_share)
        if self.batch_pairs < 1:
            raise ConfigError(f"batch_pairs must be >= 1, got {self.batch_pairs}")
        if self.n_boot < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TraceResult:
    """CTE by layer and role, per-pair raw scores, alpha, config and counts.

    Per-layer vectors are ``[L+1]`` (layer 0: the embedding output). Per-pair tensors
    cover every traced pair, kept or excluded; ``pairs[i]["status"]`` says which, and
    ``pair_weight`` is 0 for an excluded pair.
    """

    roles: tuple[str, ...]
    cte: torch.Tensor  # [L+1, R], gap-weighted over pairs (NaN: no pair has the role)
    cte_layer: torch.Tensor  # [L+1], ratio of sums; drives peak_layer and alpha
    cte_layer_low: torch.Tensor  # [L+1], 95% bootstrap interval over pairs
    cte_layer_high: torch.Tensor
    cte_layer_median: torch.Tensor  # [L+1], median over kept pairs (robust companion)
    top5_share: torch.Tensor  # [L+1], share of cte_layer carried by the top 5% of pairs
    alpha: torch.Tensor  # [L+1], min-max normalised cte_layer
    pair_cte: torch.Tensor  # [P, L+1, R]
    pair_weight: torch.Tensor  # [P], |gap| / sum of kept |gap|; 0 when excluded
    s_correct: torch.Tensor  # [P]
    s_foil: torch.Tensor  # [P]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    aggregation: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.cte.shape[0]) - 1

    def peak_layer(self) -> int:
        """The layer with the largest ``cte_layer`` (the ratio of sums)."""
        return int(torch.argmax(self.cte_layer))

    def save(self, folder: str | Path) -> Path:
        """Write ``trace.safetensors`` (tensors) and ``trace.json`` (the rest, plus a
        per-layer summary for readers)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in TENSOR_FIELDS}
        with atomic_path(out / TENSORS) as tmp:
            save_file(tensors, str(tmp))
        per_layer = {
            k: [_finite_or_none(v) for v in getattr(self, k).tolist()]
            for k in ("cte_layer", "cte_layer_median", "top5_share", "alpha")
        }
        meta = {
            "roles": list(self.roles),
            "pairs": self.pairs,
            "config": self.config,
            "counts": self.counts,
            "aggregation": self.aggregation,
            "peak_layer": self.peak_layer(),
            "per_layer": per_layer,
        }
        write_json(out / META, meta, sort_keys=True)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> TraceResult:
        path = Path(folder)
        tensors = load_file(str(path / TENSORS))
        missing = sorted(set(TENSOR_FIELDS) - set(tensors))
        if missing:
            raise DataError(
                f"{path / TENSORS}: missing {missing}; it was written by an older mechtune, "
                "run `mechtune trace` again"
            )
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        return cls(
            roles=tuple(meta["roles"]),
            pairs=meta["pairs"],
            config=meta["config"],
            counts=meta["counts"],
            aggregation=meta.get("aggregation", {}),
            **{k: tensors[k] for k in TENSOR_FIELDS},
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _role_means(values: torch.Tensor, roles: tuple[str, ...]) -> torch.Tensor:
    """``[L+1, T]`` by position -> ``[L+1, R]`` by role (NaN where a role is absent)."""
    out = torch.full((values.shape[0], len(ROLES)), float("nan"), dtype=torch.float64)
    for r, role in enumerate(ROLES):
        cols = [i for i, name in enumerate(roles) if name == role]
        if cols:
            out[:, r] = values[:, cols].to(torch.float64).mean(1)
    return out


def _pair_roles(pair: TracePair, scores: PairScores) -> tuple[str, ...]:
    roles = pair.roles
    width = int(scores.patched.shape[1])
    if roles is None or len(roles) != width:
        raise DataError(
            f"pair {pair.correct!r} / {pair.foil!r}: token roles "
            f"{'missing' if roles is None else f'for {len(roles)} tokens'}, but {width} "
            "positions were traced; build pairs with build_trace_pairs or pairs_from_records"
        )
    return roles


def _bootstrap(ratios: np.ndarray, gaps: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, L+1]`` ratios of sums over kept pairs resampled with replacement."""
    rng = np.random.default_rng(seed)
    size = np.abs(gaps)
    out = np.empty((n_boot, ratios.shape[1]))
    for b in range(n_boot):
        pick = rng.integers(0, len(size), len(size))
        out[b] = weighted_ratio(ratios[pick], size[pick])
    return out


def aggregate(
    pairs: list[TracePair],
    scores: list[PairScores],
    config: TraceConfig,
    counts: dict[str, Any] | None = None,
) -> TraceResult:
    """Average by role, then aggregate over pairs by the small-gap rule (module docstring).

    ``pairs[i].roles`` must name every traced position of ``scores[i]``. Raises
    ``DataError`` when a pair has no roles or no pair is left after exclusion.
    """
    role_num, layer_num, gaps = [], [], []
    for pair, sc in zip(pairs, scores, strict=True):
        roles = _pair_roles(pair, sc)
        effect = sc.s_correct - sc.patched.to(torch.float64)  # [L+1, T] numerators
        by_role = _role_means(effect, roles)
        role_num.append(by_role)
        layer_num.append(torch.nanmean(by_role, dim=1))
        gaps.append(sc.s_correct - sc.s_foil)
    gap = np.asarray(gaps, dtype=np.float64)
    per_layer = summarise_ratios(torch.stack(layer_num).numpy(), gap, config.min_gap_share)
    per_role = summarise_ratios(torch.stack(role_num).numpy(), gap, config.min_gap_share)
    kept = per_layer.kept
    boots = _bootstrap(per_layer.ratios[kept], gap[kept], config.n_boot, config.seed)
    low, high = np.nanquantile(boots, [0.025, 0.975], axis=0)
    cte_layer = per_layer.weighted
    alpha = normalise(cte_layer, "minmax")
    status = np.where(kept, "kept", "excluded_small_gap")
    status[gap == 0] = "excluded_zero_gap"
    return TraceResult(
        roles=ROLES,
        cte=torch.from_numpy(per_role.weighted),
        cte_layer=torch.from_numpy(cte_layer),
        cte_layer_low=torch.from_numpy(low),
        cte_layer_high=torch.from_numpy(high),
        cte_layer_median=torch.from_numpy(per_layer.median),
        top5_share=torch.from_numpy(per_layer.top_share),
        alpha=alpha,
        pair_cte=torch.from_numpy(per_role.ratios),
        pair_weight=torch.from_numpy(per_layer.weights),
        s_correct=torch.tensor([sc.s_correct for sc in scores], dtype=torch.float64),
        s_foil=torch.tensor([sc.s_foil for sc in scores], dtype=torch.float64),
        pairs=[
            {
                "correct": p.correct,
                "foil": p.foil,
                "image": p.image,
                "family": p.family,
                "condition": p.condition,
                "orientation": p.orientation,
                "gap": float(g),
                "status": str(s),
            }
            for p, g, s in zip(pairs, gap, status, strict=True)
        ],
        config=config.to_dict(),
        counts={**(counts or {}), "traced": len(pairs), **per_layer.counts},
        aggregation={
            **AGGREGATION,
            "min_gap_share": config.min_gap_share,
            "gap_floor": per_layer.floor,
            "top_fraction": TOP_FRACTION,
        },
    )


def trace(
    encoder: DualEncoder,
    pairs: list[TracePair],
    images: torch.Tensor,
    config: TraceConfig | None = None,
    counts: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> TraceResult:
    """Fast causal tracing of all pairs, aggregated (see module docstring).

    Pairs without roles get them from the tokenizer's offsets (:func:`infer_roles`). The
    result's ``aggregation["pooling"]`` records where the model pools its text embedding.
    """
    config = config or TraceConfig()
    with_roles = []
    for pair in pairs:
        if pair.roles is None:
            correct, foil = encoder.token_layouts([pair.correct, pair.foil])
            pair = replace(pair, roles=infer_roles(correct, foil, pair.condition))
        with_roles.append(pair)
    scores = trace_scores(
        encoder, with_roles, images, batch_pairs=config.batch_pairs, progress=progress
    )
    result = aggregate(with_roles, scores, config, counts)
    result.aggregation["pooling"] = encoder.pooling
    return result
