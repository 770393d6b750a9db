"""alpha from a trace: each source and normalisation against hand computation on a
hand-made CTE matrix (mechtune.interp.alpha)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.interp.alpha import (
    ALPHA_NORMS,
    ALPHA_SOURCES,
    alpha_from_trace,
    alpha_variants,
    cte_profile,
    normalise,
)
from mechtune.interp.pairs import ROLES

NAN = float("nan")
NEGATOR = ROLES.index("negator")


def _cte(rows: list[dict[str, float]]) -> torch.Tensor:
    """``[L+1, R]`` with the given roles' values and NaN elsewhere (absent roles)."""
    out = torch.full((len(rows), len(ROLES)), NAN, dtype=torch.float64)
    for layer, row in enumerate(rows):
        for role, value in row.items():
            out[layer, ROLES.index(role)] = value
    return out


# Four layers (embedding output + 3 blocks); three roles traced, the others absent.
CTE = _cte(
    [
        {"context": 0.10, "negator": 0.50, "subject_first": 0.20},
        {"context": 0.30, "negator": 0.20, "subject_first": 0.60},
        {"context": 0.05, "negator": 0.40, "subject_first": 0.10},
        {"context": 0.20, "negator": 0.10, "subject_first": 0.15},
    ]
)
CTE_LAYER = torch.tensor([0.25, 0.35, 0.15, 0.15], dtype=torch.float64)
TRACE = SimpleNamespace(cte=CTE, cte_layer=CTE_LAYER, roles=ROLES)


def test_each_source_reads_its_profile():
    assert cte_profile(CTE_LAYER, CTE, ROLES, "mean").tolist() == CTE_LAYER.tolist()
    assert cte_profile(CTE_LAYER, CTE, ROLES, "negator").tolist() == [0.5, 0.2, 0.4, 0.1]
    # per layer, the largest role, absent (NaN) roles ignored
    assert cte_profile(CTE_LAYER, CTE, ROLES, "max").tolist() == [0.5, 0.6, 0.4, 0.2]


def test_min_max_by_hand_and_a_constant_profile_gives_ones():
    expected = [(v - 0.15) / (0.35 - 0.15) for v in (0.25, 0.35, 0.15, 0.15)]
    assert normalise(CTE_LAYER, "minmax").tolist() == pytest.approx(expected)
    assert normalise(torch.full((5,), 0.13), "minmax").tolist() == [1.0] * 5
    # the trace's own alpha is the min-max mean profile
    assert alpha_from_trace(TRACE).tolist() == pytest.approx(expected)


def test_rank_gives_ties_their_highest_rank_over_n_and_never_zero():
    # [0.25, 0.35, 0.15, 0.15]: the tied 0.15s share rank 2 (of 1, 2), 0.25 is 3, 0.35 is 4
    assert normalise(CTE_LAYER, "rank").tolist() == pytest.approx([3 / 4, 1.0, 2 / 4, 2 / 4])
    assert normalise(torch.tensor([0.4, 0.1, 0.3]), "rank").tolist() == pytest.approx(
        [1.0, 1 / 3, 2 / 3]
    )
    assert normalise(torch.full((4,), -0.2), "rank").tolist() == [1.0] * 4
    # only the order counts: a stretched profile of the same order, the same alpha
    assert torch.equal(normalise(CTE_LAYER * 10 - 3, "rank"), normalise(CTE_LAYER, "rank"))


def test_softmax_by_hand_sums_to_one_and_tau_sharpens_it():
    tau = 0.1
    weights = [math.exp(v / tau) for v in CTE_LAYER.tolist()]
    expected = [w / sum(weights) for w in weights]
    alpha = normalise(CTE_LAYER, "softmax", tau)
    assert alpha.tolist() == pytest.approx(expected)
    assert float(alpha.sum()) == pytest.approx(1.0)
    sharp = normalise(CTE_LAYER, "softmax", 0.01)
    assert float(sharp.max()) > float(alpha.max()) and float(sharp.sum()) == pytest.approx(1.0)
    # a constant profile: the uniform 1 / (L + 1)
    assert normalise(torch.full((4,), 0.3), "softmax", tau).tolist() == pytest.approx([0.25] * 4)


def test_alpha_from_trace_combines_source_and_normalisation():
    negator = [0.5, 0.2, 0.4, 0.1]
    assert alpha_from_trace(TRACE, "negator", "minmax").tolist() == pytest.approx(
        [(v - 0.1) / 0.4 for v in negator]
    )
    assert alpha_from_trace(TRACE, "max", "rank").tolist() == pytest.approx(
        [3 / 4, 1, 2 / 4, 1 / 4]
    )
    variants = alpha_variants(TRACE, tau=0.1)
    assert set(variants["alpha"]) == set(ALPHA_SOURCES)
    assert all(set(v) == set(ALPHA_NORMS) for v in variants["alpha"].values())
    assert variants["profiles"]["negator"] == negator
    assert variants["alpha"]["mean"]["softmax"] == normalise(CTE_LAYER, "softmax", 0.1).tolist()


def test_missing_roles_and_bad_settings_are_refused():
    no_negator = CTE.clone()
    no_negator[:, NEGATOR] = NAN
    trace = SimpleNamespace(cte=no_negator, cte_layer=CTE_LAYER, roles=ROLES)
    with pytest.raises(DataError, match=r"alpha_source 'negator': no finite CTE at layers \[0, 1"):
        alpha_from_trace(trace, "negator")
    variants = alpha_variants(trace)
    assert variants["profiles"]["negator"] is None and "negator" in variants["unavailable"]
    assert "negator" not in variants["alpha"] and "max" in variants["alpha"]
    with pytest.raises(ConfigError, match="alpha_source must be one of mean, negator, max"):
        alpha_from_trace(TRACE, "median")
    with pytest.raises(ConfigError, match="alpha_norm must be one of minmax, rank, softmax"):
        normalise(CTE_LAYER, "zscore")
    for tau in (0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="alpha_tau must be a finite number > 0"):
            normalise(CTE_LAYER, "softmax", tau)
    with pytest.raises(DataError, match="finite vector"):
        normalise(torch.tensor([0.1, NAN]), "minmax")
