"""Precision and recall per attribute of findings read from report text.

A text's findings are cut into *facts*, one set per attribute:

- ``existence``: ``(condition, present)`` of every finding; ``present`` and ``absent`` are
  its two halves, scored apart;
- ``laterality``: ``(condition, present, side)`` of every finding that has a side;
- ``zone``: ``(condition, zone)`` of every present finding that has a zone;
- ``severity``: ``(condition, severity)`` of every present finding that has one;
- ``uncertain``: ``(condition,)`` of every condition the text mentions with a hedge.

Precision is the share of extracted facts that are true; recall the share of the facts the
text states that were extracted. Both pool facts over texts, and their intervals
(:func:`mechtune.eval.metrics.proportion`) treat each text as a cluster: facts of one
sentence or report are not independent (a cluster bootstrap floored at a Wilson interval;
Wilson where every text gives one fact).

Against a hand-labelled gold set (:func:`load_gold`), a fact is true when the gold set
has it, and stated when the gold set lists it. Against a study whose findings are complete
(the phantom world), truth comes from the study (:func:`judge_by_study`) and the stated
facts are given by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mechtune.data.schema import Finding, RecordError, Study
from mechtune.errors import DataError
from mechtune.eval.metrics import Estimate, proportion

FACT_KINDS: tuple[str, ...] = (
    "existence",
    "present",
    "absent",
    "laterality",
    "zone",
    "severity",
    "uncertain",
)
Fact = tuple[Any, ...]


def facts(findings: Iterable[Finding], uncertain: Iterable[str] = ()) -> dict[str, set[Fact]]:
    """``{kind: set of facts}`` for every kind of :data:`FACT_KINDS` (module docstring)."""
    out: dict[str, set[Fact]] = {k: set() for k in FACT_KINDS}
    for f in findings:
        out["existence"].add((f.condition, f.present))
        out["present" if f.present else "absent"].add((f.condition, f.present))
        if f.laterality is not None:
            out["laterality"].add((f.condition, f.present, f.laterality))
        if f.present and f.zone is not None:
            out["zone"].add((f.condition, f.zone))
        if f.present and f.severity is not None:
            out["severity"].add((f.condition, f.severity))
    out["uncertain"] = {(c,) for c in uncertain}
    return out


@dataclass(frozen=True)
class GoldSentence:
    """A hand-labelled report text: its findings, hedged conditions and tags."""

    text: str
    category: str
    vocabulary: str
    findings: tuple[Finding, ...]
    uncertain: frozenset[str] = frozenset()


def load_gold(path: str | Path) -> list[GoldSentence]:
    """Read a gold set: YAML with a ``sentences`` list of ``text``, ``category``,
    ``vocabulary`` (``ontology`` or ``outside``), ``findings`` (Finding fields) and an
    optional ``uncertain`` list. Raises ``DataError`` naming the file, entry and value
    when an entry is malformed or its findings are not Study-valid."""
    raw = yaml.safe_load(Path(path).read_text("utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("sentences"), list):
        raise DataError(f"{path}: expected a mapping with a 'sentences' list")
    out = []
    for i, entry in enumerate(raw["sentences"]):
        where = f"{path}: sentence {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            raise DataError(f"{where}: needs a 'text' string, got {entry!r}")
        if entry.get("vocabulary") not in ("ontology", "outside"):
            raise DataError(
                f"{where}: vocabulary must be 'ontology' or 'outside', "
                f"got {entry.get('vocabulary')!r}"
            )
        try:
            found = tuple(Finding.from_dict(f) for f in entry.get("findings") or [])
            Study(f"gold{i}", "gold", found)
        except RecordError as exc:
            raise DataError(f"{where} ({entry['text']!r}): {exc}") from None
        out.append(
            GoldSentence(
                entry["text"],
                str(entry.get("category", "")),
                entry["vocabulary"],
                found,
                frozenset(entry.get("uncertain") or []),
            )
        )
    return out


def judge_by_study(truth: Iterable[Finding]) -> Callable[[str, Fact], bool]:
    """Whether a fact of a kind is true of a study whose ``truth`` findings are complete:
    existence as ``Study.label``; an absence on a side when no present finding of the
    condition covers that side; a present side, zone or severity when a present finding of
    the condition has it. An ``uncertain`` fact is never true (a complete truth has no
    hedge)."""
    truth = list(truth)
    present = [f for f in truth if f.present]

    def lungs(side: str | None) -> set[str]:
        return {"left", "right"} if side in (None, "bilateral") else {str(side)}

    def judge(kind: str, fact: Fact) -> bool:
        condition = fact[0]
        mine = [f for f in present if f.condition == condition]
        if kind in ("existence", "present", "absent"):
            return bool(mine) == fact[1]
        if kind == "laterality":
            if fact[1]:
                return any(f.laterality == fact[2] for f in mine)
            return not any(lungs(f.laterality) & lungs(fact[2]) for f in mine)
        if kind in ("zone", "severity"):
            return any(getattr(f, kind) == fact[1] for f in mine)
        return False

    return judge


@dataclass
class Tally:
    """Per-text counts of one fact kind: true extracted facts of all extracted, and
    extracted stated facts of all stated. ``misses``/``false`` keep examples."""

    true_pred: list[int] = field(default_factory=list)
    n_pred: list[int] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    n_stated: list[int] = field(default_factory=list)
    false: list[tuple[str, Fact]] = field(default_factory=list)
    misses: list[tuple[str, Fact]] = field(default_factory=list)

    def add(
        self,
        text: str,
        predicted: set[Fact],
        stated: set[Fact],
        is_true: Callable[[Fact], bool],
    ) -> None:
        """Count one text's facts of this kind."""
        wrong = sorted((f for f in predicted if not is_true(f)), key=repr)
        missed = sorted(stated - predicted, key=repr)
        self.true_pred.append(len(predicted) - len(wrong))
        self.n_pred.append(len(predicted))
        self.found.append(len(stated) - len(missed))
        self.n_stated.append(len(stated))
        self.false += [(text, f) for f in wrong]
        self.misses += [(text, f) for f in missed]

    def precision(self) -> Estimate:
        """True extracted facts / extracted facts, texts as clusters."""
        return _pooled(self.true_pred, self.n_pred)

    def recall(self) -> Estimate:
        """Extracted stated facts / stated facts, texts as clusters."""
        return _pooled(self.found, self.n_stated)


def _pooled(successes: list[int], trials: list[int]) -> Estimate:
    kept = [(k, n) for k, n in zip(successes, trials, strict=True) if n > 0]
    if not kept:
        return Estimate.empty("wilson")
    k, n = zip(*kept, strict=True)
    return proportion(list(k), list(n))


def score_gold(
    predictions: Iterable[tuple[tuple[Finding, ...], Iterable[str]]],
    gold: Iterable[GoldSentence],
) -> dict[str, Tally]:
    """``{kind: Tally}`` of predicted ``(findings, uncertain conditions)`` per gold text."""
    tallies = {k: Tally() for k in FACT_KINDS}
    for (found, hedged), sentence in zip(predictions, gold, strict=True):
        pred = facts(found, hedged)
        want = facts(sentence.findings, sentence.uncertain)
        for kind, tally in tallies.items():
            tally.add(sentence.text, pred[kind], want[kind], want[kind].__contains__)
    return tallies


__all__ = [
    "FACT_KINDS",
    "GoldSentence",
    "Tally",
    "facts",
    "judge_by_study",
    "load_gold",
    "score_gold",
]
