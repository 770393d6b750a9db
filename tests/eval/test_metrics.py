import numpy as np
import pytest
import torch

from mechtune.eval.metrics import (
    Estimate,
    bootstrap_mean,
    bootstrap_mean_difference,
    claim_hits,
    cluster_ratio,
    linear_probe_accuracy,
    mcnemar_exact,
    paired_difference,
    paired_items,
    pairwise_hits,
    proportion,
    retrieval_hits,
    wilson_interval,
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


# --- intervals (issue 11, section 6) -------------------------------------------------------


def _wilson_by_hand(k: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927) as Brown, Cai & DasGupta (2001) eq. 4 write it."""
    p = k / n
    centre = (k + z * z / 2) / (n + z * z)
    half = z * np.sqrt(n) / (n + z * z) * np.sqrt(p * (1 - p) + z * z / (4 * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 10), (1, 1), (3, 7), (10, 10), (17, 250), (0, 1)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    ci90 = binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
    assert wilson_interval(k, n, alpha=0.1) == pytest.approx((ci90.low, ci90.high), abs=1e-12)


def test_wilson_case02_values_and_real_valued_counts():
    # the field case: 0/10 -> about [0, 0.278]; 1/1 -> about [0.207, 1]
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert wilson_interval(1, 1) == (pytest.approx(0.206549, abs=1e-6), 1.0)
    # an effective sample size may be fractional: the formula, not a table lookup
    assert wilson_interval(2.5, 12.5) == pytest.approx(_wilson_by_hand(2.5, 12.5))
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="alpha"):
        wilson_interval(1, 2, alpha=1.5)


def test_proportion_of_independent_items_is_wilson():
    est = proportion([1, 0, 1, 1, 0, 0, 0])
    assert (est.value, est.n, est.clusters, est.method) == (3 / 7, 7, 7, "wilson")
    assert (est.low, est.high) == pytest.approx(_wilson_by_hand(3, 7))
    # distinct cluster ids are independent items too
    assert proportion([1, 0, 1], clusters=["a", "b", "c"]) == proportion([1, 0, 1])
    empty = proportion([])
    assert empty.n == 0 and np.isnan(empty.value) and empty.pct() == "n/a"
    with pytest.raises(ValueError, match=r"unit 1 has 3\.0 successes of 2\.0 trials"):
        proportion([1, 3], [1, 2])


def test_wilson_floor_at_zero_and_all_clustered():
    # 0 of 20 items in 5 clusters of 4: upper bound = Wilson's for 0 of 5 clusters
    clusters = np.repeat(["p0", "p1", "p2", "p3", "p4"], 4)
    zero = proportion(np.zeros(20), clusters=clusters)
    z2 = 1.959963984540054**2
    assert zero.method == "cluster-bootstrap+wilson-floor"
    assert (zero.value, zero.low, zero.n, zero.clusters) == (0.0, 0.0, 20, 5)
    assert zero.high == pytest.approx(z2 / (5 + z2))  # 0.4345, not the 0.161 of 0/20
    full = proportion(np.ones(20), clusters=clusters)
    assert (full.value, full.high) == (1.0, 1.0)
    assert full.low == pytest.approx(5 / (5 + z2))
    # pooled form: per-unit successes and trials give the same
    assert proportion([0] * 5, [4] * 5) == zero
    # one cluster with 3 of 6: the bootstrap cannot vary, the floor is Wilson 0.5 of 1
    one = proportion([1, 1, 1, 0, 0, 0], clusters=["a"] * 6)
    assert (one.low, one.high) == pytest.approx(wilson_interval(0.5, 1))


def test_cluster_bootstrap_interior_contains_both_intervals():
    rng = np.random.default_rng(0)
    per_patient = rng.random(60) < 0.3  # whole patients right or wrong: strong clustering
    x = np.repeat(per_patient, 4).astype(float)
    clusters = np.repeat(np.arange(60), 4)
    est = proportion(x, clusters=clusters, seed=3)
    boot = bootstrap_mean(x, clusters=clusters, seed=3)  # the same resamples, no floor
    assert est.value == boot.value
    assert est.low <= boot.low and est.high >= boot.high
    # perfectly clustered: the design effect is the cluster size, so n_eff = 60 patients
    w_low, w_high = wilson_interval(est.value * 60, 60)
    assert est.low <= w_low + 0.01 and est.high >= w_high - 0.01
    # and clearly wider than treating the 240 items as independent
    independent = proportion(x)
    assert est.high - est.low > 1.5 * (independent.high - independent.low)


def test_rare_event_floor_is_not_narrower_than_independent_wilson():
    # 1 success among 100 items of 50 patients: the percentile bootstrap's upper bound
    # (about 0.03) undercovers; the floor lifts it to at least Wilson's
    x = np.zeros(100)
    x[0] = 1
    est = proportion(x, clusters=np.repeat(np.arange(50), 2))
    assert est.high >= wilson_interval(1, 100)[1] - 1e-12
    assert est.low <= wilson_interval(1, 100)[0]


def test_bootstrap_mean_matches_a_plain_loop_and_cluster_ratio():
    x = np.array([0.2, 0.9, 0.4, 0.7, 0.1, 0.5])
    est = bootstrap_mean(x, n_boot=200, seed=5)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 6, size=(200, 6))
    means = [x[row].mean() for row in idx]
    assert (est.low, est.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert est.method == "bootstrap"
    clustered = bootstrap_mean(x, clusters=["a", "a", "b", "b", "c", "c"], seed=5)
    assert (clustered.method, clustered.clusters) == ("cluster-bootstrap", 3)
    # cluster_ratio with equal denominators draws the same resamples as bootstrap_mean
    flips = np.random.default_rng(0).integers(0, 5, size=30).astype(float)
    pooled = cluster_ratio(flips, np.full(30, 4.0), seed=7)
    per_group = bootstrap_mean(flips / 4, seed=7)
    assert (pooled.value, pooled.low, pooled.high) == pytest.approx(
        (per_group.value, per_group.low, per_group.high)
    )
    assert np.isnan(cluster_ratio([], []).value)


def test_bootstrap_mean_difference_unclustered_and_by_cluster():
    a, b = np.array([1, 1, 1, 0.0]), np.array([0, 0, 1, 0.0])
    est = bootstrap_mean_difference(a, b, seed=2)
    assert est.value == pytest.approx(0.5) and est.method == "bootstrap"
    assert est.low < 0.5 < est.high
    joint = bootstrap_mean_difference(
        a, b, clusters_a=["p", "q", "r", "s"], clusters_b=["p", "q", "r", "s"], seed=2
    )
    assert joint.method == "cluster-bootstrap" and joint.clusters == 4
    with pytest.raises(ValueError, match="both clusters_a and clusters_b"):
        bootstrap_mean_difference(a, b, clusters_a=["p"] * 4)
    assert bootstrap_mean_difference([], b).n == 0


def test_estimate_records_its_method_and_refuses_unknown_ones():
    est = proportion([1, 0, 0])
    assert est.to_dict() == {
        "value": pytest.approx(1 / 3),
        "low": est.low,
        "high": est.high,
        "n": 3,
        "clusters": 3,
        "method": "wilson",
    }
    with pytest.raises(ValueError, match=r"Estimate\.method"):
        Estimate(0.5, 0.4, 0.6, 10, "normal")


# --- paired comparisons ----------------------------------------------------------------------


def test_mcnemar_exact_against_the_binomial_formula():
    # b = 8, c = 2: p = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(8, 2) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    # b = 6, c = 0: 2 / 2^6
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_paired_difference_single_seed_by_hand():
    a = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0])
    b = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    diff = paired_difference(a, b)
    assert diff.value == pytest.approx((8 - 2) / 12)
    assert diff.discordant == (8, 2)
    assert diff.mcnemar_p == pytest.approx(2 * 56 / 1024)
    assert (diff.n_items, diff.n_clusters, diff.seeds_a, diff.seeds_b) == (12, 12, 1, 1)
    assert diff.low < diff.value < diff.high
    assert diff.pp().startswith("+50.0 [") and "McNemar p = 0.11" in diff.pp()
    # identical inputs: exactly zero with a zero-width interval, which is right for a difference
    same = paired_difference(a, a)
    assert (same.value, same.low, same.high, same.mcnemar_p) == (0.0, 0.0, 0.0, 1.0)


def test_paired_difference_averages_seeds_and_skips_mcnemar():
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]])  # [S_a = 2, N = 4]
    b = np.array([0, 0, 1, 1])
    diff = paired_difference(a, b, n_boot=300, seed=1)
    # per item: a averages to [1, .5, .5, 1]; minus b: [1, .5, -.5, 0]
    assert diff.value == pytest.approx(1.0 / 4)
    assert diff.mcnemar_p is None and diff.discordant is None
    assert (diff.seeds_a, diff.seeds_b) == (2, 1)
    # the bootstrap against a plain loop over item resamples
    d = np.array([1, 0.5, -0.5, 0])
    idx = np.random.default_rng(1).integers(0, 4, size=(300, 4))
    draws = [d[row].mean() for row in idx]
    assert (diff.low, diff.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    with pytest.raises(ValueError, match="one N"):
        paired_difference(a, b[:3])


def test_paired_difference_clusters_do_not_shrink_with_duplicated_items():
    rng = np.random.default_rng(4)
    a = (rng.random(40) < 0.7).astype(float)
    b = (rng.random(40) < 0.5).astype(float)
    patients = np.arange(40)
    once = paired_difference(a, b, patients)
    # every patient's items twice: by patient the interval stays as it was ...
    twice = paired_difference(np.tile(a, 2), np.tile(b, 2), np.tile(patients, 2))
    assert twice.value == pytest.approx(once.value)
    assert (twice.low, twice.high) == pytest.approx((once.low, once.high))
    assert (twice.n_items, twice.n_clusters) == (80, 40)
    # ... while an unclustered bootstrap would take the copies for new patients and shrink
    naive = paired_difference(np.tile(a, 2), np.tile(b, 2))
    width = once.high - once.low
    assert naive.high - naive.low < 0.8 * width


def test_paired_items_match_by_id_and_select():
    base = {"id": ["a", "b", "c", "d"], "patient": ["p", "p", "q", "r"], "ok": [1, 0, 0, 1]}
    base["kind"] = ["x", "x", "y", "y"]
    other = {k: list(reversed(v)) for k, v in base.items()}  # same items, stored reversed
    other["ok"] = [1, 1, 1, 1]
    diff = paired_items([other], [base], "ok")
    assert diff.value == pytest.approx(2 / 4) and diff.discordant == (2, 0)
    assert diff.n_clusters == 3
    only_y = paired_items([other], [base], "ok", select={"kind": "y"})
    assert (only_y.value, only_y.n_items) == (pytest.approx(1 / 2), 2)
    with pytest.raises(ValueError, match="no item matches"):
        paired_items([other], [base], "ok", select={"kind": "z"})
    with pytest.raises(ValueError, match="'a' is missing"):
        paired_items([{**other, "id": ["d", "c", "b", "zz"]}], [base], "ok")
    with pytest.raises(ValueError, match="lack 'score'"):
        paired_items([other], [base], "score")


def test_alpha_seed_and_n_boot_reach_every_interval():
    x = np.r_[np.ones(12), np.zeros(28)]
    clusters = np.repeat(np.arange(20), 2)
    wide, narrow = proportion(x), proportion(x, alpha=0.2)
    assert (narrow.low, narrow.high) == pytest.approx(wilson_interval(12, 40, alpha=0.2))
    assert narrow.high - narrow.low < wide.high - wide.low
    assert proportion(x, clusters=clusters, seed=1) == proportion(x, clusters=clusters, seed=1)
    y = np.r_[np.ones(20), np.zeros(20)]
    d95, d80 = paired_difference(y, x), paired_difference(y, x, alpha=0.2)
    assert d80.high - d80.low < d95.high - d95.low
    # continuous scores: the seed and the number of resamples move the bounds
    scores = np.random.default_rng(0).random(40)
    base = paired_difference(scores, x, seed=3, n_boot=500)
    assert base.low != paired_difference(scores, x, seed=4, n_boot=500).low
    assert base.low != paired_difference(scores, x, seed=3, n_boot=50).low
    assert bootstrap_mean(scores, seed=3).low != bootstrap_mean(scores, seed=4).low
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_mean(x, n_boot=0)
