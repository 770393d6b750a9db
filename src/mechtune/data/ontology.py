"""The clinical ontology: CheXpert conditions, their attributes, and phrasing families.

Everything here is loaded from the data files in ``resources/`` so that clinicians can
review and extend the vocabulary without touching code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from mechtune.errors import DataError

Laterality = Literal["left", "right", "bilateral"]
Zone = Literal["upper", "middle", "lower", "apical", "basal"]
LATERALITIES: tuple[str, ...] = ("left", "right", "bilateral")
ZONES: tuple[str, ...] = ("upper", "middle", "lower", "apical", "basal")
CUE_KINDS: tuple[str, ...] = (
    "affirmative",
    "negation",
    "absence_affirmative",
    "clause_affirmative",
    "clause_negation",
    "clause_absence_affirmative",
    "question",
    "paraphrase",
)
PARAPHRASE_STRATEGIES: tuple[str, ...] = ("lexical", "syntactic", "register", "voice")


class OntologyError(DataError):
    """An ontology or cue data file is inconsistent."""


@dataclass(frozen=True)
class Condition:
    """One CheXpert label with the attributes that make clinical sense for it."""

    id: str
    column: str
    name: str
    synonyms: tuple[str, ...]
    countable: bool
    absent_affirmative: tuple[str, ...]
    laterality: tuple[str, ...]
    zones: tuple[str, ...]
    severity_scale: str
    severities: tuple[str, ...]
    lay_term: str
    plural: str | None = None
    plural_name: bool = False
    summary: bool = False

    @property
    def display_name(self) -> str:
        return self.column


@dataclass(frozen=True)
class CueFamily:
    """A phrasing family: one template, identified so it can be held out as a whole."""

    id: str
    kind: str
    template: str
    position: str | None = None
    strategy: str | None = None
    heldout: bool = False
    not_for: frozenset[str] = frozenset()

    def suits(self, condition: str) -> bool:
        return condition not in self.not_for


@dataclass(frozen=True)
class Ontology:
    conditions: tuple[Condition, ...]
    families: tuple[CueFamily, ...]
    mcq_stems: tuple[str, ...] = ()
    normal_study: tuple[str, ...] = ()

    @functools.cached_property
    def _by_id(self) -> dict[str, Condition]:
        return {c.id: c for c in self.conditions}

    @functools.cached_property
    def _by_column(self) -> dict[str, Condition]:
        return {c.column: c for c in self.conditions}

    @functools.cached_property
    def _family_by_id(self) -> dict[str, CueFamily]:
        return {f.id: f for f in self.families}

    def condition(self, key: str) -> Condition:
        """Look a condition up by id (``pleural_effusion``) or CSV column (``Pleural Effusion``)."""
        found = self._by_id.get(key) or self._by_column.get(key)
        if found is None:
            known = ", ".join(c.id for c in self.conditions)
            raise KeyError(f"unknown condition {key!r}; known: {known}")
        return found

    def has_condition(self, key: str) -> bool:
        return key in self._by_id or key in self._by_column

    @property
    def pathologies(self) -> tuple[Condition, ...]:
        """The 13 conditions, without the 'No Finding' summary label."""
        return tuple(c for c in self.conditions if not c.summary)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.conditions)

    def family(self, family_id: str) -> CueFamily:
        try:
            return self._family_by_id[family_id]
        except KeyError:
            raise KeyError(f"unknown phrasing family {family_id!r}") from None

    def families_of(
        self, kind: str, *, heldout: bool | None = None, condition: str | None = None
    ) -> tuple[CueFamily, ...]:
        """Families of one kind.

        ``heldout`` filters to train (False) or held-out (True) families; ``condition``
        drops families that do not suit that condition.
        """
        if kind not in CUE_KINDS:
            raise KeyError(f"unknown cue kind {kind!r}; known: {', '.join(CUE_KINDS)}")
        return tuple(
            f
            for f in self.families
            if f.kind == kind
            and (heldout is None or f.heldout == heldout)
            and (condition is None or f.suits(condition))
        )


def _condition_from_yaml(raw: dict[str, Any], scales: dict[str, list[str]]) -> Condition:
    cid = raw.get("id", "?")
    scale = raw.get("severity", "none")
    if scale not in scales:
        raise OntologyError(f"condition {cid!r}: unknown severity scale {scale!r}")
    for side in raw.get("laterality", []):
        if side not in LATERALITIES:
            raise OntologyError(f"condition {cid!r}: unknown laterality {side!r}")
    for zone in raw.get("zones", []):
        if zone not in ZONES:
            raise OntologyError(f"condition {cid!r}: unknown zone {zone!r}")
    summary = bool(raw.get("summary", False))
    if raw.get("number", "singular") not in ("singular", "plural"):
        raise OntologyError(f"condition {cid!r}: number must be singular or plural")
    if not summary and not raw.get("absent_affirmative"):
        raise OntologyError(f"condition {cid!r}: needs at least one absent_affirmative phrase")
    if "bilateral" in raw.get("laterality", []) and raw.get("countable") and not raw.get("plural"):
        raise OntologyError(f"condition {cid!r}: countable with bilateral side needs 'plural'")
    return Condition(
        id=raw["id"],
        column=raw["column"],
        name=raw["name"],
        synonyms=tuple(raw.get("synonyms", [])),
        countable=bool(raw["countable"]),
        absent_affirmative=tuple(raw.get("absent_affirmative", [])),
        laterality=tuple(raw.get("laterality", [])),
        zones=tuple(raw.get("zones", [])),
        severity_scale=scale,
        severities=tuple(scales[scale]),
        lay_term=raw["lay_term"],
        plural=raw.get("plural"),
        plural_name=raw.get("number", "singular") == "plural",
        summary=summary,
    )


def _families_from_yaml(raw: dict[str, Any]) -> tuple[CueFamily, ...]:
    heldout = set(raw.get("heldout", []))
    families: list[CueFamily] = []
    for kind in CUE_KINDS:
        for entry in raw.get(kind, []):
            strategy = entry.get("strategy")
            if kind == "paraphrase" and strategy not in PARAPHRASE_STRATEGIES:
                raise OntologyError(f"family {entry['id']!r}: unknown strategy {strategy!r}")
            families.append(
                CueFamily(
                    id=entry["id"],
                    kind=kind,
                    template=entry["template"],
                    position=entry.get("position"),
                    strategy=strategy,
                    heldout=entry["id"] in heldout,
                    not_for=frozenset(entry.get("not_for", [])),
                )
            )
    ids = [f.id for f in families]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise OntologyError(f"duplicate family ids: {duplicated}")
    unknown = sorted(heldout - set(ids))
    if unknown:
        raise OntologyError(f"held-out list names unknown families: {unknown}")
    return tuple(families)


def _read_resource(name: str) -> dict[str, Any]:
    text = resources.files("mechtune.data").joinpath("resources", name).read_text("utf-8")
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise OntologyError(f"resource {name}: expected a mapping at top level")
    return loaded


@functools.cache
def load_ontology() -> Ontology:
    """The packaged ontology (cached: it is immutable)."""
    raw = _read_resource("ontology.yaml")
    conditions = tuple(_condition_from_yaml(c, raw["severity_scales"]) for c in raw["conditions"])
    cues = _read_resource("cues.yaml")
    return Ontology(
        conditions=conditions,
        families=_families_from_yaml(cues),
        mcq_stems=tuple(cues.get("mcq_stems", [])),
        normal_study=tuple(cues.get("normal_study", [])),
    )
