"""PSF-Med paraphrase-consistency metrics (mechtune.eval.consistency)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mechtune.data.answers import AnswerGroup, AnswerVariant, read_answer_records
from mechtune.data.io import dumps_json
from mechtune.eval.consistency import (
    answer_accuracy,
    cluster_ids,
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
    two_proportion_z_test,
)
from mechtune.eval.metrics import wilson_interval

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


def _study_group(i, study, flip):
    """case02's groups: one variant, which flips or not."""
    return AnswerGroup(
        group_id=f"g{i}",
        study_id=study,
        original_question="Is there a pleural effusion?",
        original_answer=True,
        original_margin=1.0,
        ground_truth=True,
        variants=(AnswerVariant("Is pleural fluid present?", "lexical", not flip, 0.5),),
    )


def test_case02_flip_rate_edges_get_wilson_intervals_not_zero_width():
    none_flip = flip_rate([_study_group(i, f"s{i}", False) for i in range(10)])
    assert (none_flip.value, none_flip.low, none_flip.method) == (0.0, 0.0, "wilson")
    assert none_flip.high == pytest.approx(0.27753, abs=1e-5)  # Wilson 0/10
    one = flip_rate([_study_group(0, "s0", True)])
    assert (one.value, one.high) == (1.0, 1.0)
    assert one.low == pytest.approx(0.20655, abs=1e-5)  # Wilson 1/1
    # the same kind for every proportion of the module
    groups = [_study_group(i, f"s{i}", False) for i in range(10)]
    for metric in (pairwise_flip_rate, answer_accuracy, original_accuracy, full_consistency):
        est = metric(groups)
        assert est.high - est.low > 0.2, metric.__name__


def test_groups_of_one_patient_are_one_cluster():
    # 10 groups, no flip, 5 patients with two questions each: the interval counts 5 clusters
    groups = [_study_group(i, f"s{i}", False) for i in range(10)]
    patients = {g.group_id: f"p{i // 2}" for i, g in enumerate(groups)}
    est = flip_rate(groups, clusters=patients)
    assert est.method == "cluster-bootstrap+wilson-floor"
    assert (est.low, est.n, est.clusters) == (0.0, 10, 5)
    assert est.high == pytest.approx(wilson_interval(0, 5)[1])  # 0.4345, wider than 0/10
    # the default cluster is the study: two groups about one study are one cluster
    same_study = [_study_group(i, f"s{i // 2}", False) for i in range(10)]
    assert flip_rate(same_study).high == pytest.approx(wilson_interval(0, 5)[1])
    assert cluster_ids(same_study)[:3] == ["s0", "s0", "s1"]
    with pytest.raises(ValueError, match="no entry for group 'g9'"):
        flip_rate(groups, clusters={f"g{i}": "p" for i in range(9)})


def test_pooled_rates_floor_at_the_number_of_groups():
    # 3 groups x 4 pairs, no pair flips: 0/12 pairs, but the pairs of a group share its
    # question, so the upper bound is Wilson's for 0 of 3 groups, not 0 of 12 pairs
    groups = [_group(f"h{i}", (Y, 1.0), [(Y, 1.0)] * 4, truth=Y) for i in range(3)]
    pairwise = pairwise_flip_rate(groups)
    assert (pairwise.value, pairwise.n, pairwise.clusters) == (0.0, 12, 3)
    assert pairwise.high == pytest.approx(wilson_interval(0, 3)[1])
    accuracy = answer_accuracy(groups)
    assert (accuracy.value, accuracy.n) == (1.0, 15)
    assert accuracy.low == pytest.approx(wilson_interval(3, 3)[0])
    margin = margin_difference(groups)  # a mean: the plain cluster bootstrap
    assert (margin.method, margin.value, margin.low, margin.high) == ("cluster-bootstrap", 0, 0, 0)


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
    # independent questions: Wilson; questions of shared patients: cluster bootstrap + floor
    assert agreement.method == "wilson"
    assert agreement.low == pytest.approx(wilson_interval(4, 5)[0])
    clustered = swap_sensitivity([1, 1, 0, 0], [1, 1, 0, 0], clusters=["a", "a", "b", "b"])
    assert clustered.method == "cluster-bootstrap+wilson-floor"
    assert (clustered.value, clustered.high) == (0.0, pytest.approx(wilson_interval(0, 2)[1]))


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
    # one group that flips: Wilson 1/1 = [20.7, 100], not a zero-width [100, 100]
    assert "| all | 1 | 2 | 100.0 [20.7, 100.0] |" in table
    data = json.loads(dumps_json(rows))
    assert data[0]["flip_rate"] == {
        "value": 1.0,
        "low": pytest.approx(wilson_interval(1, 1)[0]),
        "high": 1.0,
        "n": 1,
        "clusters": 1,
        "method": "wilson",
    }
    assert data[0]["margin_difference"]["value"] == pytest.approx(1.0)
    assert data[0]["majority_share_std"] == 0.0


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
