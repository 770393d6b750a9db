"""CheXpert on disk: ``train.csv``/``valid.csv`` with image paths, views and labels.

The layout (CheXpert v1.0, Irvin et al. 2019; the ``-small`` copy has the same shape)::

    PARENT/CheXpert-v1.0/              <- root
      train.csv    Path, Sex, Age, Frontal/Lateral, AP/PA, 14 labels
      valid.csv
      train/patient00001/study1/view1_frontal.jpg
      valid/patient64541/study1/view1_frontal.jpg

A ``Path`` value names its image from the dataset's parent folder
(``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg``). Optional reports come
from a CheXpert Plus-style CSV (``path_to_image``, ``section_findings``,
``section_impression``; Chambon et al. 2024).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mechtune.data.importers import DataFormatError, LabelRow, _At, read_label_rows
from mechtune.data.sources._common import (
    Candidate,
    TableSource,
    absorb,
    check_common,
    join_sections,
    parallel_map,
    table_rows,
)
from mechtune.data.sources.base import DEFAULT_MAX_MISSING, SourceReport, find_table
from mechtune.data.splits import DEFAULT_FRACTIONS
from mechtune.errors import ConfigError, DataError

TABLES: tuple[str, ...] = ("train.csv", "valid.csv")
REPORT_COLUMNS: tuple[str, ...] = ("path_to_image", "section_findings", "section_impression")
_PATIENT = re.compile(r"patient\d+")
_STUDY = re.compile(r"study\d+")


def chexpert_root(path: Path, files: Sequence[str] = TABLES) -> Path | None:
    """``path`` if it holds one of ``files`` (plain or ``.gz``), else its one
    ``CheXpert-v1.0*`` subfolder that does, else None."""
    if any(find_table(path, f) for f in files):
        return path
    for sub in sorted(path.glob("CheXpert-v1.0*")):
        if sub.is_dir() and any(find_table(sub, f) for f in files):
            return sub
    return None


def image_key(at: _At, column: str, path: str) -> tuple[str, str]:
    """(study key ``<split folder>/patientNNNNN/studyN``, image key ``<study key>/<file>``)
    from a CheXpert path, whatever comes before the split folder."""
    parts = [p for p in re.split(r"[/\\]", path) if p]
    found = [i for i, p in enumerate(parts) if _PATIENT.fullmatch(p)]
    i = found[0] if found else -1
    if i < 1 or i + 2 >= len(parts) or not _STUDY.fullmatch(parts[i + 1]):
        problem = f"path {path!r} is not <split>/patientNNNNN/studyN/<image>"
        raise at.err(column, path, problem, "bad_id")
    study = "/".join(parts[i - 1 : i + 2])
    return study, "/".join(parts[i - 1 :])


class CheXpert(TableSource):
    """A CheXpert folder as an :class:`~mechtune.data.sources.ImageStudySource`.

    ``root`` is the folder holding ``train.csv``/``valid.csv`` (plain or ``.gz``; only
    those of ``files`` that exist are read, at least one must), or a folder holding it as
    its ``CheXpert-v1.0*`` subfolder. A ``Path`` whose first component is the root's name
    is resolved against the root's parent, any other against the root; failing that, the
    path without its first component against the root (a renamed copy). ``image_ref`` is
    the image path relative to the root.

    Rows are images. Items are studies: ``study_id`` ``"<train|valid>/patientNNNNN/studyN"``,
    ``patient_id`` ``"patientNNNNN"``, findings from the chosen image's row under the
    ``uncertain`` policy. **One image per study:** the first PA image by path, else the
    first AP, else the first other frontal; with ``all_frontal=True`` every frontal image
    is an item, ``study_id`` ``"<study>/<file stem>"``. Splits: a patient hash
    (``split_seed``, ``split_fractions``); the official valid set is not special.

    ``reports_csv`` (CheXpert Plus style) gives each study's report: the findings then
    the impression (as ``join_sections``) of the row whose ``path_to_image`` is the chosen
    image, else of the study's first row by path; paths are matched from the split
    folder on, so any prefix works.

    Counted, never an error: ``lateral_only`` (a study without a frontal image). Errors,
    or with ``skip_bad`` counts by reason: ``bad_label``, ``bad_id``, ``malformed``,
    ``duplicate_id`` (a path twice, in a label or the reports table), ``bad_view`` (a
    ``Frontal/Lateral`` value that is neither), ``missing_image``, ``unreadable_image``;
    more than ``max_missing`` missing or unreadable images fail even with ``skip_bad``.
    """

    layout = "chexpert"

    def __init__(
        self,
        root: str | Path,
        *,
        uncertain: str = "skip",
        skip_bad: bool = False,
        max_missing: float = DEFAULT_MAX_MISSING,
        all_frontal: bool = False,
        reports_csv: str | Path | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
        files: Sequence[str] = TABLES,
    ) -> None:
        check_common(uncertain, max_missing, split_fractions)
        files = (files,) if isinstance(files, str) else tuple(files)
        if not files or not all(isinstance(f, str) and f for f in files):
            raise ConfigError(f"files must name one or more label CSVs, got {files!r}")
        given = Path(root)
        if not given.is_dir():
            raise DataError(f"{given}: not a folder (expected a CheXpert root)")
        found = chexpert_root(given, files)
        if found is None:
            raise DataError(
                f"{given}: no {' or '.join(files)} (plain or .gz) here or in a "
                "CheXpert-v1.0* subfolder"
            )
        self._setup(
            found,
            SourceReport(str(found), self.layout, uncertain_policy=uncertain),
            skip_bad=skip_bad,
            max_missing=max_missing,
            split_seed=split_seed,
            split_fractions=split_fractions,
        )
        self.all_frontal = all_frontal
        groups: dict[str, list[tuple[LabelRow, str]]] = {}
        tables = []
        for name in files:
            path = find_table(found, name)
            if path is None:
                continue
            tables.append(path.name)
            rows, imported = read_label_rows(
                path, uncertain=uncertain, skip_bad=skip_bad, kind="chexpert"
            )
            absorb(self.report, imported)
            for row in rows:
                try:
                    study, _ = image_key(row.at, "Path", row.study.study_id)
                    view = row.meta["Frontal/Lateral"].lower()
                    if view not in ("frontal", "lateral"):
                        problem = f"Frontal/Lateral {view!r} is neither Frontal nor Lateral"
                        raise row.at.err("Frontal/Lateral", view, problem, "bad_view")
                except DataFormatError as err:
                    self.fail(err)
                    continue
                groups.setdefault(study, []).append((row, view))
        self.report.notes["tables"] = tables
        reports = self._reports(Path(reports_csv)) if reports_csv is not None else None
        self.finish(self._candidates(groups, reports))

    def _candidates(
        self,
        groups: dict[str, list[tuple[LabelRow, str]]],
        reports: dict[str, str | None] | None,
    ) -> list[Candidate]:
        chosen: list[tuple[str, LabelRow]] = []
        several = differing = from_other_view = 0
        for study, rows in groups.items():
            frontal = sorted((r for r, view in rows if view == "frontal"), key=_path)
            order = {"PA": 0, "AP": 1}
            frontal.sort(key=lambda r: order.get(r.meta["AP/PA"].upper(), 2))
            if not frontal:
                first = rows[0][0]
                problem = f"study {study} has no frontal image"
                self.report.skip("lateral_only", f"{first.at.path}, line {first.at.row}: {problem}")
                continue
            several += len(frontal) > 1
            differing += len({r.study.findings for r, _ in rows}) > 1
            for row in frontal if self.all_frontal else frontal[:1]:
                chosen.append((study, row))
        refs = parallel_map(self._resolve, [_path(r) for _, r in chosen])
        out = []
        for (study, row), ref in zip(chosen, refs, strict=True):
            text = None
            if reports is not None:
                keys = [image_key(row.at, "Path", _path(row))[1]]
                keys += sorted(image_key(r.at, "Path", _path(r))[1] for r, _ in groups[study])
                hit = next((k for k in keys if k in reports), None)
                from_other_view += hit is not None and hit != keys[0]
                text = reports.get(hit) if hit is not None else None
            stem = PurePosixPath(_path(row)).stem
            out.append(
                Candidate(
                    at=row.at,
                    item_id=f"{study}/{stem}" if self.all_frontal else study,
                    patient_id=row.study.patient_id,
                    findings=row.study.findings,
                    image=self.root / ref,
                    image_ref=ref,
                    n_uncertain=row.n_uncertain,
                    report=text,
                    group=study,
                )
            )
        self.report.notes["studies_with_several_frontal"] = several
        self.report.notes["studies_whose_rows_differ_in_labels"] = differing
        if reports is not None:
            self.report.notes["reports_from_another_view"] = from_other_view
        return out

    def _resolve(self, path: str) -> str:
        """A ``Path`` value as a path relative to the root (see the class docstring)."""
        parts = PurePosixPath(path.replace("\\", "/")).parts
        options = [PurePosixPath(*parts[1:]).as_posix()] if len(parts) > 1 else []
        if parts and parts[0] == self.root.name:
            return options[0]
        options.insert(0, PurePosixPath(*parts).as_posix())
        return next((o for o in options if (self.root / o).is_file()), options[0])

    def _reports(self, path: Path) -> dict[str, str | None]:
        """image key -> findings + impression, from a CheXpert Plus-style CSV."""
        if not path.is_file():
            raise DataError(f"{path}: reports_csv is not a file")
        out: dict[str, str | None] = {}
        for at, row in table_rows(path, REPORT_COLUMNS):
            try:
                if isinstance(row, DataFormatError):
                    raise row
                _, key = image_key(at, "path_to_image", row["path_to_image"])
                if key in out:
                    raise at.err(
                        "path_to_image", row["path_to_image"], "duplicate id", "duplicate_id"
                    )
            except DataFormatError as err:
                self.fail(err)
                continue
            out[key] = join_sections([row["section_findings"], row["section_impression"]])
        self.report.notes["report_rows"] = len(out)
        return out


def _path(row: LabelRow) -> str:
    return row.study.study_id  # a CheXpert label row's study id is its Path


__all__ = ["TABLES", "CheXpert", "chexpert_root", "image_key"]
