"""Hand-made dirty fixtures for the image-study readers, built in tmp_path from code."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]


def write_image(path: Path, size: int = 12, seed: int = 0, mode: str = "L") -> Path:
    """A small random image; the format follows the suffix (.jpg, .png)."""
    rng = np.random.default_rng(seed)
    shape = (size, size + 2) if mode == "L" else (size, size + 2, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def write_text(path: Path, text: str, *, gz: bool = False, bom: bool = False, crlf: bool = False):
    """Write a table as UTF-8, optionally gzipped, with a BOM, with CRLF line ends."""
    if crlf:
        text = text.replace("\n", "\r\n")
    data = (("\ufeff" if bom else "") + text).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def label_fields(values: dict[str, str]) -> list[str]:
    unknown = set(values) - set(LABELS)
    assert not unknown, unknown
    return [values.get(c, "") for c in LABELS]


@dataclass
class MimicStudy:
    subject: str
    study: str
    labels: dict[str, str] = field(default_factory=dict)
    images: list[tuple[str, str]] = field(default_factory=list)  # (dicom_id, ViewPosition)
    split: str = "train"  # for every image, unless splits says otherwise
    splits: dict[str, str] = field(default_factory=dict)
    report: str | None = None
    label_row: bool = True


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:

 {findings}

 IMPRESSION:

 {impression}
"""


def mimic_folder(
    root: Path,
    studies: Sequence[MimicStudy],
    *,
    gz: bool = True,
    bom: bool = False,
    crlf: bool = False,
    split_file: bool = True,
    ext: str = "jpg",
    label_table: str = "chexpert",
    extra_label_rows: Sequence[str] = (),
    extra_meta_rows: Sequence[str] = (),
    write_images: bool = True,
) -> Path:
    """A MIMIC-CXR-JPG folder: tables, images and reports for ``studies``."""
    meta = [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns"
    ]
    labels = [",".join(["subject_id", "study_id", *LABELS])]
    split = ["dicom_id,study_id,subject_id,split"]
    for s in studies:
        folder = root / "files" / f"p{s.subject[:2]}" / f"p{s.subject}"
        if s.label_row:
            labels.append(",".join([s.subject, s.study, *label_fields(s.labels)]))
        for i, (dicom, view) in enumerate(s.images):
            meta.append(f"{dicom},{s.subject},{s.study},CHEST (PA AND LAT),{view},12,14")
            split.append(f"{dicom},{s.study},{s.subject},{s.splits.get(dicom, s.split)}")
            if write_images:
                write_image(folder / f"s{s.study}" / f"{dicom}.{ext}", seed=int(s.study) + i)
        if s.report is not None:
            write_text(folder / f"s{s.study}.txt", s.report)
    labels += extra_label_rows
    meta += extra_meta_rows
    opts = {"gz": gz, "bom": bom, "crlf": crlf}
    write_text(root / "mimic-cxr-2.0.0-metadata.csv", "\n".join(meta) + "\n", **opts)
    write_text(root / f"mimic-cxr-2.0.0-{label_table}.csv", "\n".join(labels) + "\n", **opts)
    if split_file:
        write_text(root / "mimic-cxr-2.0.0-split.csv", "\n".join(split) + "\n", **opts)
    return root


def basic_mimic(root: Path, extra_label_rows: Sequence[str] = (), **kwargs) -> Path:
    """Four labelled studies of three patients, one of them lateral-only, plus a label
    row without images and a metadata study without a label row."""
    studies = [
        MimicStudy(
            "10000032",
            "50414267",
            {"Pleural Effusion": "1.0", "Cardiomegaly": "0.0", "Edema": "-1.0"},
            # AP's dicom sorts first, but a PA wins; the lateral never counts.
            [("a-ap", "AP"), ("c-lat", "LATERAL"), ("b-pa", "PA")],
            report=REPORT.format(
                findings="Small left pleural effusion.", impression="Effusion, no edema"
            ),
        ),
        MimicStudy(
            "10000032",
            "53189527",
            {"No Finding": "1.0"},
            [("z-ap", "AP"), ("y-ap", "AP")],
            report="IMPRESSION: No acute process.",
        ),
        MimicStudy(
            "11000011",
            "52000001",
            {"Pneumothorax": "1"},
            [("d-pa", "PA")],
            split="validate",
        ),
        MimicStudy("12000012", "52000002", {"Atelectasis": "1.0"}, [("e-lat", "LL")]),
        MimicStudy("13000013", "52000003", {}, [("f-pa", "PA")], label_row=False),
    ]
    extra = [",".join(["14000014", "59999999", *label_fields({"Edema": "1.0"})])]
    return mimic_folder(root, studies, extra_label_rows=[*extra, *extra_label_rows], **kwargs)


def chexpert_row(path: str, view: str, appa: str, labels: dict[str, str]) -> str:
    return ",".join([path, "Female", "68", view, appa, *label_fields(labels)])


CHEXPERT_HEADER = ",".join(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS])


def chexpert_folder(
    parent: Path,
    train: Sequence[tuple[str, str, str, dict[str, str]]],
    valid: Sequence[tuple[str, str, str, dict[str, str]]] = (),
    *,
    name: str = "CheXpert-v1.0",
    prefix: str = "CheXpert-v1.0",
    missing: Sequence[str] = (),
    **opts,
) -> Path:
    """A CheXpert folder ``parent/name`` with train.csv/valid.csv rows
    (path under the split folder, Frontal/Lateral, AP/PA, labels) and their images."""
    root = parent / name
    for table, rows in (("train", train), ("valid", valid)):
        if not rows and table == "valid":
            continue
        lines = [CHEXPERT_HEADER]
        for i, (rel, view, appa, labels) in enumerate(rows):
            lines.append(chexpert_row(f"{prefix}/{table}/{rel}", view, appa, labels))
            if rel not in missing:
                write_image(root / table / rel, seed=i)
        write_text(root / f"{table}.csv", "\n".join(lines) + "\n", **opts)
    return root


PADCHEST_COLUMNS = ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Labels", "Report"]
PADCHEST_ROWS = [
    # study A: a PA and a lateral; the PA is kept
    ("a_pa.png", "0", "A", "P1", "PA", "['cardiomegaly', ' pleural effusion']", "cardiomegalia"),
    ("a_l.png", "0", "A", "P1", "L", "['cardiomegaly']", ""),
    # study B: AP_horizontal and a PA; the PA wins although its ImageID sorts later
    ("b_1.png", "1", "B", "P2", "AP_horizontal", "['nsg tube']", ""),
    ("b_2.png", "1", "B", "P2", "PA", "['normal']", ""),
    # study C: lateral only
    ("c_l.png", "1", "C", "P3", "L", "['normal']", ""),
    # study D: excluded, E: no labels, F: costal view, G: unmapped + mapped + hydropneumothorax
    ("d.png", "0", "D", "P4", "PA", "['exclude']", ""),
    ("e.png", "0", "E", "P5", "PA", "[]", ""),
    ("f.png", "0", "F", "P6", "COSTAL", "['fracture']", ""),
    (
        "g.png",
        "0",
        "G",
        "P7",
        "AP",
        "['COPD signs', 'hydropneumothorax', 'callus rib fracture']",
        "",
    ),
]


def padchest_csv(path, rows=PADCHEST_ROWS, columns=PADCHEST_COLUMNS, **opts):
    """A PadChest-style labels CSV (Labels quoted as PadChest quotes them)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return write_text(path, buf.getvalue(), **opts)


def padchest_images(root, rows=PADCHEST_ROWS, flat=False):
    """16-bit PNGs (values 1000..40000) under root/<ImageDir>/ or flat under root."""
    rng = np.random.default_rng(0)
    for image_id, folder, *_ in rows:
        path = root / image_id if flat else root / folder / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        values = rng.integers(1000, 40000, (16, 16)).astype(np.uint16)
        Image.fromarray(values).save(path)
