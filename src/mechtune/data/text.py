"""Realise structured findings as radiology-style sentences, clauses and questions.

All functions are pure and cached: the space of (finding, family) pairs is small, and the
builders call them millions of times.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from mechtune.data.ontology import Condition, CueFamily, load_ontology
from mechtune.data.schema import Finding
from mechtune.errors import DataError

_ZONE_PHRASE = {
    "upper": "upper zone",
    "middle": "mid zone",
    "lower": "lower zone",
    "apical": "apical",
    "basal": "basal",
}


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def indefinite(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def finding_phrase(finding: Finding, *, with_severity: bool = True) -> str:
    """``Finding(pleural_effusion, left, small)`` -> ``"small left pleural effusion"``."""
    return _phrase(
        finding.condition,
        finding.laterality,
        finding.zone,
        finding.severity if with_severity else None,
    )


@functools.lru_cache(maxsize=65536)
def _phrase(condition: str, laterality: str | None, zone: str | None, severity: str | None) -> str:
    cond = load_ontology().condition(condition)
    plural = laterality == "bilateral" and cond.countable and cond.plural is not None
    noun = cond.plural if plural and cond.plural else cond.name
    parts = [p for p in (severity, laterality, _ZONE_PHRASE.get(zone or "")) if p]
    return " ".join([*parts, noun])


def _is_plural(cond: Condition, laterality: str | None) -> bool:
    return cond.plural_name or (laterality == "bilateral" and cond.countable and bool(cond.plural))


def _with_article(cond: Condition, phrase: str, laterality: str | None) -> str:
    if not cond.countable or _is_plural(cond, laterality):
        return phrase
    return indefinite(phrase)


def _agreement(plural: bool) -> dict[str, str]:
    return {"be": "are", "has": "have"} if plural else {"be": "is", "has": "has"}


def fill(template: str, slots: Mapping[str, str], *, sentence: bool = True) -> str:
    """Fill a family template; capitalise it when it is a sentence, not a clause."""
    text = template.format(**slots)
    return capitalise(text) if sentence else text


@functools.lru_cache(maxsize=262144)
def _realise(finding_key: tuple, family_id: str) -> str:
    condition, _present, laterality, zone, severity = finding_key
    onto = load_ontology()
    cond = onto.condition(condition)
    family = onto.family(family_id)
    x = _phrase(condition, laterality, zone, severity)
    slots = {
        "x": x,
        "ax": _with_article(cond, x, laterality),
        **_agreement(_is_plural(cond, laterality)),
    }
    return fill(family.template, slots, sentence=not family.kind.startswith("clause_"))


def realise(finding: Finding, family: CueFamily | str) -> str:
    """State a finding with a phrasing family.

    The family must match the finding's polarity: an affirmative or clause_affirmative
    family for a present finding, a negation family for an absent one.
    """
    family_id = family if isinstance(family, str) else family.id
    kind = load_ontology().family(family_id).kind
    if finding.present and kind not in ("affirmative", "clause_affirmative"):
        raise DataError(f"family {family_id!r} ({kind}) cannot state a present finding")
    if not finding.present and kind not in ("negation", "clause_negation"):
        raise DataError(f"family {family_id!r} ({kind}) cannot state an absent finding")
    return _realise(finding.key(), family_id)


@functools.lru_cache(maxsize=4096)
def realise_absence_affirmative(condition: str, family_id: str, equivalent: int = 0) -> str:
    """State absence in affirmative words: ``"Sharp costophrenic angles."``."""
    onto = load_ontology()
    cond = onto.condition(condition)
    family = onto.family(family_id)
    if family.kind not in ("absence_affirmative", "clause_absence_affirmative"):
        raise DataError(
            f"family {family_id!r} ({family.kind}) is not an absence_affirmative family"
        )
    if not cond.absent_affirmative:
        raise DataError(f"condition {condition!r} has no affirmative equivalent of absence")
    e = cond.absent_affirmative[equivalent % len(cond.absent_affirmative)]
    return fill(family.template, {"e": e}, sentence=not family.kind.startswith("clause_"))


@functools.lru_cache(maxsize=16384)
def realise_question(condition: str, family_id: str, synonym: int = 0) -> str:
    """A yes/no question about a condition's presence, in a question or paraphrase family."""
    onto = load_ontology()
    cond = onto.condition(condition)
    family = onto.family(family_id)
    if family.kind not in ("question", "paraphrase"):
        raise DataError(f"family {family_id!r} ({family.kind}) is not a question family")
    x = cond.name
    plural = _is_plural(cond, None)
    slots = {
        "x": x,
        "ax": _with_article(cond, x, None),
        "s": cond.synonyms[synonym % len(cond.synonyms)] if cond.synonyms else x,
        "lay": cond.lay_term,
        "sbe": _agreement(plural)["be"],
        **_agreement(plural),
    }
    return fill(family.template, slots)


__all__ = [
    "capitalise",
    "fill",
    "finding_phrase",
    "indefinite",
    "realise",
    "realise_absence_affirmative",
    "realise_question",
]
