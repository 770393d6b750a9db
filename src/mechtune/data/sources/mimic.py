"""MIMIC-CXR-JPG on disk: images, CheXpert or NegBio labels, views, splits and reports.

The layout (MIMIC-CXR-JPG 2.0/2.1, PhysioNet; reports from MIMIC-CXR)::

    ROOT/
      mimic-cxr-2.0.0-metadata.csv.gz    dicom_id, subject_id, study_id, ViewPosition, ...
      mimic-cxr-2.0.0-chexpert.csv.gz    subject_id, study_id, 14 labels
      mimic-cxr-2.0.0-negbio.csv.gz      (the same columns; labels="negbio")
      mimic-cxr-2.0.0-split.csv.gz       dicom_id, study_id, subject_id, split (optional)
      files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
      files/p10/p10000032/s50414267.txt  (the report; optional, or under reports_root)

Tables may be plain or gzipped (``.gz`` is tried after the plain name).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mechtune.data.importers import DataFormatError, LabelRow, _At, read_label_rows
from mechtune.data.sources._common import (
    Candidate,
    TableSource,
    absorb,
    check_common,
    given_split,
    join_sections,
    parallel_map,
    table_rows,
)
from mechtune.data.sources.base import DEFAULT_MAX_MISSING, SourceReport, find_table
from mechtune.data.splits import DEFAULT_FRACTIONS
from mechtune.errors import ConfigError, DataError

PREFIX = "mimic-cxr-2.0.0"
METADATA = f"{PREFIX}-metadata.csv"
SPLIT = f"{PREFIX}-split.csv"
LABEL_TABLES = {"chexpert": f"{PREFIX}-chexpert.csv", "negbio": f"{PREFIX}-negbio.csv"}
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")  # in order of preference
_DIGITS = re.compile(r"[0-9]+")

# -- report sections ----------------------------------------------------------------------

# Headers whose first paragraph is not a finding: what was asked, how, compared with what.
NON_FINDING_HEADERS: frozenset[str] = frozenset(
    {
        "ADDENDUM",
        "CLINICAL HISTORY",
        "CLINICAL INDICATION",
        "CLINICAL INFORMATION",
        "COMPARISON",
        "COMPARISONS",
        "EXAM",
        "EXAMINATION",
        "HISTORY",
        "INDICATION",
        "INDICATIONS",
        "NOTIFICATION",
        "PROCEDURE",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "RECOMMENDATION",
        "RECOMMENDATIONS",
        "REFERENCE EXAM",
        "STUDY",
        "TECHNIQUE",
        "TYPE OF EXAMINATION",
        "WET READ",
    }
)
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&()#,'-]{1,60}?)[ \t]*:(?P<rest>.*)$")
_TITLE = re.compile(r"^[ \t]*(?P<name>FINAL REPORT|FINAL ADDENDUM|WET READ)\b[ \t]*(?P<rest>.*)$")
_BARE = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z ]{2,40}?)[ \t]*$")


def _header_name(name: str) -> str:
    return " ".join(name.upper().split())


def _is_header(name: str) -> bool:
    """An ALL-CAPS name, or a known one in any case ("Findings:", "Impression:")."""
    norm = _header_name(name)
    known = norm in NON_FINDING_HEADERS or _is_section(norm)
    letters = [ch for ch in name if ch.isalpha()]
    return known or (len(letters) >= 2 and all(ch.isupper() for ch in letters))


def _is_findings(norm: str) -> bool:
    return "FINDING" in norm and "PROVISIONAL" not in norm


def _is_impression(norm: str) -> bool:
    return ("IMPRESSION" in norm or norm in ("CONCLUSION", "CONCLUSIONS")) and (
        "PROVISIONAL" not in norm
    )


def _is_section(norm: str) -> bool:
    return _is_findings(norm) or _is_impression(norm)


def _sections(text: str) -> list[tuple[str | None, list[str]]]:
    """(header or None for the text before any header, body lines), in order."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        match = _TITLE.match(line)
        if match is None:
            match = _HEADER.match(line)
            if match is not None and not _is_header(match["name"]):
                match = None
        bare = _BARE.match(line)
        if match is None and bare is not None and _is_section(_header_name(bare["name"])):
            out.append((_header_name(bare["name"]), []))  # a bare "IMPRESSION" line
        elif match is not None:
            out.append((_header_name(match["name"]), [match["rest"]]))
        else:
            out[-1][1].append(line)
    return out


def _after_first_paragraph(lines: list[str]) -> str:
    """The body minus its first paragraph (text up to the first blank line)."""
    text = "\n".join(lines).strip()
    parts = re.split(r"\n[ \t]*\n", text, maxsplit=1)
    return parts[1] if len(parts) > 1 else ""


def report_sections(text: str) -> str | None:
    """The FINDINGS and IMPRESSION of a MIMIC-style free-text report, as one text.

    A header is a line that starts with a name and a colon (``FINDINGS:``, ``IMPRESSION:
    no acute process``): an ALL-CAPS name, or a known one in any case (``Findings:``);
    a bare ``FINDINGS`` or ``IMPRESSION`` line counts too, and so do ``FINAL REPORT`` (a
    title: the text under it is kept) and ``WET READ`` (a provisional read: a non-finding
    section). A section runs to the next header.

    - When the report has FINDINGS sections (any header containing ``FINDING``, such as
      ``FINDINGS AND IMPRESSION``, except the provisional ``PFI``) or IMPRESSION sections
      (a header containing ``IMPRESSION``, or ``CONCLUSION``), the result is the findings
      sections, then the impression sections, each in report order.
    - Otherwise it is the whole text minus the first paragraph of each known non-finding
      section (:data:`NON_FINDING_HEADERS`: indication, history, comparison, technique,
      examination, wet read, notification, ...): later paragraphs under such a header,
      the text before any header and the bodies of unknown headers are kept, since MIMIC
      reports without a FINDINGS header often put the findings there.

    Whitespace is normalised as in ``join_sections`` (one space; a period ends each
    section). Returns None when nothing is left (an empty report, or headers only).
    """
    sections = _sections(text)
    findings = [body for name, body in sections if name is not None and _is_findings(name)]
    impressions = [
        body
        for name, body in sections
        if name is not None and _is_impression(name) and not _is_findings(name)
    ]
    if findings or impressions:
        return join_sections("\n".join(body) for body in [*findings, *impressions])
    kept = []
    for name, body in sections:
        if name in NON_FINDING_HEADERS:
            kept.append(_after_first_paragraph(body))
        else:
            kept.append("\n".join(body))
    return join_sections(kept)


# -- the reader ---------------------------------------------------------------------------


@dataclass
class _MetaStudy:
    subject: str
    at: _At  # its first metadata row
    images: list[tuple[str, str]] = field(default_factory=list)  # (dicom_id, ViewPosition)


def study_folder(subject: str, study: str) -> str:
    """``files/pXX/p<subject>/s<study>``: MIMIC's folder for one study."""
    return f"files/p{subject[:2]}/p{subject}/s{study}"


class MimicCxrJpg(TableSource):
    """A MIMIC-CXR-JPG folder as an :class:`~mechtune.data.sources.ImageStudySource`.

    Items follow the label table's rows (``mimic-cxr-2.0.0-chexpert.csv(.gz)``, or
    ``-negbio`` with ``labels="negbio"``): ``study_id`` is the MIMIC study id's digits,
    ``patient_id`` the subject id's, ``findings`` the row's labels under the ``uncertain``
    policy (``skip``, ``present``, ``absent``: U-Ignore, U-Ones, U-Zeros), ``image_ref``
    the image path relative to ``root``, ``report`` the FINDINGS and IMPRESSION of
    ``files/pXX/p<subject>/s<study>.txt`` under ``reports_root`` (default ``root``) by
    :func:`report_sections`, or None without a report file (``reports=False`` reads none).

    **One image per study:** the first PA image by ``dicom_id`` (ViewPosition from
    ``mimic-cxr-2.0.0-metadata.csv(.gz)``, required), else the first AP. With
    ``all_frontal=True`` every PA and AP image is an item of its own, ``study_id``
    ``"<study_id>/<dicom_id>"``, sharing the study's findings and report. An image file is
    ``<dicom_id>.<ext>`` for the first of ``image_ext`` that exists.

    **Splits:** from ``mimic-cxr-2.0.0-split.csv(.gz)`` when present (``validate`` is our
    ``val``), else a patient hash (``split_seed``, ``split_fractions``). Every image of a
    study listed in the split file must agree and every study of a patient must agree
    (else reason ``split_conflict``), and the study needs a split row (``no_split_row``).

    **Counted, never an error** (``report.skipped``): ``lateral_only`` (a study with no PA
    or AP image), ``no_images`` (a label row whose study has no metadata row) and
    ``no_label_row`` (a metadata study without a usable label row: none in the table, or
    one skipped as bad and counted under its own reason too).

    **Errors** (``DataFormatError`` naming file, row, column and value), or with
    ``skip_bad`` counts by reason: ``bad_label``, ``bad_id``, ``malformed``,
    ``duplicate_id`` (a study's second label row, a dicom_id's second metadata or split
    row), ``inconsistent_id`` (one study under two subjects), ``bad_view``, ``bad_split``,
    ``split_conflict``, ``no_split_row``, ``missing_image``, ``unreadable_image`` (the
    header is read with Pillow when the source is built), ``bad_report`` (not UTF-8).
    More than ``max_missing`` (a fraction) missing or unreadable images fail even with
    ``skip_bad``. A missing metadata or label table raises ``DataError`` naming it;
    unknown option values raise ``ConfigError``.
    """

    layout = "mimic-cxr-jpg"

    def __init__(
        self,
        root: str | Path,
        *,
        labels: str = "chexpert",
        uncertain: str = "skip",
        skip_bad: bool = False,
        max_missing: float = DEFAULT_MAX_MISSING,
        all_frontal: bool = False,
        reports: bool = True,
        reports_root: str | Path | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
        image_ext: Sequence[str] = ("jpg", "png"),
    ) -> None:
        if labels not in LABEL_TABLES:
            raise ConfigError(f"labels must be one of {tuple(LABEL_TABLES)}, got {labels!r}")
        check_common(uncertain, max_missing, split_fractions)
        exts = (image_ext,) if isinstance(image_ext, str) else tuple(image_ext)
        if not exts or not all(isinstance(e, str) and e.strip(". ") for e in exts):
            raise ConfigError(f"image_ext must name one or more extensions, got {image_ext!r}")
        self.image_ext = tuple(e.strip(". ") for e in exts)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (expected a MIMIC-CXR-JPG root)")
        self._setup(
            root,
            SourceReport(str(root), self.layout, uncertain_policy=uncertain),
            skip_bad=skip_bad,
            max_missing=max_missing,
            split_seed=split_seed,
            split_fractions=split_fractions,
        )
        self.labels, self.all_frontal = labels, all_frontal
        self.reports_root = Path(reports_root) if reports_root is not None else root
        if reports and not self.reports_root.is_dir():
            raise DataError(f"{self.reports_root}: reports_root is not a folder")
        meta = self._metadata(self._table(METADATA, "for ViewPosition"))
        label_path = self._table(LABEL_TABLES[labels], f"for labels={labels!r}")
        rows, imported = read_label_rows(
            label_path, uncertain=uncertain, skip_bad=skip_bad, kind="mimic"
        )
        absorb(self.report, imported)
        split_path = find_table(root, SPLIT)
        splits = self._split_table(split_path, meta) if split_path is not None else None
        self.report.notes["split"] = (
            f"official ({split_path.name})"
            if split_path is not None
            else f"patient hash (seed {split_seed}, fractions {list(self.split_fractions)})"
        )
        self.report.notes["labels"] = label_path.name
        candidates = self._candidates(rows, meta, splits, split_path, reports)
        self.finish(candidates, report_sections)

    def _table(self, name: str, why: str) -> Path:
        path = find_table(self.root, name)
        if path is None:
            raise DataError(
                f"{self.root}: no {name} or {name}.gz; a MIMIC-CXR-JPG folder needs it {why}"
            )
        return path

    def _metadata(self, path: Path) -> dict[str, _MetaStudy]:
        """study_id -> its subject and (dicom_id, ViewPosition) images."""
        studies: dict[str, _MetaStudy] = {}
        seen: set[str] = set()
        views: Counter[str] = Counter()
        for at, row in table_rows(path, ("dicom_id", "subject_id", "study_id", "ViewPosition")):
            try:
                if isinstance(row, DataFormatError):
                    raise row
                dicom, subject, study = row["dicom_id"], row["subject_id"], row["study_id"]
                for column, value in (("subject_id", subject), ("study_id", study)):
                    if not _DIGITS.fullmatch(value):
                        raise at.err(column, value, f"id {value!r} is not an integer", "bad_id")
                if not dicom:
                    raise at.err("dicom_id", dicom, "empty dicom_id", "bad_id")
                if dicom in seen:
                    raise at.err("dicom_id", dicom, "duplicate id", "duplicate_id")
                entry = studies.setdefault(study, _MetaStudy(subject, at))
                if entry.subject != subject:
                    problem = (
                        f"study {study} is listed under subject {subject} here but under "
                        f"{entry.subject} at line {entry.at.row}"
                    )
                    raise at.err("subject_id", subject, problem, "inconsistent_id")
            except DataFormatError as err:
                self.fail(err)
                continue
            seen.add(dicom)
            entry.images.append((dicom, row["ViewPosition"].upper()))
            views[row["ViewPosition"].upper() or "(blank)"] += 1
        self.report.notes["metadata_studies"] = len(studies)
        self.report.notes["metadata_images"] = len(seen)
        self.report.notes["views"] = dict(sorted(views.items()))
        return studies

    def _split_table(self, path: Path, meta: dict[str, _MetaStudy]) -> dict[str, tuple[str, _At]]:
        """dicom_id -> (our split, its row), for dicoms of the metadata."""
        study_of = {d: s for s, m in meta.items() for d, _ in m.images}
        out: dict[str, tuple[str, _At]] = {}
        unmatched = 0
        for at, row in table_rows(path, ("dicom_id", "split")):
            try:
                if isinstance(row, DataFormatError):
                    raise row
                dicom = row["dicom_id"]
                split = given_split(at, "split", row["split"])
                if dicom in out:
                    raise at.err("dicom_id", dicom, "duplicate id", "duplicate_id")
                if dicom not in study_of:
                    unmatched += 1
                    continue
                if row.get("study_id", study_of[dicom]) != study_of[dicom]:
                    problem = f"dicom {dicom} belongs to study {study_of[dicom]} in {METADATA}"
                    raise at.err("study_id", row["study_id"], problem, "inconsistent_id")
            except DataFormatError as err:
                self.fail(err)
                continue
            out[dicom] = (split, at)
        self.report.notes["split_rows_without_metadata"] = unmatched
        return out

    def _candidates(
        self,
        rows: list[LabelRow],
        meta: dict[str, _MetaStudy],
        splits: dict[str, tuple[str, _At]] | None,
        split_path: Path | None,
        reports: bool,
    ) -> list[Candidate]:
        pending: list[tuple[LabelRow, str, str | None, list[str]]] = []
        several = 0
        for row in rows:
            study = row.study
            entry = meta.get(study.study_id)
            try:
                if entry is None:
                    problem = f"study {study.study_id} has no image in {METADATA}"
                    self.report.skip("no_images", f"{row.at.path}, line {row.at.row}: {problem}")
                    continue
                if entry.subject != study.patient_id:
                    problem = (
                        f"study {study.study_id} has subject {entry.subject} in {METADATA} "
                        f"(line {entry.at.row})"
                    )
                    raise row.at.err("subject_id", study.patient_id, problem, "inconsistent_id")
                frontal = {
                    v: sorted(d for d, view in entry.images if view == v) for v in FRONTAL_VIEWS
                }
                chosen = [d for v in FRONTAL_VIEWS for d in frontal[v]]
                if not chosen:
                    views = sorted({view or "(blank)" for _, view in entry.images})
                    problem = f"study {study.study_id} has no PA or AP image (views {views})"
                    self.report.skip("lateral_only", f"{row.at.path}, line {row.at.row}: {problem}")
                    continue
                several += len(chosen) > 1
                split = None
                if splits is not None:
                    assert split_path is not None
                    split = self._study_split(row, entry, splits, split_path)
            except DataFormatError as err:
                self.fail(err)
                continue
            pending.append((row, entry.subject, split, chosen if self.all_frontal else chosen[:1]))
        self.report.notes["studies_with_several_frontal"] = several
        labelled = {row.study.study_id for row in rows}
        for study_id, entry in meta.items():
            if study_id not in labelled:
                problem = f"study {study_id} has no usable row in the label table"
                self.report.skip("no_label_row", f"{entry.at.path}, line {entry.at.row}: {problem}")
        folders = [study_folder(subject, r.study.study_id) for r, subject, _, _ in pending]
        names = [
            [f"{folder}/{dicom}" for dicom in dicoms]
            for folder, (_, _, _, dicoms) in zip(folders, pending, strict=True)
        ]
        refs = parallel_map(self._existing, [n for group in names for n in group])
        out: list[Candidate] = []
        it = iter(refs)
        for folder, (row, subject, split, dicoms) in zip(folders, pending, strict=True):
            report_file = self.reports_root / f"{folder}.txt" if reports else None
            for dicom in dicoms:
                ref = next(it)
                out.append(
                    Candidate(
                        at=row.at,
                        item_id=f"{row.study.study_id}/{dicom}"
                        if self.all_frontal
                        else row.study.study_id,
                        patient_id=subject,
                        findings=row.study.findings,
                        image=self.root / ref,
                        image_ref=ref,
                        n_uncertain=row.n_uncertain,
                        split=split,
                        report_file=report_file,
                        group=row.study.study_id,
                    )
                )
        return out

    def _existing(self, stem: str) -> str:
        """``stem.<ext>`` for the first extension whose file exists, else the first."""
        for ext in self.image_ext:
            if (self.root / f"{stem}.{ext}").is_file():
                return f"{stem}.{ext}"
        return f"{stem}.{self.image_ext[0]}"

    @staticmethod
    def _study_split(
        row: LabelRow,
        entry: _MetaStudy,
        splits: dict[str, tuple[str, _At]],
        split_path: Path,
    ) -> str:
        found = [(d, *splits[d]) for d, _ in entry.images if d in splits]
        if not found:
            problem = f"no image of study {row.study.study_id} has a row in {split_path.name}"
            raise row.at.err("study_id", row.study.study_id, problem, "no_split_row")
        dicom, split, at = found[0]
        for other, other_split, other_at in found[1:]:
            if other_split != split:
                problem = (
                    f"study {row.study.study_id}: dicom {other} is in split {other_split!r} "
                    f"but dicom {dicom} (line {at.row}) is in {split!r}"
                )
                raise other_at.err("split", other_split, problem, "split_conflict")
        return split


__all__ = ["NON_FINDING_HEADERS", "MimicCxrJpg", "report_sections", "study_folder"]
