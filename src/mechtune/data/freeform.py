"""Free-form claim sets: hand-written radiology sentences in no template family.

The template claim sets (:mod:`mechtune.data.builders.contextual`) are filled from a few
dozen phrasing families, so a model tuned on some families can still be tested only on
their siblings. The free-form sets are written by hand in report style, each with the
structured ground truth its sentences assert, so that they can be matched to any study
whose findings make the correct claim true and every foil false
(:mod:`mechtune.data.freeform_match`), and scored like the template sets
(:mod:`mechtune.eval.freeform`).

A file (YAML with a ``sets:`` list, or JSONL with one set per line) holds sets of the form::

    id: ff001                      # unique
    half: val                      # val or test, assigned once and written in the file
    polarity: affirmative          # of the correct claim: affirmative when it states only
                                   # presence, negated when it states any absence (with a
                                   # negation cue or in affirmative words)
    kinds: [side, size]            # KINDS
    conditions: [pneumothorax]     # the conditions the correct claim is about
    attributes: [laterality, severity]   # the attributes it asserts
    correct: {text: "...", truth: ["+pneumothorax left small"]}
    foils:                         # one or more, each false when the correct claim is true
      - {text: "...", truth: ["-pneumothorax"]}

A *truth* is a list of assertions, each ``+condition`` (present) or ``-condition``
(absent) followed by its attribute values: a side (left, right, bilateral), a zone
(upper, middle, lower, apical, basal) and a size or grade (small, moderate, large, mild,
severe), as :class:`~mechtune.data.schema.Finding` allows them for the condition. A claim
is true of a study when every assertion is.

:func:`load_freeform` checks every field and raises ``DataError`` naming the file, the
set (line and id) and the bad value; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mechtune.data.io import dumps_json
from mechtune.data.ontology import LATERALITIES, ZONES, load_ontology
from mechtune.data.schema import POLARITIES, Finding, RecordError
from mechtune.errors import DataError

HALVES: tuple[str, ...] = ("val", "test")
# What a claim set's correct claim is an example of (a set may have several):
#   plain                a finding stated present or absent, with no attribute
#   side, size, zone     the claim asserts a side (laterality), a size or grade
#                        (severity), a zone
#   absence_affirmative  absence in affirmative words ("the costophrenic angles are sharp")
#   contralateral        present on one side, stated absent on the other
#   list                 several conditions in one claim ("no pneumothorax or effusion")
#   hedge                hedged wording ("probable", "no definite")
KINDS: tuple[str, ...] = (
    "plain",
    "side",
    "size",
    "zone",
    "absence_affirmative",
    "contralateral",
    "list",
    "hedge",
)
ASSERTED_ATTRIBUTES: tuple[str, ...] = ("laterality", "zone", "severity")
_KIND_OF_ATTRIBUTE = {"laterality": "side", "severity": "size", "zone": "zone"}
FIELDS: tuple[str, ...] = (
    "id",
    "half",
    "polarity",
    "kinds",
    "conditions",
    "attributes",
    "correct",
    "foils",
)
PACKAGED = "freeform_claims.yaml"


@dataclass(frozen=True)
class FreeformClaim:
    """A sentence and the findings it asserts (all must hold for it to be true)."""

    text: str
    truth: tuple[Finding, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "truth": [assertion_text(f) for f in self.truth]}


@dataclass(frozen=True)
class FreeformClaimSet:
    """One hand-written claim set: the correct claim first, then its foils.

    ``polarity`` is that of the correct claim ("affirmative": it states a finding present;
    "negated": absent), ``kinds`` its :data:`KINDS`, ``conditions`` and ``attributes``
    what it asserts, ``half`` the frozen half it belongs to (val or test).
    """

    set_id: str
    half: str
    polarity: str
    kinds: tuple[str, ...]
    conditions: tuple[str, ...]
    attributes: tuple[str, ...]
    correct: FreeformClaim
    foils: tuple[FreeformClaim, ...]

    @property
    def candidates(self) -> tuple[str, ...]:
        """The correct claim's text first, then the foils'."""
        return (self.correct.text, *(f.text for f in self.foils))

    def to_dict(self) -> dict[str, Any]:
        """The canonical record (the form the half hashes are taken over)."""
        return {
            "id": self.set_id,
            "half": self.half,
            "polarity": self.polarity,
            "kinds": list(self.kinds),
            "conditions": list(self.conditions),
            "attributes": list(self.attributes),
            "correct": self.correct.to_dict(),
            "foils": [f.to_dict() for f in self.foils],
        }


@dataclass(frozen=True)
class FreeformSets:
    """The claim sets of one file (``path``), in file order."""

    path: str
    sets: tuple[FreeformClaimSet, ...]

    def half(self, name: str) -> tuple[FreeformClaimSet, ...]:
        """The sets of one half (val or test). Raises ``DataError`` for another name."""
        if name not in HALVES:
            raise DataError(f"free-form half must be one of {HALVES}, got {name!r}")
        return tuple(s for s in self.sets if s.half == name)

    def hashes(self) -> dict[str, str]:
        """``{half: sha256}`` of each half's canonical content (:func:`half_hash`)."""
        return {h: half_hash(self.half(h)) for h in HALVES}


def half_hash(sets: Sequence[FreeformClaimSet]) -> str:
    """sha256 (hex) of the canonical serialisation of ``sets``: their canonical records
    (:meth:`FreeformClaimSet.to_dict`) sorted by id, as JSON with sorted keys, no spaces
    and UTF-8 text. Any change of a text, a truth, a tag or the half a set belongs to
    changes it; the layout of the file does not."""
    records = sorted((s.to_dict() for s in sets), key=lambda r: r["id"])
    blob = dumps_json(records, indent=None, sort_keys=True, ensure_ascii=False, compact=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def normalise_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace folded: ``"No  pneumothorax."`` and
    ``"no pneumothorax"`` compare equal (the template-disjointness check)."""
    folded = unicodedata.normalize("NFKC", text).lower()
    folded = re.sub(r"[^\w\s]", " ", folded)
    return " ".join(folded.split())


# -- assertions ---------------------------------------------------------------------------


def _scales() -> dict[str, str]:
    """Every attribute value a truth may name -> its Finding field."""
    values = dict.fromkeys(LATERALITIES, "laterality")
    values.update(dict.fromkeys(ZONES, "zone"))
    for cond in load_ontology().conditions:
        values.update(dict.fromkeys(cond.severities, "severity"))
    return values


def parse_assertion(text: Any) -> Finding:
    """``"+pleural_effusion left small"`` -> ``Finding("pleural_effusion", True, "left",
    severity="small")``. Raises ``DataError`` naming the value (the caller adds where)."""
    if not isinstance(text, str) or len(text) < 2 or text[0] not in "+-":
        raise DataError(f"assertion {text!r} must be '+condition ...' or '-condition ...'")
    words = text[1:].split()
    if not words:
        raise DataError(f"assertion {text!r} names no condition")
    condition, values = words[0], words[1:]
    onto = load_ontology()
    if not onto.has_condition(condition) or onto.condition(condition).id != condition:
        raise DataError(f"assertion {text!r}: unknown condition {condition!r}")
    scales = _scales()
    attrs: dict[str, str] = {}
    for value in values:
        field = scales.get(value)
        if field is None:
            raise DataError(
                f"assertion {text!r}: unknown attribute value {value!r} (a side, zone, size "
                "or grade)"
            )
        if field in attrs:
            raise DataError(f"assertion {text!r}: two values for {field} ({attrs[field]}, {value})")
        attrs[field] = value
    try:
        return Finding(condition, text[0] == "+", **attrs)
    except RecordError as err:
        raise DataError(f"assertion {text!r}: {err}") from None


def assertion_text(finding: Finding) -> str:
    """The inverse of :func:`parse_assertion` (attributes in side, zone, size order)."""
    parts = [f"{'+' if finding.present else '-'}{finding.condition}"]
    parts += [v for v in (finding.laterality, finding.zone, finding.severity) if v]
    return " ".join(parts)


def _asserted(truth: Sequence[Finding]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The conditions and the attributes a truth asserts, in first-seen / canonical order."""
    conditions = tuple(dict.fromkeys(f.condition for f in truth))
    attributes = tuple(a for a in ASSERTED_ATTRIBUTES if any(getattr(f, a) for f in truth))
    return conditions, attributes


# -- loading ------------------------------------------------------------------------------


def packaged_path() -> Path:
    """The packaged free-form file (``mechtune/data/resources/freeform_claims.yaml``)."""
    return Path(str(resources.files("mechtune.data").joinpath("resources", PACKAGED)))


def load_freeform(path: str | Path | None = None) -> FreeformSets:
    """The claim sets of a free-form file (YAML with a ``sets:`` list, or JSONL); None:
    the packaged set (:func:`packaged_path`). Raises ``DataError`` naming the file, the set
    (line and id) and the value for a missing or unknown field, an unknown condition,
    attribute value, polarity, kind or half, a truth that contradicts the recorded
    polarity, kinds, conditions or attributes, a set without foils, a foil that repeats a
    candidate or whose truth cannot be false when the correct claim holds, and a duplicate
    id."""
    file = packaged_path() if path is None else Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such free-form claim file")
    seen: dict[str, str] = {}
    sets = []
    for where, raw in _rows(file):
        record = _claim_set(raw, f"{file}, {where}")
        if record.set_id in seen:
            raise DataError(
                f"{file}, {where}: duplicate id {record.set_id!r} (first at {seen[record.set_id]})"
            )
        seen[record.set_id] = where
        sets.append(record)
    if not sets:
        raise DataError(f"{file}: no claim set")
    return FreeformSets(str(file), tuple(sets))


def _rows(file: Path) -> Iterator[tuple[str, Any]]:
    """``(where, raw record)``: where is "line N" (of the set's first line)."""
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}, line {number}: invalid JSON ({exc.msg})") from None
        return
    if file.suffix not in (".yaml", ".yml"):
        raise DataError(f"{file}: a free-form file is .yaml, .yml or .jsonl")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{file}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sets"), list):
        raise DataError(f"{file}: expected a mapping with a 'sets' list")
    items = next(v for k, v in node.value if k.value == "sets").value  # type: ignore[union-attr]
    for item, raw in zip(items, data["sets"], strict=True):
        yield f"line {item.start_mark.line + 1}", raw


def _claim(raw: Any, where: str, role: str) -> FreeformClaim:
    if not isinstance(raw, dict) or set(raw) != {"text", "truth"}:
        raise DataError(f"{where}: {role} must be a mapping of text and truth, got {raw!r}")
    text, truth = raw["text"], raw["truth"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: {role} has an empty text ({text!r})")
    if not isinstance(truth, list) or not truth:
        raise DataError(f"{where}: {role} {text!r} needs a non-empty truth list, got {truth!r}")
    try:
        findings = tuple(parse_assertion(t) for t in truth)
    except DataError as err:
        raise DataError(f"{where}: {role} {text!r}: {err}") from None
    return FreeformClaim(text, findings)


def _strings(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _claim_set(raw: Any, where: str) -> FreeformClaimSet:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a claim set is a mapping, got {raw!r}")
    set_id = raw.get("id")
    if not isinstance(set_id, str) or not set_id:
        raise DataError(f"{where}: id must be a non-empty string, got {set_id!r}")
    where = f"{where} (id {set_id})"
    missing = [k for k in FIELDS if k not in raw]
    unknown = sorted(set(raw) - set(FIELDS))
    if missing or unknown:
        raise DataError(f"{where}: missing field(s) {missing}, unknown field(s) {unknown}")
    if raw["half"] not in HALVES:
        raise DataError(f"{where}: half must be one of {HALVES}, got {raw['half']!r}")
    if raw["polarity"] not in POLARITIES:
        raise DataError(f"{where}: polarity must be one of {POLARITIES}, got {raw['polarity']!r}")
    kinds = _strings(raw, "kinds", where)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad or len(set(kinds)) != len(kinds):
        raise DataError(f"{where}: kinds must be distinct values of {KINDS}, got {list(kinds)}")
    correct = _claim(raw["correct"], where, "correct")
    foils_raw = raw["foils"]
    if not isinstance(foils_raw, list) or not foils_raw:
        raise DataError(f"{where}: needs at least one foil, got {foils_raw!r}")
    foils = tuple(_claim(f, where, f"foil {i + 1}") for i, f in enumerate(foils_raw))
    record = FreeformClaimSet(
        set_id=set_id,
        half=raw["half"],
        polarity=raw["polarity"],
        kinds=kinds,
        conditions=_strings(raw, "conditions", where),
        attributes=_strings(raw, "attributes", where),
        correct=correct,
        foils=foils,
    )
    _check_consistent(record, where)
    return record


def _check_consistent(cs: FreeformClaimSet, where: str) -> None:
    """The recorded tags must say what the correct claim's truth says."""
    truth = cs.correct.truth
    conditions, attributes = _asserted(truth)
    if tuple(sorted(cs.conditions)) != tuple(sorted(conditions)):
        raise DataError(
            f"{where}: conditions {list(cs.conditions)} but the correct claim asserts "
            f"{list(conditions)}"
        )
    if tuple(sorted(cs.attributes)) != tuple(sorted(attributes)):
        raise DataError(
            f"{where}: attributes {list(cs.attributes)} but the correct claim asserts "
            f"{list(attributes)}"
        )
    present = {f.present for f in truth}
    if present == {True} and cs.polarity != "affirmative":
        raise DataError(
            f"{where}: polarity {cs.polarity!r} but the correct claim states only presence"
        )
    if False in present and cs.polarity != "negated":
        raise DataError(
            f"{where}: polarity {cs.polarity!r} but the correct claim states an absence "
            "(a claim with any absence is negated)"
        )
    expected = {_KIND_OF_ATTRIBUTE[a] for a in attributes}
    tagged = {k for k in cs.kinds if k in _KIND_OF_ATTRIBUTE.values()}
    if tagged != expected:
        raise DataError(
            f"{where}: kinds {list(cs.kinds)} but the correct claim asserts "
            f"{sorted(expected) or 'no side, size or zone'}"
        )
    if ("list" in cs.kinds) != (len(conditions) > 1):
        raise DataError(
            f"{where}: kind 'list' is for claims about several conditions; this one is about "
            f"{list(conditions)}"
        )
    if "absence_affirmative" in cs.kinds and cs.polarity != "negated":
        raise DataError(f"{where}: kind 'absence_affirmative' needs polarity 'negated'")
    if "contralateral" in cs.kinds and not _contralateral(truth):
        raise DataError(
            f"{where}: kind 'contralateral' needs a condition present on one side and "
            "absent on the other"
        )
    if "plain" in cs.kinds and len(cs.kinds) > 1:
        raise DataError(f"{where}: kind 'plain' cannot be combined with {list(cs.kinds)}")
    texts = [normalise_text(t) for t in cs.candidates]
    if len(set(texts)) != len(texts):
        raise DataError(f"{where}: two candidates have the same text")
    for i, foil in enumerate(cs.foils, start=1):
        if set(foil.truth) == set(truth) or not _can_differ(truth, foil.truth):
            raise DataError(
                f"{where}: foil {i} {foil.text!r} asserts nothing the correct claim rules out"
            )


def _contralateral(truth: Sequence[Finding]) -> bool:
    sides = {(f.condition, f.present, f.laterality) for f in truth}
    return any(
        (c, False, {"left": "right", "right": "left"}[s]) in sides
        for c, p, s in sides
        if p and s in ("left", "right")
    )


def _can_differ(truth: Sequence[Finding], foil: Sequence[Finding]) -> bool:
    """Does some foil assertion clash with the correct claim's assertions (the same
    condition stated both ways on a shared side, or present with another side, zone or
    size)? Without a clash no study could make the correct claim true and the foil false
    for certain."""
    for f in foil:
        for t in truth:
            if f.condition != t.condition:
                continue
            if f.present != t.present:
                if _overlap(f.laterality, t.laterality):
                    return True
            elif f.present and any(
                getattr(f, a) and getattr(t, a) and getattr(f, a) != getattr(t, a)
                for a in ASSERTED_ATTRIBUTES
            ):
                return True
    return False


def _overlap(a: str | None, b: str | None) -> bool:
    sides_a = {"left", "right"} if a in (None, "bilateral") else {a}
    sides_b = {"left", "right"} if b in (None, "bilateral") else {b}
    return bool(sides_a & sides_b)


__all__ = [
    "ASSERTED_ATTRIBUTES",
    "HALVES",
    "KINDS",
    "FreeformClaim",
    "FreeformClaimSet",
    "FreeformSets",
    "assertion_text",
    "half_hash",
    "load_freeform",
    "normalise_text",
    "packaged_path",
    "parse_assertion",
]
