"""Ratios over pairs with small denominators: CTE aggregation and SAE patch recovery."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mechtune.errors import ConfigError, DataError
from mechtune.interp.ratios import (
    keep_by_gap,
    median_ratio,
    summarise_ratios,
    top_share,
    weighted_ratio,
)
from mechtune.interp.result import TraceConfig, aggregate
from mechtune.interp.sae_analysis import PairBatch, patch_recovery
from mechtune.interp.tracing import PairScores, TracePair

ROLES4 = ("start", "negator", "subject_first", "end")


def case13(scale: float = 1.0, with_near_tie: bool = True):
    """10 pairs (gap 0.3, CTE 0.8 at layer 1, 0.1 elsewhere) and one near-tie pair (gap
    0.0012) whose patched score wobbles by 0.01 at layer 2 (its CTE there: 8.33)."""
    pairs, scores = [], []
    for i in range(10):
        s_c, s_f = 0.30, 0.00
        cte = torch.full((4, 4), 0.1, dtype=torch.float64)
        cte[1] = 0.8
        patched = s_c - cte * (s_c - s_f)
        pairs.append(TracePair(f"c{i}", f"f{i}", 0, ROLES4))
        scores.append(PairScores(s_c * scale, s_f * scale, patched * scale, list(ROLES4)))
    if with_near_tie:
        s_c, s_f = 0.2012, 0.2000
        patched = torch.full((4, 4), s_c, dtype=torch.float64)
        patched[2] = s_c - 0.01
        pairs.append(TracePair("near", "tie", 0, ROLES4))
        scores.append(PairScores(s_c * scale, s_f * scale, patched * scale, list(ROLES4)))
    return pairs, scores


def test_case13_peak_and_alpha_are_not_decided_by_one_near_tie():
    pairs, scores = case13()
    result = aggregate(pairs, scores, TraceConfig(n_boot=200))
    assert result.peak_layer() == 1
    assert result.counts["excluded_small_gap"] == 1 and result.counts["aggregated"] == 10
    assert result.pairs[-1]["status"] == "excluded_small_gap"
    assert float(result.pair_weight[-1]) == 0.0
    assert result.cte_layer.tolist() == pytest.approx([0.1, 0.8, 0.1, 0.1])
    assert result.alpha.tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])
    # The pair is still reported, with its (blown-up) per-pair CTE.
    assert float(result.pair_cte[-1, 2].nanmean()) == pytest.approx(0.01 / 0.0012)
    # Even kept (no exclusion), the ratio of sums weights it by its gap: hand computation.
    kept = aggregate(pairs, scores, TraceConfig(min_gap_share=0.0, n_boot=50))
    assert kept.counts["excluded_small_gap"] == 0 and kept.counts["aggregated"] == 11
    total = 10 * 0.3 + 0.0012
    want = [3.0 * 0.1 / total, 3.0 * 0.8 / total, (3.0 * 0.1 + 0.01) / total, 3.0 * 0.1 / total]
    assert kept.cte_layer.tolist() == pytest.approx(want, rel=1e-9)
    assert kept.peak_layer() == 1
    clean = aggregate(*case13(with_near_tie=False), TraceConfig(n_boot=50))
    assert (kept.alpha - clean.alpha).abs().max() < 0.005
    # The per-layer median is the robust companion; a plain mean over pairs would have
    # put the peak at layer 2 (0.848 against 0.727).
    assert kept.cte_layer_median.tolist() == pytest.approx([0.1, 0.8, 0.1, 0.1])
    plain_mean = kept.pair_cte.nanmean(dim=2).mean(0)
    assert int(plain_mean.argmax()) == 2


def test_case13_top5_share_by_hand():
    pairs, scores = case13()
    kept = aggregate(pairs, scores, TraceConfig(min_gap_share=0.0, n_boot=20))
    total = 10 * 0.3 + 0.0012
    ordinary, near = 0.3 / total * 0.1, 0.0012 / total * (0.01 / 0.0012)
    # 11 pairs: the top 5% is ceil(0.55) = 1 pair; at layer 2 an ordinary pair is largest.
    assert float(kept.top5_share[2]) == pytest.approx(ordinary / (10 * ordinary + near))
    assert float(kept.top5_share[1]) == pytest.approx(1 / 10)  # near-tie contributes 0


def test_the_rule_is_relative_scaling_all_scores_changes_nothing():
    base = aggregate(*case13(), TraceConfig(n_boot=100))
    for scale in (1e-3, 7.0, 1e3):
        scaled = aggregate(*case13(scale), TraceConfig(n_boot=100))
        assert scaled.counts == base.counts
        for name in ("cte_layer", "cte_layer_median", "top5_share", "alpha", "pair_weight"):
            assert torch.allclose(getattr(scaled, name), getattr(base, name), atol=1e-9), name
        assert torch.allclose(scaled.cte_layer_low, base.cte_layer_low, atol=1e-9)
        assert [p["status"] for p in scaled.pairs] == [p["status"] for p in base.pairs]
    # An absolute epsilon of 1e-3 would have excluded every pair at scale 1e-3.
    assert all(abs(p["gap"]) < 1e-3 for p in aggregate(*case13(1e-3), TraceConfig(n_boot=5)).pairs)


def test_keep_by_gap_counts_each_reason():
    gaps = np.array([0.5, -0.4, 0.3, 0.0, 0.01, -0.02, 0.35])
    kept, counts, floor = keep_by_gap(gaps, 0.1)
    assert floor == pytest.approx(0.1 * 0.3)  # median |gap| of the seven is 0.3
    assert kept.tolist() == [True, True, True, False, False, False, True]
    assert counts == {"excluded_small_gap": 2, "excluded_zero_gap": 1}
    _, counts0, floor0 = keep_by_gap(gaps, 0.0)
    assert floor0 == 0.0 and counts0 == {"excluded_small_gap": 0, "excluded_zero_gap": 1}
    with pytest.raises(DataError, match="pair 1: the gap"):
        keep_by_gap(np.array([0.1, np.nan]), 0.1)
    with pytest.raises(ConfigError, match=r"min_gap_share must be in \[0, 1\].*got 1.5"):
        keep_by_gap(gaps, 1.5)


def test_weighted_ratio_is_the_ratio_of_sums_and_skips_missing_entries():
    num = np.array([[0.2, 1.0], [-0.1, np.nan], [0.05, 0.3]])
    gaps = np.array([0.4, -0.2, 0.1])
    summary = summarise_ratios(num, gaps, 0.0)
    # column 0: sum sign(g) num / sum |g| = (0.2 + 0.1 + 0.05) / 0.7
    assert summary.weighted[0] == pytest.approx(0.35 / 0.7)
    # column 1: pair 2 lacks it, so it leaves both sums: (1.0 + 0.3) / 0.5
    assert summary.weighted[1] == pytest.approx(1.3 / 0.5)
    assert summary.median.tolist() == pytest.approx([0.5, (2.5 + 3.0) / 2])
    assert np.isnan(weighted_ratio(np.full((2, 1), np.nan), np.array([0.5, 0.5]))[0])
    assert median_ratio(np.array([[1.0], [5.0], [2.0]]), np.array([True, False, True]))[0] == 1.5


def test_top_share_against_a_hand_computation():
    # 40 pairs: the top 5% is 2 pairs. Contributions w_i r_i with w = |g| / sum |g|.
    rng = np.random.default_rng(0)
    gaps = rng.uniform(0.1, 1.0, 40)
    ratios = rng.normal(0.3, 0.2, (40, 1))
    ratios[7, 0], ratios[21, 0] = 9.0, -6.0
    weights = gaps / gaps.sum()
    c = np.abs(weights * ratios[:, 0])
    by_hand = (c[7] + c[21]) / c.sum() if set(np.argsort(-c)[:2]) == {7, 21} else None
    assert by_hand is not None
    assert top_share(ratios, weights)[0] == pytest.approx(by_hand)
    # 41 pairs: ceil(2.05) = 3 pairs.
    gaps41, ratios41 = np.append(gaps, 0.5), np.vstack([ratios, [[0.0]]])
    w41 = gaps41 / gaps41.sum()
    c41 = np.sort(np.abs(w41 * ratios41[:, 0]))[::-1]
    assert top_share(ratios41, w41)[0] == pytest.approx(c41[:3].sum() / c41.sum())
    assert math.isnan(top_share(np.zeros((3, 1)), np.ones(3) / 3)[0])


def test_trace_config_validates_and_every_field_changes_the_output():
    with pytest.raises(ConfigError, match="min_gap_share must be in"):
        TraceConfig(min_gap_share=-0.1)
    with pytest.raises(ConfigError, match="batch_pairs must be >= 1, got 0"):
        TraceConfig(batch_pairs=0)
    with pytest.raises(ConfigError, match="n_boot must be >= 1, got 0"):
        TraceConfig(n_boot=0)
    pairs, scores = case13()
    # spread the ordinary pairs so that resampling them moves the interval
    for i, sc in enumerate(scores[:10]):
        sc.patched[1] += 0.01 * i
    base = aggregate(pairs, scores, TraceConfig(n_boot=100))
    share = aggregate(pairs, scores, TraceConfig(min_gap_share=0.0, n_boot=100))
    assert share.counts != base.counts and not torch.equal(share.cte_layer, base.cte_layer)
    seed = aggregate(pairs, scores, TraceConfig(seed=1, n_boot=100))
    assert torch.equal(seed.cte_layer, base.cte_layer)
    assert not torch.equal(seed.cte_layer_low, base.cte_layer_low)
    boots = aggregate(pairs, scores, TraceConfig(n_boot=7))
    assert not torch.equal(boots.cte_layer_high, base.cte_layer_high)
    # batch_pairs is tested where it acts: in trace_scores (tests/interp/test_token_roles.py)


# -- the SAE patch-recovery ratio ----------------------------------------------------------------

D = 4


class LinearVLM(nn.Module):
    """Margin = readout . mean over words of (embedding + image); one identity block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vocab: dict[str, int] = {}
        self.embed = nn.Embedding(32, D)
        self.blocks = nn.ModuleList([nn.Identity()])
        self.readout = nn.Linear(D, 1, bias=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.blocks

    def _ids(self, questions):
        words = [q.split() for q in questions]
        width = max(len(w) for w in words)
        ids = torch.zeros(len(words), width, dtype=torch.long)
        mask = torch.zeros(len(words), width, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                ids[i, j] = self.vocab.setdefault(w, len(self.vocab) + 1)
                mask[i, j] = True
        return ids, mask

    def margin(self, images, questions):
        ids, mask = self._ids(questions)
        x = self.blocks[0](self.embed(ids) + torch.as_tensor(images)[:, None, :])
        m = mask.float().unsqueeze(-1)
        return self.readout((x * m).sum(1) / m.sum(1)).squeeze(-1)

    def readout_positions(self, images, questions):
        return self._ids(questions)[1]


class OneFeature:
    """A one-feature dictionary: f(x) = x . u (u a unit vector), decoder row u."""

    def __init__(self, direction: torch.Tensor) -> None:
        self.w_dec = direction[None, :]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w_dec[0])[..., None]


def test_patch_recovery_with_a_near_tie_pair():
    vlm = LinearVLM().eval()
    u = nn.functional.normalize(torch.randn(D), dim=0)
    sae = OneFeature(u)
    images = torch.zeros(6, D)
    paraphrases = ["a b", "c d", "e f", "g h", "i j", "k l"]
    pairs = PairBatch(
        rows=list(range(6)),
        originals=["x"] * 6,
        paraphrases=paraphrases,
        answers=np.ones(6, dtype=bool),
        groups=np.arange(6),
    )
    with torch.no_grad():
        m_para = vlm.margin(images, paraphrases).double().numpy()
        # removing f's contribution moves the margin by -(readout . u) * mean f
        shift = np.array(
            [
                -float(vlm.readout.weight[0] @ u)
                * float((vlm.embed(vlm._ids([q])[0])[0] @ u).mean())
                for q in paraphrases
            ]
        )
    # Five ordinary flip pairs with a gap of 1 in margin and one near-tie (gap 1e-4): the
    # original margins are the paraphrase's plus the gap, with the opposite sign.
    gaps = np.array([1.0, -1.0, 1.0, -1.0, 1.0, 1e-4])
    m_orig = m_para + gaps
    flips = np.ones(6, dtype=bool)
    out = patch_recovery(vlm, images, pairs, flips, m_orig, m_para, sae, 0, 0)
    ratios = shift / gaps
    assert abs(ratios[-1]) > 50 * abs(ratios[:-1]).max()  # the near-tie's ratio blows up
    # median |gap| = 1, floor 0.1: the near-tie is excluded and counted
    assert out["aggregated"] == 5 and out["excluded_small_gap"] == 1
    assert out["excluded_zero_gap"] == 0 and out["flip_pairs"] == 6
    assert out["recovered_mean"] == pytest.approx(
        float((np.sign(gaps[:5]) * shift[:5]).sum() / 5.0), abs=1e-4
    )
    assert out["recovered_median"] == pytest.approx(float(np.median(ratios[:5])), abs=1e-4)
    c = np.abs(ratios[:5] / 5)
    assert out["recovered_top5_share"] == pytest.approx(c.max() / c.sum(), abs=1e-4)
    # Kept (min_gap_share=0), the ratio of sums still weighs the near-tie by its gap.
    kept = patch_recovery(vlm, images, pairs, flips, m_orig, m_para, sae, 0, 0, min_gap_share=0.0)
    assert kept["aggregated"] == 6
    want = float((np.sign(gaps) * shift).sum() / np.abs(gaps).sum())
    assert kept["recovered_mean"] == pytest.approx(want, abs=1e-4)
    assert abs(kept["recovered_mean"] - out["recovered_mean"]) < 0.01 * abs(ratios[-1])


FIELD_TESTS = {
    "mechtune.interp.result.TraceConfig": {
        name: "test_trace_config_validates_and_every_field_changes_the_output"
        for name in ("min_gap_share", "seed", "n_boot")
    }
}
