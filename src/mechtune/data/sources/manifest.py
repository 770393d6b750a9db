"""A generic manifest: one row per item, CSV or JSONL, for data in any other layout.

Columns (CSV header, or JSONL keys)::

    image       the image file, relative to the manifest's folder, or absolute (required)
    patient_id  (required)
    study_id    unique per row (required)
    view        optional: a lateral view (L, LL, RL, LAT, LATERAL, ...) is skipped
    split       optional: train, val (or validate, valid) or test on every row
    report      optional: the report text
    <condition> CheXpert column names ("Pleural Effusion", ...): 1/1.0 present,
                0/0.0 absent, -1/-1.0 uncertain, blank (or JSON null) not mentioned

PadChest goes through :func:`mechtune.data.sources.padchest.padchest_manifest`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mechtune.data.importers import (
    DataFormatError,
    _At,
    _csv_rows,
    _decoded,
    _findings,
    _label_spec,
    _LabelSpec,
    _records,
)
from mechtune.data.ontology import load_ontology
from mechtune.data.sources._common import (
    Candidate,
    TableSource,
    check_common,
    given_split,
    numeric_label,
)
from mechtune.data.sources.base import DEFAULT_MAX_MISSING, SourceReport, open_table
from mechtune.data.splits import DEFAULT_FRACTIONS
from mechtune.errors import DataError

COLUMNS: tuple[str, ...] = ("image", "patient_id", "study_id", "view", "split", "report")
REQUIRED: tuple[str, ...] = ("image", "patient_id", "study_id")
CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz")
JSON_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
_LATERAL = re.compile(r"^(l|ll|rl|lat|lateral|.*\blateral\b.*)$", re.IGNORECASE)


def manifest_kind(path: Path) -> str | None:
    """``"csv"`` or ``"json"`` by the file's suffix, else None."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    return None


def is_lateral(view: str) -> bool:
    """A lateral view name: L, LL, RL, LAT, LATERAL, or any name with the word lateral."""
    return bool(_LATERAL.match(view.strip()))


class Manifest(TableSource):
    """A manifest file as an :class:`~mechtune.data.sources.ImageStudySource`.

    One item per row, in file order; see the module docstring for the columns. A CSV may
    be gzipped and may carry a byte-order mark and CRLF line ends; JSONL (or a JSON
    array) records use the same keys, labels as numbers or strings. A header needs the
    three required columns and at least one condition column or ``report``; any other
    column is an error naming it, so a misspelt condition is never ignored. ``report``
    is used as written (stripped), unlike the MIMIC reader's section extraction.

    Images keep their own bit depth on disk: a 16-bit PNG (PadChest) is windowed to 8 bits
    by its own minimum and maximum when loaded (``to_uint8``), never clipped.

    Splits: the ``split`` column when there is one (every row must name one; a patient's
    rows must agree, else ``split_conflict``), else a patient hash (``split_seed``,
    ``split_fractions``).

    Counted, never an error: ``lateral_only`` (a row whose view is lateral). Errors (naming
    file, line, column and value), or with ``skip_bad`` counts by reason: ``bad_label``,
    ``bad_id`` (an empty id), ``malformed`` (wrong width, empty image, bad JSON),
    ``duplicate_id`` (a study id twice), ``bad_split``, ``split_conflict``,
    ``missing_image``, ``unreadable_image``; more than ``max_missing`` missing or
    unreadable images fail even with ``skip_bad``.
    """

    layout = "manifest"

    def __init__(
        self,
        path: str | Path,
        *,
        uncertain: str = "skip",
        skip_bad: bool = False,
        max_missing: float = DEFAULT_MAX_MISSING,
        split_seed: int = 0,
        split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ) -> None:
        check_common(uncertain, max_missing, split_fractions)
        path = Path(path)
        kind = manifest_kind(path)
        if kind is None:
            raise DataError(
                f"{path}: a manifest is {', '.join(CSV_SUFFIXES + JSON_SUFFIXES)}; "
                f"got suffix {''.join(path.suffixes)!r}"
            )
        if not path.is_file():
            raise DataError(f"{path}: manifest file not found")
        self.path = path
        self._setup(
            path.parent,
            SourceReport(str(path), self.layout, uncertain_policy=uncertain),
            skip_bad=skip_bad,
            max_missing=max_missing,
            split_seed=split_seed,
            split_fractions=split_fractions,
        )
        rows = self._csv(uncertain) if kind == "csv" else self._json(uncertain)
        self.finish(list(self._candidates(rows)))

    @property
    def description(self) -> dict[str, Any]:
        return {**super().description, "manifest": str(self.path)}

    def _csv(self, uncertain: str) -> Iterator[tuple[_LabelSpec, _At, Any]]:
        name = str(self.path)
        with open_table(self.path) as fh:
            reader = csv.reader(_decoded(name, fh))
            at = _At(name, 1)
            try:
                header = [h.strip() for h in next(reader, [])]
            except csv.Error as exc:
                raise at.err(None, None, f"unreadable header ({exc})", "malformed") from None
            spec = self._spec(at, header, uncertain)
            for row_at, row in _csv_rows(name, reader):
                if not isinstance(row, DataFormatError) and len(row) != spec.width:
                    problem = f"expected {spec.width} fields, got {len(row)}"
                    row = row_at.err(None, ",".join(row)[:80], problem, "malformed")
                yield spec, row_at, row

    def _json(self, uncertain: str) -> Iterator[tuple[_LabelSpec, _At, Any]]:
        records = list(_records(str(self.path)))
        allowed = {*COLUMNS, *(c.column for c in load_ontology().conditions)}
        header: list[str] = []
        for at, record in records:
            if isinstance(record, dict):
                for key in record:
                    if key not in allowed:
                        problem = f"unknown key {key!r} (a manifest's keys are {', '.join(COLUMNS)} and CheXpert condition columns)"
                        raise at.err(key, key, problem, "malformed")
                    if key not in header:
                        header.append(key)
        spec = self._spec(_At(str(self.path), 1), header, uncertain)
        labels = {column for _, column in spec.labels}
        for at, record in records:
            if not isinstance(record, DataFormatError | dict):
                kind = type(record).__name__
                record = at.err(None, kind, "record is not a JSON object", "malformed")
            if isinstance(record, DataFormatError):
                yield spec, at, record
                continue
            row = [
                numeric_label(record.get(c))
                if c in labels
                else ("" if record.get(c) is None else str(record.get(c)))
                for c in header
            ]
            yield spec, at, row

    def _spec(self, at: _At, header: list[str], uncertain: str) -> _LabelSpec:
        spec = _label_spec(at, header, uncertain, meta=COLUMNS)
        absent = [c for c in REQUIRED if c not in spec.meta]
        if absent:
            raise at.err(
                None, ",".join(header)[:120], f"lacks column(s) {', '.join(absent)}", "malformed"
            )
        if not spec.labels and "report" not in spec.meta:
            problem = "has neither a condition column nor a report column"
            raise at.err(None, ",".join(header)[:120], problem, "malformed")
        self.report.notes["label_columns"] = [c for _, c in spec.labels]
        self.report.notes["split"] = (
            "split column"
            if "split" in spec.meta
            else f"patient hash (seed {self.split_seed}, fractions {list(self.split_fractions)})"
        )
        return spec

    def _candidates(self, rows: Iterator[tuple[_LabelSpec, _At, Any]]) -> Iterator[Candidate]:
        seen: dict[str, int] = {}
        for spec, at, row in rows:
            self.report.rows_read += 1
            try:
                if isinstance(row, DataFormatError):
                    raise row
                value = {c: row[i].strip() for c, i in spec.meta.items()}
                if not value["image"]:
                    raise at.err("image", "", "empty image path", "malformed")
                for column in ("patient_id", "study_id"):
                    if not value[column]:
                        raise at.err(column, "", f"empty {column}", "bad_id")
                study = value["study_id"]
                if study in seen:
                    problem = f"duplicate id (first at line {seen[study]})"
                    raise at.err("study_id", study, problem, "duplicate_id")
                findings, n_uncertain = _findings(spec, at, row)
                split = given_split(at, "split", value["split"]) if "split" in value else None
            except DataFormatError as err:
                self.fail(err)
                continue
            seen[study] = at.row
            if is_lateral(value.get("view", "")):
                problem = f"study {study} is a lateral view ({value['view']!r})"
                self.report.skip("lateral_only", f"{at.path}, line {at.row}: {problem}")
                continue
            ref = value["image"].replace("\\", "/")
            image = Path(ref) if PurePosixPath(ref).is_absolute() else self.root / ref
            yield Candidate(
                at=at,
                item_id=study,
                patient_id=value["patient_id"],
                findings=findings,
                image=image,
                image_ref=ref,
                n_uncertain=n_uncertain,
                split=split,
                report=value.get("report") or None,
            )


__all__ = ["COLUMNS", "Manifest", "is_lateral", "manifest_kind"]
