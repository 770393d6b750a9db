"""Match free-form claim sets to studies by ground truth.

A study grounds a claim set when its findings make the correct claim **true** and every
foil **false**, each for certain: a finding the study does not state, or an attribute its
findings do not carry, leaves a claim undecided, and an undecided claim never matches.

Reading a study's findings (the conventions of the template builders,
:mod:`mechtune.data.builders.contextual`):

- ``+C`` holds when C is present; with a side, when the sides C is present on are exactly
  that side (a left effusion makes "left effusion" true and "right effusion" false; a
  bilateral one makes both false and "bilateral effusions" true); with a zone or a size,
  when C's findings on those sides carry that zone or size. It fails when C is stated
  absent (on a side the assertion needs), or present with another known side, zone or
  size.
- ``-C`` holds when C is stated absent and nowhere present; with a side, when C is
  stated absent on that side, or present only on the other side. It fails when C is
  present on that side (or anywhere, for ``-C`` without side).

A source may not carry an attribute at all (CheXpert's labels have no side): then no set
whose correct claim asserts it for a present condition can match, and
:func:`match_sets` skips the set with that reason instead of scanning studies for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from mechtune.data.freeform import ASSERTED_ATTRIBUTES, FreeformClaim, FreeformClaimSet
from mechtune.data.schema import Finding, Study
from mechtune.errors import ConfigError

Truth = bool | None  # True, False, or undecided by the study's findings

NO_CONDITION = "condition_not_in_source"
NO_STUDY = "no_matching_study"


def _missing(attribute: str) -> str:
    return f"source_lacks_{attribute}"


def _sides(laterality: str | None) -> frozenset[str]:
    if laterality is None or laterality == "bilateral":
        return frozenset({"left", "right"})
    return frozenset({laterality})


def _and(values: Sequence[Truth]) -> Truth:
    if any(v is False for v in values):
        return False
    if any(v is None for v in values):
        return None
    return True


def _present_truth(a: Finding, present: list[Finding], absent: list[Finding]) -> Truth:
    need = _sides(a.laterality)
    if not present:
        covered = any(f.laterality is None or _sides(f.laterality) & need for f in absent)
        return False if covered else None
    checks: list[Truth] = []
    relevant = present
    if a.laterality is not None:
        if any(f.laterality is None for f in present):
            checks.append(None)
        else:
            sides = frozenset().union(*(_sides(f.laterality) for f in present))
            checks.append(sides == need)
            relevant = [f for f in present if _sides(f.laterality) & need]
    for attr in ("zone", "severity"):
        wanted = getattr(a, attr)
        if wanted is None:
            continue
        values = [getattr(f, attr) for f in relevant]
        if not values or any(v is not None and v != wanted for v in values):
            checks.append(False)
        elif any(v is None for v in values):
            checks.append(None)
        else:
            checks.append(True)
    return _and(checks)


def _absent_truth(a: Finding, present: list[Finding], absent: list[Finding]) -> Truth:
    need = _sides(a.laterality)
    if any(f.laterality is None for f in present):
        return False if a.laterality is None else None
    if any(_sides(f.laterality) & need for f in present):
        return False
    if any(f.laterality is None or _sides(f.laterality) & need for f in absent):
        return True
    # present only on the other side: by report convention, absent on this one
    return True if present and a.laterality is not None else None


def assertion_truth(assertion: Finding, study: Study) -> Truth:
    """Is ``assertion`` true of ``study`` (True, False, or None when its findings do not
    decide)? See the module docstring for the reading of sides, zones and sizes."""
    same = [f for f in study.findings if f.condition == assertion.condition]
    if not same:
        return None
    present = [f for f in same if f.present]
    absent = [f for f in same if not f.present]
    if assertion.present:
        return _present_truth(assertion, present, absent)
    return _absent_truth(assertion, present, absent)


def claim_truth(claim: FreeformClaim, study: Study) -> Truth:
    """Every assertion of ``claim`` true (True), one false (False), else None."""
    return _and([assertion_truth(a, study) for a in claim.truth])


def grounds(claim_set: FreeformClaimSet, study: Study) -> bool:
    """Does ``study`` make the correct claim true and every foil false, for certain?"""
    if claim_truth(claim_set.correct, study) is not True:
        return False
    return all(claim_truth(f, study) is False for f in claim_set.foils)


@dataclass(frozen=True)
class SourceAttributes:
    """What a source's findings can ground: the conditions it states at all, and for
    each attribute the conditions it carries that attribute for (on a present finding)."""

    conditions: frozenset[str]
    attributes: dict[str, frozenset[str]]

    @classmethod
    def of(cls, studies: Sequence[Study]) -> SourceAttributes:
        """From a source's items (every split: it is a property of the source)."""
        conditions: set[str] = set()
        carried: dict[str, set[str]] = {a: set() for a in ASSERTED_ATTRIBUTES}
        for study in studies:
            for f in study.findings:
                conditions.add(f.condition)
                if f.present:
                    for attr in ASSERTED_ATTRIBUTES:
                        if getattr(f, attr) is not None:
                            carried[attr].add(f.condition)
        return cls(frozenset(conditions), {a: frozenset(v) for a, v in carried.items()})

    def lacks(self, claim_set: FreeformClaimSet) -> str | None:
        """Why the source cannot ground ``claim_set`` whatever its studies (a reason
        key), or None: a condition of the correct claim it never states, or an attribute
        the correct claim asserts for a present condition that it never carries."""
        for f in claim_set.correct.truth:
            if f.condition not in self.conditions:
                return NO_CONDITION
        for attr in ASSERTED_ATTRIBUTES:
            for f in claim_set.correct.truth:
                if f.present and getattr(f, attr) and f.condition not in self.attributes[attr]:
                    return _missing(attr)
        return None


SKIP_REASONS: tuple[str, ...] = (
    NO_CONDITION,
    *(_missing(a) for a in ASSERTED_ATTRIBUTES),
    NO_STUDY,
)


@dataclass
class FreeformMatch:
    """The (claim set, study) items of a match, and the sets left out by reason.

    ``items`` pairs each grounded set with up to ``max_studies`` of its studies (set
    order, then the deterministic study order of :func:`match_sets`); ``skipped`` maps
    a set id to its reason (:data:`SKIP_REASONS`); ``capped`` counts the sets that had
    more matching studies than ``max_studies``.
    """

    items: list[tuple[FreeformClaimSet, Study]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    capped: int = 0
    max_studies: int = 0

    def skip_counts(self) -> dict[str, int]:
        """``{reason: number of sets}`` for every reason of :data:`SKIP_REASONS`."""
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for reason in self.skipped.values():
            counts[reason] += 1
        return counts


def _order(set_id: str, study_id: str) -> str:
    return hashlib.sha256(f"{set_id}\x00{study_id}".encode()).hexdigest()


def match_sets(
    claim_sets: Sequence[FreeformClaimSet],
    studies: Sequence[Study],
    *,
    max_studies: int,
    source: SourceAttributes | None = None,
) -> FreeformMatch:
    """The studies of ``studies`` (one split) that ground each set (:func:`grounds`), at
    most ``max_studies`` per set so that a common finding does not outweigh the rest:
    those first in the order of sha256(set id, study id), which depends on neither the
    source's order nor the other studies. ``source``: what the whole source can ground
    (default: ``studies`` themselves); a set it cannot ground is skipped with that
    reason, a set no study grounds with ``no_matching_study``. Raises ``ConfigError``
    unless ``max_studies >= 1``."""
    if isinstance(max_studies, bool) or not isinstance(max_studies, int) or max_studies < 1:
        raise ConfigError(f"freeform_max_studies must be an integer >= 1, got {max_studies!r}")
    source = source or SourceAttributes.of(studies)
    out = FreeformMatch(max_studies=max_studies)
    for cs in claim_sets:
        reason = source.lacks(cs)
        if reason is not None:
            out.skipped[cs.set_id] = reason
            continue
        found = sorted(
            (s for s in studies if grounds(cs, s)), key=lambda s: _order(cs.set_id, s.study_id)
        )
        if not found:
            out.skipped[cs.set_id] = NO_STUDY
            continue
        out.capped += len(found) > max_studies
        out.items.extend((cs, s) for s in found[:max_studies])
    return out


__all__ = [
    "SKIP_REASONS",
    "FreeformMatch",
    "SourceAttributes",
    "assertion_truth",
    "claim_truth",
    "grounds",
    "match_sets",
]
