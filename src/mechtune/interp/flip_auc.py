"""How well do SAE features predict that a paraphrase flips the answer? The flip
classifier of the SAE analysis (:mod:`mechtune.interp.sae_analysis`), its AUC with a
question-set bootstrap interval, and the shuffled-label control for that AUC.

**The classifier.** Per pair, the feature change ``x [P, F]`` feeds an L2 logistic
regression (standardised features, L-BFGS) scored out of fold, the folds split by
question set so no question is scored by a model that saw its other paraphrases.

**The shuffled-label control** (a permutation test of a cross-validated classifier:
Ojala & Garriga 2010, "Permutation tests for studying classifier performance", JMLR 11,
test 1). The flip labels are shuffled ``k`` times, and the whole cross-validated fit is
rerun on each shuffle, so the shuffled AUCs are what the same pipeline reads from features
that carry no information about the flips. Flips cluster by question (a borderline
question flips under many paraphrases), so pairs are not exchangeable one by one: a
shuffle moves each question set's labels, as a block, to a set with as many pairs, then
shuffles them among that set's pairs (a restricted permutation that keeps the number of
flips per question; Good 2005, *Permutation, Parametric and Bootstrap Tests of
Hypotheses*, §3.7). Shuffling single pairs instead would understate the spread of the
null AUC when flips cluster.

The permutation p-value of a layer is (1 + #{shuffled AUC ≥ real AUC}) / (1 + k)
(Phipson & Smyth 2010, "Permutation p-values should never be zero", eq. 2): never 0, and
1/(1 + k) at best. The same shuffles serve every layer; the peak layer, chosen as the
best of several, is tested against the best layer of each shuffle (the max statistic,
Westfall & Young 1993), which accounts for that choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores [N]`` for ``labels [N]`` (Mann-Whitney U /
    (n_pos · n_neg), ties counted half). NaN if one class."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic_fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, ...]:
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
        loss = loss + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), mean, std


def cross_validated_scores(
    x: torch.Tensor, y: np.ndarray, groups: np.ndarray, folds: int = 5, l2: float = 1e-2
) -> np.ndarray:
    """``[P]`` out-of-fold logistic-regression scores of ``x [P, F]`` for labels ``y [P]``;
    folds split by ``groups [P]`` (question set), so no question is scored by a model that
    saw its other paraphrases."""
    unique = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(unique)}
    fold = np.array([fold_of[g] for g in groups])
    scores = np.zeros(len(y), dtype=np.float64)
    target = torch.as_tensor(np.asarray(y, dtype=np.float32))
    for k in range(folds):
        test = fold == k
        if not test.any() or test.all():
            continue
        train = torch.from_numpy(~test)
        w, b, mean, std = _logistic_fit(x[train], target[train], l2)
        scores[test] = (((x[torch.from_numpy(test)] - mean) / std) @ w + b).numpy()
    return scores


def auc_interval(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, n: int, seed: int
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the AUC, resampling question sets
    (``groups [P]``) ``n`` times; NaNs when no resample has both classes."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in unique}
    values = []
    for _ in range(n):
        pick = np.concatenate([members[g] for g in rng.choice(unique, len(unique))])
        value = roc_auc(scores[pick], labels[pick])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


# -- the shuffled-label control ----------------------------------------------------------


def permutation_p_value(real: float, shuffled: np.ndarray) -> float:
    """(1 + #{shuffled ≥ real}) / (1 + k) for ``k`` shuffled statistics (Phipson & Smyth
    2010, eq. 2); NaN when ``real`` is NaN or there are no shuffles."""
    shuffled = np.asarray(shuffled, dtype=np.float64)
    if not np.isfinite(real) or shuffled.size == 0:
        return float("nan")
    return float((1 + int((shuffled >= real).sum())) / (1 + shuffled.size))


def shuffle_by_set(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``labels [P]`` relabelled at random, keeping the flips clustered by question set
    (``groups [P]``): the sets of each size are permuted among themselves, each moving its
    labels as a block, and the labels are then shuffled within each set. Every set keeps
    a label count of some set of its size; the overall counts are unchanged."""
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    unique, counts = np.unique(groups, return_counts=True)
    members = [np.flatnonzero(groups == g) for g in unique]
    out = np.empty_like(labels)
    for size in np.unique(counts):
        sets = np.flatnonzero(counts == size)
        for source, target in zip(sets, rng.permutation(sets), strict=True):
            out[members[target]] = rng.permutation(labels[members[source]])
    return out


@dataclass(frozen=True)
class ShuffledAUC:
    """One layer's flip-prediction AUC under shuffled labels: the ``mean`` and the 2.5 and
    97.5 percentiles (``low``, ``high``) of the ``shuffles`` AUCs, and the permutation
    ``p_value`` of the real AUC against them (:func:`permutation_p_value`)."""

    mean: float
    low: float
    high: float
    p_value: float
    shuffles: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "shuffles": self.shuffles,
        }


def shuffled_label_aucs(
    features: Mapping[int, torch.Tensor],
    labels: np.ndarray,
    groups: np.ndarray,
    real: Mapping[int, float],
    shuffles: int,
    seed: int,
    *,
    folds: int = 5,
    l2: float = 1e-2,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[int, ShuffledAUC], float]:
    """The shuffled-label control of the module docstring. ``features``: ``{layer:
    [P, F]}`` classifier inputs; ``labels [P]`` the real flips; ``groups [P]`` question
    sets; ``real``: ``{layer: AUC}`` on the real labels. The ``shuffles`` relabellings
    (:func:`shuffle_by_set`, seeded by ``seed``) are shared by every layer.

    Returns ``({layer: ShuffledAUC}, peak p)``, the peak p being the max-statistic
    p-value of the best real AUC against the best layer of each shuffle (NaN when no
    layer's AUC is defined). A layer whose real AUC is undefined (one class) gets NaNs.
    ``progress(1)`` after each layer of each shuffle."""
    labels = np.asarray(labels, dtype=bool)
    rng = np.random.default_rng(seed)
    layers = sorted(features)
    values = np.full((shuffles, len(layers)), np.nan)
    defined = [np.isfinite(real[layer]) for layer in layers]
    for j in range(shuffles):
        shuffled = shuffle_by_set(labels, groups, rng)
        for i, layer in enumerate(layers):
            if defined[i]:
                scores = cross_validated_scores(features[layer], shuffled, groups, folds, l2)
                values[j, i] = roc_auc(scores, shuffled)
            if progress is not None:
                progress(1)
    out = {}
    for i, layer in enumerate(layers):
        column = values[:, i]
        if not defined[i] or shuffles == 0:
            out[layer] = ShuffledAUC(*(float("nan"),) * 4, shuffles=shuffles)
            continue
        out[layer] = ShuffledAUC(
            mean=float(column.mean()),
            low=float(np.percentile(column, 2.5)),
            high=float(np.percentile(column, 97.5)),
            p_value=permutation_p_value(real[layer], column),
            shuffles=shuffles,
        )
    kept = [i for i, ok in enumerate(defined) if ok]
    if not kept or shuffles == 0:
        return out, float("nan")
    best_real = max(real[layers[i]] for i in kept)
    return out, permutation_p_value(best_real, values[:, kept].max(axis=1))


__all__ = [
    "ShuffledAUC",
    "auc_interval",
    "cross_validated_scores",
    "permutation_p_value",
    "roc_auc",
    "shuffle_by_set",
    "shuffled_label_aucs",
]
