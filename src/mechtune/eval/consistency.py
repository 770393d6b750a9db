"""Paraphrase-consistency metrics (PSF-Med, arXiv 2602.21428) over answer groups.

Definitions (REFERENCE.md §2), for a group = an original question and its variants:

- **flip rate**: a group flips if any variant's answer differs from the original's; the
  rate is the share of groups that flip;
- **pairwise flip rate**: the share of (original, variant) pairs whose answers differ,
  pooled over all pairs;
- **margin difference**: the mean over pairs of |margin(original) - margin(variant)|;
- **answer accuracy**: agreement with the ground truth over *all* answers (originals and
  variants pooled); **original accuracy**: over the original answers only;
- **full consistency**: the share of groups whose answers (original included) all agree;
  **majority share**: per group, the share of its answers equal to its majority answer;
- **text-only agreement**: the share of answers unchanged when the image is blanked;
  **swap sensitivity**: the share that change with another patient's image.

Every metric comes as an :class:`~mechtune.eval.metrics.Estimate` with a 95% interval
(``Estimate.method`` says which). Answers about the same study, or the same patient, are
not independent, so the intervals treat a **cluster** of groups as the independent unit:
by default a group's ``study_id``; ``clusters`` maps ``group_id`` to another unit (the
studies call it with patient ids). Proportions (flip rates, accuracies, agreement) use
:func:`~mechtune.eval.metrics.proportion`: a Wilson interval when each cluster holds one
item, else a cluster bootstrap with a Wilson floor, so that 0/N and N/N are never
zero-width. Means (margin difference, majority share) use the percentile bootstrap over
clusters. For pooled rates (pairs, answers) ``Estimate.n`` counts those units; for
per-group rates, groups.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechtune.data.answers import AnswerGroup
from mechtune.errors import ConfigError, DataError
from mechtune.eval.metrics import Estimate, bootstrap_mean, cluster_ratio, proportion

BY: tuple[str, ...] = ("strategy", "family")
ALL_LABEL = "all"


# -- one group ----------------------------------------------------------------------------


def group_flips(group: AnswerGroup) -> bool:
    """Does any variant's answer differ from the original's?"""
    return any(v.answer != group.original_answer for v in group.variants)


def pair_disagreements(group: AnswerGroup) -> np.ndarray:
    """Per variant: does its answer differ from the original's? bool ``[V]``."""
    return np.array([v.answer != group.original_answer for v in group.variants], dtype=bool)


def is_fully_consistent(group: AnswerGroup) -> bool:
    """Do all the group's answers, the original included, agree?"""
    return len(set(group.answers)) == 1


def majority_share(group: AnswerGroup) -> float:
    """Share of the group's answers (original included) equal to its majority answer."""
    answers = group.answers
    yes = sum(answers)
    return max(yes, len(answers) - yes) / len(answers)


def _margin_gaps(group: AnswerGroup) -> np.ndarray:
    """|margin(original) - margin(variant)| per variant, ``[V]``; needs every margin."""
    values = [m for m in group.margins if m is not None]
    if len(values) != len(group.margins):
        raise DataError(f"group {group.group_id!r} lacks margins; margin_difference needs them")
    original, *rest = values
    return np.abs(original - np.array(rest, dtype=np.float64))


def _truth(group: AnswerGroup) -> bool:
    if group.ground_truth is None:
        raise DataError(f"group {group.group_id!r} has no ground truth; accuracy needs it")
    return group.ground_truth


# -- over groups --------------------------------------------------------------------------

ClusterMap = Mapping[str, Hashable]


def cluster_ids(
    groups: Sequence[AnswerGroup], clusters: ClusterMap | None = None
) -> list[Hashable]:
    """The cluster of each group: ``clusters[group_id]``, or the group's ``study_id``.

    Raises ``DataError`` naming a group that ``clusters`` does not map."""
    if clusters is None:
        return [g.study_id for g in groups]
    for g in groups:
        if g.group_id not in clusters:
            raise DataError(f"clusters has no entry for group {g.group_id!r}")
    return [clusters[g.group_id] for g in groups]


def flip_rate(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """PSF-Med flip rate: share of groups where any variant's answer differs from the
    original's. ``n`` = groups; a proportion over groups, clustered by ``clusters``."""
    flips = [float(group_flips(g)) for g in groups]
    ids = cluster_ids(groups, clusters)
    return proportion(flips, clusters=ids, n_boot=n_boot, seed=seed)


def pairwise_flip_rate(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Share of (original, variant) pairs that disagree, pooled over pairs; pairs of a
    group share its question, so the interval resamples clusters of groups. ``n`` = pairs."""
    flips = [float(pair_disagreements(g).sum()) for g in groups]
    pairs = [len(g.variants) for g in groups]
    ids = cluster_ids(groups, clusters)
    return proportion(flips, pairs, clusters=ids, n_boot=n_boot, seed=seed)


def margin_difference(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Mean |margin(original) - margin(variant)| over pairs, in logits; the interval
    resamples clusters of groups. ``n`` = pairs. Raises DataError if any margin is
    missing."""
    gaps = [float(_margin_gaps(g).sum()) for g in groups]
    pairs = [len(g.variants) for g in groups]
    ids = cluster_ids(groups, clusters)
    return cluster_ratio(gaps, pairs, clusters=ids, n_boot=n_boot, seed=seed)


def answer_accuracy(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Accuracy over **all** answers (each original and every variant, pooled); the
    interval resamples clusters of groups. ``n`` = answers. Raises DataError without
    ground truth."""
    correct = [float(sum(a == _truth(g) for a in g.answers)) for g in groups]
    answers = [len(g.answers) for g in groups]
    ids = cluster_ids(groups, clusters)
    return proportion(correct, answers, clusters=ids, n_boot=n_boot, seed=seed)


def original_accuracy(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Accuracy of the **original** questions' answers only. ``n`` = groups."""
    correct = [float(g.original_answer == _truth(g)) for g in groups]
    ids = cluster_ids(groups, clusters)
    return proportion(correct, clusters=ids, n_boot=n_boot, seed=seed)


def full_consistency(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Share of groups whose answers all agree; the count is ``round(value * n)``."""
    consistent = [float(is_fully_consistent(g)) for g in groups]
    ids = cluster_ids(groups, clusters)
    return proportion(consistent, clusters=ids, n_boot=n_boot, seed=seed)


def majority_shares(groups: Sequence[AnswerGroup]) -> np.ndarray:
    """Per group: the share of its answers equal to its majority answer, ``[G]``."""
    return np.array([majority_share(g) for g in groups], dtype=np.float64)


def mean_majority_share(
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Mean over groups of :func:`majority_share` (a mean: bootstrap over clusters).
    ``n`` = groups."""
    ids = cluster_ids(groups, clusters)
    return bootstrap_mean(majority_shares(groups), clusters=ids, n_boot=n_boot, seed=seed)


def _paired(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Paired yes/no answers -> bool ``[N]``: do they differ?"""
    x, y = np.asarray(a), np.asarray(b)
    if x.ndim != 1 or x.shape != y.shape:
        raise DataError(f"paired answers must be two [N] arrays; got {x.shape} and {y.shape}")
    for arr in (x, y):
        if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
            raise DataError("answers must be booleans (or 0/1), not margins")
    return x.astype(bool) != y.astype(bool)


def text_only_agreement(
    with_image: Sequence[bool] | np.ndarray,
    blank_image: Sequence[bool] | np.ndarray,
    *,
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Share of answers unchanged when the image is blanked; ``[N]`` paired answers,
    ``clusters: [N]`` ids (e.g. patients) or None for independent questions.

    High agreement means the answer comes from the text alone."""
    unchanged = ~_paired(with_image, blank_image)
    return proportion(unchanged.astype(np.float64), clusters=clusters, n_boot=n_boot, seed=seed)


def swap_sensitivity(
    with_image: Sequence[bool] | np.ndarray,
    swapped_image: Sequence[bool] | np.ndarray,
    *,
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Share of answers that change when the image is another patient's; ``[N]`` paired
    answers, ``clusters: [N]`` ids or None. Low sensitivity means the image is ignored."""
    changed = _paired(with_image, swapped_image)
    return proportion(changed.astype(np.float64), clusters=clusters, n_boot=n_boot, seed=seed)


def two_proportion_z_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Two-proportion z-test with pooled variance -> (z, two-sided p).

    ``z = (k1/n1 - k2/n2) / sqrt(p (1 - p) (1/n1 + 1/n2))`` with ``p = (k1 + k2) /
    (n1 + n2)``; ``p_value = erfc(|z| / sqrt 2)``. Equal proportions of 0 or 1 give
    (0, 1). PSF-Med reports it for before/after flip rates; it treats the two samples as
    independent, so for two models answering the *same* questions prefer the paired
    comparison, :func:`mechtune.eval.metrics.paired_difference` (with McNemar's test).
    """
    for k, n in ((k1, n1), (k2, n2)):
        if n <= 0 or not 0 <= k <= n:
            raise DataError(f"need 0 <= k <= n and n > 0; got k={k}, n={n}")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both proportions are 0, or both 1
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


# -- summary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistencyRow:
    """Consistency metrics of a set of groups (all of them, or one strategy family's
    variants with their originals). ``None`` where margins or ground truth are missing."""

    label: str
    groups: int
    pairs: int
    answers: int
    flip_rate: Estimate
    pairwise_flip_rate: Estimate
    fully_consistent: int
    full_consistency: Estimate
    majority_share: Estimate
    majority_share_std: float  # population std (ddof=0), as the MedGemma summary reports
    margin_difference: Estimate | None
    answer_accuracy: Estimate | None
    original_accuracy: Estimate | None


def consistency_row(
    label: str,
    groups: Sequence[AnswerGroup],
    *,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> ConsistencyRow:
    """Every metric of :mod:`consistency` over ``groups`` (clustered by ``clusters``)."""
    kw: dict[str, Any] = {"clusters": clusters, "n_boot": n_boot, "seed": seed}
    has_margins = all(m is not None for g in groups for m in g.margins)
    has_truth = all(g.ground_truth is not None for g in groups)
    full = full_consistency(groups, **kw)
    shares = majority_shares(groups)
    return ConsistencyRow(
        label=label,
        groups=len(groups),
        pairs=sum(len(g.variants) for g in groups),
        answers=sum(len(g.answers) for g in groups),
        flip_rate=flip_rate(groups, **kw),
        pairwise_flip_rate=pairwise_flip_rate(groups, **kw),
        fully_consistent=sum(is_fully_consistent(g) for g in groups),
        full_consistency=full,
        majority_share=mean_majority_share(groups, **kw),
        majority_share_std=float(shares.std()) if shares.size else float("nan"),
        margin_difference=margin_difference(groups, **kw) if has_margins else None,
        answer_accuracy=answer_accuracy(groups, **kw) if has_truth else None,
        original_accuracy=original_accuracy(groups, **kw) if has_truth else None,
    )


def consistency_summary(
    groups: Sequence[AnswerGroup],
    by: str | None = "strategy",
    *,
    labels: Mapping[str, str] | None = None,
    clusters: ClusterMap | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[ConsistencyRow]:
    """A row over all groups (label ``"all"``), then, with ``by``, one row per label.

    ``by`` is ``"strategy"`` or ``"family"`` (a variant's family id; ``"unknown"`` when
    None). ``labels`` maps those values to row labels, e.g. family id -> ``"held-out"`` or
    ``"in-distribution"`` (see :func:`mechtune.data.answers.family_labels`); a value it
    does not map is its own label. A label's row keeps, per group, the original and the
    variants with that label, and drops groups with none. ``clusters`` maps group ids to
    the independent unit of the intervals (default: each group's study).
    """
    if by is not None and by not in BY:
        raise ConfigError(f"by must be one of {BY} or None; got {by!r}")
    kw: dict[str, Any] = {"clusters": clusters, "n_boot": n_boot, "seed": seed}
    rows = [consistency_row(ALL_LABEL, groups, **kw)]
    if by is None:
        return rows
    mapping = labels or {}

    def label_of(value: str | None) -> str:
        key = value if value is not None else "unknown"
        return mapping.get(key, key)

    attr: Callable[[Any], str | None] = (
        (lambda v: v.strategy) if by == "strategy" else (lambda v: v.family)
    )
    names = sorted({label_of(attr(v)) for g in groups for v in g.variants})
    for name in names:
        subset = []
        for g in groups:
            kept = tuple(v for v in g.variants if label_of(attr(v)) == name)
            if kept:
                subset.append(dataclasses.replace(g, variants=kept))
        rows.append(consistency_row(name, subset, **kw))
    return rows


def _logits(e: Estimate | None) -> str:
    if e is None or e.n == 0:
        return "n/a"
    return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"


def _pct(e: Estimate | None) -> str:
    return "n/a" if e is None else e.pct()


def summary_markdown(rows: Sequence[ConsistencyRow]) -> str:
    """A markdown table of summary rows (rates in percent with 95% CIs)."""
    header = (
        "| label | groups | pairs | flip rate % | pairwise flip % | fully consistent "
        "| majority share % | abs margin diff | accuracy, all answers % | accuracy, originals % |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        cells = [
            r.label.replace("|", "\\|"),
            str(r.groups),
            str(r.pairs),
            _pct(r.flip_rate),
            _pct(r.pairwise_flip_rate),
            f"{r.fully_consistent}/{r.groups}",
            _pct(r.majority_share),
            _logits(r.margin_difference),
            _pct(r.answer_accuracy),
            _pct(r.original_accuracy),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "ALL_LABEL",
    "BY",
    "ConsistencyRow",
    "answer_accuracy",
    "cluster_ids",
    "consistency_row",
    "consistency_summary",
    "flip_rate",
    "full_consistency",
    "group_flips",
    "is_fully_consistent",
    "majority_share",
    "majority_shares",
    "margin_difference",
    "mean_majority_share",
    "original_accuracy",
    "pair_disagreements",
    "pairwise_flip_rate",
    "summary_markdown",
    "swap_sensitivity",
    "text_only_agreement",
    "two_proportion_z_test",
]
