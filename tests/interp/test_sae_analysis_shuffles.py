"""The shuffled-label control for the flip-prediction AUC (mechtune.interp.flip_auc):
the restricted shuffles, the permutation p-value, and the control inside the analysis."""

import numpy as np
import pytest
import torch

from mechtune.data.io import to_jsonable
from mechtune.interp.flip_auc import (
    cross_validated_scores,
    permutation_p_value,
    roc_auc,
    shuffle_by_set,
    shuffled_label_aucs,
)
from mechtune.interp.sae_analysis import AnalysisConfig, analyse, paraphrase_pairs
from tests.interp.test_sae_analysis import images, random_sae, sets
from tests.interp.toy_vlm import ToyVLM
from tests.progress_helpers import Recorder


def test_permutation_p_value_matches_a_hand_computation() -> None:
    # two of four shuffled values reach 0.7 (0.7 itself counts): (1 + 2) / (1 + 4)
    assert permutation_p_value(0.7, np.array([0.5, 0.7, 0.8, 0.6])) == pytest.approx(3 / 5)
    assert permutation_p_value(0.9, np.array([0.5, 0.7, 0.8, 0.6])) == pytest.approx(1 / 5)
    assert permutation_p_value(0.1, np.array([0.5, 0.7])) == pytest.approx(1.0)
    assert np.isnan(permutation_p_value(float("nan"), np.array([0.5])))
    assert np.isnan(permutation_p_value(0.5, np.array([])))


def _clustered(n_sets: int, sizes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups of the given sizes (cycled) and labels that cluster by group: each group
    has its own flip probability."""
    rng = np.random.default_rng(seed)
    groups = np.concatenate([[g] * sizes[g % len(sizes)] for g in range(n_sets)])
    rate = rng.random(n_sets) ** 2
    return rng.random(len(groups)) < rate[groups], groups


def _counts_by_size(labels: np.ndarray, groups: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for g in np.unique(groups):
        member = groups == g
        out.setdefault(int(member.sum()), []).append(int(labels[member].sum()))
    return {size: sorted(counts) for size, counts in out.items()}


def test_shuffles_move_whole_sets_among_sets_of_their_size() -> None:
    labels, groups = _clustered(30, (3, 3, 2, 4), seed=0)
    rng = np.random.default_rng(1)
    before = _counts_by_size(labels, groups)
    moved = 0
    for _ in range(20):
        shuffled = shuffle_by_set(labels, groups, rng)
        # each set gets the flip count of some set of its size: the clustering is kept
        assert _counts_by_size(shuffled, groups) == before
        moved += int((shuffled != labels).any())
    assert moved == 20  # and the labels do move
    # with one pair per set it is a plain permutation of the labels
    single = np.arange(50)
    flat = np.random.default_rng(2).random(50) < 0.3
    out = shuffle_by_set(flat, single, np.random.default_rng(3))
    assert out.sum() == flat.sum() and (out != flat).any()


def test_shuffled_aucs_centre_at_one_half_when_labels_are_independent_of_features() -> None:
    """(At a few hundred pairs the pooled out-of-fold AUC of pure noise sits about 0.02
    below 0.5, the folds' intercepts anti-correlating with their flip rates; the control
    shows what the pipeline reads from noise, which is why p compares against it, not
    against 0.5. With 800 pairs that bias is small.)"""
    labels, groups = _clustered(200, (4,), seed=0)
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(len(labels), 6))).float()
    real = roc_auc(cross_validated_scores(x, labels, groups, 3), labels)
    shuffled, _ = shuffled_label_aucs({0: x}, labels, groups, {0: real}, 40, seed=0, folds=3)
    s = shuffled[0]
    assert abs(s.mean - 0.5) < 0.025
    assert s.low < 0.5 < s.high and s.high - s.low > 0.05
    assert s.shuffles == 40 and 1 / 41 <= s.p_value <= 1


def test_a_feature_equal_to_the_label_gets_the_smallest_p_value() -> None:
    labels, groups = _clustered(40, (3,), seed=1)
    noise = np.random.default_rng(0).normal(size=len(labels))
    x = torch.from_numpy(np.stack([labels.astype(float), noise], 1)).float()
    real = roc_auc(cross_validated_scores(x, labels, groups, 3), labels)
    assert real == 1.0
    k = 9
    shuffled, peak = shuffled_label_aucs({2: x}, labels, groups, {2: real}, k, seed=0, folds=3)
    assert shuffled[2].p_value == pytest.approx(1 / (1 + k))
    assert peak == pytest.approx(1 / (1 + k))
    assert shuffled[2].high < 1.0


def test_the_control_equals_a_plain_loop_and_is_deterministic_by_seed() -> None:
    """Per layer: mean, 2.5/97.5 percentiles and p of the shuffled AUCs, recomputed with a
    plain loop over the same shuffles; the peak p against each shuffle's best layer."""
    labels, groups = _clustered(30, (3, 2), seed=2)
    rng = np.random.default_rng(7)
    signal = labels + rng.normal(0, 1.0, len(labels))
    features = {
        1: torch.from_numpy(np.stack([signal, rng.normal(size=len(labels))], 1)).float(),
        4: torch.from_numpy(rng.normal(size=(len(labels), 3))).float(),
    }
    real = {
        k: roc_auc(cross_validated_scores(v, labels, groups, 3), labels)
        for k, v in features.items()
    }
    k = 8
    got, peak = shuffled_label_aucs(features, labels, groups, real, k, seed=3, folds=3)
    replay = np.random.default_rng(3)
    table = np.zeros((k, 2))
    for j in range(k):
        y = shuffle_by_set(labels, groups, replay)
        for i, layer in enumerate((1, 4)):
            table[j, i] = roc_auc(cross_validated_scores(features[layer], y, groups, 3), y)
    for i, layer in enumerate((1, 4)):
        assert got[layer].mean == pytest.approx(table[:, i].mean())
        assert got[layer].low == pytest.approx(np.percentile(table[:, i], 2.5))
        assert got[layer].high == pytest.approx(np.percentile(table[:, i], 97.5))
        hits = int((table[:, i] >= real[layer]).sum())
        assert got[layer].p_value == pytest.approx((1 + hits) / (1 + k))
    best = max(real.values())
    assert peak == pytest.approx((1 + int((table.max(1) >= best).sum())) / (1 + k))
    again, _ = shuffled_label_aucs(features, labels, groups, real, k, seed=3, folds=3)
    other, _ = shuffled_label_aucs(features, labels, groups, real, k, seed=4, folds=3)
    assert again == got and other != got


def test_an_undefined_auc_gets_no_control() -> None:
    groups = np.arange(12) // 3
    labels = np.zeros(12, dtype=bool)  # no flip: AUC undefined
    x = torch.randn(12, 2)
    got, peak = shuffled_label_aucs({0: x}, labels, groups, {0: float("nan")}, 5, seed=0)
    assert np.isnan(got[0].p_value) and np.isnan(got[0].mean) and np.isnan(peak)


def test_analyse_reports_the_control_per_layer() -> None:
    toy = ToyVLM().eval()
    pairs = paraphrase_pairs(sets())
    saes = {i: random_sae(i) for i in range(3)}
    track = Recorder()
    config = AnalysisConfig(folds=3, bootstrap=20, shuffles=4)
    result = analyse(toy, images(), pairs, saes, config, track=track)
    track.check_complete()
    shuffled_stage = track.stages[1]
    assert shuffled_stage.description == "SAE analysis: AUC on shuffled flip labels"
    assert shuffled_stage.total == 4 * 3
    assert set(result.auc_shuffled_by_layer) == {0, 1, 2}
    for layer, control in result.auc_shuffled_by_layer.items():
        assert control.shuffles == 4
        if np.isfinite(result.auc_by_layer[layer]):
            assert 1 / 5 <= control.p_value <= 1 and control.low <= control.mean <= control.high
    assert result.peak_auc_p_value is not None and 1 / 5 <= result.peak_auc_p_value <= 1
    saved = to_jsonable(result.to_dict())
    assert set(saved["auc_shuffled_by_layer"]) == {"0", "1", "2"}
    assert set(saved["auc_shuffled_by_layer"]["0"]) == {
        "mean",
        "low",
        "high",
        "p_value",
        "shuffles",
    }
    off = analyse(toy, images(), pairs, saes, AnalysisConfig(folds=3, bootstrap=20))
    assert off.auc_shuffled_by_layer == {} and off.peak_auc_p_value is None
    assert off.auc_by_layer == result.auc_by_layer  # the control leaves the real AUC alone
