"""MIMIC-CXR-JPG's layout: its table names and columns, ids, paths, and the pieces of a
study the phantom export writes in its style (a lateral view, an encoded image, a sectioned
report). Facts from ``../shared/REFERENCE.md`` section 4 (Johnson et al., MIMIC-CXR-JPG
2.0.0, PhysioNet 2019; MIMIC-CXR 2.0.0 for the reports)."""

from __future__ import annotations

import hashlib
import io
import math
import re
import textwrap

import numpy as np

from mechtune.data.schema import Study
from mechtune.data.splits import record_rng
from mechtune.errors import DataError
from mechtune.sim.render import F32, _ramp

SUBJECT_OFFSET = 10_000_000
STUDY_OFFSET = 50_000_000
CHEXPERT_TABLE = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_TABLE = "mimic-cxr-2.0.0-negbio.csv.gz"
METADATA_TABLE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_TABLE = "mimic-cxr-2.0.0-split.csv.gz"
TABLES: tuple[str, ...] = (CHEXPERT_TABLE, NEGBIO_TABLE, METADATA_TABLE, SPLIT_TABLE)
# MIMIC-CXR-JPG's column order (alphabetical, "No Finding" among them).
LABEL_COLUMNS: tuple[str, ...] = (
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
)
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_SPLIT: dict[str, str] = {"train": "train", "val": "validate", "test": "test"}
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg")
SUFFIX: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")
VIEW_MEANING = {
    "PA": "postero-anterior",
    "AP": "antero-posterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
}
NORMAL_IMPRESSION = "No acute cardiopulmonary process."
_ID_RE = {"patient": re.compile(r"p(\d+)"), "study": re.compile(r"s(\d+)")}


# -- ids ----------------------------------------------------------------------------------


def _index(value: str, kind: str) -> int:
    match = _ID_RE[kind].fullmatch(value)
    if match is None:
        raise DataError(f"phantom {kind} id {value!r} is not {_ID_RE[kind].pattern}")
    index = int(match.group(1))
    if index >= 10_000_000:
        raise DataError(f"phantom {kind} id {value!r}: index too large for an 8-digit MIMIC id")
    return index


def mimic_subject_id(patient_id: str) -> int:
    """``"p0000007"`` -> ``10000007``. Raises ``DataError`` for another id form."""
    return SUBJECT_OFFSET + _index(patient_id, "patient")


def mimic_study_id(study_id: str) -> int:
    """``"s00000012"`` -> ``50000012``. Raises ``DataError`` for another id form."""
    return STUDY_OFFSET + _index(study_id, "study")


def dicom_id(seed: int, study_id: str, image: int) -> str:
    """A MIMIC-like dicom id: five dash-separated groups of 8 hex digits, hashed (BLAKE2b)
    from the export seed, the phantom study id and the image number."""
    digest = hashlib.blake2b(f"{seed}:{study_id}:{image}".encode(), digest_size=20).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def image_relpath(subject_id: int, study_id: int, dicom: str, image_format: str) -> str:
    """``files/pXX/p<subject>/s<study>/<dicom_id>.png|.jpg``."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom}{SUFFIX[image_format]}"


def report_relpath(subject_id: int, study_id: int) -> str:
    """``files/pXX/p<subject>/s<study>.txt``."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}.txt"


# -- pixels --------------------------------------------------------------------------------


def render_lateral(size: int, seed: int, key: str) -> np.ndarray:
    """A lateral chest view, ``uint8 [size, size]``: a plausible silhouette, clearly not a
    frontal film (sternum on the image's left, the spine on its right, the heart shadow
    anterior and low), with a pose, exposure and noise drawn from (``seed``, ``key``).
    It carries no findings: readers skip laterals, and nothing trains on them."""
    rng = record_rng(seed, "lateral", key)
    su, sv = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    scale = rng.uniform(0.94, 1.06)
    contrast, bright, noise = (
        rng.uniform(0.85, 1.15),
        rng.uniform(-0.04, 0.04),
        rng.uniform(0.01, 0.035),
    )
    axis = (np.arange(size, dtype=F32) + F32(0.5)) * F32(2.0 / size) - F32(1.0)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    u, v = (x - F32(su)) / F32(scale), (y - F32(sv)) / F32(scale)
    body = _ramp(
        F32(1.0) - ((u - F32(0.02)) / F32(0.8)) ** 2 - ((v - F32(0.05)) / F32(1.0)) ** 2, 0.06
    )
    dome = F32(0.3) + F32(0.22) * (u - F32(0.1)) ** 2 + F32(0.08) * u
    lung = _ramp(
        F32(1.0) - ((u - F32(0.06)) / F32(0.55)) ** 2 - ((v + F32(0.1)) / F32(0.66)) ** 2, 0.08
    )
    lung *= _ramp(dome - v, 0.03)
    heart = _ramp(
        F32(1.0) - ((u + F32(0.2)) / F32(0.3)) ** 2 - ((v - F32(0.16)) / F32(0.26)) ** 2, 0.1
    )
    vertebrae = (F32(0.5) + F32(0.5) * np.cos(v * F32(2 * math.pi / 0.14))) ** 2
    spine = _ramp(F32(0.07) - np.abs(u - F32(0.6)), 0.02) * _ramp(F32(0.95) - np.abs(v), 0.05)
    sternum = _ramp(F32(0.022) - np.abs(u + F32(0.68) + F32(0.05) * v), 0.01)
    sternum *= _ramp(F32(0.3) - v, 0.05) * _ramp(v + F32(0.62), 0.05)
    shoulders = _ramp(-F32(0.55) - v, 0.12) * body
    d = body * F32(0.34) + shoulders * F32(0.12)
    d -= lung * (F32(1.0) - heart) * F32(0.3)
    d += heart * F32(0.22) + spine * (F32(0.18) + F32(0.14) * vertebrae) + sternum * F32(0.2)
    img = F32(0.06) + d * F32(1.25 * contrast) + F32(bright)
    img += np.random.default_rng(rng.getrandbits(63)).standard_normal(
        (size, size), dtype=F32
    ) * F32(noise)
    return (np.clip(img, 0.0, 1.0) * F32(255.0) + F32(0.5)).astype(np.uint8)


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """``uint8 [H, W]`` -> PNG or baseline JPEG bytes, deterministically (Pillow; PNG at
    zlib level 6 without ``optimize``, JPEG without ``optimize`` or progressive scans)."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if image_format == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=jpeg_quality, optimize=False, progressive=False)
    return buf.getvalue()


# -- reports --------------------------------------------------------------------------------

INDICATIONS = (
    "___{sex} with shortness of breath.",
    "___-year-old {word} with cough // eval for acute process",
    "History: ___{sex} with chest pain",
    "___{sex} with fever, evaluate for acute cardiopulmonary process.",
    "Preoperative evaluation.",
    "___{sex} with dyspnea on exertion.",
)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _wrapped(text: str) -> list[str]:
    """MIMIC's habits: lines wrapped near 78 columns, a leading space on each line."""
    return [" " + line for line in textwrap.wrap(text, width=76, break_on_hyphens=False)]


def mimic_report(
    study: Study,
    *,
    examination: str,
    technique: str,
    indication: str,
    comparison: str,
) -> str:
    """A report in MIMIC-CXR's section style (FINAL REPORT, EXAMINATION, INDICATION,
    TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION; blank lines of one space, two spaces
    between sentences, wrapped lines with a leading space). FINDINGS: the world report's
    sentences; IMPRESSION: :data:`NORMAL_IMPRESSION` without pathology, else the first
    sentence. Raises ``DataError`` for a study without a report."""
    if not study.report:
        raise DataError(f"study {study.study_id!r} has no report to export")
    sentences = _sentences(study.report)
    impression = NORMAL_IMPRESSION if study.label("no_finding") else sentences[0]
    lines = [
        " " * 33 + "FINAL REPORT",
        f" EXAMINATION:  {examination}",
        " ",
        f" INDICATION:  {indication}",
        " ",
        f" TECHNIQUE:  {technique}",
        " ",
        f" COMPARISON:  {comparison}",
        " ",
        " FINDINGS: ",
        " ",
        *_wrapped("  ".join(sentences)),
        " ",
        " IMPRESSION: ",
        " ",
        *_wrapped(impression),
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "CHEXPERT_TABLE",
    "FRONTAL_VIEWS",
    "IMAGE_FORMATS",
    "LABEL_COLUMNS",
    "METADATA_COLUMNS",
    "METADATA_TABLE",
    "MIMIC_SPLIT",
    "NEGBIO_TABLE",
    "NORMAL_IMPRESSION",
    "SPLIT_COLUMNS",
    "SPLIT_TABLE",
    "STUDY_OFFSET",
    "SUBJECT_OFFSET",
    "TABLES",
    "dicom_id",
    "encode_image",
    "image_relpath",
    "mimic_report",
    "mimic_study_id",
    "mimic_subject_id",
    "render_lateral",
    "report_relpath",
]
