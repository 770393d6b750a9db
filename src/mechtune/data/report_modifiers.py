"""Side, zone and size of a finding mention in report text, for the report-fact extractor
(:mod:`mechtune.data.report_facts`; what it matches: :mod:`mechtune.data.report_targets`).

ConText (Harkema et al., J Biomed Inform 2009) scopes a modifier to the end of its
sentence, which is right for negation but wrong for attributes: in "small left and
moderate right pleural effusions" both "small" and "moderate" would reach the one target.
Attributes are therefore read from the finding's own noun phrase, like the modifier
attachment of NegBio's dependency rules (Peng et al., AMIA 2018), taken here from word
lists and list punctuation, since the pipeline has no parser:

1. **Before the finding**, a walk back over attribute words and noun-phrase words
   (``resources/report_modifiers.yaml``) to the first other word, another finding, or the
   words a previous finding claimed. The walk is split into *groups* at "and", "or" and
   commas. The group next to the finding is always its own; a farther group counts only if
   it holds nothing but attribute and location words and names a side ("small left and
   moderate right"), and not when it is the object of a preposition ("pneumothorax on the
   right and left pleural effusion"). Each group is one mention.
2. **Inside the finding**, for predicate-form targets ("the heart is mildly enlarged").
3. **After the finding**, a walk forward over attribute words and ``after_words`` up to a
   list separator, a clause break or another finding ("consolidation in the right lower
   lobe", "the effusion is small"). A comma followed by one of ``after_comma_words``
   restates the finding's present state and does not stop it ("has decreased in size, now
   small"). Its words are claimed: the next finding's walk back stops there.

Within a group, two sides ("left greater than right") make ``bilateral``, and two degrees
(a range: "small-to-moderate", "moderate to large") take the higher. Inside-and-after
attributes fill what each group leaves open; an attribute only one group states fills the
others ("small left and right effusions": both small).

:func:`ontology_attributes` then keeps only what the ontology allows for the condition:
a bilateral finding of a condition without a ``bilateral`` side but with both ``left`` and
``right`` becomes two findings (bilateral rib fractures: a left and a right); a side the
condition lacks is dropped; ``basal`` falls back to ``lower`` and ``apical`` to ``upper``
where the condition has only the coarser zone (the lung bases are the lower zones); a
degree maps to the condition's scale (``degrees`` in the YAML: size small/moderate/large
or grade mild/moderate/severe) and is dropped for a condition without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from mechtune.data.ontology import LATERALITIES, ZONES, Condition, load_ontology
from mechtune.errors import DataError

SEPARATORS = frozenset({",", "and", "or"})
PREPOSITIONS = frozenset({"in", "on", "at", "of", "within", "along", "involving", "to"})
PURE_GROUP_WORDS = frozenset({"a", "an", "the", "-", "sided", "side", "lobe", "lobes"})
PURE_GROUP_WORDS |= frozenset({"zone", "zones", "lung", "to"})
ZONE_FALLBACK = {"basal": "lower", "apical": "upper"}
_ORDINAL = re.compile(r"^\d+(st|nd|rd|th)$")
_LISTS = (
    "change_words",
    "noun_phrase_words",
    "after_words",
    "after_comma_words",
    "predicate_adjectives",
    "predicate_adverbs",
    "copulas",
)


@dataclass(frozen=True)
class Lexicon:
    """The word lists of ``resources/report_modifiers.yaml`` (see its comments)."""

    words: dict[str, dict[str, Any]]
    degrees: dict[str, dict[int, str]]
    change_words: frozenset[str]
    noun_phrase_words: frozenset[str]
    after_words: frozenset[str]
    after_comma_words: frozenset[str]
    predicate_adjectives: frozenset[str]
    predicate_adverbs: frozenset[str]
    copulas: frozenset[str]

    @property
    def degree_adverbs(self) -> list[str]:
        """Degree words marked ``adverb`` ("mildly"), sorted."""
        return sorted(w for w, a in self.words.items() if a.get("adverb"))


@cache
def lexicon() -> Lexicon:
    """The packaged word lists (``resources/report_modifiers.yaml``), parsed once."""
    text = resources.files("mechtune.data").joinpath("resources/report_modifiers.yaml")
    return parse_lexicon(yaml.safe_load(text.read_text("utf-8")))


def parse_lexicon(raw: dict[str, Any]) -> Lexicon:
    """Word lists from the parsed YAML, validated against the ontology's sides, zones and
    severity scales. Raises ``DataError`` naming the key, word and value when an entry is
    not one of them, or a list holds a non-word (YAML 1.1 reads a bare ``on`` as True)."""
    keys = {"words", "degrees", *_LISTS}
    if not isinstance(raw, dict) or keys - set(raw):
        raise DataError(f"report_modifiers.yaml: needs the keys {sorted(keys)}")
    scales = {c.severity_scale: c.severities for c in load_ontology().conditions}
    scales.pop("none", None)
    for word, attrs in raw["words"].items():
        if not isinstance(word, str) or not isinstance(attrs, dict):
            raise DataError(f"report_modifiers.yaml: word {word!r} has bad attributes {attrs}")
        unknown = set(attrs) - {"laterality", "zone", "degree", "adverb"}
        bad = (
            unknown
            or attrs.get("laterality", "left") not in LATERALITIES
            or attrs.get("zone", "upper") not in ZONES
            or attrs.get("degree", 1) not in (1, 2, 3)
        )
        if bad:
            raise DataError(f"report_modifiers.yaml: word {word!r} has bad attributes {attrs}")
    for name in _LISTS:
        odd = [w for w in raw[name] if not isinstance(w, str)]
        if odd:  # YAML 1.1 reads a bare on/off/yes/no as a boolean
            raise DataError(f"report_modifiers.yaml: {name} has non-word entries {odd}; quote them")
    for scale, values in scales.items():
        mapped = raw["degrees"].get(scale) or {}
        if sorted(mapped) != [1, 2, 3] or set(mapped.values()) - set(values):
            raise DataError(
                f"report_modifiers.yaml: degrees.{scale} must map 1, 2, 3 to {list(values)}; "
                f"got {mapped}"
            )
    return Lexicon(
        words=raw["words"],
        degrees={k: {int(d): v for d, v in m.items()} for k, m in raw["degrees"].items()},
        change_words=frozenset(raw["change_words"]),
        noun_phrase_words=frozenset(raw["noun_phrase_words"]),
        after_words=frozenset(raw["after_words"]),
        after_comma_words=frozenset(raw["after_comma_words"]),
        predicate_adjectives=frozenset(raw["predicate_adjectives"]),
        predicate_adverbs=frozenset(raw["predicate_adverbs"]),
        copulas=frozenset(raw["copulas"]),
    )


# -- attribute groups ------------------------------------------------------------------------


@dataclass
class Group:
    """The attribute words read for one mention: sides, zones and degrees, in text order."""

    sides: list[str] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)
    degrees: list[int] = field(default_factory=list)

    @property
    def laterality(self) -> str | None:
        """One side; two different sides, or "bilateral", make ``bilateral``."""
        sides = set(self.sides)
        if "bilateral" in sides or {"left", "right"} <= sides:
            return "bilateral"
        return self.sides[0] if self.sides else None

    @property
    def zone(self) -> str | None:
        return self.zones[0] if self.zones else None

    @property
    def degree(self) -> int | None:
        """The highest degree: a range takes its upper end."""
        return max(self.degrees) if self.degrees else None

    def empty(self) -> bool:
        return not (self.sides or self.zones or self.degrees)

    def fill(self, other: Group) -> None:
        """Take each attribute this group lacks from ``other``."""
        self.sides = self.sides or list(other.sides)
        self.zones = self.zones or list(other.zones)
        self.degrees = self.degrees or list(other.degrees)


def _read(tokens: Sequence[Any]) -> Group:
    """The attributes of a run of tokens; a degree adverb that grades a change word
    ("mildly increased") is skipped."""
    lex = lexicon()
    group = Group()
    for i, tok in enumerate(tokens):
        attrs = lex.words.get(tok.lower_)
        if attrs is None:
            continue
        grades_change = i + 1 < len(tokens) and tokens[i + 1].lower_ in lex.change_words
        if attrs.get("adverb") and grades_change:
            continue
        if "laterality" in attrs:
            group.sides.append(attrs["laterality"])
        if "zone" in attrs:
            group.zones.append(attrs["zone"])
        if "degree" in attrs:
            group.degrees.append(attrs["degree"])
    return group


def _in_phrase(word: str) -> bool:
    lex = lexicon()
    return (
        word in lex.words
        or word in lex.noun_phrase_words
        or word in SEPARATORS
        or bool(_ORDINAL.match(word))
    )


def _split(tokens: list[Any]) -> list[list[Any]]:
    """Runs of tokens between list separators, nearest the finding last."""
    groups: list[list[Any]] = [[]]
    for tok in tokens:
        if tok.lower_ in SEPARATORS:
            if groups[-1]:
                groups.append([])
        else:
            groups[-1].append(tok)
    return [g for g in groups if g]


def _before(doc: Any, ent: Any, stop: set[int]) -> list[Group]:
    """The groups of the walk back from ``ent`` (see the module docstring), farthest first."""
    lex = lexicon()
    i = ent.start - 1
    while i >= ent.sent.start and i not in stop and _in_phrase(doc[i].lower_):
        i -= 1
    walked = [doc[j] for j in range(i + 1, ent.start)]
    after_preposition = i >= ent.sent.start and doc[i].lower_ in PREPOSITIONS
    runs = _split(walked)
    kept: list[list[Any]] = runs[-1:]
    for run in reversed(runs[:-1]):
        pure = all(t.lower_ in lex.words or t.lower_ in PURE_GROUP_WORDS for t in run)
        if not pure or _read(run).laterality is None:
            after_preposition = False  # the walk's far end is not this group's
            break
        kept.insert(0, run)
    if after_preposition and len(kept) > 1 and kept[0] is runs[0]:
        kept = kept[1:]
    return [_read(run) for run in kept]


def _after(doc: Any, ent: Any, ent_tokens: set[int]) -> list[int]:
    """Token indices of the walk forward from ``ent``."""
    lex = lexicon()
    j, out = ent.end, []
    while j < ent.sent.end and j not in ent_tokens:
        word = doc[j].lower_
        restated = (
            word == "," and j + 1 < ent.sent.end and doc[j + 1].lower_ in lex.after_comma_words
        )
        if word not in lex.words and word not in lex.after_words and not restated:
            break
        out.append(j)
        j += 1
    return out


def attribute_groups(doc: Any, ents: Iterable[Any]) -> list[list[Group]]:
    """For each entity of ``doc`` (in text order), the attribute groups of its mentions
    (at least one; see the module docstring)."""
    ents = list(ents)
    ent_tokens = {i for e in ents for i in range(e.start, e.end)}
    claimed: set[int] = set()
    out = []
    for ent in ents:
        groups = _before(doc, ent, ent_tokens | claimed) or [Group()]
        after = _after(doc, ent, ent_tokens)
        claimed.update(after)
        shared = _read([*ent, *(doc[j] for j in after)])
        for g in groups:
            g.fill(shared)
        for name in ("sides", "zones", "degrees"):
            stating = [g for g in groups if getattr(g, name)]
            if len(stating) == 1:
                for g in groups:
                    setattr(g, name, getattr(g, name) or list(getattr(stating[0], name)))
        out.append(groups)
    return out


# -- the ontology's attributes ---------------------------------------------------------------


def severity_on_scale(cond: Condition, degree: int | None) -> str | None:
    """A degree (1-3) on the condition's scale; None for no degree or no scale."""
    if degree is None or cond.severity_scale == "none":
        return None
    return lexicon().degrees[cond.severity_scale][degree]


def ontology_attributes(
    cond: Condition, group: Group
) -> list[tuple[str | None, str | None, str | None]]:
    """``[(laterality, zone, severity)]`` the ontology allows for ``cond`` (one entry, or
    a left and a right one for a bilateral finding of a condition without a bilateral
    side; see the module docstring)."""
    side = group.laterality
    if side == "bilateral" and side not in cond.laterality:
        both = {"left", "right"} <= set(cond.laterality)
        sides: list[str | None] = ["left", "right"] if both else [None]
    else:
        sides = [side if side in cond.laterality else None]
    zone = group.zone
    if zone is not None and zone not in cond.zones:
        fallback = ZONE_FALLBACK.get(zone)
        zone = fallback if fallback in cond.zones else None
    severity = severity_on_scale(cond, group.degree)
    return [(s, zone, severity) for s in sides]


__all__ = [
    "PREPOSITIONS",
    "SEPARATORS",
    "Group",
    "Lexicon",
    "attribute_groups",
    "lexicon",
    "ontology_attributes",
    "parse_lexicon",
    "severity_on_scale",
]
