"""NAST's per-layer weights alpha_l from a causal trace: which CTE profile, and how it is
normalised to [0, 1].

NAST (arXiv 2602.12498, §3-4) weights block l's update by alpha_l ** beta with alpha the
min-max normalised per-layer CTE. Both choices are open questions (issue 17): the traced
profile on MiniLM is nearly flat, and min-max stretches any flat profile to the full
[0, 1], freezing the block at its minimum. So the source and the normalisation are
settings:

Sources (a profile ``[L+1]``, layer 0 the embedding output; from a
:class:`~mechtune.interp.result.TraceResult`):

- ``mean``: ``cte_layer``, each pair's CTE averaged over its token roles, then the ratio
  of sums over pairs (NAST's per-layer CTE; the default, and what mechtune used before);
- ``negator``: the CTE at the negator tokens only (``cte[:, "negator"]``, the gap-weighted
  ratio of sums over the pairs that have one);
- ``max``: per layer, the largest CTE over the token roles (``nanmax`` of ``cte``).

Normalisations (all monotone, so every one keeps the profile's order of layers):

- ``minmax``: (x - min) / (max - min), NAST's; the minimum layer gets 0. A constant
  profile carries no location, so it gives alpha = 1 everywhere (NAST is then uniform
  LoRA) rather than dividing by zero;
- ``rank``: rank(x) / n with tied values given their highest rank (``scipy.stats.rankdata``,
  ``method="max"``): the largest layer gets 1, the smallest 1/n, never 0, so no block is
  frozen and only the order of the profile counts, not its spread; a constant profile
  gives 1 everywhere;
- ``softmax``: softmax(x / tau) (``scipy.special.softmax``); the weights sum to 1 over the
  L + 1 layers, so their mean is 1 / (L + 1): under the same learning rate every block
  trains far slower than under min-max (compare it with the effective-lr control).

Every normalisation runs over all L + 1 entries, the embedding output included, as the
min-max alpha always has; training reads the blocks' entries alpha[1:].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mechtune.errors import ConfigError, DataError

ALPHA_SOURCES = ("mean", "negator", "max")
ALPHA_NORMS = ("minmax", "rank", "softmax")
DEFAULT_TAU = 0.05  # CTE units: MiniLM's per-layer profile spans about 0.04


def check_alpha_settings(source: str, norm: str, tau: float) -> None:
    """``ConfigError`` naming the field for an unknown source or normalisation, or a
    temperature that is not a finite number > 0."""
    if source not in ALPHA_SOURCES:
        raise ConfigError(f"alpha_source must be one of {', '.join(ALPHA_SOURCES)}, got {source!r}")
    if norm not in ALPHA_NORMS:
        raise ConfigError(f"alpha_norm must be one of {', '.join(ALPHA_NORMS)}, got {norm!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ConfigError(f"alpha_tau must be a number, got {tau!r}")
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"alpha_tau must be a finite number > 0, got {tau}")


def cte_profile(
    cte_layer: torch.Tensor, cte: torch.Tensor, roles: tuple[str, ...], source: str
) -> torch.Tensor:
    """The per-layer CTE profile ``[L+1]`` (float64) of ``source`` (module docstring).

    ``cte_layer``: ``[L+1]``; ``cte``: ``[L+1, R]`` by token role (NaN: no pair has the
    role), columns named by ``roles``. Raises ConfigError for an unknown source and
    DataError when the source has no value at some layer (no traced pair has a negator
    token; a layer where every role is missing).
    """
    if source not in ALPHA_SOURCES:
        raise ConfigError(f"alpha_source must be one of {', '.join(ALPHA_SOURCES)}, got {source!r}")
    by_role = torch.as_tensor(cte, dtype=torch.float64)
    if source == "mean":
        profile = torch.as_tensor(cte_layer, dtype=torch.float64).clone()
    elif source == "negator":
        if "negator" not in roles:
            raise DataError(f"alpha_source 'negator': the trace has no negator role ({roles})")
        profile = by_role[:, roles.index("negator")].clone()
    else:
        present = ~torch.isnan(by_role)
        profile = torch.where(present, by_role, -torch.inf).max(dim=1).values
        profile[~present.any(dim=1)] = torch.nan
    if not torch.isfinite(profile).all():
        raise DataError(
            f"alpha_source {source!r}: no finite CTE at layers "
            f"{torch.nonzero(~torch.isfinite(profile)).flatten().tolist()} (no traced pair has "
            "the role); choose another alpha_source"
        )
    return profile


def normalise(
    profile: torch.Tensor | np.ndarray, norm: str, tau: float = DEFAULT_TAU
) -> torch.Tensor:
    """alpha ``[L+1]`` (float64, in [0, 1]) from a CTE profile ``[L+1]`` by ``norm``:
    ``minmax``, ``rank`` or ``softmax`` with temperature ``tau`` (module docstring; a
    constant profile gives ones under minmax and rank). Raises ConfigError for a bad
    ``norm`` or ``tau`` and DataError for a non-finite entry."""
    check_alpha_settings("mean", norm, tau)
    x = np.asarray(torch.as_tensor(profile, dtype=torch.float64).numpy(), dtype=np.float64)
    if x.ndim != 1 or not x.size or not np.isfinite(x).all():
        raise DataError(f"alpha: the CTE profile must be a finite vector, got {x.tolist()}")
    if norm == "minmax":
        span = x.max() - x.min()
        out = (x - x.min()) / span if span > 0 else np.ones_like(x)
    elif norm == "rank":
        from scipy.stats import rankdata

        out = rankdata(x, method="max") / x.size
    else:
        from scipy.special import softmax

        out = softmax(x / tau)
    return torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float64))


def alpha_from_trace(
    traced: Any, source: str = "mean", norm: str = "minmax", tau: float = DEFAULT_TAU
) -> torch.Tensor:
    """alpha ``[L+1]`` of a :class:`~mechtune.interp.result.TraceResult`: ``norm`` applied
    to the ``source`` profile (:func:`cte_profile`, :func:`normalise`). ``mean`` with
    ``minmax`` is the trace's own ``alpha``."""
    check_alpha_settings(source, norm, tau)
    return normalise(cte_profile(traced.cte_layer, traced.cte, traced.roles, source), norm, tau)


def alpha_variants(traced: Any, tau: float = DEFAULT_TAU) -> dict[str, Any]:
    """Every source's profile and its alpha under every normalisation, for the results:
    ``{"profiles": {source: [L+1] or None}, "alpha": {source: {norm: [L+1]}}}``; a source
    the trace cannot give (no negator token traced) is None with its reason under
    ``"unavailable"``."""
    profiles: dict[str, list[float] | None] = {}
    alphas: dict[str, dict[str, list[float]]] = {}
    unavailable: dict[str, str] = {}
    for source in ALPHA_SOURCES:
        try:
            profile = cte_profile(traced.cte_layer, traced.cte, traced.roles, source)
        except DataError as err:
            profiles[source] = None
            unavailable[source] = str(err)
            continue
        profiles[source] = profile.tolist()
        alphas[source] = {norm: normalise(profile, norm, tau).tolist() for norm in ALPHA_NORMS}
    out: dict[str, Any] = {"profiles": profiles, "alpha": alphas, "tau": tau}
    if unavailable:
        out["unavailable"] = unavailable
    return out
