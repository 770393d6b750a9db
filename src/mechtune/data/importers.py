"""Importers for the real formats users have.

- CheXpert / MIMIC-CXR-JPG label CSVs (``mimic-cxr-2.0.0-chexpert.csv``, CheXpert
  ``train.csv``/``valid.csv``): 1.0 present, 0.0 absent, -1.0 uncertain, blank not mentioned;
- the NAST (MedNega-CXR) benchmark records (arXiv 2602.12498);
- PSF-Med style paraphrase records (arXiv 2602.21428).

A bad row raises :class:`DataFormatError` naming the file, the line (or record), the
column and the value. With ``skip_bad=True`` the row is skipped instead and counted under
a reason in the :class:`ImportReport`: nothing is dropped silently. Problems with the
file as a whole (its header, invalid JSON in an array) always raise.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from mechtune.data.ontology import PARAPHRASE_STRATEGIES, load_ontology
from mechtune.data.schema import Finding, MCQPair, ParaphraseSet, RecordError, Study
from mechtune.errors import DataError

T = TypeVar("T")
UNCERTAIN_POLICIES: tuple[str, ...] = ("skip", "present", "absent")
MIMIC_META: tuple[str, ...] = ("subject_id", "study_id")
CHEXPERT_META: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
LABEL_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}
MAX_ERRORS_KEPT = 10
IMAGE_FIELDS: tuple[str, ...] = ("image_ref", "image", "image_path", "dicom_id")
ANSWERS = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}
# Cues that turn "Is there X?" into a question whose "yes" means absence (see
# read_psf_records), and answer-format phrases that contain "no"/"not" but are no cue.
POLARITY_CUES = re.compile(
    r"\b(no|not|without|absen(?:t|ce)|free\s+of|exclud(?:e|ed|es|ing)|rul(?:e|ed|es|ing)\s+out"
    r"|negative\s+for|normal)\b",
    re.IGNORECASE,
)
_NOT_CUES = re.compile(r"\byes\s*(?:or|/)\s*no\b|\bor\s+not\b", re.IGNORECASE)
_PATIENT_RE = re.compile(r"patient\d+")
_DIGITS_RE = re.compile(r"[0-9]+")


class DataFormatError(DataError):
    """A row of an input file is bad. The message names file, row, column and value.

    ``row`` is the 1-based line (CSV, JSONL) or record number (JSON array: ``unit`` is
    ``"record"``); ``reason`` is the key the row is counted under when skipped.
    """

    def __init__(
        self,
        path: str | Path,
        row: int,
        column: str | None,
        value: Any,
        problem: str,
        *,
        unit: str = "line",
        reason: str = "invalid_record",
    ) -> None:
        self.path, self.row, self.column, self.value = str(path), row, column, value
        self.problem, self.unit, self.reason = problem, unit, reason
        where = f"{self.path}, {unit} {row}" + (f", column {column!r}" if column else "")
        shown = "" if repr(value) in problem else f" (value {value!r})"
        super().__init__(f"{where}: {problem}{shown}")


@dataclass(frozen=True)
class _At:
    """A position in a file, to build the DataFormatError for it."""

    path: str
    row: int
    unit: str = "line"

    def err(
        self, column: str | None, value: Any, problem: str, reason: str = "invalid_record"
    ) -> DataFormatError:
        return DataFormatError(
            self.path, self.row, column, value, problem, unit=self.unit, reason=reason
        )


@dataclass
class ImportReport:
    """What an import read, kept, and skipped (reason -> count)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    uncertain_labels: int = 0
    uncertain_policy: str | None = None
    first_errors: list[str] = field(default_factory=list)

    def skip(self, error: DataFormatError) -> None:
        """Count a skipped row under its reason and keep its message (the first ten)."""
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(str(error))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


def _gather(
    report: ImportReport,
    skip_bad: bool,
    rows: Iterable[tuple[_At, Any]],
    build: Callable[[_At, Any], T],
    ident: Callable[[T], tuple[str, str]],
) -> list[T]:
    """Build one item per row (a raw row may be a DataFormatError), check ids are unique,
    and raise or, with ``skip_bad``, skip and count bad rows."""
    out: list[T] = []
    seen: set[str] = set()
    for at, raw in rows:
        report.rows_read += 1
        try:
            if isinstance(raw, DataFormatError):
                raise raw
            item = build(at, raw)
            column, key = ident(item)
            if key in seen:
                raise at.err(column, key, "duplicate id", "duplicate_id")
        except DataFormatError as err:
            if not skip_bad:
                raise
            report.skip(err)
            continue
        seen.add(key)
        out.append(item)
        report.rows_kept += 1
    return out


# -- label CSVs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _LabelSpec:
    kind: str  # "mimic", "chexpert" or "manifest"
    width: int
    meta: dict[str, int]  # non-label column -> field index
    labels: tuple[tuple[int, str], ...]  # (field index, column)
    policy: int | None  # what a -1 label becomes
    findings: dict[tuple[str, bool], Finding]


@dataclass(frozen=True)
class LabelRow:
    """One row of a label table: where it is, the study it gives, how many of its labels
    were -1.0 (uncertain, before the policy), and its non-label columns by name."""

    at: _At
    study: Study
    n_uncertain: int
    meta: dict[str, str]


def _label_spec(
    at: _At, header: list[str], uncertain: str, meta: tuple[str, ...] | None = None
) -> _LabelSpec:
    """Detect the format from the header; every other column must be a condition column.

    With ``meta`` (a manifest's own columns, in any order) the kind is ``manifest`` and a
    header may have no condition column at all.
    """
    onto = load_ontology()
    if meta is not None:
        kind = "manifest"
    elif header[:2] == list(MIMIC_META):
        kind, meta = "mimic", MIMIC_META
    elif header[:1] == ["Path"]:
        kind, meta = "chexpert", CHEXPERT_META
    else:
        problem = "header is neither MIMIC-CXR-JPG (subject_id,study_id,...) nor CheXpert (Path)"
        raise at.err(None, ",".join(header[:3]), problem, "malformed")
    for column in header:
        if header.count(column) > 1:
            raise at.err(column, column, "duplicate column", "malformed")
        if column not in meta and (
            not onto.has_condition(column) or onto.condition(column).column != column
        ):
            problem = f"unknown condition column {column!r}"
            if kind == "manifest":
                problem += f" (a manifest's other columns are {', '.join(meta)})"
            raise at.err(column, column, problem, "malformed")
    labels = tuple((i, c) for i, c in enumerate(header) if c not in meta)
    if not labels and kind != "manifest":
        raise at.err(None, ",".join(header), "header has no condition columns", "malformed")
    return _LabelSpec(
        kind=kind,
        width=len(header),
        meta={c: i for i, c in enumerate(header) if c in meta},
        labels=labels,
        policy={"skip": None, "present": 1, "absent": 0}[uncertain],
        # Findings are frozen, so the 2 x 14 possible ones are built once and shared.
        findings={(c.column, v): Finding(c.id, v) for c in onto.conditions for v in (True, False)},
    )


def _findings(spec: _LabelSpec, at: _At, row: list[str]) -> tuple[tuple[Finding, ...], int]:
    """The condition columns of one row -> (findings, number of -1.0 labels).

    Values: 1.0/1 present, 0.0/0 absent, -1.0/-1 uncertain (then the policy), blank not
    mentioned; anything else raises (reason ``bad_label``) naming the column and value.
    """
    findings: list[Finding] = []
    n_uncertain = 0
    for i, column in spec.labels:
        raw = row[i].strip()
        if raw not in LABEL_VALUES:
            problem = f"label {raw!r} is not one of 1.0, 0.0, -1.0 or blank"
            raise at.err(column, raw, problem, "bad_label")
        label = LABEL_VALUES[raw]
        if label == -1:
            n_uncertain += 1
            label = spec.policy
        if label is not None:
            findings.append(spec.findings[column, bool(label)])
    return tuple(findings), n_uncertain


def _label_row(spec: _LabelSpec, at: _At, row: list[str]) -> LabelRow:
    """One CSV row -> its LabelRow (study, number of -1.0 labels, metadata columns)."""
    if len(row) != spec.width:
        problem = f"expected {spec.width} fields, got {len(row)}"
        raise at.err(None, ",".join(row)[:80], problem, "malformed")
    image_ref: str | None = None
    if spec.kind == "mimic":
        patient, study_id = row[0].strip(), row[1].strip()
        for column, value in zip(MIMIC_META, (patient, study_id), strict=True):
            if not _DIGITS_RE.fullmatch(value):
                raise at.err(column, value, f"id {value!r} is not an integer", "bad_id")
    else:
        study_id = image_ref = row[0].strip()
        patient = chexpert_patient(at, study_id)
    findings, n_uncertain = _findings(spec, at, row)
    meta = {column: row[i].strip() for column, i in spec.meta.items()}
    try:
        study = Study(study_id, patient, findings, image_ref=image_ref)
    except RecordError as exc:
        raise at.err(None, study_id, str(exc)) from None
    return LabelRow(at, study, n_uncertain, meta)


def chexpert_patient(at: _At, path: str) -> str:
    """The ``patientNNNNN`` component of a CheXpert ``Path`` (reason ``bad_id`` if none)."""
    found = [p for p in re.split(r"[/\\]", path) if _PATIENT_RE.fullmatch(p)]
    if not found:
        problem = f"path {path!r} has no patientNNNNN component"
        raise at.err("Path", path, problem, "bad_id")
    return found[0]


def _open_bytes(path: str | Path) -> IO[bytes]:
    """A file opened for reading as bytes; ``*.gz`` is gunzipped transparently."""
    if str(path).endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _decoded(path: str, fh: Iterable[bytes]) -> Iterator[str]:
    """Lines of a UTF-8 file (BOM stripped); a line that is not UTF-8 names its number."""
    for number, raw in enumerate(fh, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            value = raw[max(exc.start - 8, 0) : exc.end + 8]
            raise _At(path, number).err(None, value, "not UTF-8 text", "malformed") from None


def _csv_rows(path: str, reader: Any) -> Iterator[tuple[_At, Any]]:
    """Non-blank rows with the line each starts on; an unreadable row becomes an error."""
    while True:
        at = _At(path, reader.line_num + 1)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield at, at.err(None, None, f"unreadable CSV row ({exc})", "malformed")
            continue
        if row:  # a blank line is not a row
            yield at, row


def read_label_rows(
    path: str | Path, *, uncertain: str = "skip", skip_bad: bool = False, kind: str | None = None
) -> tuple[list[LabelRow], ImportReport]:
    """Read a CheXpert or MIMIC-CXR-JPG label CSV (plain or ``.gz``) into LabelRows.

    The rows behind :func:`read_label_csv`, with their positions and non-label columns
    (``Frontal/Lateral``, ``AP/PA``, ...), for the image-study readers. ``kind``
    (``"mimic"`` or ``"chexpert"``) makes a header of the other format an error. Raises
    ``DataError`` for an unknown ``uncertain`` policy and :class:`DataFormatError` for a
    bad header, or a bad row without ``skip_bad``.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        allowed = ", ".join(UNCERTAIN_POLICIES)
        raise DataError(f"uncertain must be one of {allowed}; got {uncertain!r}")
    name = str(path)
    report = ImportReport(name, uncertain_policy=uncertain)
    with _open_bytes(path) as fh:
        reader = csv.reader(_decoded(name, fh))
        at = _At(name, 1)
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as exc:
            raise at.err(None, None, f"unreadable header ({exc})", "malformed") from None
        spec = _label_spec(at, header, uncertain)
        if kind is not None and spec.kind != kind:
            wanted = "subject_id,study_id,..." if kind == "mimic" else "Path,..."
            problem = f"expected a {kind} label header ({wanted}), found a {spec.kind} one"
            raise at.err(None, ",".join(header[:3]), problem, "malformed")
        rows = _csv_rows(name, reader)
        id_column = "study_id" if spec.kind == "mimic" else "Path"
        build = functools.partial(_label_row, spec)
        kept = _gather(report, skip_bad, rows, build, lambda r: (id_column, r.study.study_id))
    report.uncertain_labels = sum(r.n_uncertain for r in kept)
    return kept, report


def csv_dict_rows(
    path: str, reader: Any, header: list[str], *, strip: bool = False
) -> Iterator[tuple[_At, dict[str, str] | DataFormatError]]:
    """The rows after ``header`` as column -> value (stripped if ``strip``); a row of the
    wrong width, or one the csv module cannot parse, is yielded as a ``DataFormatError``
    (reason ``malformed``) for the caller to raise or count."""
    for row_at, row in _csv_rows(path, reader):
        if isinstance(row, DataFormatError):
            yield row_at, row
        elif len(row) != len(header):
            problem = f"expected {len(header)} fields, got {len(row)}"
            yield row_at, row_at.err(None, ",".join(row)[:80], problem, "malformed")
        else:
            yield row_at, {c: (v.strip() if strip else v) for c, v in zip(header, row, strict=True)}


def read_label_csv(
    path: str | Path, *, uncertain: str = "skip", skip_bad: bool = False
) -> tuple[list[Study], ImportReport]:
    """Read a CheXpert or MIMIC-CXR-JPG label CSV (plain or ``.gz``) into studies.

    ``uncertain`` says what a -1.0 label becomes: ``skip`` (not mentioned, U-Ignore),
    ``present`` (U-Ones) or ``absent`` (U-Zeros); the report counts the -1.0 labels of
    the kept rows either way. MIMIC rows are studies (patient = subject_id). CheXpert rows
    are images: study id and image_ref = the ``Path`` value, patient = its ``patientNNNNN``
    component, so the views of a study share a patient and hence a split.
    """
    rows, report = read_label_rows(path, uncertain=uncertain, skip_bad=skip_bad)
    return [r.study for r in rows], report


# -- JSON / JSONL records -----------------------------------------------------------------


def _records(path: str) -> Iterator[tuple[_At, Any]]:
    """Records of a JSON array (numbered by record) or of JSONL (numbered by line);
    ``*.gz`` is gunzipped transparently."""
    with _open_bytes(path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = _At(path, data[: exc.start].count(b"\n") + 1)
        raise at.err(None, data[exc.start : exc.end + 8], "not UTF-8 text", "malformed") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            at = _At(path, exc.lineno)
            snippet = text[exc.pos : exc.pos + 20]
            raise at.err(None, snippet, f"invalid JSON ({exc.msg})", "malformed") from None
        for number, record in enumerate(records, start=1):
            yield _At(path, number, "record"), record
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            at = _At(path, number)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                record = at.err(None, line[:40], f"invalid JSON ({exc.msg})", "malformed")
            yield at, record


class _Fields:
    """Field access for one JSON record; problems raise DataFormatError at its position."""

    def __init__(self, at: _At, record: Any) -> None:
        self.at = at
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise at.err(None, kind, "record is not a JSON object", "malformed")
        self.record: dict[str, Any] = record

    def get(self, name: str) -> Any:
        if name not in self.record:
            raise self.at.err(name, None, f"missing field {name!r}", "malformed")
        return self.record[name]

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or not value.strip():
            raise self.at.err(name, value, "text is empty or not a string")
        return value.strip()

    def ident(self, name: str, default: str | None = None) -> str:
        if default is not None and self.record.get(name) in (None, ""):
            return default
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip():
            raise self.at.err(name, value, "id is not an integer or a non-empty string", "bad_id")
        return str(value).strip()


def _nast_record(at: _At, record: Any) -> MCQPair:
    onto = load_ontology()
    rec = _Fields(at, record)
    subject, study = rec.ident("subject_id"), rec.ident("study_id")
    question = rec.text("question")
    choices: list[dict[str, Any]] = []
    for i in range(1, 5):
        name = f"binary_raw_choice_{i}"
        choice = rec.get(name)
        if not isinstance(choice, dict) or not choice:
            raise at.err(name, choice, "choice is not a non-empty object of labels", "bad_label")
        if choices and set(choice) != set(choices[0]):
            problem = f"conditions {sorted(choice)} differ from choice 1's {sorted(choices[0])}"
            raise at.err(name, sorted(choice), problem, "bad_label")
        for column, value in choice.items():
            if not onto.has_condition(column):
                raise at.err(name, column, f"unknown condition {column!r}", "bad_label")
            if isinstance(value, bool) or value not in (0, 1):
                raise at.err(name, value, f"label of {column!r} is not 0 or 1", "bad_label")
        choices.append(choice)
    columns = list(choices[0])
    conditions = tuple(onto.condition(c).id for c in columns)
    if len(set(conditions)) != len(conditions):
        raise at.err("binary_raw_choice_1", columns, "a condition is named twice", "bad_label")
    negated = tuple(rec.text(f"negation_mcq_choice_{i}") for i in range(1, 5))
    affirmative = tuple(rec.text(f"affirmative_mcq_choice_{i}") for i in range(1, 5))
    answer = rec.get("correct_answer")
    key = "" if isinstance(answer, bool) else str(answer).strip().upper()
    correct = next((o.index(key) for o in ("ABCD", "1234") if len(key) == 1 and key in o), None)
    if not isinstance(answer, int | str) or correct is None:
        raise at.err("correct_answer", answer, "correct_answer is not a letter A-D or 1-4")
    labels = tuple(tuple(int(ch[c]) for c in columns) for ch in choices)
    try:
        return MCQPair(
            mcq_id=f"{subject}-{study}",
            study_id=study,
            patient_id=subject,
            question=question,
            conditions=conditions,
            labels=labels,
            negated_options=negated,
            affirmative_options=affirmative,
            correct_index=correct,
            split="test",
        )
    except RecordError as exc:
        raise at.err("binary_raw_choice_1..4", labels, str(exc)) from None


def read_nast_benchmark(
    path: str | Path, *, skip_bad: bool = False
) -> tuple[list[MCQPair], ImportReport]:
    """Read NAST (MedNega-CXR) benchmark records, a JSON array or JSONL, as test MCQPairs.

    ``binary_raw_choice_i`` maps CheXpert columns to 0/1 (condition order: the keys of
    choice 1); ``correct_answer`` is a letter A-D (any case) or 1-4. The MCQ id is
    ``{subject_id}-{study_id}`` and must be unique.
    """
    report = ImportReport(str(path))
    rows = _records(str(path))
    out = _gather(report, skip_bad, rows, _nast_record, lambda m: ("study_id", m.mcq_id))
    return out, report


def _cues(text: str) -> list[str]:
    found = POLARITY_CUES.findall(_NOT_CUES.sub(" ", text))
    return sorted({" ".join(cue.lower().split()) for cue in found})


def _psf_record(at: _At, record: Any, ordinal: int) -> ParaphraseSet:
    onto = load_ontology()
    rec = _Fields(at, record)
    question = rec.text("question")
    raw = rec.get("paraphrases")
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(x, str) and x.strip() for x in raw)
    ):
        raise at.err("paraphrases", raw, "paraphrases is not a non-empty list of non-empty strings")
    paraphrases = tuple(x.strip() for x in raw)
    raw_answer = rec.get("answer")
    answer = ANSWERS.get(str(raw_answer).strip().lower())
    if answer is None:
        raise at.err("answer", raw_answer, "answer is not yes/no, true/false or 1/0")
    asked = _cues(question)
    for text in paraphrases:
        if " ".join(text.casefold().split()) == " ".join(question.casefold().split()):
            raise at.err("paraphrases", text, "a paraphrase repeats the question")
        cues = _cues(text)
        if bool(cues) != bool(asked):
            problem = (
                f"paraphrase adds polarity-inverting cue(s) {cues} that the question lacks"
                if cues
                else f"paraphrase drops the question's polarity-inverting cue(s) {asked}"
            )
            raise at.err("paraphrases", text, problem, "polarity_inverting")
    condition = rec.record.get("condition")
    if condition is not None:
        if not isinstance(condition, str) or not onto.has_condition(condition):
            raise at.err("condition", condition, f"unknown condition {condition!r}")
        condition = onto.condition(condition).id
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("strategies", "families"):
        value = rec.record.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise at.err(name, value, f"{name} is not a list of strings")
        if value and len(value) != len(paraphrases):
            raise at.err(name, value, f"{len(value)} {name} for {len(paraphrases)} paraphrases")
        lists[name] = tuple(value)
    for strategy in lists["strategies"]:
        if strategy not in (*PARAPHRASE_STRATEGIES, "unknown"):
            allowed = ", ".join(PARAPHRASE_STRATEGIES)
            raise at.err("strategies", strategy, f"strategy {strategy!r} is not one of {allowed}")
    images = [rec.record.get(k) for k in IMAGE_FIELDS]
    image_ref = next((str(v) for v in images if v not in (None, "")), None)
    question_id = rec.ident("question_id", f"q{ordinal}")
    study_id = rec.ident("study_id", image_ref or question_id)
    patient_id = rec.ident("subject_id", rec.ident("patient_id", study_id))
    try:
        return ParaphraseSet(
            question_id=question_id,
            study_id=study_id,
            patient_id=patient_id,
            condition=condition,
            question=question,
            paraphrases=paraphrases,
            strategies=lists["strategies"] or ("unknown",) * len(paraphrases),
            families=lists["families"],
            answer=answer,
            image_ref=image_ref,
            split="test",
        )
    except RecordError as exc:
        raise at.err(None, question_id, str(exc)) from None


def read_psf_records(
    path: str | Path, *, skip_bad: bool = False
) -> tuple[list[ParaphraseSet], ImportReport]:
    """Read PSF-Med style paraphrase records, a JSON array or JSONL, as test ParaphraseSets.

    Required: ``question``, ``paraphrases`` (non-empty list of strings) and ``answer``
    (yes/no in any case, true/false or 1/0). Optional: an image reference (``image_ref``,
    ``image``, ``image_path`` or ``dicom_id``), ``question_id`` (default ``q{n}`` for the
    n-th record), ``study_id`` (default the image reference, else the question id),
    ``subject_id``/``patient_id`` (default the study id), ``condition`` (CheXpert column
    or id), ``strategies`` (lexical, syntactic, register, voice; default ``unknown``) and
    ``families``, both aligned with ``paraphrases``. Question ids must be unique.

    Polarity rule: PSF-Med counts only meaning-preserving paraphrases. A paraphrase with a
    polarity-inverting cue when the question has none ("Can a pneumothorax be excluded?"
    for "Is there a pneumothorax?"), or with none when the question has one, is rejected
    (reason ``polarity_inverting``). The cues are the words no, not, without, absent,
    absence, free of, exclude(d), rule(d) out, negative for and normal; "yes or no" and
    "or not" are not cues, nor are contractions such as "isn't" (a negative question
    keeps its answer). Question and paraphrase may use different cues ("excluded" and
    "ruled out").
    """
    report = ImportReport(str(path))

    def build(at: _At, record: Any) -> ParaphraseSet:
        return _psf_record(at, record, report.rows_read)

    rows = _records(str(path))
    out = _gather(report, skip_bad, rows, build, lambda s: ("question_id", s.question_id))
    return out, report


__all__ = [
    "DataFormatError",
    "ImportReport",
    "LabelRow",
    "read_label_csv",
    "read_label_rows",
    "read_nast_benchmark",
    "read_psf_records",
]
