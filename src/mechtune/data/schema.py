"""Typed records for studies and benchmarks.

Every record validates on construction and round-trips through ``to_dict``/``from_dict``.
Records are frozen: builders create new ones rather than mutating.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from mechtune.data.ontology import load_ontology
from mechtune.errors import DataError

ATTRIBUTES: tuple[str, ...] = ("existence", "laterality", "severity")
POLARITIES: tuple[str, ...] = ("affirmative", "negated")
SPLITS: tuple[str, ...] = ("train", "val", "test")

R = TypeVar("R", bound="_Record")


class RecordError(DataError):
    """A record failed validation. The message names the record and the bad value."""


class _Record:
    """``to_dict``/``from_dict`` shared by all records (tuples become lists and back)."""

    _nested: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self._nested:
                value = [v.to_dict() for v in value]
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise RecordError(f"{cls.__name__}: unknown field(s) {unknown}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name in cls._nested:
                value = tuple(cls._nested[name].from_dict(v) for v in value)  # type: ignore[attr-defined]
            elif isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # missing required field
            raise RecordError(f"{cls.__name__}: {exc}") from None


def _require(cond: bool, record: str, message: str) -> None:
    if not cond:
        raise RecordError(f"{record}: {message}")


@dataclass(frozen=True)
class Finding(_Record):
    """One structured fact about a study: a condition, present or absent, with attributes.

    An absent finding may carry a side ("no right pneumothorax") but never a severity
    or a zone.
    """

    condition: str
    present: bool
    laterality: str | None = None
    zone: str | None = None
    severity: str | None = None

    def __post_init__(self) -> None:
        onto = load_ontology()
        where = f"Finding({self.condition!r})"
        _require(onto.has_condition(self.condition), where, "unknown condition")
        cond = onto.condition(self.condition)
        if cond.id != self.condition:  # normalise CSV column names to ids
            object.__setattr__(self, "condition", cond.id)
        _require(
            isinstance(self.present, bool), where, f"present must be bool, got {self.present!r}"
        )
        _require(
            self.laterality is None or self.laterality in cond.laterality,
            where,
            f"laterality {self.laterality!r} not allowed (allowed: {list(cond.laterality)})",
        )
        _require(
            self.zone is None or self.zone in cond.zones,
            where,
            f"zone {self.zone!r} not allowed (allowed: {list(cond.zones)})",
        )
        _require(
            self.severity is None or self.severity in cond.severities,
            where,
            f"severity {self.severity!r} not allowed (allowed: {list(cond.severities)})",
        )
        if not self.present:
            _require(self.severity is None, where, "an absent finding has no severity")
            _require(self.zone is None, where, "an absent finding has no zone")

    def key(self) -> tuple[str, bool, str | None, str | None, str | None]:
        return (self.condition, self.present, self.laterality, self.zone, self.severity)


def _sides(laterality: str | None) -> frozenset[str]:
    if laterality is None or laterality == "bilateral":
        return frozenset({"left", "right"})
    return frozenset({laterality})


@dataclass(frozen=True)
class Study(_Record):
    """A chest radiograph study: its patient, its findings, and optional image and report."""

    _nested: ClassVar[dict[str, type]] = {"findings": Finding}

    study_id: str
    patient_id: str
    findings: tuple[Finding, ...]
    image_ref: str | None = None
    report: str | None = None

    def __post_init__(self) -> None:
        where = f"Study({self.study_id!r})"
        _require(isinstance(self.study_id, str) and bool(self.study_id), where, "empty study_id")
        _require(
            isinstance(self.patient_id, str) and bool(self.patient_id), where, "empty patient_id"
        )
        if isinstance(self.findings, list):
            object.__setattr__(self, "findings", tuple(self.findings))
        for f in self.findings:
            if not isinstance(f, Finding):  # message built only on failure: this is a hot path
                raise RecordError(f"{where}: findings must be Finding, got {f!r}")
        # A condition may not be stated both present and absent on the same side.
        for i, a in enumerate(self.findings):
            for b in self.findings[i + 1 :]:
                if a.condition != b.condition:
                    continue
                if a.key() == b.key():
                    raise RecordError(f"{where}: duplicate finding {a.key()}")
                if a.present != b.present and _sides(a.laterality) & _sides(b.laterality):
                    raise RecordError(
                        f"{where}: {a.condition} stated both present and absent on the same side"
                    )

    def present(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.present)

    def absent(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.present)

    def label(self, condition: str) -> bool | None:
        """True if present anywhere, False if stated absent, None if not mentioned."""
        states = [f.present for f in self.findings if f.condition == condition]
        if not states:
            return None
        return any(states)


@dataclass(frozen=True)
class ClaimSet(_Record):
    """One correct claim about a study plus hard negatives that each change one attribute.

    ``flipped[i]`` is the attribute (existence, laterality, severity) that ``negatives[i]``
    changes relative to the correct claim. ``families[i]`` is the phrasing family of
    ``candidates[i]`` (the correct claim first). ``polarity`` is that of the correct
    claim; ``contralateral`` marks a negated claim about the side opposite a present
    finding ("No right pneumothorax." for a left pneumothorax).
    """

    claim_set_id: str
    study_id: str
    patient_id: str
    condition: str
    correct: str
    negatives: tuple[str, ...]
    flipped: tuple[str, ...]
    families: tuple[str, ...]
    polarity: str
    heldout_family: bool
    contralateral: bool = False
    split: str = "train"

    def __post_init__(self) -> None:
        where = f"ClaimSet({self.claim_set_id!r})"
        _require(len(self.negatives) >= 1, where, "needs at least one negative")
        _require(
            len(self.negatives) == len(self.flipped),
            where,
            f"{len(self.negatives)} negatives but {len(self.flipped)} flipped attributes",
        )
        _require(
            len(self.families) == len(self.negatives) + 1,
            where,
            f"{len(self.families)} families for {len(self.negatives) + 1} candidates",
        )
        for attr in self.flipped:
            _require(attr in ATTRIBUTES, where, f"unknown flipped attribute {attr!r}")
        _require(self.polarity in POLARITIES, where, f"unknown polarity {self.polarity!r}")
        _require(self.split in SPLITS, where, f"unknown split {self.split!r}")
        _require(self.correct not in self.negatives, where, "a negative equals the correct claim")
        _require(
            len(set(self.negatives)) == len(self.negatives), where, "negatives are not distinct"
        )

    @property
    def candidates(self) -> tuple[str, ...]:
        """Correct claim first, then the negatives."""
        return (self.correct, *self.negatives)

    def candidate_polarities(self) -> tuple[str, ...]:
        """Polarity of each candidate: an existence flip inverts it, other flips keep it."""
        other = "affirmative" if self.polarity == "negated" else "negated"
        return (
            self.polarity,
            *(other if a == "existence" else self.polarity for a in self.flipped),
        )


@dataclass(frozen=True)
class Caption(_Record):
    """A single caption that is true of the study and contains a negation (for L_CLIP).

    ``conditions[i]`` is stated with ``polarities[i]`` (affirmative or negated).
    """

    caption_id: str
    study_id: str
    patient_id: str
    text: str
    conditions: tuple[str, ...]
    polarities: tuple[str, ...]
    families: tuple[str, ...]
    heldout_family: bool
    split: str = "train"

    def __post_init__(self) -> None:
        where = f"Caption({self.caption_id!r})"
        _require(bool(self.text), where, "empty text")
        _require(
            len(self.conditions) == len(self.polarities) == len(self.families),
            where,
            "conditions, polarities and families differ in length",
        )
        for p in self.polarities:
            _require(p in POLARITIES, where, f"unknown polarity {p!r}")
        _require("negated" in self.polarities, where, "a negated caption must state an absence")
        _require(self.split in SPLITS, where, f"unknown split {self.split!r}")


@dataclass(frozen=True)
class MCQPair(_Record):
    """A polarity-controlled multiple-choice question (MedNega-CXR style).

    ``labels[i]`` is option i's label vector over ``conditions`` (1 present, 0 absent).
    ``negated_options[i]`` and ``affirmative_options[i]`` realise the same vector and
    differ only in how absence is phrased.
    """

    mcq_id: str
    study_id: str
    patient_id: str
    question: str
    conditions: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]
    negated_options: tuple[str, ...]
    affirmative_options: tuple[str, ...]
    correct_index: int
    families: tuple[str, ...] = ()
    split: str = "train"

    def __post_init__(self) -> None:
        where = f"MCQPair({self.mcq_id!r})"
        n = len(self.labels)
        _require(n >= 2, where, f"needs at least 2 options, got {n}")
        _require(
            len(self.negated_options) == n and len(self.affirmative_options) == n,
            where,
            "labels, negated_options and affirmative_options differ in length",
        )
        _require(
            0 <= self.correct_index < n, where, f"correct_index {self.correct_index} out of range"
        )
        _require(len(set(self.labels)) == n, where, "option label vectors are not distinct")
        for vec in self.labels:
            _require(
                len(vec) == len(self.conditions), where, f"label vector {vec} has wrong length"
            )
            _require(all(v in (0, 1) for v in vec), where, f"label vector {vec} is not 0/1")
        _require(self.split in SPLITS, where, f"unknown split {self.split!r}")


@dataclass(frozen=True)
class ParaphraseSet(_Record):
    """A yes/no question, its meaning-preserving paraphrases, and the answer.

    ``strategies[i]`` is paraphrase i's strategy (lexical, syntactic, register, voice, or
    ``unknown`` for imported records) and ``families[i]`` its family id, if known.
    ``condition`` is None when an imported question's condition is not known.
    """

    question_id: str
    study_id: str
    patient_id: str
    condition: str | None
    question: str
    paraphrases: tuple[str, ...]
    strategies: tuple[str, ...]
    families: tuple[str, ...]
    answer: bool
    image_ref: str | None = None
    heldout_family: tuple[bool, ...] = ()
    split: str = "train"

    def __post_init__(self) -> None:
        where = f"ParaphraseSet({self.question_id!r})"
        _require(bool(self.question), where, "empty question")
        _require(len(self.paraphrases) >= 1, where, "needs at least one paraphrase")
        _require(
            len(self.strategies) == len(self.paraphrases),
            where,
            "paraphrases and strategies differ in length",
        )
        if self.families:
            _require(
                len(self.families) == len(self.paraphrases),
                where,
                "paraphrases and families differ in length",
            )
        if self.heldout_family:
            _require(
                len(self.heldout_family) == len(self.paraphrases),
                where,
                "paraphrases and heldout_family differ in length",
            )
        _require(isinstance(self.answer, bool), where, f"answer must be bool, got {self.answer!r}")
        _require(self.question not in self.paraphrases, where, "a paraphrase equals the question")
        _require(self.split in SPLITS, where, f"unknown split {self.split!r}")


@dataclass(frozen=True)
class ImageQuestion:
    """A paraphrase set bound to its image: ``image`` is the row of that image in the image
    batch the caller holds (uint8 arrays, PIL images or embeddings, as the model takes).

    ``record.image_ref`` stays what the source said (a file path, a study id), so a row
    number never stands in for a reference, and a set without an image cannot be bound.
    Raises ``RecordError`` unless ``image`` is an int >= 0.
    """

    record: ParaphraseSet
    image: int

    def __post_init__(self) -> None:
        where = f"ParaphraseSet({self.record.question_id!r})"
        _require(
            isinstance(self.image, int) and not isinstance(self.image, bool) and self.image >= 0,
            where,
            f"image must be a row index >= 0, got {self.image!r}",
        )


__all__ = [
    "ATTRIBUTES",
    "POLARITIES",
    "SPLITS",
    "Caption",
    "ClaimSet",
    "Finding",
    "ImageQuestion",
    "MCQPair",
    "ParaphraseSet",
    "RecordError",
    "Study",
]
