"""Measure the polarity checker against hand-labelled reference sentences.

A reference file is YAML with a top-level ``sentences`` list; each entry has

- ``text``: one or more sentences of report language;
- ``category``: the cue behaviour it exercises (``list_negation``, ``uncertainty``, ...);
- ``expect``: ``{condition id: verdict}`` for every condition the text mentions, with the
  verdict one of ``negated``, ``affirmed``, ``uncertain``.

mechtune ships one such file as a test fixture (``tests/data/fixtures/negation_scope.yaml``)
and ``experiments/polarity_checker_accuracy.py`` prints the checker's per-category accuracy
on it. A mention is right when every entity the checker finds for its condition carries
the expected verdict; a condition the checker does not find is wrong ("not found").
Accuracies carry a 95% Wilson score interval (``scipy.stats.binomtest``, Wilson 1927).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from scipy.stats import binomtest

from mechtune.data.ontology import load_ontology
from mechtune.data.polarity_check import VERDICTS
from mechtune.errors import DataError


class VerdictReader(Protocol):
    """Anything with ``read(text) -> {condition: [verdict, ...]}`` (a ``PolarityChecker``)."""

    def read(self, text: str) -> dict[str, list[str]]: ...


@dataclass(frozen=True)
class ReferenceSentence:
    """A hand-labelled sentence: its text, cue category, and each mention's verdict."""

    text: str
    category: str
    expected: Mapping[str, str]


@dataclass(frozen=True)
class MentionResult:
    """One labelled mention as the checker read it. ``detected`` is a verdict, ``mixed``
    (a condition named twice with different verdicts) or ``not found``."""

    text: str
    category: str
    condition: str
    expected: str
    detected: str

    @property
    def correct(self) -> bool:
        """Whether the checker's verdict is the expected one."""
        return self.detected == self.expected


@dataclass
class CategoryAccuracy:
    """Mention- and sentence-level accuracy of one cue category."""

    category: str
    sentences: int = 0
    sentences_right: int = 0
    mentions: int = 0
    mentions_right: int = 0
    wrong: list[MentionResult] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Right mentions over mentions; 0.0 when there is none."""
        return self.mentions_right / self.mentions if self.mentions else 0.0

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Wilson score interval of ``accuracy`` (scipy ``binomtest(...).proportion_ci``)."""
        if not self.mentions:
            return (0.0, 1.0)
        ci = binomtest(self.mentions_right, self.mentions).proportion_ci(
            confidence_level=confidence, method="wilson"
        )
        return (float(ci.low), float(ci.high))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the accuracy, its interval and the wrong mentions."""
        low, high = self.interval()
        return {
            "category": self.category,
            "sentences": self.sentences,
            "sentences_right": self.sentences_right,
            "mentions": self.mentions,
            "mentions_right": self.mentions_right,
            "accuracy": self.accuracy,
            "ci95": [low, high],
            "wrong": [
                {
                    "text": w.text,
                    "condition": w.condition,
                    "expected": w.expected,
                    "got": w.detected,
                }
                for w in self.wrong
            ],
        }


def _fail(path: Path, row: int | None, message: str) -> DataError:
    where = f"{path}" if row is None else f"{path}: sentence {row}"
    return DataError(f"{where}: {message}")


def load_reference_sentences(path: str | Path) -> list[ReferenceSentence]:
    """Read and validate a reference file (format in the module docstring).

    Raises ``DataError`` naming the file, the sentence's index and the bad key or value:
    a missing key, an empty text or category, an unknown condition id, a verdict outside
    ``VERDICTS``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(path, None, f"cannot read reference sentences: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise _fail(path, None, "expected a mapping with a 'sentences' list")
    known = {c.id for c in load_ontology().conditions}
    out = []
    for i, entry in enumerate(data["sentences"]):
        if not isinstance(entry, dict):
            raise _fail(path, i, f"expected a mapping, got {entry!r}")
        for key in ("text", "category", "expect"):
            if key not in entry:
                raise _fail(path, i, f"missing key {key!r}")
        text, category, expect = entry["text"], entry["category"], entry["expect"]
        if not isinstance(text, str) or not text.strip():
            raise _fail(path, i, f"'text' must be a non-empty string, got {text!r}")
        if not isinstance(category, str) or not category.strip():
            raise _fail(path, i, f"'category' must be a non-empty string, got {category!r}")
        if not isinstance(expect, dict) or not expect:
            raise _fail(path, i, f"'expect' must be a non-empty mapping, got {expect!r}")
        for cond, verdict in expect.items():
            if cond not in known:
                raise _fail(path, i, f"unknown condition {cond!r} in 'expect'")
            if verdict not in VERDICTS:
                raise _fail(
                    path, i, f"verdict of {cond!r} must be one of {VERDICTS}, got {verdict!r}"
                )
        out.append(ReferenceSentence(text, category, dict(expect)))
    return out


def _detected(verdicts: list[str] | None) -> str:
    if not verdicts:
        return "not found"
    return verdicts[0] if len(set(verdicts)) == 1 else "mixed"


def score_reference(
    checker: VerdictReader, sentences: Iterable[ReferenceSentence]
) -> list[MentionResult]:
    """Read every sentence with ``checker`` and compare each labelled mention."""
    results = []
    for sentence in sentences:
        found = checker.read(sentence.text)
        for cond, want in sentence.expected.items():
            results.append(
                MentionResult(
                    sentence.text, sentence.category, cond, want, _detected(found.get(cond))
                )
            )
    return results


def accuracy_by_category(results: Iterable[MentionResult]) -> dict[str, CategoryAccuracy]:
    """Per-category accuracy (in first-seen order), plus ``"all"`` over every mention."""
    table: dict[str, CategoryAccuracy] = {}
    sentence_ok: dict[tuple[str, str], bool] = {}
    for r in results:
        for key in (r.category, "all"):
            acc = table.setdefault(key, CategoryAccuracy(key))
            acc.mentions += 1
            acc.mentions_right += r.correct
            if not r.correct:
                acc.wrong.append(r)
        sentence_ok[(r.category, r.text)] = (
            sentence_ok.get((r.category, r.text), True) and r.correct
        )
    for (category, _), ok in sentence_ok.items():
        for key in (category, "all"):
            table[key].sentences += 1
            table[key].sentences_right += ok
    table["all"] = table.pop("all", CategoryAccuracy("all"))
    return table


__all__ = [
    "CategoryAccuracy",
    "MentionResult",
    "ReferenceSentence",
    "VerdictReader",
    "accuracy_by_category",
    "load_reference_sentences",
    "score_reference",
]
