import numpy as np
import pytest
import torch

from mechtune.eval.metrics import (
    bootstrap_mean,
    claim_hits,
    linear_probe_accuracy,
    pairwise_hits,
    retrieval_hits,
)


def brute_recall(sim, target, k):
    hits = []
    for i, row in enumerate(sim):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j != target[i]))
        # ties rank against the target: put equal scores before it
        better_or_equal = [
            j for j in range(len(row)) if j != target[i] and row[j] >= row[target[i]]
        ]
        hits.append(len(better_or_equal) < k)
        assert order  # keep the sort honest
    return np.array(hits)


@pytest.mark.parametrize("k", [1, 5])
def test_retrieval_hits_match_brute_force(k):
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(40, 25)).round(1)  # rounding creates ties
    target = rng.integers(0, 25, 40)
    assert np.array_equal(retrieval_hits(sim, target, k), brute_recall(sim, target, k))


def test_constant_similarity_is_never_a_hit():
    assert not retrieval_hits(np.zeros((3, 4)), np.array([0, 1, 2]), 1).any()


def test_claim_hits_and_pairwise():
    scores = [np.array([0.9, 0.1, 0.2]), np.array([0.3, 0.5, 0.1]), np.array([0.4, 0.4])]
    assert claim_hits(scores).tolist() == [True, False, False]
    pairs = pairwise_hits(scores)
    assert [p.tolist() for p in pairs] == [[True, True], [False, True], [False]]


def test_bootstrap_mean_interval_contains_mean_and_is_seeded():
    x = np.r_[np.ones(70), np.zeros(30)]
    est = bootstrap_mean(x, seed=1)
    assert est.value == pytest.approx(0.7)
    assert est.low < 0.7 < est.high and est.high - est.low < 0.25
    assert bootstrap_mean(x, seed=1) == est
    assert bootstrap_mean([]).n == 0


def test_linear_probe_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen)
    y = np.where(x[:, 0] > 0, "left", "right")
    acc = linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:])
    assert acc > 0.95
    noise = np.array(["a", "b"])[np.random.default_rng(0).integers(0, 2, 200)]
    assert linear_probe_accuracy(x[:150], noise[:150], x[150:], noise[150:]) < 0.75
