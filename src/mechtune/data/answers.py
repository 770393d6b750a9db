"""Yes/no answers already given to paraphrase groups, the input of the PSF-Med metrics.

An :class:`AnswerGroup` is one original question about a study, the model's answer to it,
and its answers to the question's paraphrases (PSF-Med, arXiv 2602.21428). Groups come
from two places, so that model output and published records go through the same metric
code (``mechtune.eval.consistency``):

- :func:`read_answer_records` reads recorded answers, one (group, variant) per CSV row or
  JSON record. The defaults fit the MedGemma answers of UNHSAILLab/lvlm-interpret-medgemma
  (``results/question_phrasing_results/phrasing_analysis.csv``);
- :func:`answers_from_margins` turns a model's margins on :class:`ParaphraseSet` records
  into groups (margin > 0 means yes).

Errors follow :mod:`mechtune.data.importers`: a bad row raises :class:`DataFormatError`
naming file, row, column and value; with ``skip_bad=True`` it is skipped and counted under
a reason in the report. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mechtune.data.importers import (
    DataFormatError,
    ImportReport,
    _At,
    _decoded,
    _records,
    csv_dict_rows,
)
from mechtune.data.schema import ParaphraseSet, RecordError
from mechtune.errors import ConfigError, DataError

YES_NO: dict[str, bool] = {"yes": True, "no": False}
HELD_OUT, IN_DISTRIBUTION = "held-out", "in-distribution"
_TRAILING = " \t\r\n.!?,;:"
_CSV_SUFFIXES = (".csv",)
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


def parse_yes_no(text: str) -> bool | None:
    """``"yes"``/``"no"`` in any case, with surrounding whitespace and trailing punctuation
    (``" Yes."``) -> True/False; anything else -> None."""
    return YES_NO.get(text.strip().rstrip(_TRAILING).lower())


class AnswerVariant(NamedTuple):
    """The answer to one paraphrase (or to a repeat of the original question).

    ``strategy`` is the rewriting strategy as the source names it; ``family`` the phrasing
    family id, when known. ``margin`` is logit(yes) - logit(no), when known.
    """

    question: str
    strategy: str
    answer: bool
    margin: float | None = None
    family: str | None = None


def _check_margin(where: str, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError(f"{where}: {name} must be a finite number or None, got {value!r}")


@dataclass(frozen=True)
class AnswerGroup:
    """An original question, its answer, and the answers to its variants.

    ``ground_truth`` is the correct answer (None when unknown); every variant shares it,
    since paraphrases preserve meaning.
    """

    group_id: str
    study_id: str
    original_question: str
    original_answer: bool
    original_margin: float | None
    ground_truth: bool | None
    variants: tuple[AnswerVariant, ...]

    def __post_init__(self) -> None:
        where = f"AnswerGroup({self.group_id!r})"
        for name in ("group_id", "study_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise RecordError(f"{where}: {name} must be a non-empty string")
        if not isinstance(self.original_question, str) or not self.original_question.strip():
            raise RecordError(f"{where}: empty original_question")
        if not isinstance(self.original_answer, bool):
            raise RecordError(
                f"{where}: original_answer must be bool, got {self.original_answer!r}"
            )
        if self.ground_truth is not None and not isinstance(self.ground_truth, bool):
            raise RecordError(
                f"{where}: ground_truth must be bool or None, got {self.ground_truth!r}"
            )
        _check_margin(where, "original_margin", self.original_margin)
        variants = tuple(
            v if isinstance(v, AnswerVariant) else AnswerVariant(*v) for v in self.variants
        )
        object.__setattr__(self, "variants", variants)
        if not variants:
            raise RecordError(f"{where}: needs at least one variant")
        for i, v in enumerate(variants):
            if not isinstance(v.answer, bool):
                raise RecordError(f"{where}: variant {i} answer must be bool, got {v.answer!r}")
            _check_margin(where, f"variant {i} margin", v.margin)

    @property
    def answers(self) -> tuple[bool, ...]:
        """All answers, the original first."""
        return (self.original_answer, *(v.answer for v in self.variants))

    @property
    def margins(self) -> tuple[float | None, ...]:
        """All margins, the original first."""
        return (self.original_margin, *(v.margin for v in self.variants))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy; variants become objects with named fields."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "variants"}
        out["variants"] = [v._asdict() for v in self.variants]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnswerGroup:
        """Inverse of :meth:`to_dict`."""
        try:
            variants = tuple(AnswerVariant(**v) for v in data["variants"])
            return cls(**{**data, "variants": variants})
        except (KeyError, TypeError) as exc:
            raise RecordError(f"AnswerGroup: {exc!r}") from None


# -- recorded answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerColumns:
    """Where :func:`read_answer_records` finds each field. Defaults: the MedGemma file.

    ``group`` columns together identify a group (and make its ``group_id``, joined by
    ``" | "``); a row whose ``strategy`` equals ``original`` (any case) is the original
    question. An optional column set to None is not read.
    """

    group: tuple[str, ...] = ("study_id", "baseline_question")
    study: str = "study_id"
    question: str = "question"
    strategy: str = "strategy"
    original: str = "baseline"
    answer: str = "extracted_answer"
    ground_truth: str | None = "ground_truth"
    variant_index: str | None = "variant_index"
    margin: str | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "group", tuple(self.group))
        if not self.group:
            raise ConfigError("AnswerColumns.group needs at least one column")
        for name in self.required() + self.optional():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"AnswerColumns: column names must be non-empty; got {name!r}")
        if not self.original.strip():
            raise ConfigError("AnswerColumns.original must be a non-empty strategy value")

    def required(self) -> tuple[str, ...]:
        return (*self.group, self.study, self.question, self.strategy, self.answer)

    def optional(self) -> tuple[str, ...]:
        names = (self.ground_truth, self.variant_index, self.margin, self.family)
        return tuple(n for n in names if n is not None)


@dataclass
class AnswerReport(ImportReport):
    """An :class:`ImportReport` (rows, per reason) plus groups kept and skipped.

    Every row read is kept or counted once: ``rows_read == rows_kept + sum(skipped)``.
    """

    groups_kept: int = 0
    groups_skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    at: _At
    key: tuple[str, ...]
    study: str
    question: str
    strategy: str
    answer: bool
    truth: bool | None
    index: int | None
    margin: float | None
    family: str | None


def _cell(at: _At, record: Mapping[str, Any], column: str, *, required: bool = True) -> str:
    """The text of a field; missing or (when required) empty raises."""
    if column not in record:
        raise at.err(column, None, f"missing field {column!r}", "malformed")
    value = record[column]
    if value is None:
        value = ""
    if isinstance(value, dict | list):
        raise at.err(column, value, "value is not a scalar", "malformed")
    text = str(value).strip()
    if required and not text:
        raise at.err(column, value, "empty value", "missing_value")
    return text


def _row(at: _At, record: Any, cols: AnswerColumns) -> _Row:
    if not isinstance(record, Mapping):
        raise at.err(None, type(record).__name__, "record is not an object", "malformed")
    key = tuple(_cell(at, record, c) for c in cols.group)
    raw_answer = record.get(cols.answer)
    answer = parse_yes_no(_cell(at, record, cols.answer))
    if answer is None:  # JSON true/false too: only yes/no is an answer
        raise at.err(cols.answer, raw_answer, "answer is not yes or no", "bad_answer")
    truth: bool | None = None
    if cols.ground_truth is not None:
        text = _cell(at, record, cols.ground_truth, required=False)
        truth = parse_yes_no(text) if text else None
        if text and truth is None:
            value = record[cols.ground_truth]
            raise at.err(
                cols.ground_truth, value, "ground truth is not yes, no or empty", "bad_ground_truth"
            )
    index: int | None = None
    if cols.variant_index is not None:
        value = record.get(cols.variant_index)
        text = _cell(at, record, cols.variant_index)
        if not (text.isascii() and text.isdigit()):
            raise at.err(
                cols.variant_index,
                value,
                "variant index is not a non-negative integer",
                "bad_variant_index",
            )
        index = int(text)
    margin: float | None = None
    if cols.margin is not None:
        value = record.get(cols.margin)
        text = _cell(at, record, cols.margin, required=False)
        if text:
            try:
                margin = float(text)
            except ValueError:
                margin = math.nan
            if not math.isfinite(margin):
                raise at.err(cols.margin, value, "margin is not a finite number", "bad_margin")
    family = None
    if cols.family is not None:
        family = _cell(at, record, cols.family, required=False) or None
    return _Row(
        at=at,
        key=key,
        study=_cell(at, record, cols.study),
        question=_cell(at, record, cols.question),
        strategy=_cell(at, record, cols.strategy),
        answer=answer,
        truth=truth,
        index=index,
        margin=margin,
        family=family,
    )


def _csv_records(path: str, cols: AnswerColumns) -> Iterator[tuple[_At, Any]]:
    """CSV rows as (position, {column: text}); the header must hold every column."""
    with open(path, "rb") as fh:
        reader = csv.reader(_decoded(path, fh))
        at = _At(path, 1)
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as exc:
            raise at.err(None, None, f"unreadable header ({exc})", "malformed") from None
        for column in header:
            if column and header.count(column) > 1:
                raise at.err(column, column, "duplicate column", "malformed")
        for column in (*cols.required(), *cols.optional()):
            if column not in header:
                raise at.err(
                    column, ",".join(header)[:120], f"header lacks column {column!r}", "malformed"
                )
        yield from csv_dict_rows(path, reader, header)


class _GroupDropped(Exception):
    """A problem with a whole group: ``error`` names its first row; ``rows`` are dropped."""

    def __init__(self, error: DataFormatError, rows: int) -> None:
        super().__init__(str(error))
        self.error, self.rows = error, rows


def _group(
    rows: list[_Row], cols: AnswerColumns, fail: Callable[[DataFormatError], None]
) -> AnswerGroup:
    """Assemble one group from its rows in file order. ``fail`` raises or counts a bad
    row; a problem with the whole group raises :class:`_GroupDropped`."""
    is_original = [r.strategy.casefold() == cols.original.casefold() for r in rows]
    if not any(is_original):
        first = rows[0]
        problem = (
            f"group {' | '.join(first.key)!r} has no original row "
            f"({cols.strategy} = {cols.original!r})"
        )
        raise _GroupDropped(
            first.at.err(cols.strategy, first.strategy, problem, "no_original"), len(rows)
        )
    first_original = rows[is_original.index(True)]
    kept: list[_Row] = []
    seen: set[tuple[int, int]] = set()
    originals_seen = 0
    for row, original in zip(rows, is_original, strict=True):
        # A file may hold several runs of a group, each starting at a repeated original;
        # variant indexes must be unique within a run.
        originals_seen += original
        run = max(originals_seen - 1, 0)
        if row.index is not None:
            if (run, row.index) in seen:
                problem = f"duplicate variant index {row.index} in group {' | '.join(row.key)!r}"
                fail(row.at.err(cols.variant_index, row.index, problem, "duplicate_variant_index"))
                continue
            seen.add((run, row.index))
        if row.truth != first_original.truth:
            problem = f"ground truth {row.truth} differs from the group's {first_original.truth}"
            fail(row.at.err(cols.ground_truth, row.truth, problem, "conflicting_ground_truth"))
            continue
        if original and row.question != first_original.question:
            problem = f"repeated original asks {row.question!r}, not {first_original.question!r}"
            fail(row.at.err(cols.question, row.question, problem, "original_mismatch"))
            continue
        if row is not first_original and row.study != first_original.study:
            problem = f"study {row.study!r} differs from the group's {first_original.study!r}"
            fail(row.at.err(cols.study, row.study, problem, "conflicting_study"))
            continue
        kept.append(row)
    variants = [r for r in kept if r is not first_original]
    if not variants:
        problem = f"group {' | '.join(first_original.key)!r} has no variant rows"
        error = first_original.at.err(None, first_original.question, problem, "no_variants")
        raise _GroupDropped(error, len(kept))
    return AnswerGroup(
        group_id=" | ".join(first_original.key),
        study_id=first_original.study,
        original_question=first_original.question,
        original_answer=first_original.answer,
        original_margin=first_original.margin,
        ground_truth=first_original.truth,
        # A repeated original stays as a variant (strategy = the original marker): its
        # answer is one of the group's answers, as the source's summary counts it.
        variants=tuple(
            AnswerVariant(r.question, r.strategy, r.answer, r.margin, r.family) for r in variants
        ),
    )


def read_answer_records(
    path: str | Path,
    *,
    columns: AnswerColumns | None = None,
    skip_bad: bool = False,
    kind: str | None = None,
) -> tuple[list[AnswerGroup], AnswerReport]:
    """Read recorded answers, one (group, variant) per row, into groups (file order).

    ``kind`` is ``"csv"`` or ``"jsonl"`` (JSON Lines or a JSON array); by default it
    follows the suffix. Answers are yes/no in any case, with surrounding whitespace and
    trailing punctuation allowed; ground truth likewise, or empty for unknown. Rows of a
    group need not be adjacent. Each group needs one original row; the first is the
    original, and any repeat of it (a second run of the group) is kept as a variant.

    Problems and the reasons they are counted under with ``skip_bad``: unreadable or
    short rows and missing fields (``malformed``), empty values (``missing_value``),
    ``bad_answer``, ``bad_ground_truth``, ``bad_variant_index``, ``bad_margin``; within a
    group, ``duplicate_variant_index`` (within a run), ``conflicting_ground_truth``,
    ``conflicting_study``, ``original_mismatch`` (a repeated original that asks another
    question), and, for all its rows, ``no_original`` and ``no_variants``.
    """
    cols = columns or AnswerColumns()
    name = str(path)
    if kind is None:
        suffix = Path(name).suffix.lower()
        kind = "csv" if suffix in _CSV_SUFFIXES else "jsonl" if suffix in _JSON_SUFFIXES else None
        if kind is None:
            raise DataError(
                f"{name}: cannot tell the format from the suffix; pass kind='csv' or 'jsonl'"
            )
    if kind not in ("csv", "jsonl"):
        raise DataError(f"kind must be 'csv' or 'jsonl'; got {kind!r}")
    report = AnswerReport(name)

    def fail(error: DataFormatError) -> None:
        if not skip_bad:
            raise error
        report.skip(error)

    records = _csv_records(name, cols) if kind == "csv" else _records(name)
    by_group: dict[tuple[str, ...], list[_Row]] = {}
    for at, record in records:
        report.rows_read += 1
        try:
            if isinstance(record, DataFormatError):
                raise record
            row = _row(at, record, cols)
        except DataFormatError as err:
            fail(err)
            continue
        by_group.setdefault(row.key, []).append(row)
    groups: list[AnswerGroup] = []
    for rows in by_group.values():
        try:
            group = _group(rows, cols, fail)
        except _GroupDropped as dropped:
            fail(dropped.error)
            # One message per group, but every row it drops is counted.
            reason = dropped.error.reason
            report.skipped[reason] += dropped.rows - 1
            report.groups_skipped[reason] = report.groups_skipped.get(reason, 0) + 1
            continue
        groups.append(group)
        report.rows_kept += 1 + len(group.variants)
    report.groups_kept = len(groups)
    return groups, report


# -- model output -------------------------------------------------------------------------


def answers_from_margins(
    sets: Sequence[ParaphraseSet], margins: Iterable[Iterable[float]]
) -> list[AnswerGroup]:
    """Groups from a model's margins: ``margins[i]`` holds set i's margins, ``[1 + P_i]``,
    the original question first, then its paraphrases in order.

    The answer is yes when the margin is > 0 (a tie is no). Ground truth is the set's
    ``answer``; variants carry the set's strategies and family ids.
    """
    per_set = [[float(m) for m in row] for row in margins]
    if len(per_set) != len(sets):
        raise DataError(f"{len(sets)} paraphrase sets but margins for {len(per_set)}")
    groups = []
    for s, values in zip(sets, per_set, strict=True):
        if len(values) != 1 + len(s.paraphrases):
            raise DataError(
                f"ParaphraseSet({s.question_id!r}): {len(values)} margins for the question "
                f"and {len(s.paraphrases)} paraphrases (expected {1 + len(s.paraphrases)})"
            )
        if not all(math.isfinite(m) for m in values):
            raise DataError(f"ParaphraseSet({s.question_id!r}): non-finite margin in {values}")
        families: Sequence[str | None] = s.families or (None,) * len(s.paraphrases)
        variants = tuple(
            AnswerVariant(text, strategy, m > 0, m, family)
            for text, strategy, m, family in zip(
                s.paraphrases, s.strategies, values[1:], families, strict=True
            )
        )
        groups.append(
            AnswerGroup(
                group_id=s.question_id,
                study_id=s.study_id,
                original_question=s.question,
                original_answer=values[0] > 0,
                original_margin=values[0],
                ground_truth=s.answer,
                variants=variants,
            )
        )
    return groups


def family_labels(sets: Iterable[ParaphraseSet]) -> dict[str, str]:
    """Family id -> ``"held-out"`` or ``"in-distribution"``, from the sets' ``heldout_family``
    flags: the ``labels`` mapping for a per-family consistency summary."""
    out: dict[str, str] = {}
    for s in sets:
        for family, heldout in zip(s.families, s.heldout_family, strict=False):
            label = HELD_OUT if heldout else IN_DISTRIBUTION
            if out.setdefault(family, label) != label:
                raise DataError(f"family {family!r} is marked both held-out and not")
    return out


__all__ = [
    "HELD_OUT",
    "IN_DISTRIBUTION",
    "YES_NO",
    "AnswerColumns",
    "AnswerGroup",
    "AnswerReport",
    "AnswerVariant",
    "answers_from_margins",
    "family_labels",
    "parse_yes_no",
    "read_answer_records",
]
