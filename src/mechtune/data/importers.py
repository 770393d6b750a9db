"""Importers for the real formats users have.

- CheXpert / MIMIC-CXR-JPG label CSVs (``mimic-cxr-2.0.0-chexpert.csv``, CheXpert
  ``train.csv``/``valid.csv``): 1.0 present, 0.0 absent, -1.0 uncertain, blank not mentioned;
- the NAST (MedNega-CXR) benchmark records (arXiv 2602.12498);
- PSF-Med style paraphrase records (arXiv 2602.21428): :mod:`mechtune.data.psf`, whose
  reader is re-exported here.

A bad row raises :class:`DataFormatError` naming the file, the line (or record), the
column and the value. With ``skip_bad=True`` the row is skipped instead and counted under
a reason in the :class:`ImportReport`: nothing is dropped silently. Problems with the
file as a whole (its header, invalid JSON in an array) always raise. The row machinery
lives in :mod:`mechtune.data.rows` and is re-exported here.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.data.psf import read_psf_records
from mechtune.data.rows import (
    MAX_ERRORS_KEPT,
    DataFormatError,
    ImportReport,
    _At,
    _csv_rows,
    _decoded,
    _Fields,
    _gather,
    _open_bytes,
    _records,
)
from mechtune.data.schema import Finding, MCQPair, RecordError, Study
from mechtune.errors import DataError

UNCERTAIN_POLICIES: tuple[str, ...] = ("skip", "present", "absent")
MIMIC_META: tuple[str, ...] = ("subject_id", "study_id")
CHEXPERT_META: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
LABEL_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}
_PATIENT_RE = re.compile(r"patient\d+")
_DIGITS_RE = re.compile(r"[0-9]+")


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


# -- NAST benchmark records -------------------------------------------------------------


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


__all__ = [
    "MAX_ERRORS_KEPT",
    "DataFormatError",
    "ImportReport",
    "LabelRow",
    "read_label_csv",
    "read_label_rows",
    "read_nast_benchmark",
    "read_psf_records",
]
