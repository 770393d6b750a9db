"""The report-side vocabulary of the report-fact extractor: words radiologists write for a
condition that the ontology does not list (``resources/report_vocabulary.yaml``).

The ontology's names and synonyms drive generated text, so every phantom dataset depends
on them; the extractor also reads report-only phrases, per condition, the way the CheXpert
labeler does (Irvin et al., AAAI 2019: a list of mention phrases and of "unmention"
phrases per observation). The YAML's comments give the source of every phrase and what
was left out, and why. Four kinds of phrase (:data:`KINDS`):

- ``mentions``: the phrase names the condition; ConText decides its status;
- ``absent``: an affirmative statement of absence, like the ontology's
  ``absent_affirmative`` phrases;
- ``absent_if_negated``: a broader finding whose negation rules the condition out
  ("no acute osseous abnormality"), while its presence says nothing about it;
- ``not_findings``: a phrase that holds a mention of the condition but states another
  finding ("pericardial effusion"); the longer match displaces the mention inside it.

Also ConText rules that only the extractor adds (``context_rules``), each limited to the
conditions it may modify (``allowed_types``). The polarity check reads none of this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from mechtune.data.ontology import load_ontology
from mechtune.errors import DataError

KINDS = ("mentions", "absent", "absent_if_negated", "not_findings")
SOURCES = ("chexpert", "chexpert-unmention", "negbio", "ontology", "mechtune")
_FILE = "report_vocabulary.yaml"
_RULE_KEYS = {"literal", "category", "direction", "pattern", "max_scope", "allowed_types"}
_CATEGORIES = {"NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HYPOTHETICAL"}
_DIRECTIONS = {"FORWARD", "BACKWARD", "BIDIRECTIONAL"}


@dataclass(frozen=True)
class ReportVocabulary:
    """The parsed vocabulary: ``phrases[kind][phrase]`` is the tuple of condition ids the
    phrase is listed under for that kind (sorted); ``sources[(kind, condition, phrase)]``
    its ``"<source>: <note>"``; ``context_rules`` the extractor's extra ConText rule specs
    (dicts with the keys of ``resources/context_rules.yaml`` plus ``allowed_types``)."""

    phrases: dict[str, dict[str, tuple[str, ...]]]
    sources: dict[tuple[str, str, str], str]
    context_rules: tuple[dict[str, Any], ...]


def words(phrase: str) -> list[str]:
    """Words of a phrase as medspacy's tokenizer splits them (a hyphen is a word)."""
    return [t for t in re.split(r"\s+|(-)", phrase.lower()) if t]


def _contains(outer: list[str], inner: list[str]) -> bool:
    n = len(inner)
    return any(outer[i : i + n] == inner for i in range(len(outer) - n + 1))


def _strip_article(phrase: str) -> str:
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return phrase[len(article) :]
    return phrase


def ontology_phrases() -> dict[str, set[str]]:
    """``{phrase: condition ids}`` of every phrase the ontology itself gives the readers of
    reports: names, plurals, synonyms, lay terms and ``absent_affirmative`` phrases,
    articles stripped."""
    out: dict[str, set[str]] = {}
    for cond in load_ontology().pathologies:
        own = {cond.name, *cond.synonyms, cond.lay_term, *cond.absent_affirmative}
        if cond.plural:
            own.add(cond.plural)
        for p in own:
            out.setdefault(_strip_article(p), set()).add(cond.id)
    return out


def _check_rule(i: int, rule: Any, conditions: set[str]) -> dict[str, Any]:
    where = f"{_FILE}: context_rules[{i}]"
    if not isinstance(rule, dict) or not isinstance(rule.get("literal"), str):
        raise DataError(f"{where}: needs a mapping with a 'literal' string, got {rule!r}")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise DataError(f"{where} ({rule['literal']!r}): unknown keys {sorted(unknown)}")
    if rule.get("category") not in _CATEGORIES:
        raise DataError(
            f"{where} ({rule['literal']!r}): category must be one of {sorted(_CATEGORIES)}; "
            f"got {rule.get('category')!r}"
        )
    if rule.get("direction") not in _DIRECTIONS:
        raise DataError(
            f"{where} ({rule['literal']!r}): direction must be one of {sorted(_DIRECTIONS)}; "
            f"got {rule.get('direction')!r}"
        )
    allowed = rule.get("allowed_types")
    if not isinstance(allowed, list) or not allowed or set(allowed) - conditions:
        raise DataError(
            f"{where} ({rule['literal']!r}): allowed_types must list condition ids; got {allowed!r}"
        )
    return dict(rule)


def parse_vocabulary(raw: Any) -> ReportVocabulary:
    """The vocabulary from the parsed YAML, validated. Raises ``DataError`` naming the
    condition, list and phrase when a condition is not a non-summary ontology id, a list is
    not one of :data:`KINDS`, a phrase is not lower case, starts with an article, repeats a
    phrase of the ontology (a dead or conflicting target), stands in two lists, or (for
    ``not_findings``) holds no mention of its condition; when a source is not one of
    :data:`SOURCES`; or when a ConText rule is malformed."""
    if not isinstance(raw, dict) or not isinstance(raw.get("conditions"), dict):
        raise DataError(f"{_FILE}: needs a 'conditions' mapping")
    onto = load_ontology()
    conditions = {c.id for c in onto.pathologies}
    taken = ontology_phrases()
    phrases: dict[str, dict[str, set[str]]] = {k: {} for k in KINDS}
    sources: dict[tuple[str, str, str], str] = {}
    for cid, lists in raw["conditions"].items():
        if cid not in conditions:
            raise DataError(f"{_FILE}: {cid!r} is not a condition of the ontology")
        if not isinstance(lists, dict) or set(lists) - set(KINDS):
            raise DataError(f"{_FILE}: {cid} must map some of {list(KINDS)} to phrases")
        for kind, entries in lists.items():
            if not isinstance(entries, dict):
                raise DataError(f"{_FILE}: {cid}.{kind} must map each phrase to its source")
            for phrase, source in entries.items():
                where = f"{_FILE}: {cid}.{kind} {phrase!r}"
                if not isinstance(phrase, str) or phrase != phrase.strip().lower() or not phrase:
                    raise DataError(f"{where}: a phrase must be a lower-case string")
                if _strip_article(phrase) != phrase:
                    raise DataError(f"{where}: drop the article (targets are read without one)")
                if phrase in taken:
                    raise DataError(
                        f"{where}: already an ontology phrase of {sorted(taken[phrase])}"
                    )
                head = str(source).partition(":")[0]
                if not isinstance(source, str) or head not in SOURCES or ":" not in source:
                    raise DataError(
                        f"{where}: source must be '<source>: <note>' with <source> one of "
                        f"{list(SOURCES)}; got {source!r}"
                    )
                phrases[kind].setdefault(phrase, set()).add(cid)
                sources[(kind, cid, phrase)] = source
    for kind in KINDS:
        for other in KINDS[KINDS.index(kind) + 1 :]:
            both = sorted(set(phrases[kind]) & set(phrases[other]))
            if both:
                raise DataError(f"{_FILE}: {both} stand in both {kind} and {other}")
    for phrase, cids in phrases["not_findings"].items():
        for cid in cids:
            named = [p for p, cs in taken.items() if cid in cs]
            named += [p for p, cs in phrases["mentions"].items() if cid in cs]
            if not any(_contains(words(phrase), words(p)) for p in named if p != phrase):
                raise DataError(f"{_FILE}: {cid}.not_findings {phrase!r} holds no mention of {cid}")
    rules = raw.get("context_rules") or []
    if not isinstance(rules, list):
        raise DataError(f"{_FILE}: context_rules must be a list")
    return ReportVocabulary(
        phrases={k: {p: tuple(sorted(c)) for p, c in v.items()} for k, v in phrases.items()},
        sources=sources,
        context_rules=tuple(_check_rule(i, r, conditions) for i, r in enumerate(rules)),
    )


@cache
def report_vocabulary() -> ReportVocabulary:
    """The packaged vocabulary (``resources/report_vocabulary.yaml``), parsed once."""
    text = resources.files("mechtune.data").joinpath(f"resources/{_FILE}")
    return parse_vocabulary(yaml.safe_load(text.read_text("utf-8")))


__all__ = [
    "KINDS",
    "SOURCES",
    "ReportVocabulary",
    "ontology_phrases",
    "parse_vocabulary",
    "report_vocabulary",
    "words",
]
