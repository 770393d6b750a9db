"""PadChest into a manifest: one frontal image per study, labels mapped to CheXpert's.

PadChest (Bustos et al. 2020) ships one CSV
(``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``) with, among others, the
columns ``ImageID, ImageDir, StudyID, PatientID, Projection, Labels`` and 16-bit PNG
images, either in numbered folders (``images_root/<ImageDir>/<ImageID>``) or all in one
folder (``images_root/<ImageID>``). :func:`padchest_manifest` writes a
:mod:`~mechtune.data.sources.manifest` CSV that :class:`~mechtune.data.sources.Manifest`
reads; the 16-bit images are windowed by their own range when loaded.

``Labels`` is a Python-style list string (``"['cardiomegaly', 'pleural effusion']"``),
parsed with :func:`ast.literal_eval` (never ``eval``). PadChest labels are
**presence-only**: a mapped label makes its CheXpert condition 1.0 (present); every
condition the study does not name stays blank (not mentioned), never 0.0, since PadChest
does not say a finding is absent. ``normal`` maps to No Finding.
"""

from __future__ import annotations

import ast
import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mechtune.data.importers import DataFormatError, _At
from mechtune.data.ontology import load_ontology
from mechtune.data.sources._common import table_rows
from mechtune.data.sources.base import SourceReport

# PadChest label (lower case) -> CheXpert column. Labels not listed are counted in
# report.notes["unmapped_labels"] and otherwise ignored. docs/data.md shows this table.
PADCHEST_TO_CHEXPERT: dict[str, str] = {
    "normal": "No Finding",
    "cardiomegaly": "Cardiomegaly",
    "mediastinal enlargement": "Enlarged Cardiomediastinum",
    "superior mediastinal enlargement": "Enlarged Cardiomediastinum",
    "pleural effusion": "Pleural Effusion",
    "loculated pleural effusion": "Pleural Effusion",
    "loculated fissural effusion": "Pleural Effusion",
    "costophrenic angle blunting": "Pleural Effusion",
    "hydropneumothorax": "Pleural Effusion",
    "empyema": "Pleural Effusion",
    "pleural thickening": "Pleural Other",
    "apical pleural thickening": "Pleural Other",
    "calcified pleural thickening": "Pleural Other",
    "pleural plaques": "Pleural Other",
    "calcified pleural plaques": "Pleural Other",
    "pneumothorax": "Pneumothorax",
    "atelectasis": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "lobar atelectasis": "Atelectasis",
    "segmental atelectasis": "Atelectasis",
    "round atelectasis": "Atelectasis",
    "total atelectasis": "Atelectasis",
    "atelectasis basal": "Atelectasis",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "atypical pneumonia": "Pneumonia",
    "pulmonary edema": "Edema",
    "nodule": "Lung Lesion",
    "multiple nodules": "Lung Lesion",
    "mass": "Lung Lesion",
    "pulmonary mass": "Lung Lesion",
    "lung metastasis": "Lung Lesion",
    "infiltrates": "Lung Opacity",
    "alveolar pattern": "Lung Opacity",
    "interstitial pattern": "Lung Opacity",
    "reticular interstitial pattern": "Lung Opacity",
    "reticulonodular interstitial pattern": "Lung Opacity",
    "ground glass pattern": "Lung Opacity",
    "fracture": "Fracture",
    "rib fracture": "Fracture",
    "clavicle fracture": "Fracture",
    "humeral fracture": "Fracture",
    "vertebral fracture": "Fracture",
    "callus rib fracture": "Fracture",
    "vertebral compression": "Fracture",
    "pacemaker": "Support Devices",
    "dual chamber device": "Support Devices",
    "single chamber device": "Support Devices",
    "electrical device": "Support Devices",
    "endotracheal tube": "Support Devices",
    "nsg tube": "Support Devices",
    "tracheostomy tube": "Support Devices",
    "chest drain tube": "Support Devices",
    "catheter": "Support Devices",
    "central venous catheter": "Support Devices",
    "central venous catheter via jugular vein": "Support Devices",
    "central venous catheter via subclavian vein": "Support Devices",
    "reservoir central venous catheter": "Support Devices",
}
# A PadChest label that holds two conditions at once.
ALSO: dict[str, str] = {"hydropneumothorax": "Pneumothorax"}
EXCLUDE = "exclude"  # PadChest's mark for an image not suited to labelling: skipped
FRONTAL: dict[str, str] = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP"}
LATERAL: frozenset[str] = frozenset({"L", "LATERAL", "LL", "RL"})
COLUMNS: tuple[str, ...] = ("ImageID", "StudyID", "PatientID", "Projection", "Labels")


@dataclass
class _Image:
    at: _At
    image_id: str
    study: str
    patient: str
    view: str
    conditions: tuple[str, ...]
    image: str  # relative to images_root
    unmapped: tuple[str, ...]  # its labels that map to no CheXpert condition


def parse_labels(at: _At, text: str) -> list[str]:
    """A PadChest ``Labels`` value as lower-case stripped labels (blank: none).

    Raises ``DataFormatError`` (reason ``bad_label``) naming the row and value when it is
    not a Python-style list of strings.
    """
    if not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise at.err("Labels", text[:80], "Labels is not a list of strings", "bad_label")
    return [" ".join(v.split()).lower() for v in value if v.strip()]


def padchest_manifest(
    csv_path: str | Path, images_root: str | Path, out_path: str | Path, *, skip_bad: bool = False
) -> SourceReport:
    """Write a manifest CSV for PadChest; return what was read, written and skipped.

    One image per study: the first PA by ``ImageID``, else the first AP (``AP`` and
    ``AP_horizontal``). Labels map by :data:`PADCHEST_TO_CHEXPERT` (presence-only, see the
    module docstring); the manifest's ``image`` is ``<ImageDir>/<ImageID>`` when that
    file exists under ``images_root``, else ``<ImageID>``, written relative to the
    manifest's folder. The output is written atomically.

    ``report.skipped`` counts image rows by reason: ``lateral_view`` (L and other lateral
    projections), ``other_projection`` (COSTAL, EXCLUDE, blank, ...), ``extra_frontal``
    (a study's other frontal images), ``excluded`` (labelled ``exclude``), ``no_labels``
    (an empty ``Labels``), and, as errors unless ``skip_bad``, ``bad_label``, ``bad_id``
    ``duplicate_id`` (an ImageID twice) and ``inconsistent_id`` (a study under two
    patients). ``notes`` counts ``studies_without_frontal`` (no image kept),
    ``unmapped_labels`` (label -> kept images naming it), ``missing_images`` (written, for the manifest
    reader to report) and ``normal_with_findings``. Raises ``DataFormatError`` naming
    file, line, column and value.
    """
    csv_path, images, out = Path(csv_path), Path(images_root), Path(out_path)
    report = SourceReport(str(csv_path), "padchest")
    unmapped: Counter[str] = Counter()
    by_study: dict[str, list[_Image]] = {}
    seen: set[str] = set()
    owner: dict[str, tuple[str, int]] = {}  # study -> (patient, its first line)
    normal_with = missing = 0

    def fail(err: DataFormatError) -> None:
        if not skip_bad:
            raise err
        report.skip(err)

    for at, row in table_rows(csv_path, COLUMNS):
        report.rows_read += 1
        try:
            if isinstance(row, DataFormatError):
                raise row
            for column in ("ImageID", "StudyID", "PatientID"):
                if not row[column]:
                    raise at.err(column, "", f"empty {column}", "bad_id")
            if row["ImageID"] in seen:
                raise at.err("ImageID", row["ImageID"], "duplicate id", "duplicate_id")
            labels = parse_labels(at, row["Labels"])
        except DataFormatError as err:
            fail(err)
            continue
        patient, line = owner.setdefault(row["StudyID"], (row["PatientID"], at.row))
        if patient != row["PatientID"]:
            problem = f"study {row['StudyID']} is under patient {patient} at line {line}"
            fail(at.err("PatientID", row["PatientID"], problem, "inconsistent_id"))
            continue
        seen.add(row["ImageID"])
        frontal = by_study.setdefault(row["StudyID"], [])
        projection = row["Projection"].strip().upper()
        where = f"{at.path}, line {at.row}"
        if projection in LATERAL:
            report.skip("lateral_view", f"{where}: lateral image {row['ImageID']}")
            continue
        if projection not in FRONTAL:
            report.skip("other_projection", f"{where}: projection {row['Projection']!r}")
            continue
        if EXCLUDE in labels:
            report.skip("excluded", f"{where}: image {row['ImageID']} is labelled exclude")
            continue
        if not labels:
            report.skip("no_labels", f"{where}: image {row['ImageID']} has no labels")
            continue
        columns = []
        for label in labels:
            if label in PADCHEST_TO_CHEXPERT:
                columns += [PADCHEST_TO_CHEXPERT[label], *([ALSO[label]] if label in ALSO else [])]
        folder = row.get("ImageDir", "").strip()
        image = f"{folder}/{row['ImageID']}" if folder else row["ImageID"]
        if folder and not (images / image).is_file() and (images / row["ImageID"]).is_file():
            image = row["ImageID"]
        frontal.append(
            _Image(
                at,
                row["ImageID"],
                row["StudyID"],
                row["PatientID"],
                FRONTAL[projection],
                tuple(dict.fromkeys(columns)),
                image,
                tuple(label for label in labels if label not in PADCHEST_TO_CHEXPERT),
            )
        )
    kept, without_frontal = [], 0
    for study, frontal in by_study.items():
        if not frontal:
            without_frontal += 1
            continue
        frontal.sort(key=lambda im: (im.view != "PA", im.image_id))
        chosen = frontal[0]
        kept.append(chosen)
        missing += not (images / chosen.image).is_file()
        unmapped.update(chosen.unmapped)
        normal_with += "No Finding" in chosen.conditions and len(chosen.conditions) > 1
        for extra in frontal[1:]:
            report.skip(
                "extra_frontal",
                f"{extra.at.path}, line {extra.at.row}: study {study} "
                f"keeps image {frontal[0].image_id}, not {extra.image_id}",
            )
    _write(out, images, kept)
    report.items = len(kept)
    report.notes.update(
        studies_without_frontal=without_frontal,
        unmapped_labels=dict(unmapped.most_common()),
        missing_images=missing,
        normal_with_findings=normal_with,
    )
    return report


def _write(out: Path, images: Path, kept: list[_Image]) -> None:
    from mechtune.data.io import atomic_path  # pyarrow behind it: only when writing

    conditions = [c.column for c in load_ontology().conditions]
    base = os.path.abspath(out.parent)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "patient_id", "study_id", "view", *conditions])
    for im in kept:
        path = os.path.relpath(os.path.abspath(images / im.image), base).replace(os.sep, "/")
        labels = ["1.0" if c in im.conditions else "" for c in conditions]
        writer.writerow([path, im.patient, im.study, im.view, *labels])
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


__all__ = ["PADCHEST_TO_CHEXPERT", "padchest_manifest", "parse_labels"]
