"""Claim accuracy on the free-form claim sets (:mod:`mechtune.data.freeform`).

Each item is one claim set scored against one study that grounds it
(:func:`~mechtune.data.freeform_match.match_sets`): the image-text similarity of each
candidate (the correct claim first, then its foils) with the study's image embedding, as
the template claim sets are scored (:func:`mechtune.eval.negation.claim_scores`); the
item is correct when the correct claim scores strictly highest
(:func:`~mechtune.eval.metrics.claim_hits`). A split evaluates its own half: the val
split the val half, the test split the test half.

Accuracy overall, by polarity of the correct claim and by kind is a proportion over
items clustered by patient (:func:`~mechtune.eval.metrics.proportion`), as for the
template claim sets; ``items`` keeps each item's correctness with its id
(``<set id>@<study id>``) and patient, for paired comparisons of two models
(:func:`~mechtune.eval.metrics.paired_items`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mechtune.data.freeform import HALVES, KINDS, FreeformClaimSet, FreeformSets, half_hash
from mechtune.data.freeform_match import FreeformMatch, SourceAttributes, match_sets
from mechtune.data.schema import POLARITIES, Study
from mechtune.eval.holdout import freeform_conditions
from mechtune.eval.metrics import claim_hits, proportion

DEFAULT_MAX_STUDIES = 20  # studies per claim set, so that no common finding dominates

TextTable = tuple[torch.Tensor, dict[str, int]]


def freeform_match(
    sets: FreeformSets,
    split: str,
    studies: Sequence[Study],
    *,
    max_studies: int = DEFAULT_MAX_STUDIES,
    source: SourceAttributes | None = None,
) -> FreeformMatch:
    """The (claim set, study) items of ``split``: its half of ``sets`` matched to
    ``studies`` (the split's), at most ``max_studies`` per set. ``source``: what the
    whole source can ground (default: ``studies``). Raises ``DataError`` for a split
    without a half (train)."""
    return match_sets(sets.half(split), studies, max_studies=max_studies, source=source)


def freeform_split_match(
    sets: FreeformSets | None,
    split: str,
    studies: Sequence[Study],
    max_studies: int = DEFAULT_MAX_STUDIES,
    source: SourceAttributes | None = None,
) -> FreeformMatch | None:
    """:func:`freeform_match` of ``split`` when there are ``sets`` and the split has a
    half (val, test); None otherwise (no free-form sets, or the train split)."""
    if sets is None or split not in HALVES:
        return None
    return freeform_match(sets, split, studies, max_studies=max_studies, source=source)


def add_freeform(
    report: dict[str, Any],
    sets: FreeformSets | None,
    match: FreeformMatch | None,
    study_row: dict[str, int],
    images: torch.Tensor,
    table: TextTable,
) -> None:
    """Score ``match`` (:func:`freeform_split_match` of ``report["split"]``) into a
    negation report: ``report["freeform"]`` (:func:`summarise_freeform`) and
    ``report["items"]["freeform"]`` (:func:`freeform_items`); or say in
    ``report["not_available"]["freeform"]`` why there is none (turned off, no half for
    the split, no set grounded by the split's studies)."""
    split = report["split"]
    not_available = report["not_available"]
    if sets is None:
        not_available["freeform"] = "the free-form claim sets were turned off"
        return
    if match is None:
        not_available["freeform"] = (
            f"the free-form claim sets have {' and '.join(HALVES)} halves, none for the "
            f"{split} split"
        )
        return
    items = freeform_items(match, freeform_scores(match, study_row, images, table))
    report["freeform"] = summarise_freeform(items, match, sets, split)
    report["items"]["freeform"] = items
    if not match.items:
        not_available["freeform"] = (
            f"no free-form claim set of the {split} half is grounded by the split's "
            f"studies (skipped by reason: {report['freeform']['skipped']})"
        )


def freeform_texts(match: FreeformMatch) -> set[str]:
    """Every candidate text of the matched sets (for one embedding pass)."""
    return {t for cs, _ in match.items for t in cs.candidates}


def freeform_scores(
    match: FreeformMatch, study_row: dict[str, int], images: torch.Tensor, table: TextTable
) -> list[np.ndarray]:
    """Per item, ``[K]`` similarities of the set's candidates with the study's image
    embedding (``images[study_row[study_id]]``, ``images: [N, D]``); ``table``: the
    candidates' embeddings ``([T, D], {text: row})``."""
    vectors, index = table
    scores = []
    for cs, study in match.items:
        cand = vectors[[index[t] for t in cs.candidates]]
        scores.append((cand @ images[study_row[study.study_id]].float()).numpy())
    return scores


def freeform_items(match: FreeformMatch, scores: Sequence[np.ndarray]) -> dict[str, list[Any]]:
    """Per item, column-wise: ``id`` (``<set id>@<study id>``), ``set``, ``study``,
    ``patient``, ``slice`` (the correct claim's polarity), ``kinds``, ``conditions``
    (what the set is about: :func:`mechtune.eval.holdout.freeform_conditions`),
    ``correct`` (top-1 hit) and ``scores`` (each candidate's similarity, rounded to 5
    decimals)."""
    return {
        "id": [f"{cs.set_id}@{s.study_id}" for cs, s in match.items],
        "set": [cs.set_id for cs, _ in match.items],
        "study": [s.study_id for _, s in match.items],
        "patient": [s.patient_id for _, s in match.items],
        "slice": [cs.polarity for cs, _ in match.items],
        "kinds": [list(cs.kinds) for cs, _ in match.items],
        "conditions": [freeform_conditions(cs) for cs, _ in match.items],
        "correct": claim_hits(scores).tolist() if scores else [],
        "scores": [[round(float(x), 5) for x in sc] for sc in scores],
    }


def summarise_freeform(
    items: dict[str, list[Any]],
    match: FreeformMatch,
    sets: FreeformSets,
    split: str,
) -> dict[str, Any]:
    """The ``freeform`` block of a negation report: ``claim_accuracy``,
    ``accuracy_by_polarity`` (affirmative, negated) and ``accuracy_by_kind`` (every
    kind of :data:`~mechtune.data.freeform.KINDS`; a set counts for each of its kinds),
    each an :class:`~mechtune.eval.metrics.Estimate` clustered by patient or None when
    no item is in the slice; and the provenance: the file, the half and its hash, the
    sets in the half, those matched and those skipped by reason (``skipped``: counts;
    ``skipped_sets``: id -> reason), ``capped`` sets and ``max_studies``."""
    correct = np.array(items["correct"], dtype=np.float64)
    patients = np.array(items["patient"], dtype=object)

    def accuracy(keep: np.ndarray) -> Any:
        return proportion(correct[keep], clusters=patients[keep]) if keep.any() else None

    everything = np.ones(len(correct), dtype=bool)
    slices = np.array(items["slice"], dtype=object)
    half: Sequence[FreeformClaimSet] = sets.half(split)
    return {
        "file": sets.path,
        "half": split,
        "half_hash": half_hash(half),
        "sets": len(half),
        "matched_sets": len({cs.set_id for cs, _ in match.items}),
        "items": len(correct),
        "max_studies": match.max_studies,
        "capped": match.capped,
        "skipped": match.skip_counts(),
        "skipped_sets": dict(sorted(match.skipped.items())),
        "claim_accuracy": accuracy(everything),
        "accuracy_by_polarity": {p: accuracy(slices == p) for p in POLARITIES},
        "accuracy_by_kind": {
            k: accuracy(np.array([k in ks for ks in items["kinds"]], dtype=bool)) for k in KINDS
        },
    }


__all__ = [
    "DEFAULT_MAX_STUDIES",
    "HALVES",
    "add_freeform",
    "freeform_items",
    "freeform_match",
    "freeform_scores",
    "freeform_split_match",
    "freeform_texts",
    "summarise_freeform",
]
