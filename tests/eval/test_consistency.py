"""PSF-Med paraphrase-consistency metrics (mechtune.eval.consistency)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mechtune.data.answers import AnswerGroup, AnswerVariant, read_answer_records
from mechtune.eval.consistency import (
    answer_accuracy,
    cluster_ratio,
    consistency_summary,
    flip_rate,
    full_consistency,
    group_flips,
    is_fully_consistent,
    majority_share,
    majority_shares,
    margin_difference,
    mean_majority_share,
    original_accuracy,
    pair_disagreements,
    pairwise_flip_rate,
    summary_markdown,
    swap_sensitivity,
    text_only_agreement,
    to_jsonable,
    two_proportion_z_test,
)
from mechtune.eval.metrics import bootstrap_mean

# UNHSAILLab/lvlm-interpret-medgemma (MIT), results/question_phrasing_results/phrasing_analysis.csv
EXTERNAL = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "external"
    / "medgemma_mimic_phrasing_answers.csv"
)


def _group(gid, original, variants, truth=None, strategies=None, families=None):
    """``original`` and ``variants`` are (answer, margin) pairs."""
    strategies = strategies or ["lexical"] * len(variants)
    families = families or [None] * len(variants)
    return AnswerGroup(
        group_id=gid,
        study_id=gid,
        original_question="Is there edema?",
        original_answer=original[0],
        original_margin=original[1],
        ground_truth=truth,
        variants=tuple(
            AnswerVariant(f"Edema {i}?", s, a, m, f)
            for i, ((a, m), s, f) in enumerate(zip(variants, strategies, families, strict=True))
        ),
    )


Y, N = True, False
# g1: consistent; g2: one of two variants flips; g3: all four flip (majority is not the original)
G1 = _group("g1", (Y, 2.0), [(Y, 1.0), (Y, 3.0), (Y, 2.5)], truth=Y,
            strategies=["lexical", "voice", "register"])  # fmt: skip
G2 = _group("g2", (Y, 1.0), [(N, -1.0), (Y, 0.5)], truth=Y, strategies=["lexical", "voice"])
G3 = _group("g3", (N, -1.0), [(Y, 1.0), (Y, 2.0), (Y, 3.0), (Y, 4.0)], truth=N,
            strategies=["voice", "voice", "register", "register"])  # fmt: skip
GROUPS = [G1, G2, G3]


# --- definitions on hand-made groups -----------------------------------------------------


def test_per_group_definitions():
    assert [group_flips(g) for g in GROUPS] == [False, True, True]
    assert [is_fully_consistent(g) for g in GROUPS] == [True, False, False]
    assert pair_disagreements(G2).tolist() == [True, False]
    assert [majority_share(g) for g in GROUPS] == pytest.approx([1.0, 2 / 3, 4 / 5])


def test_rates_over_groups():
    assert flip_rate(GROUPS).value == pytest.approx(2 / 3)
    assert flip_rate(GROUPS).n == 3
    pairwise = pairwise_flip_rate(GROUPS)
    assert (pairwise.value, pairwise.n) == (pytest.approx(5 / 9), 9)  # pooled, not per group
    assert full_consistency(GROUPS).value == pytest.approx(1 / 3)
    assert mean_majority_share(GROUPS).value == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    # |2-1| + |2-3| + |2-2.5|, |1+1| + |1-0.5|, |-1-1| + |-1-2| + |-1-3| + |-1-4|
    margin = margin_difference(GROUPS)
    assert (margin.value, margin.n) == (pytest.approx(19 / 9), 9)


def test_accuracy_all_answers_and_originals_only():
    # all answers: g1 4/4, g2 2/3, g3 1/5 (only its original is right)
    everything = answer_accuracy(GROUPS)
    assert (everything.value, everything.n) == (pytest.approx(7 / 12), 12)
    originals = original_accuracy(GROUPS)
    assert (originals.value, originals.n) == (pytest.approx(1.0), 3)
    no_truth = _group("g4", (Y, None), [(Y, None)])
    with pytest.raises(ValueError, match="no ground truth"):
        answer_accuracy([*GROUPS, no_truth])
    with pytest.raises(ValueError, match="lacks margins"):
        margin_difference([*GROUPS, no_truth])


def test_pairwise_rate_against_a_plain_loop():
    rng = np.random.default_rng(1)
    groups = []
    for g in range(40):
        variants = [(bool(rng.random() < 0.3), None) for _ in range(int(rng.integers(1, 7)))]
        groups.append(_group(f"r{g}", (False, None), variants))
    pairs = [v.answer != g.original_answer for g in groups for v in g.variants]
    assert pairwise_flip_rate(groups).value == pytest.approx(sum(pairs) / len(pairs))
    flips = [any(v.answer != g.original_answer for v in g.variants) for g in groups]
    assert flip_rate(groups).value == pytest.approx(sum(flips) / len(flips))


def test_intervals_are_seeded_and_bracket_the_value():
    for metric in (flip_rate, pairwise_flip_rate, margin_difference, answer_accuracy):
        a, b = metric(GROUPS, seed=3), metric(GROUPS, seed=3)
        assert a == b
        assert a.low <= a.value <= a.high


def test_cluster_ratio_matches_bootstrap_mean_for_equal_sizes():
    rng = np.random.default_rng(0)
    flips = rng.integers(0, 5, size=30).astype(float)
    pooled = cluster_ratio(flips, np.full(30, 4.0), seed=7)
    per_group = bootstrap_mean(flips / 4, seed=7)
    assert (pooled.value, pooled.low, pooled.high) == pytest.approx(
        (per_group.value, per_group.low, per_group.high)
    )
    assert math.isnan(cluster_ratio([], []).value)


def test_text_only_agreement_and_swap_sensitivity():
    real = np.array([1, 1, 0, 0, 1], dtype=bool)
    blank = np.array([1, 0, 0, 0, 1], dtype=bool)
    agreement = text_only_agreement(real, blank)
    assert (agreement.value, agreement.n) == (pytest.approx(4 / 5), 5)
    assert swap_sensitivity(real, blank).value == pytest.approx(1 / 5)
    assert swap_sensitivity([1, 0], [1, 0]).value == 0.0
    with pytest.raises(ValueError, match="two \\[N\\] arrays"):
        text_only_agreement(real, blank[:3])
    with pytest.raises(ValueError, match="not margins"):
        swap_sensitivity([0.3, -1.2], [1.0, 0.5])


def test_two_proportion_z_test_by_hand():
    # 45/100 vs 30/100: p = 0.375, se = sqrt(0.375 * 0.625 * 0.02) = 0.0684653, z = 0.15 / se
    z, p = two_proportion_z_test(45, 100, 30, 100)
    assert z == pytest.approx(2.190890, abs=1e-6)
    assert p == pytest.approx(math.erfc(2.190890 / math.sqrt(2)), abs=1e-6)
    assert p == pytest.approx(0.028459, abs=1e-6)  # 2 * (1 - Phi(2.1909)) from a normal table
    assert two_proportion_z_test(30, 100, 45, 100) == pytest.approx((-z, p))
    assert two_proportion_z_test(0, 10, 0, 20) == (0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_z_test(5, 4, 1, 10)


def test_z_test_reproduces_the_psf_med_before_after_p_value():
    # CHIL paper, MIMIC binary n = 158: flip 14.6% -> 4.4%, p = 0.002 (REFERENCE.md §2)
    z, p = two_proportion_z_test(23, 158, 7, 158)
    assert (round(100 * 23 / 158, 1), round(100 * 7 / 158, 1)) == (14.6, 4.4)
    assert round(p, 3) == 0.002
    assert z > 0


# --- summary -----------------------------------------------------------------------------


def test_summary_per_strategy_and_family_labels():
    rows = consistency_summary(GROUPS)
    assert [r.label for r in rows] == ["all", "lexical", "register", "voice"]
    by_label = {r.label: r for r in rows}
    assert by_label["all"].flip_rate.value == pytest.approx(2 / 3)
    assert by_label["all"].fully_consistent == 1
    # voice variants: g1 yes (no flip), g2 yes (no flip), g3 yes, yes (flip)
    voice = by_label["voice"]
    assert (voice.groups, voice.pairs) == (3, 4)
    assert voice.flip_rate.value == pytest.approx(1 / 3)
    assert voice.pairwise_flip_rate.value == pytest.approx(2 / 4)
    assert voice.majority_share.value == pytest.approx((1 + 1 + 2 / 3) / 3)
    # lexical variants: g1 yes (no flip), g2 no (flip); g3 has none and is left out
    lexical = by_label["lexical"]
    assert (lexical.groups, lexical.flip_rate.value) == (2, pytest.approx(1 / 2))
    labels = {"lexical": "in-distribution", "voice": "in-distribution", "register": "held-out"}
    merged = consistency_summary(GROUPS, labels=labels)
    assert [r.label for r in merged] == ["all", "held-out", "in-distribution"]
    assert merged[1].pairs + merged[2].pairs == 9
    assert len(consistency_summary(GROUPS, by=None)) == 1
    with pytest.raises(ValueError, match="by must be"):
        consistency_summary(GROUPS, by="model")


def test_summary_by_family_markdown_and_json():
    groups = [_group("f", (Y, 1.0), [(Y, 1.0), (N, -1.0)], families=["p.a", None])]
    rows = consistency_summary(groups, by="family")
    assert [r.label for r in rows] == ["all", "p.a", "unknown"]
    assert rows[0].answer_accuracy is None  # no ground truth
    table = summary_markdown(rows)
    assert table.count("\n") == 2 + len(rows)
    assert "| all | 1 | 2 | 100.0 [100.0, 100.0] |" in table
    data = json.loads(json.dumps(to_jsonable(rows), allow_nan=False))
    assert data[0]["flip_rate"] == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 1}
    assert data[0]["margin_difference"]["value"] == pytest.approx(1.0)
    assert to_jsonable({"x": float("nan"), "y": np.float32(0.5)}) == {"x": None, "y": 0.5}


# --- the MedGemma file -------------------------------------------------------------------


def test_external_medgemma_summary_is_reproduced():
    """UNHSAILLab/lvlm-interpret-medgemma, summary_statistics.json: 63 groups, 43 fully
    consistent, majority share 0.9030 +- 0.1609, and (README) PSF-Med flip rate 20/63."""
    if not EXTERNAL.exists():
        pytest.skip(f"{EXTERNAL} is absent")
    groups, _ = read_answer_records(EXTERNAL)
    assert len(groups) == 63
    assert sum(is_fully_consistent(g) for g in groups) == 43
    shares = majority_shares(groups)
    assert shares.mean() == pytest.approx(0.9030, abs=5e-4)
    # The published std is the population one (ddof=0: 0.16091); ddof=1 gives 0.16220.
    assert shares.std(ddof=0) == pytest.approx(0.1609, abs=5e-4)
    assert abs(shares.std(ddof=1) - 0.1609) > 1e-3
    assert sum(group_flips(g) for g in groups) == 20
    (row,) = consistency_summary(groups, by=None)
    assert row.flip_rate.value == pytest.approx(20 / 63)
    assert row.fully_consistent == 43
    assert row.majority_share_std == pytest.approx(0.1609, abs=5e-4)
    # summary_statistics.json "baseline_accuracy": 0.6508 = 41/63 (original answers only)
    assert row.original_accuracy is not None
    assert row.original_accuracy.value == pytest.approx(41 / 63)
