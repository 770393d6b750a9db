"""Metrics with confidence intervals: proportions, means, paired differences, retrieval
recall, claim accuracy, linear probes.

Every interval says how uncertain its estimate is, with a method chosen by what is
measured (``Estimate.method`` records which one):

- ``"wilson"``: a proportion over independent items (one item per cluster), the Wilson
  score interval (Wilson 1927; Brown, Cai & DasGupta 2001, eq. 4). Never zero-width.
- ``"cluster-bootstrap+wilson-floor"``: a proportion over clustered items (paraphrase
  pairs that share a question, claim sets that share a patient). A percentile bootstrap
  that resamples whole clusters, widened to contain a Wilson interval at the effective
  sample size (see :func:`proportion`), so it is never zero-width, even at 0/N and N/N.
- ``"bootstrap"`` / ``"cluster-bootstrap"``: a mean (margin differences, cosines, gaps),
  the percentile bootstrap over items, or over clusters when items are clustered
  (Efron & Tibshirani 1993, ch. 13; Field & Welsh 2007 for the cluster bootstrap).

Two methods evaluated on the same items are compared by :func:`paired_difference`.
Pure functions over arrays; tests check each against a hand computation or scipy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from mechtune.errors import ConfigError, DataError

WILSON = "wilson"
CLUSTER_WILSON_FLOOR = "cluster-bootstrap+wilson-floor"
BOOTSTRAP = "bootstrap"
CLUSTER_BOOTSTRAP = "cluster-bootstrap"
METHODS: tuple[str, ...] = (WILSON, CLUSTER_WILSON_FLOOR, BOOTSTRAP, CLUSTER_BOOTSTRAP)

Clusters = Sequence[Hashable] | np.ndarray


@dataclass(frozen=True)
class Estimate:
    """An estimate with a (1 - alpha) confidence interval.

    ``n`` counts the items (pairs, answers, claim sets) the value averages over;
    ``clusters`` the independent units the interval resamples or counts (``n`` when the
    items are independent); ``method`` is one of :data:`METHODS`. An empty estimate has
    ``n = 0`` and NaN value and bounds (written to JSON as null).
    """

    value: float
    low: float
    high: float
    n: int
    method: str
    clusters: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"Estimate.method must be one of {METHODS}; got {self.method!r}")

    @classmethod
    def empty(cls, method: str) -> Estimate:
        """No items: NaN value and bounds, ``n = 0``."""
        nan = float("nan")
        return cls(nan, nan, nan, 0, method, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "clusters": self.clusters,
            "method": self.method,
        }

    def pct(self) -> str:
        """``"84.2 [81.0, 87.1]"`` in percent."""
        if self.n == 0:
            return "n/a"
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def _check_alpha(alpha: float, n_boot: int | None = None) -> None:
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1); got {alpha!r}")
    if n_boot is not None and n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1; got {n_boot!r}")


def wilson_interval(successes: float, n: float, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` at confidence 1 - alpha.

    ``(k + z^2/2) / (n + z^2)  +-  z sqrt(n) / (n + z^2) * sqrt(p q + z^2 / (4 n))`` with
    ``p = k / n``, ``q = 1 - p``, ``z`` the 1 - alpha/2 normal quantile (Wilson 1927;
    Brown, Cai & DasGupta 2001, Statistical Science 16:101, eq. 4). Equal to
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` for integer ``k``; a
    real ``successes`` is allowed, for an effective sample size. Raises ``DataError``
    unless ``0 <= successes <= n`` and ``n > 0``.
    """
    _check_alpha(alpha)
    if not n > 0 or not 0 <= successes <= n:
        raise DataError(f"Wilson interval needs 0 <= successes <= n, n > 0; got {successes}/{n}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    centre = (successes + z * z / 2) / (n + z * z)
    half = z * math.sqrt(n) / (n + z * z) * math.sqrt(p * (1 - p) + z * z / (4 * n))
    # the exact bounds are 0 at k = 0 and 1 at k = n; clip rounding noise elsewhere
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _cluster_index(clusters: Clusters | None, n: int, what: str) -> np.ndarray:
    """Cluster ids -> int codes ``[n]`` in order of first appearance (None: one per item)."""
    if clusters is None:
        return np.arange(n)
    ids = list(clusters)
    if len(ids) != n:
        raise DataError(f"{what}: {len(ids)} cluster ids for {n} items")
    codes: dict[Hashable, int] = {}
    return np.array([codes.setdefault(c, len(codes)) for c in ids], dtype=np.int64)


def _per_cluster(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sum of ``values`` ``[n]`` per cluster code -> ``[G]``."""
    return np.bincount(codes, weights=values, minlength=int(codes.max()) + 1 if codes.size else 0)


def _bootstrap_ratios(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``sum(num[idx]) / sum(den[idx])`` for ``n_boot`` resamples of the ``[G]`` clusters
    with replacement (NaN where a resample's denominator is 0)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_boot, num.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num[idx].sum(1) / den[idx].sum(1)


def _percentile(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _as_float(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise DataError(f"{what}: expected a 1-d array [N], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what}: values must be finite")
    return x


# -- means ------------------------------------------------------------------------------------


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    clusters: Clusters | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Mean of ``values`` ``[N]`` with a (1 - alpha) percentile bootstrap interval.

    With ``clusters`` (``[N]`` ids, e.g. patient ids) the bootstrap resamples whole
    clusters and the mean is the ratio of the resample's sums (method
    ``"cluster-bootstrap"``); without, it resamples items (``"bootstrap"``). For a
    proportion use :func:`proportion`, whose interval never collapses at 0/N or N/N.
    """
    _check_alpha(alpha, n_boot)
    x = _as_float(values, "bootstrap_mean")
    codes = _cluster_index(clusters, x.size, "bootstrap_mean")
    groups = int(codes.max()) + 1 if x.size else 0
    method = CLUSTER_BOOTSTRAP if groups < x.size else BOOTSTRAP
    if x.size == 0:
        return Estimate.empty(method)
    num, den = _per_cluster(x, codes), np.bincount(codes).astype(np.float64)
    low, high = _percentile(_bootstrap_ratios(num, den, n_boot, seed), alpha)
    return Estimate(float(x.mean()), low, high, int(x.size), method, groups)


def cluster_ratio(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    *,
    clusters: Clusters | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """``sum(numerators) / sum(denominators)``, a mean over pooled items, with a
    percentile bootstrap interval that resamples units (``[M]`` each, e.g. one per answer
    group: summed margin gaps over its pairs) together, or whole ``clusters`` of units
    (``[M]`` ids) when given. ``n = sum(denominators)``; method ``"cluster-bootstrap"``
    (``"bootstrap"`` when every unit is one item). With equal denominators it draws the
    same resamples as :func:`bootstrap_mean` with the same seed, so the two agree.
    For a pooled proportion use :func:`proportion`.
    """
    _check_alpha(alpha, n_boot)
    num = _as_float(numerators, "cluster_ratio numerators")
    den = _as_float(denominators, "cluster_ratio denominators")
    if num.shape != den.shape:
        raise DataError(f"numerators {num.shape} and denominators {den.shape} must be [M]")
    if (den < 0).any():
        raise DataError("cluster_ratio: denominators must be >= 0")
    codes = _cluster_index(clusters, num.size, "cluster_ratio")
    total = den.sum()
    single = bool((den == 1).all()) and clusters is None
    method = BOOTSTRAP if single else CLUSTER_BOOTSTRAP
    if num.size == 0 or total == 0:
        return Estimate.empty(method)
    num_g, den_g = _per_cluster(num, codes), _per_cluster(den, codes)
    low, high = _percentile(_bootstrap_ratios(num_g, den_g, n_boot, seed), alpha)
    return Estimate(float(num.sum() / total), low, high, round(float(total)), method, num_g.size)


def bootstrap_mean_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    clusters_a: Clusters | None = None,
    clusters_b: Clusters | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """``mean(a) - mean(b)`` of two samples of *different* items (``[Na]``, ``[Nb]``),
    e.g. affirmative-correct vs negated-correct claim sets, with a percentile bootstrap
    interval. Without clusters the two samples are resampled independently
    (``"bootstrap"``); with ``clusters_a`` and ``clusters_b`` (ids shared between the two,
    e.g. patients with sets of both kinds) whole clusters are resampled jointly
    (``"cluster-bootstrap"``). ``n = Na + Nb``. For the same items under two methods use
    :func:`paired_difference`.
    """
    _check_alpha(alpha, n_boot)
    x, y = _as_float(a, "difference, a"), _as_float(b, "difference, b")
    if (clusters_a is None) != (clusters_b is None):
        raise DataError("bootstrap_mean_difference: give both clusters_a and clusters_b or neither")
    method = BOOTSTRAP if clusters_a is None else CLUSTER_BOOTSTRAP
    if x.size == 0 or y.size == 0:
        return Estimate.empty(method)
    value = float(x.mean() - y.mean())
    if clusters_a is None or clusters_b is None:
        rng = np.random.default_rng(seed)
        draws = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
        draws = draws - y[rng.integers(0, y.size, (n_boot, y.size))].mean(1)
        low, high = _percentile(draws, alpha)
        return Estimate(value, low, high, int(x.size + y.size), method, int(x.size + y.size))
    ids_a, ids_b = list(clusters_a), list(clusters_b)
    if (len(ids_a), len(ids_b)) != (x.size, y.size):
        raise DataError(
            f"bootstrap_mean_difference: {len(ids_a)} and {len(ids_b)} cluster ids for "
            f"{x.size} and {y.size} items"
        )
    codes = _cluster_index([*ids_a, *ids_b], x.size + y.size, "bootstrap_mean_difference")
    code_a, code_b = codes[: x.size], codes[x.size :]
    groups = int(codes.max()) + 1
    sum_a = np.bincount(code_a, weights=x, minlength=groups)
    cnt_a = np.bincount(code_a, minlength=groups).astype(np.float64)
    sum_b = np.bincount(code_b, weights=y, minlength=groups)
    cnt_b = np.bincount(code_b, minlength=groups).astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, groups, size=(n_boot, groups))
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = sum_a[idx].sum(1) / cnt_a[idx].sum(1) - sum_b[idx].sum(1) / cnt_b[idx].sum(1)
    low, high = _percentile(draws, alpha)
    return Estimate(value, low, high, int(x.size + y.size), method, groups)


# -- proportions ------------------------------------------------------------------------------


def proportion(
    successes: Sequence[float] | np.ndarray,
    trials: Sequence[float] | np.ndarray | None = None,
    *,
    clusters: Clusters | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """``sum(successes) / sum(trials)`` with an interval that is never zero-width.

    ``successes: [M]`` counts (or booleans) per unit, ``trials: [M]`` items per unit
    (default 1: one item per unit), ``clusters: [M]`` ids that join units into
    independent clusters (default: each unit its own). ``n = sum(trials)``.

    - Every cluster one item (independent items): the Wilson score interval
      (:func:`wilson_interval`), method ``"wilson"``.
    - Otherwise, method ``"cluster-bootstrap+wilson-floor"``: the percentile interval of
      a bootstrap that resamples the ``G`` clusters with replacement (ratio of sums),
      widened to contain the Wilson interval of ``p = K / N`` at the effective sample
      size ``n_eff = p (1 - p) / v`` (Kish's ``N / deff``, with ``v`` the bootstrap
      variance of the ratio; Korn & Graubard 1998, Survey Methodology 24:193), clipped to
      ``[G, N]``. Where ``v = 0`` (p is 0 or 1, one cluster, or every cluster at the same
      proportion) the design effect cannot be estimated and ``n_eff = G``: at 0/N the
      interval is ``[0, Wilson upper bound of 0/G]``, at N/N ``[Wilson lower of G/G, 1]``.
      The floor matters near 0 and 1, where the percentile bootstrap undercovers; inside,
      the two intervals nearly coincide.

    Raises ``DataError`` unless ``0 <= successes <= trials`` and ``trials >= 1``.
    """
    _check_alpha(alpha, n_boot)
    k = _as_float(successes, "proportion successes")
    t = np.ones_like(k) if trials is None else _as_float(trials, "proportion trials")
    if k.shape != t.shape:
        raise DataError(f"successes {k.shape} and trials {t.shape} must both be [M]")
    if ((k < 0) | (k > t)).any() or (t < 1).any():
        bad = int(np.flatnonzero((k < 0) | (k > t) | (t < 1))[0])
        raise DataError(
            f"proportion: unit {bad} has {k[bad]} successes of {t[bad]} trials; "
            "need 0 <= successes <= trials and trials >= 1"
        )
    codes = _cluster_index(clusters, k.size, "proportion")
    if k.size == 0:
        return Estimate.empty(WILSON)
    k_g, t_g = _per_cluster(k, codes), _per_cluster(t, codes)
    big_k, big_n, groups = float(k.sum()), float(t.sum()), int(k_g.size)
    p = big_k / big_n
    n_items = round(big_n)
    if (t_g == 1).all():
        low, high = wilson_interval(big_k, big_n, alpha=alpha)
        return Estimate(p, low, high, n_items, WILSON, groups)
    draws = _bootstrap_ratios(k_g, t_g, n_boot, seed)
    b_low, b_high = _percentile(draws, alpha)
    variance = float(draws.var())
    if variance > 0 and 0 < p < 1:
        n_eff = min(big_n, max(float(groups), p * (1 - p) / variance))
    else:
        n_eff = float(groups)
    w_low, w_high = wilson_interval(p * n_eff, n_eff, alpha=alpha)
    return Estimate(
        p, min(b_low, w_low), max(b_high, w_high), n_items, CLUSTER_WILSON_FLOOR, groups
    )


# -- paired comparisons -----------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test: two-sided p of ``b`` vs ``c`` discordant pairs (a right and b
    wrong; a wrong and b right) under Binomial(b + c, 1/2) (McNemar 1947; the exact form
    as ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``), computed with
    ``scipy.stats.binomtest``. No discordant pair gives p = 1."""
    if b < 0 or c < 0:
        raise DataError(f"discordant counts must be >= 0; got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus method B on the same items (see :func:`paired_difference`).

    ``value``: mean over items of (A's correctness averaged over its seeds minus B's);
    ``low``/``high``: the (1 - alpha) percentile bootstrap interval; ``discordant``:
    (A right and B wrong, A wrong and B right) and ``mcnemar_p`` McNemar's exact p, both
    only when each method has a single seed and 0/1 values (else None).
    """

    value: float
    low: float
    high: float
    n_items: int
    n_clusters: int
    seeds_a: int
    seeds_b: int
    method: str
    discordant: tuple[int, int] | None = None
    mcnemar_p: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "n_items": self.n_items,
            "n_clusters": self.n_clusters,
            "seeds_a": self.seeds_a,
            "seeds_b": self.seeds_b,
            "method": self.method,
            "discordant": None if self.discordant is None else list(self.discordant),
            "mcnemar_p": self.mcnemar_p,
        }

    def pp(self) -> str:
        """``"+3.1 [-0.4, +6.5]"`` in percentage points, with McNemar's p when there is one."""
        cell = f"{100 * self.value:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        if self.mcnemar_p is not None:
            cell += f", McNemar p = {self.mcnemar_p:.2g}"
        return cell


def paired_difference(
    a: Sequence[Any] | np.ndarray,
    b: Sequence[Any] | np.ndarray,
    clusters: Clusters | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedDifference:
    """Paired difference of two methods evaluated on the same ``N`` items.

    ``a: [S_a, N]`` or ``[N]`` and ``b: [S_b, N]`` or ``[N]``: per seed and item, the
    correctness (0/1) or any per-item score, items in the same order; ``clusters: [N]``
    ids (patients) whose items are resampled together. Per item, each method's values
    are averaged over its seeds; the value is the mean over items of A minus B, with a
    percentile bootstrap interval that resamples clusters (``"cluster-bootstrap"``; or
    items, ``"bootstrap"``, when each item is its own cluster). Identical inputs give
    exactly ``[0, 0]``, which for a difference is correct. With one seed each and 0/1
    values, McNemar's exact test on the discordant pairs is added (:func:`mcnemar_exact`).

    Raises ``DataError`` for different item counts, no items, or non-finite values.
    """
    _check_alpha(alpha, n_boot)
    x, y = (
        np.atleast_2d(np.asarray(a, dtype=np.float64)),
        np.atleast_2d(np.asarray(b, dtype=np.float64)),
    )
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"paired_difference: a {x.shape} and b {y.shape} must be [S, N] with one N")
    if x.shape[1] == 0 or x.shape[0] == 0 or y.shape[0] == 0:
        raise DataError("paired_difference: no items")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("paired_difference: values must be finite")
    n = x.shape[1]
    diff = x.mean(0) - y.mean(0)
    codes = _cluster_index(clusters, n, "paired_difference")
    groups = int(codes.max()) + 1
    num, den = _per_cluster(diff, codes), np.bincount(codes).astype(np.float64)
    low, high = _percentile(_bootstrap_ratios(num, den, n_boot, seed), alpha)
    discordant, p_value = None, None
    binary = np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()
    if x.shape[0] == 1 and y.shape[0] == 1 and binary:
        right_a, right_b = x[0] == 1, y[0] == 1
        discordant = (int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
        p_value = mcnemar_exact(*discordant)
    return PairedDifference(
        value=float(diff.mean()),
        low=low,
        high=high,
        n_items=n,
        n_clusters=groups,
        seeds_a=x.shape[0],
        seeds_b=y.shape[0],
        method=CLUSTER_BOOTSTRAP if groups < n else BOOTSTRAP,
        discordant=discordant,
        mcnemar_p=p_value,
    )


ItemColumns = Mapping[str, Sequence[Any]]


def paired_items(
    a: Sequence[ItemColumns],
    b: Sequence[ItemColumns],
    value: str,
    *,
    select: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedDifference:
    """:func:`paired_difference` of two methods' saved per-item results, matched by id.

    ``a`` and ``b`` hold, per seed, item columns as the studies save them in
    ``results.json``: ``"id"``, ``"patient"`` and ``value`` (0/1 correctness or a score),
    plus any columns ``select`` filters on (``{"heldout": True, "slice": "negated"}``
    keeps the items whose columns equal those values). The items selected in ``b[0]`` set
    the order; every run must hold each of them, with the same patient. Clustered by
    patient. Raises ``DataError`` naming a missing column or item, or when none is
    selected.
    """
    if not a or not b:
        raise DataError("paired_items: each method needs at least one run")
    reference = b[0]
    for column in ("id", "patient", value, *(select or {})):
        if column not in reference:
            raise DataError(f"paired_items: the item columns lack {column!r}")
    keep = [
        i
        for i in range(len(reference["id"]))
        if all(reference[k][i] == v for k, v in (select or {}).items())
    ]
    if not keep:
        raise DataError(f"paired_items: no item matches {dict(select or {})}")
    ids = [reference["id"][i] for i in keep]
    patients = [reference["patient"][i] for i in keep]

    def matrix(runs: Sequence[ItemColumns]) -> np.ndarray:
        rows = []
        for run in runs:
            where = {item: i for i, item in enumerate(run["id"])}
            if len(where) != len(run["id"]):
                raise DataError("paired_items: an item id repeats within a run")
            row = []
            for item, patient in zip(ids, patients, strict=True):
                if item not in where:
                    raise DataError(f"paired_items: item {item!r} is missing from a run")
                if run["patient"][where[item]] != patient:
                    raise DataError(f"paired_items: item {item!r} has two patient ids")
                row.append(float(run[value][where[item]]))
            rows.append(row)
        return np.array(rows, dtype=np.float64)

    return paired_difference(matrix(a), matrix(b), patients, n_boot=n_boot, seed=seed, alpha=alpha)


# -- hits ---------------------------------------------------------------------------------


def retrieval_hits(similarity: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Per query: is ``target[i]`` among the top-k columns of ``similarity[i]``?

    Ties are broken against the target (a column scoring equal to the target ranks
    above it), so a constant similarity never counts as a hit.
    ``similarity: [Q, C]``, ``target: [Q]`` -> bool ``[Q]``.
    """
    target_score = similarity[np.arange(len(target)), target]
    rank = (similarity >= target_score[:, None]).sum(1) - 1  # others at least as good
    return rank < k


def claim_hits(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per claim set: does candidate 0 (the correct claim) score strictly highest?"""
    return np.array([bool(s[0] > np.max(s[1:])) for s in scores], dtype=bool)


def pairwise_hits(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per claim set: for each negative, does the correct claim score strictly higher?"""
    return [s[0] > s[1:] for s in scores]


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    *,
    l2: float = 1e-3,
    steps: int = 200,
) -> float:
    """Accuracy of a multinomial logistic regression (full-batch L-BFGS) on embeddings."""
    classes = np.unique(np.concatenate([train_y, test_y]))
    lookup = {c: i for i, c in enumerate(classes)}
    ytr = torch.tensor([lookup[c] for c in train_y])
    yte = torch.tensor([lookup[c] for c in test_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(xtr.shape[1], len(classes), generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == yte).float().mean())
