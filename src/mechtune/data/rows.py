"""Rows of users' files: errors that name the file, row, column and value; the report of
what an import read, kept and skipped; and reading CSV lines and JSON / JSONL records.

The shared machinery of :mod:`mechtune.data.importers` (label CSVs, NAST),
:mod:`mechtune.data.psf` (PSF-Med paraphrase records), :mod:`mechtune.data.answers` and the
image-study sources. A bad row raises :class:`DataFormatError`; with ``skip_bad`` the
readers count it under its reason in an :class:`ImportReport` instead.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from mechtune.errors import DataError

T = TypeVar("T")
MAX_ERRORS_KEPT = 10


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


__all__ = ["MAX_ERRORS_KEPT", "DataFormatError", "ImportReport"]
