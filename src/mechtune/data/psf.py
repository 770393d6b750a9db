"""PSF-Med style paraphrase records (Sadanandan & Behzadan, arXiv 2602.21428): read, write.

One record per question: a JSON object, as a line of a JSONL file or an element of a JSON
array (``*.gz`` is gunzipped when read). :func:`write_psf_records` writes every field, in
this order; :func:`read_psf_records` needs only ``question``, ``paraphrases`` and
``answer``::

    question_id     unique id (string or integer; default q<n> for the n-th record)
    study_id        default: the image reference, else the question id
    subject_id      the patient (alias patient_id; default: the study id)
    condition       CheXpert column or ontology id, or null when unknown
    question        the original question, in the narrow register
    paraphrases     non-empty list of meaning-preserving rewordings
    strategies      aligned with paraphrases: lexical, syntactic, register, voice, unknown
    families        aligned with paraphrases: family ids, or []
    heldout_family  aligned with paraphrases: true for a held-out family, or []
    answer          yes / no (any case), true / false or 1 / 0
    image           the image, relative to the data folder (aliases image_ref,
                    image_path, dicom_id), or null
    split           train, val or test (default test)

An example line (from ``mechtune sim export``; two of its five paraphrases shown)::

    {"question_id": "50000004-pneumothorax-h", "study_id": "50000004",
     "subject_id": "10000002", "condition": "pneumothorax",
     "question": "Is there a pneumothorax?",
     "paraphrases": ["Is there any pneumothorax visible?",
                     "Would you say there is a pneumothorax?"],
     "strategies": ["lexical", "syntactic"],
     "families": ["lex.any_visible", "syn.would_you_say"],
     "heldout_family": [true, true], "answer": "no",
     "image": "files/p10/p10000002/s50000004/87c7f55d-3371631f-dcecf4d1-dbc0f089-5089ca02.jpg",
     "split": "test"}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mechtune.data.ontology import PARAPHRASE_STRATEGIES, load_ontology
from mechtune.data.rows import DataFormatError, ImportReport, _At, _Fields, _gather, _records
from mechtune.data.schema import SPLITS, ParaphraseSet, RecordError
from mechtune.errors import DataError

IMAGE_FIELDS: tuple[str, ...] = ("image_ref", "image", "image_path", "dicom_id")
ANSWERS = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}
DEFAULT_SPLIT = "test"
# The fields write_psf_records writes, in order.
PSF_FIELDS: tuple[str, ...] = (
    "question_id",
    "study_id",
    "subject_id",
    "condition",
    "question",
    "paraphrases",
    "strategies",
    "families",
    "heldout_family",
    "answer",
    "image",
    "split",
)
# Cues that turn "Is there X?" into a question whose "yes" means absence (see
# read_psf_records), and answer-format phrases that contain "no"/"not" but are no cue.
POLARITY_CUES = re.compile(
    r"\b(no|not|without|absen(?:t|ce)|free\s+of|exclud(?:e|ed|es|ing)|rul(?:e|ed|es|ing)\s+out"
    r"|negative\s+for|normal)\b",
    re.IGNORECASE,
)
_NOT_CUES = re.compile(r"\byes\s*(?:or|/)\s*no\b|\bor\s+not\b", re.IGNORECASE)


@dataclass
class PsfImportReport(ImportReport):
    """An :class:`ImportReport` that also says which optional labels the file carries.

    ``split_labels``: kept records with a ``split`` of their own (the others are
    ``test``); ``heldout_labels``: kept records with a ``heldout_family`` list.
    """

    split_labels: int = 0
    heldout_labels: int = 0

    @property
    def labels_splits(self) -> bool:
        """Whether any kept record names its split (False: "the file has no split labels")."""
        return self.split_labels > 0

    @property
    def labels_heldout_families(self) -> bool:
        """Whether any kept record marks its paraphrases' held-out families."""
        return self.heldout_labels > 0


class _Read(NamedTuple):
    """One record as read, and whether it gave its own split and held-out flags."""

    item: ParaphraseSet
    split_given: bool
    heldout_given: bool


def _cues(text: str) -> list[str]:
    found = POLARITY_CUES.findall(_NOT_CUES.sub(" ", text))
    return sorted({" ".join(cue.lower().split()) for cue in found})


def _paraphrases(at: _At, rec: _Fields, question: str) -> tuple[str, ...]:
    """The ``paraphrases`` list, checked against the question (repeats, polarity)."""
    raw = rec.get("paraphrases")
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(x, str) and x.strip() for x in raw)
    ):
        raise at.err("paraphrases", raw, "paraphrases is not a non-empty list of non-empty strings")
    paraphrases = tuple(x.strip() for x in raw)
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
    return paraphrases


def _aligned(at: _At, rec: _Fields, name: str, kind: type, n: int) -> tuple[Any, ...]:
    """An optional list aligned with the ``n`` paraphrases (missing, null or [] -> ())."""
    value = rec.record.get(name)
    if value is None:
        return ()
    noun = "booleans (true/false)" if kind is bool else "strings"
    if not isinstance(value, list) or not all(type(v) is kind for v in value):
        raise at.err(name, value, f"{name} is not a list of {noun}")
    if value and len(value) != n:
        raise at.err(name, value, f"{len(value)} {name} for {n} paraphrases")
    return tuple(value)


def _split(at: _At, rec: _Fields) -> str | None:
    """The record's own split, or None when it names none (missing or null)."""
    value = rec.record.get("split")
    if value is None:
        return None
    split = value.strip().lower() if isinstance(value, str) else None
    if split not in SPLITS:
        problem = f"split {value!r} is not one of {', '.join(SPLITS)}"
        raise at.err("split", value, problem, "bad_split")
    return split


def _psf_record(at: _At, record: Any, ordinal: int) -> _Read:
    onto = load_ontology()
    rec = _Fields(at, record)
    question = rec.text("question")
    paraphrases = _paraphrases(at, rec, question)
    raw_answer = rec.get("answer")
    answer = ANSWERS.get(str(raw_answer).strip().lower())
    if answer is None:
        raise at.err("answer", raw_answer, "answer is not yes/no, true/false or 1/0")
    condition = rec.record.get("condition")
    if condition is not None:
        if not isinstance(condition, str) or not onto.has_condition(condition):
            raise at.err("condition", condition, f"unknown condition {condition!r}")
        condition = onto.condition(condition).id
    n = len(paraphrases)
    strategies = _aligned(at, rec, "strategies", str, n)
    families = _aligned(at, rec, "families", str, n)
    heldout = _aligned(at, rec, "heldout_family", bool, n)
    for strategy in strategies:
        if strategy not in (*PARAPHRASE_STRATEGIES, "unknown"):
            allowed = ", ".join(PARAPHRASE_STRATEGIES)
            raise at.err("strategies", strategy, f"strategy {strategy!r} is not one of {allowed}")
    split = _split(at, rec)
    images = [rec.record.get(k) for k in IMAGE_FIELDS]
    image_ref = next((str(v) for v in images if v not in (None, "")), None)
    question_id = rec.ident("question_id", f"q{ordinal}")
    study_id = rec.ident("study_id", image_ref or question_id)
    patient_id = rec.ident("subject_id", rec.ident("patient_id", study_id))
    try:
        item = ParaphraseSet(
            question_id=question_id,
            study_id=study_id,
            patient_id=patient_id,
            condition=condition,
            question=question,
            paraphrases=paraphrases,
            strategies=strategies or ("unknown",) * n,
            families=families,
            answer=answer,
            image_ref=image_ref,
            heldout_family=heldout,
            split=split or DEFAULT_SPLIT,
        )
    except RecordError as exc:
        raise at.err(None, question_id, str(exc)) from None
    return _Read(item, split is not None, bool(heldout))


def read_psf_records(
    path: str | Path, *, skip_bad: bool = False
) -> tuple[list[ParaphraseSet], PsfImportReport]:
    """Read PSF-Med style paraphrase records, a JSON array or JSONL, as ParaphraseSets.

    Required: ``question``, ``paraphrases`` (non-empty list of strings) and ``answer``
    (yes/no in any case, true/false or 1/0). Optional (see the module docstring): an
    image reference (``image``, ``image_ref``, ``image_path`` or ``dicom_id``),
    ``question_id`` (default ``q{n}`` for the n-th record), ``study_id`` (default the
    image reference, else the question id), ``subject_id``/``patient_id`` (default the
    study id), ``condition`` (CheXpert column or id), ``strategies`` (lexical, syntactic,
    register, voice; default ``unknown``), ``families`` and ``heldout_family`` (JSON
    booleans), all three aligned with ``paraphrases``, and ``split`` (train, val or test,
    any case; default ``test``). Question ids must be unique.

    The report says whether the file labels splits and held-out families at all
    (:attr:`PsfImportReport.labels_splits`, ``split_labels`` counts the records that do),
    so that a caller can tell "every question is a test question" from "the file has no
    split labels".

    Polarity rule: PSF-Med counts only meaning-preserving paraphrases. A paraphrase with a
    polarity-inverting cue when the question has none ("Can a pneumothorax be excluded?"
    for "Is there a pneumothorax?"), or with none when the question has one, is rejected
    (reason ``polarity_inverting``). The cues are the words no, not, without, absent,
    absence, free of, exclude(d), rule(d) out, negative for and normal; "yes or no" and
    "or not" are not cues, nor are contractions such as "isn't" (a negative question
    keeps its answer). Question and paraphrase may use different cues ("excluded" and
    "ruled out").

    A bad record raises :class:`~mechtune.data.rows.DataFormatError` naming the file, the
    line (or record), the field and the value; with ``skip_bad`` it is counted in the
    report under its reason (``bad_split`` for a split outside train/val/test,
    ``polarity_inverting``, ``bad_id``, ``duplicate_id``, ``malformed``, else
    ``invalid_record``).
    """
    report = PsfImportReport(str(path))

    def build(at: _At, record: Any) -> _Read:
        return _psf_record(at, record, report.rows_read)

    rows = _records(str(path))
    kept = _gather(report, skip_bad, rows, build, lambda r: ("question_id", r.item.question_id))
    report.split_labels = sum(r.split_given for r in kept)
    report.heldout_labels = sum(r.heldout_given for r in kept)
    return [r.item for r in kept], report


def psf_record(item: ParaphraseSet) -> dict[str, Any]:
    """The record of one set, with the fields of :data:`PSF_FIELDS` in that order."""
    return {
        "question_id": item.question_id,
        "study_id": item.study_id,
        "subject_id": item.patient_id,
        "condition": item.condition,
        "question": item.question,
        "paraphrases": list(item.paraphrases),
        "strategies": list(item.strategies),
        "families": list(item.families),
        "heldout_family": list(item.heldout_family),
        "answer": "yes" if item.answer else "no",
        "image": item.image_ref,
        "split": item.split,
    }


def _reads_back(item: ParaphraseSet, record: dict[str, Any], at: _At) -> None:
    """Raise ``DataError`` unless :func:`read_psf_records` would return ``item`` itself."""
    where = f"ParaphraseSet {item.question_id!r}"
    try:
        back = _psf_record(at, record, at.row).item
    except DataFormatError as exc:
        raise DataError(f"{where} cannot be written as a PSF record: {exc}") from None
    for f in dataclasses.fields(ParaphraseSet):
        ours, theirs = getattr(item, f.name), getattr(back, f.name)
        if ours != theirs:
            raise DataError(
                f"{where} would read back with {f.name} {theirs!r}, not {ours!r} "
                "(PSF records strip surrounding whitespace, give every paraphrase a "
                "strategy and name conditions by ontology id)"
            )


def write_psf_records(sets: Iterable[ParaphraseSet], path: str | Path) -> int:
    """Write ``sets`` as PSF-Med JSONL records (:func:`psf_record`), one line each, in order.

    The file is written atomically (:func:`mechtune.data.io.atomic_path`); the same sets
    give the same bytes (UTF-8, fixed field order, ``\\n`` line ends). Every record is
    checked to read back as the set it came from, so ``read_psf_records(path)`` returns
    sets equal to ``sets``. Returns the number of records. Raises ``DataError`` naming the
    question id for a repeated id or a set that would not read back (a polarity-inverting
    paraphrase, whitespace around a text, a condition named by its CheXpert column).
    """
    # mechtune.data.io loads pyarrow, which reading PSF records does not need.
    from mechtune.data.io import atomic_path, dumps_json

    target = Path(path)
    seen: set[str] = set()
    n = 0
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for n, item in enumerate(sets, start=1):
            if item.question_id in seen:
                raise DataError(f"{target}: question_id {item.question_id!r} is repeated")
            seen.add(item.question_id)
            record = psf_record(item)
            _reads_back(item, record, _At(str(target), n))
            fh.write(dumps_json(record, indent=None, ensure_ascii=False) + "\n")
    return n


__all__ = [
    "PSF_FIELDS",
    "PsfImportReport",
    "psf_record",
    "read_psf_records",
    "write_psf_records",
]
