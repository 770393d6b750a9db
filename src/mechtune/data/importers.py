"""Importers for the real formats users have.

- CheXpert / MIMIC-CXR-JPG label CSVs (``mimic-cxr-2.0.0-chexpert.csv``, CheXpert
  ``train.csv``): 1.0 present, 0.0 absent, -1.0 uncertain, blank not mentioned;
- the NAST (MedNega-CXR) benchmark records;
- PSF-Med style paraphrase records.

A bad row raises :class:`DataFormatError` naming the file, the line and the value. With
``skip_bad=True`` the row is skipped instead and counted under a reason in the
:class:`ImportReport`: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding, MCQPair, ParaphraseSet, RecordError, Study

UNCERTAIN_POLICIES: tuple[str, ...] = ("skip", "present", "absent")
MIMIC_META: tuple[str, ...] = ("subject_id", "study_id")
CHEXPERT_META: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
LABEL_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}
MAX_ERRORS_KEPT = 10
# Cues that would turn "is there X?" into a question whose yes means absence.
POLARITY_INVERTING = re.compile(
    r"\b(no|not|without|absent|free of|excluded?|ruled? out|negative for|normal)\b", re.I
)


class DataFormatError(ValueError):
    """A row of an input file is malformed. The message names file, row, column and value."""

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
        self.problem, self.reason = problem, reason
        where = f"{self.path}, {unit} {row}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem} (value {value!r})")


@dataclass
class ImportReport:
    """What an import read, kept, and skipped (by reason)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    uncertain_labels: int = 0
    uncertain_policy: str | None = None
    first_errors: list[str] = field(default_factory=list)

    def skip(self, error: DataFormatError) -> None:
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(str(error))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- label CSVs ---------------------------------------------------------------------------


def _label_columns(path: Path, header: list[str]) -> tuple[str, list[str]]:
    onto = load_ontology()
    if header[:2] == list(MIMIC_META):
        kind, meta = "mimic", MIMIC_META
    elif header and header[0] == "Path":
        kind, meta = "chexpert", CHEXPERT_META
    else:
        raise DataFormatError(
            path,
            1,
            None,
            ",".join(header[:3]),
            "header is neither MIMIC-CXR-JPG (subject_id,study_id,...) nor CheXpert (Path,...)",
            reason="malformed",
        )
    labels = [c for c in header if c not in meta]
    for column in labels:
        if not onto.has_condition(column) or onto.condition(column).column != column:
            raise DataFormatError(
                path, 1, column, column, f"unknown condition column {column!r}", reason="malformed"
            )
    return kind, labels


def _patient_from_path(path_value: str) -> str | None:
    match = re.search(r"(patient\d+)", path_value)
    return match.group(1) if match else None


def read_label_csv(
    path: str | Path, *, uncertain: str = "skip", skip_bad: bool = False
) -> tuple[list[Study], ImportReport]:
    """Read a CheXpert or MIMIC-CXR-JPG label CSV into studies (streaming).

    ``uncertain`` says what a -1.0 label means: ``skip`` (not mentioned), ``present`` or
    ``absent``. MIMIC rows are studies (patient = subject_id); CheXpert rows are images
    (study id = the image path, patient = the ``patientNNNNN`` path component), so the
    views of a study share a patient and hence a split.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    p = Path(path)
    report = ImportReport(str(p), uncertain_policy=uncertain)
    studies: list[Study] = []
    seen: set[str] = set()
    onto = load_ontology()
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(p, 1, None, "", "empty file", reason="malformed")
        kind, labels = _label_columns(p, header)
        index = {c: header.index(c) for c in header}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue  # a blank line is not a record
            report.rows_read += 1
            try:
                study = _label_row(
                    p, line, row, header, kind, labels, index, uncertain, report, onto
                )
                if study.study_id in seen:
                    raise DataFormatError(
                        p,
                        line,
                        "study_id" if kind == "mimic" else "Path",
                        study.study_id,
                        "duplicate id",
                        reason="duplicate_id",
                    )
            except DataFormatError as err:
                if not skip_bad:
                    raise
                report.skip(err)
                continue
            seen.add(study.study_id)
            studies.append(study)
            report.rows_kept += 1
    return studies, report


def _label_row(
    p: Path,
    line: int,
    row: list[str],
    header: list[str],
    kind: str,
    labels: list[str],
    index: dict[str, int],
    uncertain: str,
    report: ImportReport,
    onto: Any,
) -> Study:
    if len(row) != len(header):
        raise DataFormatError(
            p,
            line,
            None,
            ",".join(row)[:60],
            f"expected {len(header)} fields, got {len(row)}",
            reason="malformed",
        )
    if kind == "mimic":
        subject, study_id = row[index["subject_id"]].strip(), row[index["study_id"]].strip()
        for column, value in (("subject_id", subject), ("study_id", study_id)):
            if not value.isdigit():
                raise DataFormatError(
                    p, line, column, value, "id is not a positive integer", reason="bad_id"
                )
        patient, image_ref = subject, None
    else:
        study_id = row[index["Path"]].strip()
        found = _patient_from_path(study_id)
        if found is None:
            raise DataFormatError(
                p, line, "Path", study_id, "no patientNNNNN component in path", reason="bad_id"
            )
        patient, image_ref = found, study_id
    findings = []
    for column in labels:
        raw = row[index[column]].strip()
        if raw not in LABEL_VALUES:
            raise DataFormatError(
                p,
                line,
                column,
                raw,
                f"label {raw!r} is not one of 1.0, 0.0, -1.0 or blank",
                reason="bad_label",
            )
        label = LABEL_VALUES[raw]
        if label == -1:
            report.uncertain_labels += 1
            label = {"skip": None, "present": 1, "absent": 0}[uncertain]
        if label is not None:
            findings.append(Finding(onto.condition(column).id, bool(label)))
    try:
        return Study(
            study_id=study_id, patient_id=patient, findings=tuple(findings), image_ref=image_ref
        )
    except RecordError as exc:
        raise DataFormatError(p, line, None, study_id, str(exc)) from None


# -- JSON / JSONL records -------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """Yield (number, unit, record) from a JSON array or a JSONL file."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                path, exc.lineno, None, exc.msg, "invalid JSON", reason="malformed"
            ) from None
        for number, record in enumerate(records, start=1):
            yield number, "record", record
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, "line", json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                path, number, None, line[:60], f"invalid JSON ({exc.msg})", reason="malformed"
            ) from None


def _field(path: Path, number: int, unit: str, record: Any, name: str) -> Any:
    if not isinstance(record, dict):
        raise DataFormatError(
            path,
            number,
            None,
            type(record).__name__,
            "record is not a JSON object",
            unit=unit,
            reason="malformed",
        )
    if name not in record:
        raise DataFormatError(
            path, number, name, None, f"missing field {name!r}", unit=unit, reason="malformed"
        )
    return record[name]


def _correct_index(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().upper() in ("A", "B", "C", "D"):
        return "ABCD".index(value.strip().upper())
    if isinstance(value, (int, str)) and str(value).strip() in ("1", "2", "3", "4"):
        return int(str(value).strip()) - 1
    return None


def read_nast_benchmark(
    path: str | Path, *, skip_bad: bool = False
) -> tuple[list[MCQPair], ImportReport]:
    """Read NAST (MedNega-CXR) benchmark records: a JSON array or JSONL.

    Each ``binary_raw_choice_i`` maps CheXpert column names to 0/1; ``correct_answer``
    is a letter A-D (or 1-4).
    """
    p = Path(path)
    report = ImportReport(str(p))
    onto = load_ontology()
    out: list[MCQPair] = []
    seen: set[str] = set()
    for number, unit, record in _records(p):
        report.rows_read += 1
        try:
            mcq = _nast_record(p, number, unit, record, onto)
            if mcq.mcq_id in seen:
                raise DataFormatError(
                    p,
                    number,
                    "study_id",
                    mcq.mcq_id,
                    "duplicate id",
                    unit=unit,
                    reason="duplicate_id",
                )
        except DataFormatError as err:
            if not skip_bad:
                raise
            report.skip(err)
            continue
        seen.add(mcq.mcq_id)
        out.append(mcq)
        report.rows_kept += 1
    return out, report


def _nast_record(p: Path, number: int, unit: str, record: Any, onto: Any) -> MCQPair:
    def get(name: str) -> Any:
        return _field(p, number, unit, record, name)

    def bad(
        column: str, value: Any, problem: str, reason: str = "invalid_record"
    ) -> DataFormatError:
        return DataFormatError(p, number, column, value, problem, unit=unit, reason=reason)

    choices = [get(f"binary_raw_choice_{i}") for i in range(1, 5)]
    if not all(isinstance(c, dict) and c for c in choices):
        raise bad("binary_raw_choice_1", choices[0], "choices must be non-empty objects")
    columns = list(choices[0])
    for i, choice in enumerate(choices, start=1):
        if set(choice) != set(columns):
            raise bad(f"binary_raw_choice_{i}", sorted(choice), "conditions differ from choice 1")
        for column, value in choice.items():
            if not onto.has_condition(column):
                raise bad(
                    f"binary_raw_choice_{i}", column, f"unknown condition {column!r}", "bad_label"
                )
            if value not in (0, 1) or isinstance(value, bool):
                raise bad(
                    f"binary_raw_choice_{i}",
                    value,
                    f"label of {column!r} is not 0 or 1",
                    "bad_label",
                )
    options: dict[str, list[str]] = {}
    for form in ("negation", "affirmative"):
        options[form] = []
        for i in range(1, 5):
            text = get(f"{form}_mcq_choice_{i}")
            if not isinstance(text, str) or not text.strip():
                raise bad(f"{form}_mcq_choice_{i}", text, "option text is empty")
            options[form].append(text.strip())
    answer = get("correct_answer")
    correct = _correct_index(answer)
    if correct is None:
        raise bad("correct_answer", answer, "correct_answer is not A-D or 1-4")
    subject, study = get("subject_id"), get("study_id")
    try:
        return MCQPair(
            mcq_id=f"{subject}-{study}",
            study_id=str(study),
            patient_id=str(subject),
            question=str(get("question")),
            conditions=tuple(onto.condition(c).id for c in columns),
            labels=tuple(tuple(int(ch[c]) for c in columns) for ch in choices),
            negated_options=tuple(options["negation"]),
            affirmative_options=tuple(options["affirmative"]),
            correct_index=correct,
            split="test",
        )
    except RecordError as exc:
        raise bad("binary_raw_choice_1", None, str(exc)) from None


IMAGE_FIELDS: tuple[str, ...] = ("image_ref", "image", "image_path", "dicom_id")
ANSWERS = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}


def read_psf_records(
    path: str | Path, *, skip_bad: bool = False
) -> tuple[list[ParaphraseSet], ImportReport]:
    """Read PSF-Med style paraphrase records: a JSON array or JSONL.

    Required: ``question``, ``paraphrases`` (non-empty list), ``answer`` (yes/no, true/false
    or 1/0). Optional: an image reference (``image_ref``, ``image``, ``image_path`` or
    ``dicom_id``), ``question_id``, ``study_id``, ``subject_id``/``patient_id``,
    ``condition``, ``strategies``, ``families``. A paraphrase that adds a negation or
    exclusion cue absent from the question ("Can X be excluded?") inverts polarity and is
    rejected (reason ``polarity_inverting``): PSF-Med counts only meaning-preserving ones.
    """
    p = Path(path)
    report = ImportReport(str(p))
    onto = load_ontology()
    out: list[ParaphraseSet] = []
    seen: set[str] = set()
    for number, unit, record in _records(p):
        report.rows_read += 1
        try:
            item = _psf_record(p, number, unit, record, onto)
            if item.question_id in seen:
                raise DataFormatError(
                    p,
                    number,
                    "question_id",
                    item.question_id,
                    "duplicate id",
                    unit=unit,
                    reason="duplicate_id",
                )
        except DataFormatError as err:
            if not skip_bad:
                raise
            report.skip(err)
            continue
        seen.add(item.question_id)
        out.append(item)
        report.rows_kept += 1
    return out, report


def _psf_record(p: Path, number: int, unit: str, record: Any, onto: Any) -> ParaphraseSet:
    def bad(
        column: str, value: Any, problem: str, reason: str = "invalid_record"
    ) -> DataFormatError:
        return DataFormatError(p, number, column, value, problem, unit=unit, reason=reason)

    question = _field(p, number, unit, record, "question")
    paraphrases = _field(p, number, unit, record, "paraphrases")
    answer = _field(p, number, unit, record, "answer")
    if not isinstance(question, str) or not question.strip():
        raise bad("question", question, "empty question")
    if (
        not isinstance(paraphrases, list)
        or not paraphrases
        or not all(isinstance(x, str) and x.strip() for x in paraphrases)
    ):
        raise bad("paraphrases", paraphrases, "paraphrases must be a non-empty list of strings")
    parsed = ANSWERS.get(str(answer).strip().lower())
    if parsed is None:
        raise bad("answer", answer, "answer is not yes/no, true/false or 1/0")
    for text in paraphrases:
        added = {m.lower() for m in POLARITY_INVERTING.findall(text)} - {
            m.lower() for m in POLARITY_INVERTING.findall(question)
        }
        if added:
            raise bad(
                "paraphrases",
                text,
                f"paraphrase adds polarity cue(s) {sorted(added)}",
                "polarity_inverting",
            )
    condition = record.get("condition")
    if condition is not None:
        if not onto.has_condition(str(condition)):
            raise bad("condition", condition, f"unknown condition {condition!r}")
        condition = onto.condition(str(condition)).id
    strategies = record.get("strategies") or ["unknown"] * len(paraphrases)
    image_ref = next((str(record[k]) for k in IMAGE_FIELDS if record.get(k) is not None), None)
    question_id = str(record.get("question_id") or f"q{number}")
    study_id = str(record.get("study_id") or image_ref or question_id)
    patient_id = str(record.get("subject_id") or record.get("patient_id") or study_id)
    try:
        return ParaphraseSet(
            question_id=question_id,
            study_id=study_id,
            patient_id=patient_id,
            condition=condition,
            question=question.strip(),
            paraphrases=tuple(x.strip() for x in paraphrases),
            strategies=tuple(str(s) for s in strategies),
            families=tuple(str(f) for f in record.get("families") or ()),
            answer=parsed,
            image_ref=image_ref,
            split="test",
        )
    except RecordError as exc:
        raise bad("paraphrases", None, str(exc)) from None


__all__ = [
    "DataFormatError",
    "ImportReport",
    "read_label_csv",
    "read_nast_benchmark",
    "read_psf_records",
]
