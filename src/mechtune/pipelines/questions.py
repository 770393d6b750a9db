"""Paraphrase questions bound to images: the input of every paraphrase and SAE command.

A command takes ``--questions FILE`` (PSF-Med style records,
:func:`mechtune.data.importers.read_psf_records`) and ``--data DIR``, and binds each
record to the image it asks about:

- ``--data`` an **image-study source** (any layout :func:`mechtune.data.sources.open_source`
  reads: a saved phantom world, ``mechtune sim export`` output, MIMIC-CXR-JPG, CheXpert, a
  manifest): a record's image reference (or, without one, its study id) names an item's
  study id or image reference; a reference that names neither, but is a file below the
  folder (a manifest file's folder), is read from the file;
- ``--data`` **any other folder**: a record's image reference is a file path relative to it;
- no ``--data``: image paths are relative to the questions file's folder.

An image is one row however it is named: an item's study id, its image reference and its
file's path (in any spelling) share the row.

Without ``--questions``, a source's own PSF-Med style paraphrase sets of a split are built
(:func:`mechtune.data.builders.paraphrase.image_paraphrase_sets`, seeded).

Records may carry a ``split`` (train / val / test). :func:`select_split` keeps one; a file
without split labels is used whole, and the caller says so. Every image is read once
(in the model's pixel mode) and prepared once (``YesNoVLM.prepare_images``): row ``i`` of
``BoundQuestions.images`` is the ``i``-th distinct image. An image that cannot be found,
read or prepared for the model is a :class:`QuestionFileError` naming the questions file,
the question id and the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mechtune.data.importers import DataFormatError, read_psf_records
from mechtune.data.schema import ImageQuestion, ParaphraseSet, Study
from mechtune.data.sources.base import ImageStudySource, read_image_file
from mechtune.errors import ConfigError, DataError
from mechtune.models.yes_no import YesNoVLM

SPLIT_NAMES = ("train", "val", "test")


class QuestionFileError(DataError):
    """A questions file, or a record's image, that cannot be used (names file and record)."""


@dataclass
class BoundQuestions:
    """Paraphrase sets bound to rows of one prepared image batch.

    ``images``: what ``vlm.margin`` takes by row (:func:`mechtune.models.yes_no.take_rows`);
    ``sets``: each set with its row; ``pixels``: the decoded ``uint8`` images, one per row
    (kept for re-preparing them for a freshly loaded model); ``corpus``: in-domain text for
    SAE training (the source's train-split reports; empty without a source);
    ``split_labels``: whether the questions carry split labels; ``info``: provenance
    (questions report, data layout, distinct images) for the run's JSON.
    """

    images: Any
    sets: list[ImageQuestion]
    pixels: list[Any]
    corpus: list[str] = field(default_factory=list)
    split_labels: bool = False
    source: ImageStudySource | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def subset(self, sets: Sequence[ImageQuestion]) -> BoundQuestions:
        """The same images with other sets (rows into the same batch)."""
        return replace(self, sets=list(sets))


def read_question_file(
    path: Path, *, skip_bad: bool, log: Callable[[str], None] | None = None
) -> tuple[list[ParaphraseSet], dict[str, Any]]:
    """The records of a questions file and its import report (as a dict). Raises
    QuestionFileError naming the file (and row) for an unreadable or empty file."""
    try:
        records, report = read_psf_records(path, skip_bad=skip_bad)
    except (DataFormatError, FileNotFoundError) as exc:
        raise QuestionFileError(str(exc)) from None
    skipped = sum(report.skipped.values())
    if log is not None:
        log(
            f"read {report.rows_read} records from {path}: kept {report.rows_kept}, "
            f"skipped {skipped} {dict(report.skipped) if skipped else ''}".rstrip()
        )
    if not records:
        raise QuestionFileError(f"{path}: no usable question records")
    return records, report.to_dict()


def _open_folder(data: Path) -> ImageStudySource | None:
    """The image-study source at ``data``, or None for a plain folder of images."""
    from mechtune.data.sources import detect_layout, open_source

    if not data.exists():
        raise QuestionFileError(f"--data {data}: no such file or folder")
    try:
        detect_layout(data)
    except DataError:
        if data.is_dir():
            return None
        raise
    return open_source(data)


class _Images:
    """Distinct images read once, in first-use order, each with the question and image that
    first asked for it (``where``), so that a later error can name them."""

    def __init__(self, mode: str) -> None:
        self.mode, self.rows, self.pixels = mode, dict[str, int](), list[Any]()
        self.where: list[str] = []

    def row(self, key: str, read: Callable[[], Any], where: str) -> int:
        if key not in self.rows:
            self.pixels.append(read())
            self.where.append(where)
            self.rows[key] = len(self.pixels) - 1
        return self.rows[key]

    def prepare(self, vlm: YesNoVLM) -> Any:
        """``vlm.prepare_images`` of every image. When the model refuses the batch, each
        image is tried alone and the first it refuses is named by its question and file;
        a refusal no single image causes is re-raised as it is."""
        try:
            return vlm.prepare_images(self.pixels)
        except DataError as exc:
            for i, pixels in enumerate(self.pixels):
                try:
                    vlm.prepare_images([pixels])
                except DataError as one:
                    raise QuestionFileError(
                        f"{self.where[i]} cannot be used by the model ({one})"
                    ) from None
            raise exc from None


def _study_key(source: ImageStudySource, study: Study) -> str:
    """The identity of an item's image: its file when it has one of its own (so a record
    that names the same file by path shares the row), else the item."""
    file = source.image_file(study)
    return f"file:{file.resolve()}" if file is not None else f"study:{study.study_id}"


def _source_loader(
    source: ImageStudySource, study: Study, mode: str, where: str
) -> Callable[[], Any]:
    def read() -> Any:
        try:
            return source.load_image(study, mode)
        except DataError as exc:
            raise QuestionFileError(f"{where} cannot be read ({exc})") from None

    return read


def _bind_records(
    records: Sequence[ParaphraseSet],
    path: Path,
    data: Path | None,
    source: ImageStudySource | None,
    images: _Images,
) -> list[ImageQuestion]:
    """Bind each record to a row of ``images`` (see :func:`bind_questions` for the rules);
    ``data`` None means paths relative to the questions file's folder."""
    # A manifest is a file: the paths of its records are relative to its folder.
    root = path.parent if data is None else data if data.is_dir() else data.parent
    named = f"--data {data}" if data is not None else f"the questions file's folder {root}"
    by_ref: dict[str, Study] = {}
    if source is not None:
        for item in source.studies():
            by_ref.setdefault(item.study_id, item)
            if item.image_ref:
                by_ref.setdefault(item.image_ref, item)
    out = []
    for s in records:
        asked = f"{path}, question {s.question_id!r}"
        ref = s.image_ref or s.study_id
        study = by_ref.get(ref)
        if study is not None:
            assert source is not None
            where = f"{asked}: image {ref!r} (study {study.study_id!r} of --data {data})"
            read = _source_loader(source, study, images.mode, where)
            out.append(ImageQuestion(s, images.row(_study_key(source, study), read, where)))
            continue
        if not s.image_ref:
            why = (
                f"and its study id {s.study_id!r} is not an item of --data {data}"
                if source is not None
                else f"which a question needs to find its image in {named}"
            )
            raise QuestionFileError(
                f"{asked}: no image reference (image_ref, image, image_path or dicom_id) {why}"
            )
        file = root / s.image_ref
        if not file.is_file():
            what = "neither a study id nor an image reference of" if source else "not a file in"
            raise QuestionFileError(
                f"{asked}: image {s.image_ref!r} is {what} {named} (looked for {file})"
            )
        where = f"{asked}: image {str(file)!r}"

        def read_file(file: Path = file, where: str = where) -> Any:
            try:
                return read_image_file(file, images.mode)
            except DataError as exc:
                raise QuestionFileError(f"{where} cannot be read ({exc})") from None

        out.append(ImageQuestion(s, images.row(f"file:{file.resolve()}", read_file, where)))
    return out


def bind_questions(
    vlm: YesNoVLM,
    *,
    questions: Path | None,
    data: Path | None,
    split: str | None = None,
    heldout: bool = False,
    seed: int = 0,
    skip_bad: bool = False,
    log: Callable[[str], None] | None = None,
) -> BoundQuestions:
    """Read the questions (or build the data's own of ``split``), bind them to images
    and prepare those for ``vlm``.

    ``split`` with a questions file keeps records of that split (:func:`select_split`);
    without one, it picks which of the data's own sets are built (default train), with
    ``heldout`` paraphrase families or not. Raises ConfigError when neither questions nor
    data is given, and QuestionFileError (a DataError) naming the file and record for a
    record whose image cannot be found, read or prepared for ``vlm``.
    """
    say = log or (lambda _m: None)
    if questions is None and data is None:
        raise ConfigError("give --questions FILE (with --data DIR), or --data (its own questions)")
    if split is not None and split not in SPLIT_NAMES:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    source = None if data is None else _open_folder(data)
    if source is not None:
        say(source.report.summary())
    images = _Images(vlm.image_mode)
    info: dict[str, Any] = {}
    labelled = False
    if questions is not None:
        records, report = read_question_file(questions, skip_bad=skip_bad, log=say)
        info["questions"] = {"path": str(questions), **report}
        labelled = bool(report.get("split_labels", False))
        if split is not None:
            records = select_split(records, split, labelled, questions, say)
        sets = _bind_records(records, questions, data, source, images)
    else:
        assert source is not None and data is not None
        from mechtune.data.builders.paraphrase import image_paraphrase_sets

        split = "train" if split is None else split
        used = source.split(split)
        rows = []
        for study in used:
            where = f"--data {data}, study {study.study_id!r}"
            read = _source_loader(source, study, images.mode, where)
            rows.append((images.row(_study_key(source, study), read, where), study))
        sets = image_paraphrase_sets(rows, split, heldout=heldout, seed=seed)
        labelled = True
        info["own_questions"] = {"split": split, "heldout_families": heldout, "sets": len(sets)}
        if not sets:
            raise QuestionFileError(f"--data {data}: no {split}-split studies with definite labels")
    corpus: list[str] = []
    if source is not None:
        info["data"] = {"path": str(data), "layout": source.layout, "items": len(source)}
        train = source.split("train")
        corpus = sorted({source.report_text(s) or "" for s in train} - {""})
    elif data is not None:
        info["data"] = {"path": str(data), "layout": "image folder"}
    info["images"] = {"distinct": len(images.pixels)}
    return BoundQuestions(
        images=images.prepare(vlm),
        sets=sets,
        pixels=images.pixels,
        corpus=corpus,
        split_labels=labelled,
        source=source,
        info=info,
    )


def select_split(
    records: Sequence[ParaphraseSet],
    split: str,
    labelled: bool,
    path: Path,
    log: Callable[[str], None] | None = None,
) -> list[ParaphraseSet]:
    """The records of ``split``. A file without split labels is used whole (logged);
    a labelled file with no record of ``split`` is a QuestionFileError naming the
    splits it has."""
    if not labelled:
        if log is not None:
            log(f"{path} has no split labels: using all {len(records)} records")
        return list(records)
    kept = [r for r in records if r.split == split]
    if not kept:
        have = sorted({r.split for r in records})
        raise QuestionFileError(f"{path}: no records of split {split!r} (splits: {have})")
    return kept


def split_sets(sets: Sequence[ImageQuestion], split: str) -> list[ImageQuestion]:
    """The bound sets whose record is of ``split``."""
    return [q for q in sets if q.record.split == split]


__all__ = [
    "SPLIT_NAMES",
    "BoundQuestions",
    "QuestionFileError",
    "bind_questions",
    "read_question_file",
    "select_split",
    "split_sets",
]
