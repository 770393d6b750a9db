"""The phantom world written exactly as MIMIC-CXR-JPG lays out its files.

``export_mimic(world, out)`` writes (``../shared/REFERENCE.md`` section 4; Johnson et al.,
MIMIC-CXR-JPG 2.0.0, PhysioNet 2019)::

    out/files/p10/p10000007/s50000012/<dicom_id>.jpg|.png   one file per image
    out/files/p10/p10000007/s50000012.txt                   the study's report
    out/mimic-cxr-2.0.0-chexpert.csv.gz                     subject_id, study_id, 14 labels
    out/mimic-cxr-2.0.0-negbio.csv.gz                       the same columns
    out/mimic-cxr-2.0.0-metadata.csv.gz                     one row per image, ViewPosition ...
    out/mimic-cxr-2.0.0-split.csv.gz                        dicom_id, study_id, subject_id, split
    out/questions.jsonl                                     PSF-Med paraphrase sets (optional)
    out/manifest.json                                       kind "mimic-export": config, ids

Ids: ``subject_id = 10000000 + patient index`` (phantom ``p0000007`` -> ``10000007``),
``study_id = 50000000 + study index`` (``s00000012`` -> ``50000012``); a ``dicom_id`` is
five dash-separated groups of 8 hex digits hashed from the export seed, the study and the
image number.

Images of a study (choices drawn per study from the export ``seed``):

- the world's own image, with its acquisition's ``ViewPosition`` (PA, or AP for the
  world's AP films: ``RenderConfig.ap_fraction``);
- with probability ``lateral_rate`` a lateral view (a numpy-drawn lateral silhouette,
  ``ViewPosition`` ``LATERAL`` or, for one in five, ``LL``), which readers must skip;
- with probability ``second_frontal_rate`` a second frontal image: the study re-rendered
  from a second acquisition stream, always AP ("a portable repeat"). Its ``dicom_id`` sorts
  *before* the world's image when that is PA (so a reader that takes the first frontal by
  id, not the first PA, picks the wrong one) and *after* it when that is AP. The rule
  "first PA by dicom_id, else first AP" therefore always selects the world's own image.

``lateral_only_studies`` extra studies follow the world's (the next study ids of the same
synthetic stream, so sometimes of the world's last patient): each has labels, a report
and one lateral image only, so readers must count and skip them. The manifest lists them.

Labels: the phantom truth is complete, so every label column of both tables is ``1.0``
(present) or ``0.0`` (absent), never blank or ``-1.0``; the two labeler tables are
identical (both "labelers" read reports whose truth is known). Splits: the world's patient
split (:meth:`World.split_of`), ``val`` written as MIMIC's ``validate``.

Reports are in MIMIC's section style (:func:`mimic_report`): FINDINGS hold the world
report's sentences (whitespace-normalised, FINDINGS equals the world report exactly);
IMPRESSION is "No acute cardiopulmonary process." for a study without pathology, else the
report's first sentence (its first present finding). Nothing contradicts the truth.

Questions (``questions=True``, the default): ``questions.jsonl``, PSF-Med paraphrase sets
(:mod:`mechtune.data.psf`) written by
:func:`~mechtune.data.builders.paraphrase.write_source_questions` from the export opened as
a user opens it (:func:`~mechtune.data.sources.open_source`): ``questions_per_study``
yes/no questions per study (seeded by ``seed``), train patients with training families,
validation and test patients also with held-out ones; ``image`` is the reader's
``image_ref`` (relative to ``out``), ``split`` the patient split.

Format: JPEG at quality 95 by default, MIMIC-CXR-JPG's own, chosen by measurement
(``experiments/export_format.py``): on the 945 test studies of the shipped CLIP's world,
no zero-shot figure moves by more than the half-width of its 95% interval (the largest
change is +1.5 pp on a gap whose half-width is 6.6 pp; claim accuracy -0.2 / -0.1 pp).
PNG is lossless: its files decode to the world's pixels exactly.

Determinism: the same world and options give the same bytes (gzip with ``mtime=0`` and a
fixed member name, rows sorted, Pillow's PNG/JPEG encoders with fixed options). Tables
and the manifest are written atomically; the manifest comes last and hashes the tables
and, in ``tree_sha256``, every file under ``files/``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import hashlib
import io
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mechtune.data.builders.paraphrase import write_source_questions
from mechtune.data.io import atomic_path, sha256_file, write_manifest
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import SPLITS, Study
from mechtune.data.sources import open_source
from mechtune.data.splits import record_rng
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import ConfigError, DataError
from mechtune.progress import Tracker, stage
from mechtune.sim.mimic_layout import (
    CHEXPERT_TABLE,
    FRONTAL_VIEWS,
    IMAGE_FORMATS,
    INDICATIONS,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    METADATA_TABLE,
    MIMIC_SPLIT,
    NEGBIO_TABLE,
    SPLIT_COLUMNS,
    SPLIT_TABLE,
    STUDY_OFFSET,
    SUBJECT_OFFSET,
    TABLES,
    VIEW_MEANING,
    dicom_id,
    encode_image,
    image_relpath,
    mimic_report,
    mimic_study_id,
    mimic_subject_id,
    render_lateral,
    report_relpath,
)
from mechtune.sim.render import Acquisition, Renderer, sample_acquisition
from mechtune.sim.reports import write_report
from mechtune.sim.world import World

QUESTIONS_FILE = "questions.jsonl"


@dataclass(frozen=True)
class MimicExportConfig:
    """How a world is written in MIMIC-CXR-JPG layout (see the module docstring).

    ``image_format``: ``jpeg`` (MIMIC-CXR-JPG's own format; the default, chosen by
    measurement: at quality 95 no zero-shot figure of the shipped phantom CLIP moves by
    more than its interval's half-width, ``experiments/export_format.py``) or ``png``
    (lossless: the files decode to the world's pixels exactly);
    ``jpeg_quality``: Pillow's JPEG quality, 1..100 (95, as MIMIC-CXR-JPG);
    ``lateral_rate`` / ``second_frontal_rate``: the chance that a study also has a lateral
    view / a second (AP) frontal image; ``lateral_only_studies``: extra studies with only a
    lateral image; ``seed``: draws those choices, the dicom ids, dates, report preambles and
    questions; ``questions``: write ``questions.jsonl``; ``questions_per_study``: questions
    per study in it (>= 1). Raises ``ConfigError`` naming the field for a value outside its
    range.
    """

    image_format: str = "jpeg"
    jpeg_quality: int = 95
    lateral_rate: float = 0.5
    second_frontal_rate: float = 0.1
    lateral_only_studies: int = 3
    seed: int = 0
    questions: bool = True
    questions_per_study: int = 2

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(
                f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        for name in ("lateral_rate", "second_frontal_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.lateral_only_studies < 0:
            raise ConfigError(f"lateral_only_studies must be >= 0, got {self.lateral_only_studies}")
        if self.questions_per_study < 1:
            raise ConfigError(f"questions_per_study must be >= 1, got {self.questions_per_study}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MimicImage:
    """One exported image: its dicom id, ``ViewPosition`` and role (``world``,
    ``second_frontal`` or ``lateral``)."""

    dicom_id: str
    view: str
    role: str


@dataclass(frozen=True)
class MimicStudy:
    """One exported study: the phantom study, its MIMIC ids, images and split."""

    study: Study
    subject_id: int
    study_id: int
    images: tuple[MimicImage, ...]
    split: str  # ours: train / val / test
    lateral_only: bool
    row: int | None  # the world's image row, None for a lateral-only extra

    @property
    def folder(self) -> str:
        """``files/pXX/p<subject>/s<study>`` (relative to the export root)."""
        return f"files/p{str(self.subject_id)[:2]}/p{self.subject_id}/s{self.study_id}"

    @property
    def world_image(self) -> MimicImage | None:
        return next((im for im in self.images if im.role == "world"), None)


@dataclass(frozen=True)
class MimicExport:
    """What :func:`export_mimic` wrote: the root, the studies (world order, then the
    lateral-only extras), the counts recorded in the manifest (with ``questions``, the
    questions file's counts, when one was written) and the questions file, or None."""

    root: Path
    studies: tuple[MimicStudy, ...]
    counts: dict[str, Any]
    questions: Path | None = None


# -- the plan: which images each study gets ------------------------------------------------


def _plan_study(
    study: Study,
    config: MimicExportConfig,
    split: str,
    view: str | None,
    row: int | None,
) -> MimicStudy:
    """Images and ids of one study. ``view``: the world image's ViewPosition, or None for
    a lateral-only extra."""
    rng = record_rng(config.seed, "mimic-export", study.study_id)
    has_lateral = view is None or rng.random() < config.lateral_rate
    has_second = view is not None and rng.random() < config.second_frontal_rate
    lateral_view = "LL" if rng.random() < 0.2 else "LATERAL"
    ids = [dicom_id(config.seed, study.study_id, k) for k in range(3)]
    images: list[MimicImage] = []
    if view is not None:
        if has_second:
            low, high = sorted(ids[:2])
            # A PA world image must win over an AP repeat with a smaller id (PA first); an
            # AP world image must come first among two APs.
            world_id, second_id = (high, low) if view == "PA" else (low, high)
            images.append(MimicImage(second_id, "AP", "second_frontal"))
        else:
            world_id = ids[0]
        images.append(MimicImage(world_id, view, "world"))
    if has_lateral:
        images.append(MimicImage(ids[2], lateral_view, "lateral"))
    return MimicStudy(
        study=study,
        subject_id=mimic_subject_id(study.patient_id),
        study_id=mimic_study_id(study.study_id),
        images=tuple(sorted(images, key=lambda im: im.dicom_id)),
        split=split,
        lateral_only=view is None,
        row=row,
    )


def lateral_only_extras(world: World, k: int) -> list[Study]:
    """The ``k`` studies that follow the world's in its synthetic stream (same seed), with
    reports written as the world's. Raises ``DataError`` when the world's study ids are not
    that stream's first ``n`` (a world not made by :func:`~mechtune.sim.world.make_world`).
    """
    n = len(world.studies)
    if k == 0:
        return []
    if world.studies[-1].study_id != f"s{n - 1:08d}":
        raise DataError(
            f"the world's last study is {world.studies[-1].study_id!r}, not 's{n - 1:08d}': "
            "its studies are not the first n of its synthetic stream"
        )
    stream = sample_studies(SyntheticConfig(n_studies=n + k, seed=world.config.seed))
    extras = list(itertools.islice(stream, n, None))
    return [dataclasses.replace(s, report=write_report(s, world.config.report)) for s in extras]


def plan_export(world: World, config: MimicExportConfig) -> list[MimicStudy]:
    """Every exported study with its images, in world order then the extras."""
    views = [str(a["view"]) for a in world.acquisitions]
    if any(v not in FRONTAL_VIEWS for v in views):
        bad = next(v for v in views if v not in FRONTAL_VIEWS)
        raise DataError(f"world acquisition view {bad!r} is not one of {FRONTAL_VIEWS}")
    planned = [
        _plan_study(s, config, world.split_of(s), views[i], i) for i, s in enumerate(world.studies)
    ]
    extras = lateral_only_extras(world, config.lateral_only_studies)
    planned += [_plan_study(s, config, world.split_of(s), None, None) for s in extras]
    return planned


# -- pixels --------------------------------------------------------------------------------


class _RepeatRenderer(Renderer):
    """The world's renderer with a second acquisition per study, from another stream
    (``config.seed`` is derived) and always AP: the second frontal image."""

    def acquisition(self, study: Study) -> Acquisition:
        return dataclasses.replace(sample_acquisition(study.study_id, self.config), view="AP")


def _second_frontal_seed(render_seed: int, export_seed: int) -> int:
    digest = hashlib.blake2b(
        f"second-frontal:{render_seed}:{export_seed}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") >> 1


def _examination(item: MimicStudy) -> str:
    views = {im.view for im in item.images}
    if "PA" in views:
        return "CHEST (PA AND LAT)" if views - set(FRONTAL_VIEWS) else "CHEST (SINGLE VIEW)"
    if "AP" in views:
        return "CHEST (PORTABLE AP)"
    return "CHEST (PA AND LAT)"  # lateral only: the frontal image is not in the release


def _technique(item: MimicStudy) -> str:
    views = {im.view for im in item.images}
    if "PA" in views:
        return "Chest PA and lateral" if views - set(FRONTAL_VIEWS) else "Chest PA"
    if "AP" in views:
        return "Portable AP chest radiograph"
    return "Chest lateral"


# -- tables ---------------------------------------------------------------------------------


def _write_gz_csv(root: Path, name: str, header: Sequence[str], rows: list[list[str]]) -> None:
    """A gzipped CSV, atomically; the gzip member is named after the CSV, with mtime 0."""
    with atomic_path(root / name) as tmp, open(tmp, "wb") as raw:
        member = name.removesuffix(".gz")
        with gzip.GzipFile(filename=member, mode="wb", fileobj=raw, mtime=0) as gz:
            text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            text.flush()
            text.detach()


def _label_rows(items: Sequence[MimicStudy]) -> list[list[str]]:
    onto = load_ontology()
    if set(LABEL_COLUMNS) != set(onto.columns):
        raise DataError(f"ontology columns {onto.columns} differ from MIMIC's {LABEL_COLUMNS}")
    rows = []
    for item in items:
        labels = {onto.condition(f.condition).column: f.present for f in item.study.findings}
        missing = [c for c in LABEL_COLUMNS if c not in labels]
        if missing:
            raise DataError(f"study {item.study.study_id!r} has no truth for {missing}")
        cells = ["1.0" if labels[c] else "0.0" for c in LABEL_COLUMNS]
        rows.append([str(item.subject_id), str(item.study_id), *cells])
    return sorted(rows, key=lambda r: (int(r[0]), int(r[1])))


def _dates(items: Sequence[MimicStudy], seed: int) -> dict[str, tuple[str, str]]:
    """(StudyDate, StudyTime) per phantom study: a shifted date per patient in the 2100s,
    later studies of a patient later, as in MIMIC's de-identified dates."""
    last: dict[str, datetime.date] = {}
    out = {}
    for item in items:
        s = item.study
        rng = record_rng(seed, "mimic-date", s.study_id)
        if s.patient_id in last:
            day = last[s.patient_id] + datetime.timedelta(days=rng.randrange(1, 400))
        else:
            start = record_rng(seed, "mimic-first-date", s.patient_id).randrange(365 * 60)
            day = datetime.date(2110, 1, 1) + datetime.timedelta(days=start)
        last[s.patient_id] = day
        hhmmss = rng.randrange(24) * 10000 + rng.randrange(60) * 100 + rng.randrange(60)
        out[s.study_id] = (day.strftime("%Y%m%d"), f"{hhmmss}.{rng.randrange(1000):03d}")
    return out


def _metadata_rows(items: Sequence[MimicStudy], size: int, seed: int) -> list[list[str]]:
    dates = _dates(items, seed)
    rows = []
    for item in items:
        day, time = dates[item.study.study_id]
        examination = _examination(item)
        for im in item.images:
            orientation = "Recumbent" if im.view == "AP" else "Erect"
            rows.append(
                [
                    im.dicom_id,
                    str(item.subject_id),
                    str(item.study_id),
                    examination,
                    im.view,
                    str(size),
                    str(size),
                    day,
                    time,
                    examination,
                    VIEW_MEANING[im.view],
                    orientation,
                ]
            )
    return sorted(rows, key=lambda r: (int(r[1]), int(r[2]), r[0]))


def _split_rows(items: Sequence[MimicStudy]) -> list[list[str]]:
    rows = [
        [im.dicom_id, str(item.study_id), str(item.subject_id), MIMIC_SPLIT[item.split]]
        for item in items
        for im in item.images
    ]
    return sorted(rows, key=lambda r: (int(r[2]), int(r[1]), r[0]))


# -- the export -----------------------------------------------------------------------------


def _preamble(items: Sequence[MimicStudy], seed: int) -> dict[str, tuple[str, str]]:
    """(INDICATION, COMPARISON) per study: a stock indication naming no condition, and a
    comparison with the patient's previous study when there is one."""
    seen: set[str] = set()
    out = {}
    for item in items:
        s = item.study
        sex = "M" if record_rng(seed, "mimic-sex", s.patient_id).random() < 0.5 else "F"
        template = record_rng(seed, "mimic-indication", s.study_id).choice(INDICATIONS)
        indication = template.format(sex=sex, word="man" if sex == "M" else "woman")
        comparison = "Chest radiograph from ___." if s.patient_id in seen else "None."
        seen.add(s.patient_id)
        out[s.study_id] = (indication, comparison)
    return out


def _tree_hash(root: Path, relpaths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(relpaths):
        h.update(f"{rel}:{sha256_file(root / rel)}\n".encode())
    return h.hexdigest()


def export_mimic(
    world: World,
    out: str | Path,
    *,
    image_format: str = "jpeg",
    jpeg_quality: int = 95,
    lateral_rate: float = 0.5,
    second_frontal_rate: float = 0.1,
    lateral_only_studies: int = 3,
    seed: int = 0,
    questions: bool = True,
    questions_per_study: int = 2,
    workers: int = 2,
    track: Tracker | None = None,
) -> MimicExport:
    """Write ``world`` to ``out`` in MIMIC-CXR-JPG layout (see the module docstring).

    ``world.images``: ``uint8 [N, S, S]``; every exported image is ``S x S`` (metadata
    ``Rows``/``Columns``). The options are :class:`MimicExportConfig`'s; with ``questions``
    the export also holds ``questions.jsonl`` (the module docstring), and the manifest
    lists it and its counts (``counts["questions"]``). ``workers`` threads encode and write
    the images (the bytes do not depend on it); ``track`` gets one stage counting the
    studies written (the world's and the lateral-only ones). Raises ``ConfigError`` for a bad option or when ``out`` exists and
    is not empty (a stale tree would mix two exports), ``DataError`` for a world whose ids,
    views or truth cannot be written.
    """
    config = MimicExportConfig(
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        lateral_rate=lateral_rate,
        second_frontal_rate=second_frontal_rate,
        lateral_only_studies=lateral_only_studies,
        seed=seed,
        questions=questions,
        questions_per_study=questions_per_study,
    )
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"out {root} exists and is not an empty folder; choose a new one")
    items = plan_export(world, config)
    size = int(world.images.shape[-1])
    seconds = [item for item in items if any(im.role == "second_frontal" for im in item.images)]
    repeat = _RepeatRenderer(
        dataclasses.replace(
            world.config.render, seed=_second_frontal_seed(world.config.render.seed, seed)
        )
    )
    second_pixels = repeat.render([it.study for it in seconds]) if seconds else None
    second_row = {it.study.study_id: j for j, it in enumerate(seconds)}
    preamble = _preamble(items, seed)

    def write_study(item: MimicStudy) -> list[str]:
        folder = root / item.folder
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for im in item.images:
            if im.role == "world":
                pixels = np.asarray(world.images[item.row])
            elif im.role == "second_frontal":
                assert second_pixels is not None
                pixels = second_pixels[second_row[item.study.study_id]]
            else:
                pixels = render_lateral(size, seed, im.dicom_id)
            rel = image_relpath(item.subject_id, item.study_id, im.dicom_id, image_format)
            (root / rel).write_bytes(encode_image(pixels, image_format, jpeg_quality))
            written.append(rel)
        indication, comparison = preamble[item.study.study_id]
        text = mimic_report(
            item.study,
            examination=_examination(item),
            technique=_technique(item),
            indication=indication,
            comparison=comparison,
        )
        rel = report_relpath(item.subject_id, item.study_id)
        (root / rel).write_text(text, encoding="utf-8", newline="\n")
        written.append(rel)
        return written

    root.mkdir(parents=True, exist_ok=True)
    relpaths: list[str] = []
    with (
        stage(track, f"write {image_format} images and reports", len(items)) as advance,
        ThreadPoolExecutor(workers) as pool,
    ):
        for batch in pool.map(write_study, items):
            relpaths.extend(batch)
            advance(1)
    labels = _label_rows(items)
    header = ["subject_id", "study_id", *LABEL_COLUMNS]
    _write_gz_csv(root, CHEXPERT_TABLE, header, labels)
    _write_gz_csv(root, NEGBIO_TABLE, header, labels)
    _write_gz_csv(root, METADATA_TABLE, METADATA_COLUMNS, _metadata_rows(items, size, seed))
    _write_gz_csv(root, SPLIT_TABLE, SPLIT_COLUMNS, _split_rows(items))
    counts = _counts(items)
    files = list(TABLES)
    questions_file = None
    if config.questions:  # the tables are written: open the export as a user does
        questions_file = root / QUESTIONS_FILE
        counts["questions"] = write_source_questions(
            open_source(root),
            questions_file,
            questions_per_study=config.questions_per_study,
            seed=config.seed,
        )
        files.append(QUESTIONS_FILE)
    extras = [it for it in items if it.lateral_only]
    write_manifest(
        root,
        kind="mimic-export",
        config={"world": world.config.to_dict(), "export": config.to_dict()},
        counts=counts,
        files=files,
        extra={
            "ids": {
                "subject_id": f"{SUBJECT_OFFSET} + phantom patient index (p0000007 -> 10000007)",
                "study_id": f"{STUDY_OFFSET} + phantom study index (s00000012 -> 50000012)",
                "world_image": {
                    it.study.study_id: it.world_image.dicom_id
                    for it in items
                    if it.world_image is not None
                },
                "lateral_only": [
                    {
                        "phantom_study_id": it.study.study_id,
                        "phantom_patient_id": it.study.patient_id,
                        "subject_id": it.subject_id,
                        "study_id": it.study_id,
                    }
                    for it in extras
                ],
            },
            "tree_sha256": _tree_hash(root, relpaths),
        },
    )
    return MimicExport(root, tuple(items), counts, questions_file)


def _counts(items: Sequence[MimicStudy]) -> dict[str, Any]:
    views: dict[str, int] = {}
    for it in items:
        for im in it.images:
            views[im.view] = views.get(im.view, 0) + 1
    world = [it for it in items if not it.lateral_only]
    by_split = {name: sum(1 for it in world if it.split == name) for name in SPLITS}
    return {
        "studies": len(world),
        "patients": len({it.study.patient_id for it in world}),
        "lateral_only_studies": len(items) - len(world),
        "images": sum(len(it.images) for it in items),
        "images_by_view": dict(sorted(views.items())),
        "studies_with_lateral": sum(
            1 for it in world if any(im.role == "lateral" for im in it.images)
        ),
        "studies_with_second_frontal": sum(
            1 for it in world if any(im.role == "second_frontal" for im in it.images)
        ),
        "reports": len(items),
        "by_split": by_split,
    }


__all__ = [
    "QUESTIONS_FILE",
    "MimicExport",
    "MimicExportConfig",
    "MimicImage",
    "MimicStudy",
    "export_mimic",
    "lateral_only_extras",
    "plan_export",
]
