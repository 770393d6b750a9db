"""Aggregate causal-tracing scores by token role and layer; save and load the result.

Per pair, CTE(l, p) is averaged over the positions of each role (``[L+1, R]``, NaN for a
role the pair lacks). The per-layer effect CTE_l averages a pair's roles, then the pairs;
alpha_l is CTE_l min-max normalised to [0, 1] (the NAST gradient weight). Pairs whose
|S_corr - S_foil| < epsilon would divide by ~0: they are excluded and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import ConfigError, DataError
from mechtune.interp.pairs import ROLES, infer_roles
from mechtune.interp.tracing import PairScores, TracePair, trace_scores
from mechtune.models.dual_encoder import DualEncoder

TENSORS = "trace.safetensors"
META = "trace.json"


@dataclass(frozen=True)
class TraceConfig:
    epsilon: float = 1e-3
    batch_pairs: int = 16
    seed: int = 0
    n_boot: int = 1000

    def __post_init__(self) -> None:
        if self.epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {self.epsilon}")
        if self.batch_pairs < 1:
            raise ConfigError(f"batch_pairs must be >= 1, got {self.batch_pairs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TraceResult:
    """CTE by layer and role, per-pair raw scores, alpha, config and counts."""

    roles: tuple[str, ...]
    cte: torch.Tensor  # [L+1, R], mean over pairs (NaN: no pair has the role)
    cte_layer: torch.Tensor  # [L+1]
    cte_layer_low: torch.Tensor  # [L+1], 95% bootstrap interval over pairs
    cte_layer_high: torch.Tensor
    alpha: torch.Tensor  # [L+1], min-max normalised cte_layer
    pair_cte: torch.Tensor  # [P, L+1, R]
    s_correct: torch.Tensor  # [P]
    s_foil: torch.Tensor  # [P]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.cte.shape[0]) - 1

    def peak_layer(self) -> int:
        return int(torch.argmax(self.cte_layer))

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: getattr(self, k).contiguous()
            for k in (
                "cte",
                "cte_layer",
                "cte_layer_low",
                "cte_layer_high",
                "alpha",
                "pair_cte",
                "s_correct",
                "s_foil",
            )
        }
        with atomic_path(out / TENSORS) as tmp:
            save_file(tensors, str(tmp))
        meta = {
            "roles": list(self.roles),
            "pairs": self.pairs,
            "config": self.config,
            "counts": self.counts,
        }
        write_json(out / META, meta, sort_keys=True)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> TraceResult:
        path = Path(folder)
        tensors = load_file(str(path / TENSORS))
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        return cls(
            roles=tuple(meta["roles"]),
            pairs=meta["pairs"],
            config=meta["config"],
            counts=meta["counts"],
            **tensors,
        )


def _role_means(cte: torch.Tensor, roles: tuple[str, ...]) -> torch.Tensor:
    """``[L+1, T]`` by position -> ``[L+1, R]`` by role (NaN where a role is absent)."""
    out = torch.full((cte.shape[0], len(ROLES)), float("nan"), dtype=torch.float64)
    for r, role in enumerate(ROLES):
        cols = [i for i, name in enumerate(roles) if name == role]
        if cols:
            out[:, r] = cte[:, cols].to(torch.float64).mean(1)
    return out


def aggregate(
    pairs: list[TracePair],
    scores: list[PairScores],
    config: TraceConfig,
    counts: dict[str, Any] | None = None,
) -> TraceResult:
    """Exclude near-ties, average by role, then by layer; bootstrap the layer means."""
    kept_pairs, per_pair = [], []
    s_corr, s_foil = [], []
    excluded = 0
    for pair, sc in zip(pairs, scores, strict=True):
        if abs(sc.s_correct - sc.s_foil) < config.epsilon:
            excluded += 1
            continue
        roles = pair.roles or infer_roles(sc.tokens, sc.tokens)
        if len(roles) != sc.patched.shape[1]:
            roles = infer_roles(sc.tokens, sc.tokens)
        per_pair.append(_role_means(sc.cte, roles))
        kept_pairs.append(pair)
        s_corr.append(sc.s_correct)
        s_foil.append(sc.s_foil)
    if not per_pair:
        raise DataError(
            f"no pair left to aggregate: {excluded} of {len(pairs)} excluded by "
            f"|S_corr - S_foil| < {config.epsilon}"
        )
    pair_cte = torch.stack(per_pair)  # [P, L+1, R]
    cte = torch.nanmean(pair_cte, dim=0)
    layer_per_pair = torch.nanmean(pair_cte, dim=2).numpy()  # [P, L+1]
    cte_layer = layer_per_pair.mean(0)
    rng = np.random.default_rng(config.seed)
    boots = np.stack(
        [
            layer_per_pair[rng.integers(0, len(layer_per_pair), len(layer_per_pair))].mean(0)
            for _ in range(config.n_boot)
        ]
    )
    low, high = np.quantile(boots, [0.025, 0.975], axis=0)
    span = cte_layer.max() - cte_layer.min()
    alpha = (cte_layer - cte_layer.min()) / span if span > 0 else np.ones_like(cte_layer)
    return TraceResult(
        roles=ROLES,
        cte=cte,
        cte_layer=torch.from_numpy(cte_layer),
        cte_layer_low=torch.from_numpy(low),
        cte_layer_high=torch.from_numpy(high),
        alpha=torch.from_numpy(alpha),
        pair_cte=pair_cte,
        s_correct=torch.tensor(s_corr, dtype=torch.float64),
        s_foil=torch.tensor(s_foil, dtype=torch.float64),
        pairs=[
            {
                "correct": p.correct,
                "foil": p.foil,
                "image": p.image,
                "family": p.family,
                "condition": p.condition,
                "orientation": p.orientation,
            }
            for p in kept_pairs
        ],
        config=config.to_dict(),
        counts={
            **(counts or {}),
            "traced": len(pairs),
            "excluded_near_tie": excluded,
            "aggregated": len(kept_pairs),
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
    """Fast causal tracing of all pairs, aggregated (see module docstring)."""
    config = config or TraceConfig()
    torch.manual_seed(config.seed)
    scores = trace_scores(encoder, pairs, images, batch_pairs=config.batch_pairs, progress=progress)
    return aggregate(pairs, scores, config, counts)
