"""The held-out conditions' slice of a negation report (issue 18, "A held-out finding").

A study that holds conditions out of training (``holdout_conditions``:
:mod:`mechtune.train.negation_data`) asks whether the fix learned negation or the
trained strings; the answer is in the claim sets about those conditions only. From a
report's saved items (:func:`mechtune.eval.negation.claim_items` with its ``condition``
column, :func:`mechtune.eval.freeform.freeform_items` with its ``conditions``), per
held-out condition:

- ``template``: the template claim sets about it in the held-out phrasing families
  (``heldout`` True), ``template_in_distribution`` those in the train families (for a
  held-out condition, wording the model never saw for it either);
- ``freeform``: the free-form items whose set is about it (its ``conditions`` or any of
  its claims' truth).

Each has ``claim_accuracy`` and the accuracy by the correct claim's kind (template:
affirmative, negated, contralateral; free-form: affirmative, negated), a proportion over
items clustered by patient (:func:`~mechtune.eval.metrics.proportion`), None for an empty
slice, and the item count. :func:`condition_items` gives the same subsets for paired
comparisons (:func:`~mechtune.eval.metrics.paired_items`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechtune.data.freeform import FreeformClaimSet
from mechtune.data.mentions import mentions
from mechtune.eval.metrics import Estimate, proportion

ItemTable = Mapping[str, Sequence[Any]]

TEMPLATE_SLICES: tuple[str, ...] = ("affirmative", "negated", "contralateral")
FREEFORM_SLICES: tuple[str, ...] = ("affirmative", "negated")


def freeform_conditions(cs: FreeformClaimSet) -> list[str]:
    """The conditions a free-form claim set is about, sorted: those it lists and those its
    claims' truth (correct claim and foils) asserts."""
    truth = {f.condition for claim in (cs.correct, *cs.foils) for f in claim.truth}
    return sorted(set(cs.conditions) | truth)


def freeform_about(cs: FreeformClaimSet, conditions: Sequence[str]) -> bool:
    """Whether free-form set ``cs`` is about any of ``conditions``: by its record
    (:func:`freeform_conditions`) or by the words of any candidate
    (:func:`mechtune.data.mentions.mentions`)."""
    if set(freeform_conditions(cs)) & set(conditions):
        return True
    return any(mentions(t, conditions) for t in cs.candidates)


def condition_items(table: ItemTable, condition: str) -> dict[str, list[Any]]:
    """The rows of an item table about ``condition``: its ``condition`` column equal to it
    (template claim sets) or its ``conditions`` column holding it (free-form items).
    Every column is kept, row order too. Empty columns when the table has neither."""
    if "condition" in table:
        keep = [i for i, c in enumerate(table["condition"]) if c == condition]
    elif "conditions" in table:
        keep = [i for i, cs in enumerate(table["conditions"]) if condition in cs]
    else:
        keep = []
    return {k: [v[i] for i in keep] for k, v in table.items()}


def _slices(table: ItemTable, slices: Sequence[str]) -> dict[str, Any]:
    correct = np.asarray(table["correct"], dtype=np.float64)
    patients = np.asarray(table["patient"], dtype=object)
    kinds = np.asarray(table["slice"], dtype=object)

    def accuracy(keep: np.ndarray) -> Estimate | None:
        return proportion(correct[keep], clusters=patients[keep]) if keep.any() else None

    return {
        "claim_accuracy": accuracy(np.ones(len(correct), dtype=bool)),
        "accuracy_by_polarity": {k: accuracy(kinds == k) for k in slices},
        "items": len(correct),
    }


def holdout_report(items: Mapping[str, ItemTable], conditions: Sequence[str]) -> dict[str, Any]:
    """``{condition: {"template", "template_in_distribution", "freeform"}}`` for each of
    ``conditions`` (module docstring) from a report's ``items``; ``freeform`` is None
    when the report has no free-form items."""
    out: dict[str, Any] = {}
    for condition in conditions:
        claims = condition_items(items["claims"], condition)
        block: dict[str, Any] = {}
        for name, family in (("template", True), ("template_in_distribution", False)):
            keep = [i for i, h in enumerate(claims["heldout"]) if h is family]
            block[name] = _slices(
                {k: [v[i] for i in keep] for k, v in claims.items()}, TEMPLATE_SLICES
            )
        freeform = items.get("freeform")
        block["freeform"] = (
            _slices(condition_items(freeform, condition), FREEFORM_SLICES)
            if freeform is not None
            else None
        )
        out[condition] = block
    return out


__all__ = [
    "FREEFORM_SLICES",
    "TEMPLATE_SLICES",
    "condition_items",
    "freeform_about",
    "freeform_conditions",
    "holdout_report",
]
