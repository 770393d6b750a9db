"""What the table-backed readers (MIMIC-CXR-JPG, CheXpert, manifest) share.

A reader parses its tables into :class:`Candidate` items (an image and its study's
findings), then :class:`TableSource.finish` checks every candidate image exists and that
Pillow can read its header, reads the reports, assigns splits, and keeps or (with
``skip_bad``) skips and counts each candidate, in table order.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mechtune.data.importers import (
    MAX_ERRORS_KEPT,
    UNCERTAIN_POLICIES,
    DataFormatError,
    ImportReport,
    _At,
    _decoded,
    csv_dict_rows,
)
from mechtune.data.schema import SPLITS, Finding, RecordError, Study
from mechtune.data.sources.base import (
    ImageStudySource,
    SourceReport,
    check_missing,
    open_table,
    read_image_file,
)
from mechtune.data.splits import check_fractions, patient_split
from mechtune.errors import ConfigError, DataError

T = TypeVar("T")
R = TypeVar("R")
PROBE_THREADS = 8
# Split names as they appear in tables -> ours. MIMIC's official file says "validate".
SPLIT_NAMES = {"train": "train", "val": "val", "validate": "val", "valid": "val", "test": "test"}


def check_common(uncertain: str, max_missing: float, split_fractions: Sequence[float]) -> None:
    """Validate the options every table reader takes; ``ConfigError`` naming the option."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if not isinstance(max_missing, int | float) or not 0.0 <= float(max_missing) <= 1.0:
        raise ConfigError(f"max_missing must be a fraction in [0, 1], got {max_missing!r}")
    check_fractions(tuple(split_fractions))


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a few threads (file probes are I/O-bound)."""
    items = list(items)
    if len(items) < 2 * PROBE_THREADS:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        return list(pool.map(fn, items))


def probe_image(path: Path) -> str | None:
    """None when ``path`` exists and Pillow recognises its header; else the problem.

    Only the header is read (cheap); a file whose body is truncated passes here and
    :func:`~mechtune.data.sources.base.read_image_file` raises ``DataError`` naming it
    when it is loaded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size[0] < 1 or img.size[1] < 1:
                return "unreadable_image: zero-size image"
    except FileNotFoundError:
        return "missing_image: image file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable_image: not a readable image ({type(exc).__name__}: {exc})"
    return None


def read_text_file(path: Path) -> str | None:
    """The text of a UTF-8 file (BOM stripped), or None when there is no such file.

    Raises ``DataError`` naming the file when it is not UTF-8.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text at byte {exc.start}") from None


def table_rows(
    path: Path, required: Sequence[str]
) -> Iterator[tuple[_At, dict[str, str] | DataFormatError]]:
    """Rows of a CSV table (plain or ``.gz``; BOM and CRLF handled) as column -> value.

    The header must name every column in ``required`` (else ``DataFormatError`` at line
    1, reason ``malformed``); a row of the wrong width, or one the csv module cannot
    parse, is yielded as a ``DataFormatError`` for the caller to raise or count.
    """
    name = str(path)
    with open_table(path) as fh:
        reader = csv.reader(_decoded(name, fh))
        at = _At(name, 1)
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as exc:
            raise at.err(None, None, f"unreadable header ({exc})", "malformed") from None
        absent = [c for c in required if c not in header]
        if absent:
            shown = ",".join(header)[:120]
            raise at.err(None, shown, f"header lacks column(s) {', '.join(absent)}", "malformed")
        yield from csv_dict_rows(name, reader, header, strip=True)


def absorb(report: SourceReport, imported: ImportReport) -> None:
    """Add a label table's rows, skips and first messages to a SourceReport."""
    report.rows_read += imported.rows_read
    for reason, count in imported.skipped.items():
        report.skipped[reason] = report.skipped.get(reason, 0) + count
    room = MAX_ERRORS_KEPT - len(report.first_errors)
    report.first_errors.extend(imported.first_errors[: max(room, 0)])


@dataclass
class Candidate:
    """One item before its image, report and split are checked.

    ``at`` is the table row it comes from (named in errors); ``image`` the file on disk;
    ``image_ref`` the name stored in the Study (relative to the source's root where it
    can be); ``split`` a given split (official file or manifest column), or None for a
    patient-hash split; ``report_file`` where its report may be, or ``report`` the text.
    """

    at: _At
    item_id: str
    patient_id: str
    findings: tuple[Finding, ...]
    image: Path
    image_ref: str
    n_uncertain: int = 0
    split: str | None = None
    report: str | None = None
    report_file: Path | None = None
    group: str | None = None  # the study id, when several items share a study


class TableSource(ImageStudySource):
    """An ImageStudySource whose items come from tables: fills ``items`` from candidates,
    keeps each item's split and image path, and loads pixels with Pillow."""

    def _setup(
        self,
        root: Path,
        report: SourceReport,
        *,
        skip_bad: bool,
        max_missing: float,
        split_seed: int,
        split_fractions: Sequence[float],
    ) -> None:
        self.root = root
        self.report = report
        self.items = []
        self.skip_bad = skip_bad
        self.max_missing = float(max_missing)
        self.split_seed = split_seed
        self.split_fractions = check_fractions(tuple(split_fractions))
        self._splits: dict[str, str] = {}
        self._files: dict[str, Path] = {}

    def fail(self, error: DataFormatError) -> None:
        """Raise ``error``, or with ``skip_bad`` count it under its reason."""
        if not self.skip_bad:
            raise error
        self.report.skip(error)

    def finish(
        self,
        candidates: Sequence[Candidate],
        sections: Callable[[str], str | None] | None = None,
    ) -> None:
        """Check images, read reports (through ``sections`` when given), assign splits,
        and keep the candidates that pass, in order.

        Missing or unreadable images raise a ``DataFormatError`` (reason ``missing_image``
        or ``unreadable_image``) naming the table row, the file and the value; with
        ``skip_bad`` they are counted, and more than ``max_missing`` of the candidates'
        images still fail (``check_missing``). A patient whose given splits differ raises
        (reason ``split_conflict``) naming both rows; with ``skip_bad`` the later item is
        skipped, so every item of a patient stays in one split.
        """
        problems = parallel_map(probe_image, [c.image for c in candidates])
        texts = parallel_map(_report_or_error, [c.report_file for c in candidates])
        first_split: dict[str, tuple[str, str]] = {}
        missing = n_reports = 0
        kept_groups: set[str] = set()
        for cand, problem, text in zip(candidates, problems, texts, strict=True):
            try:
                if problem is not None:
                    missing += 1
                    reason, what = problem.split(": ", 1)
                    raise cand.at.err(
                        "image", cand.image_ref, f"{what}: {cand.image}", reason=reason
                    )
                if isinstance(text, DataError):
                    raise cand.at.err("report", str(cand.report_file), str(text), "bad_report")
                report = cand.report
                if text is not None:
                    report = sections(text) if sections is not None else text
                split = self._split_for(cand, first_split)
                study = Study(
                    cand.item_id, cand.patient_id, cand.findings, cand.image_ref, report or None
                )
            except DataFormatError as err:
                self.fail(err)
                continue
            except RecordError as exc:
                self.fail(cand.at.err(None, cand.item_id, str(exc)))
                continue
            self.items.append(study)
            self._splits[study.study_id] = split
            self._files[study.study_id] = cand.image
            group = cand.group or cand.item_id
            if group not in kept_groups:  # once per study, however many of its images
                kept_groups.add(group)
                self.report.uncertain_labels += cand.n_uncertain
                n_reports += study.report is not None
        self.report.items = len(self.items)
        self.report.notes["studies_with_report"] = n_reports
        check_missing(self.report, missing, len(candidates), self.max_missing)
        if not self.items:
            raise DataError(f"{self.report.summary()}: no items left; nothing to read")

    def _split_for(self, cand: Candidate, first: dict[str, tuple[str, str]]) -> str:
        if cand.split is None:
            return patient_split(cand.patient_id, self.split_seed, self.split_fractions)
        seen = first.setdefault(
            cand.patient_id, (cand.split, f"{cand.at.path}, {cand.at.unit} {cand.at.row}")
        )
        if seen[0] != cand.split:
            problem = (
                f"patient {cand.patient_id!r} is in split {cand.split!r} here but in "
                f"{seen[0]!r} at {seen[1]}; a patient's items must share one split"
            )
            raise cand.at.err("split", cand.split, problem, "split_conflict")
        return cand.split

    def split_of(self, study: Study) -> str:
        """The item's split (``train``, ``val`` or ``test``); ``DataError`` for a study
        that is not an item of this source."""
        try:
            return self._splits[study.study_id]
        except KeyError:
            raise DataError(
                f"{self.root}: study {study.study_id!r} is not an item of this source"
            ) from None

    def image_path(self, study: Study) -> Path:
        """The image file of an item; ``DataError`` for a study not of this source."""
        try:
            return self._files[study.study_id]
        except KeyError:
            raise DataError(
                f"{self.root}: study {study.study_id!r} is not an item of this source"
            ) from None

    def image_file(self, study: Study) -> Path | None:
        """The item's image file as the reader resolved it (:meth:`image_path`)."""
        return self.image_path(study)

    def _load(self, study: Study, mode: str) -> np.ndarray:
        return read_image_file(self.image_path(study), mode)


def _report_or_error(path: Path | None) -> str | DataError | None:
    if path is None:
        return None
    try:
        return read_text_file(path)
    except DataError as exc:
        return exc


def join_sections(parts: Iterable[str | None]) -> str | None:
    """Report sections as one text: whitespace runs collapsed to one space, a period added
    to a section that does not end in ``.``, ``!`` or ``?`` (so that a sentence splitter
    does not run two sections together), sections joined by one space; None if empty."""
    texts = []
    for part in parts:
        text = " ".join((part or "").split())
        if text:
            texts.append(text if text[-1] in ".!?" else f"{text}.")
    return " ".join(texts) or None


def given_split(at: _At, column: str, value: str) -> str:
    """A split named in a table, as ours (``validate`` -> ``val``); ``bad_split`` otherwise."""
    split = SPLIT_NAMES.get(value.strip().lower())
    if split is None:
        allowed = ", ".join(sorted(SPLIT_NAMES))
        raise at.err(column, value, f"split {value!r} is not one of {allowed}", "bad_split")
    assert split in SPLITS
    return split


def numeric_label(value: Any) -> str:
    """A JSON label value as the CSV text the label machinery reads (1 -> "1", None -> "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return repr(value)  # neither 1.0 nor 0.0: rejected as a bad label, value named
    if isinstance(value, int | float) and math.isfinite(value) and value in (1, 0, -1):
        return str(int(value))
    return str(value)


__all__ = [
    "Candidate",
    "TableSource",
    "absorb",
    "check_common",
    "given_split",
    "join_sections",
    "numeric_label",
    "parallel_map",
    "probe_image",
    "read_text_file",
    "table_rows",
]
