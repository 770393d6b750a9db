"""Questions bound to images (mechtune.pipelines.questions): every way ``--data`` is read
(an image-study source, a plain folder, none), each distinct image read once, rows that
point at the right pixels, and errors that name the file, the question and the image.

Sources here are built by code: a saved phantom world (the sim API) and a manifest CSV
beside PNG files. The model is a stand-in that records what it is asked to prepare; only
``image_mode`` and ``prepare_images`` matter to binding."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mechtune.data.importers import DataFormatError, read_psf_records
from mechtune.data.schema import ImageQuestion, ParaphraseSet
from mechtune.data.sources import open_source
from mechtune.data.sources.base import ImageStudySource, read_image_file
from mechtune.errors import ConfigError, DataError
from mechtune.pipelines import questions as qmod
from mechtune.pipelines.questions import (
    QuestionFileError,
    bind_questions,
    select_split,
    split_sets,
)


def _reads_split() -> bool:
    """Whether read_psf_records keeps a record's ``split`` (another helper adds it)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "q.jsonl"
        record = {"question": "Is there edema?", "paraphrases": ["Any edema?"], "answer": "yes"}
        path.write_text(json.dumps({**record, "split": "val"}) + "\n")
        try:
            records, _ = read_psf_records(path)
        except DataFormatError:
            return False
        return records[0].split == "val"


READS_SPLIT = _reads_split()
needs_split_field = pytest.mark.skipif(
    not READS_SPLIT, reason="read_psf_records does not read a record's `split` yet"
)


class FakeVLM:
    """What binding asks of a model: its pixel mode, and the batch of prepared images
    (here the arrays themselves). ``size`` makes it refuse other sizes, as the phantom
    VQA's frozen image tower does, naming the row."""

    def __init__(self, mode: str = "RGB", size: tuple[int, int] | None = None) -> None:
        self.mode, self.size = mode, size
        self.prepared: list[list[Any]] = []

    @property
    def image_mode(self) -> str:
        return self.mode

    def prepare_images(self, images: list[Any]) -> list[Any]:
        self.prepared.append(list(images))
        for i, image in enumerate(images):
            if self.size is not None and np.asarray(image).shape[:2] != self.size:
                raise DataError(f"image {i} is {list(np.asarray(image).shape)}, not {self.size}")
        return list(images)


@pytest.fixture
def reads(monkeypatch):
    """Counts every image decode: files by resolved path, source items by study id."""
    counts: Counter[str] = Counter()
    real_file, real_item = qmod.read_image_file, ImageStudySource.load_image

    def read_file(path, mode="L"):
        counts[f"file:{Path(path).resolve()}"] += 1
        return real_file(path, mode)

    def load_item(self, study, mode="L"):
        counts[f"study:{study.study_id}"] += 1
        return real_item(self, study, mode)

    monkeypatch.setattr(qmod, "read_image_file", read_file)
    monkeypatch.setattr(ImageStudySource, "load_image", load_item)
    return counts


def _png(path: Path, seed: int, shape: tuple[int, ...] = (12, 10, 3)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _record(question: str, paraphrases: list[str], answer: str, **extra: Any) -> dict[str, Any]:
    return {"question": question, "paraphrases": paraphrases, "answer": answer, **extra}


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# Four records on three images; a.png is asked about twice, c.png sits in a subfolder.
FOLDER_RECORDS = [
    _record("Is there edema?", ["Any edema?", "Is edema present?"], "yes", image="a.png"),
    _record("Is there an effusion?", ["Any effusion?"], "no", image="b.png"),
    _record("Is the heart enlarged?", ["Is there cardiomegaly?"], "yes", image="sub/c.png"),
    _record("Is there a pneumothorax?", ["Any pneumothorax?"], "no", image="a.png"),
]


@pytest.fixture
def images(tmp_path):
    """A plain folder of PNGs (no layout a source reader knows) -> {name: RGB pixels}."""
    folder = tmp_path / "pngs"
    return folder, {
        "a.png": _png(folder / "a.png", 0),
        "b.png": _png(folder / "b.png", 1, (9, 14, 3)),
        "sub/c.png": _png(folder / "sub" / "c.png", 2),
    }


def _check_rows(bound, expected: dict[str, np.ndarray]) -> None:
    """Every set's row holds its own image's pixels; rows are the distinct images in
    first-use order; the prepared batch is the pixels."""
    order = list(dict.fromkeys(q.record.image_ref for q in bound.sets))
    assert [q.image for q in bound.sets] == [order.index(q.record.image_ref) for q in bound.sets]
    assert len(bound.pixels) == len(order) == bound.info["images"]["distinct"]
    for q in bound.sets:
        np.testing.assert_array_equal(bound.pixels[q.image], expected[q.record.image_ref])
    assert bound.images == bound.pixels


# -- a plain folder, or none ------------------------------------------------------------------


def test_a_plain_folder_holds_the_image_paths_and_each_image_is_read_once(tmp_path, images, reads):
    folder, pixels = images
    questions = _write(tmp_path / "elsewhere" / "q.jsonl", FOLDER_RECORDS)
    vlm = FakeVLM("RGB")
    bound = bind_questions(vlm, questions=questions, data=folder)
    assert [q.record.question_id for q in bound.sets] == ["q1", "q2", "q3", "q4"]
    _check_rows(bound, pixels)
    assert [q.image for q in bound.sets] == [0, 1, 2, 0]
    assert reads == Counter({f"file:{(folder / n).resolve()}": 1 for n in pixels})
    assert len(vlm.prepared) == 1  # prepared once, as one batch
    assert bound.info["data"] == {"path": str(folder), "layout": "image folder"}
    assert bound.info["questions"]["rows_kept"] == 4
    assert (bound.source, bound.corpus, bound.split_labels) == (None, [], False)


def test_without_data_image_paths_are_relative_to_the_questions_file(tmp_path, images, reads):
    folder, pixels = images
    questions = _write(folder / "q.jsonl", FOLDER_RECORDS)
    bound = bind_questions(FakeVLM("RGB"), questions=questions, data=None)
    _check_rows(bound, pixels)
    assert "data" not in bound.info
    assert sum(reads.values()) == 3
    # the same file elsewhere finds nothing there, and says where it looked
    moved = _write(tmp_path / "moved" / "q.jsonl", FOLDER_RECORDS)
    with pytest.raises(QuestionFileError) as err:
        bind_questions(FakeVLM("RGB"), questions=moved, data=None)
    message = str(err.value)
    assert str(moved) in message and "'q1'" in message and "'a.png'" in message
    assert "the questions file's folder" in message and "--data" not in message


def test_the_pixels_follow_the_models_image_mode(tmp_path, images):
    folder, _ = images
    questions = _write(tmp_path / "q.jsonl", FOLDER_RECORDS[:2])
    grey = bind_questions(FakeVLM("L"), questions=questions, data=folder)
    colour = bind_questions(FakeVLM("RGB"), questions=questions, data=folder)
    assert [p.shape for p in grey.pixels] == [(12, 10), (9, 14)]
    assert [p.shape for p in colour.pixels] == [(12, 10, 3), (9, 14, 3)]
    np.testing.assert_array_equal(grey.pixels[0], read_image_file(folder / "a.png", "L"))


def test_the_same_file_named_two_ways_is_one_image(tmp_path, images, reads):
    folder, _ = images
    records = [
        _record("Is there edema?", ["Any edema?"], "yes", image="a.png"),
        _record("Is there an effusion?", ["Any effusion?"], "no", image="./sub/../a.png"),
    ]
    bound = bind_questions(FakeVLM(), questions=_write(tmp_path / "q.jsonl", records), data=folder)
    assert [q.image for q in bound.sets] == [0, 0] and len(bound.pixels) == 1
    assert sum(reads.values()) == 1


def test_a_missing_image_names_the_file_the_question_and_the_image(tmp_path, images, reads):
    folder, _ = images
    (folder / "b.png").unlink()
    questions = _write(tmp_path / "q.jsonl", FOLDER_RECORDS)
    with pytest.raises(QuestionFileError) as err:
        bind_questions(FakeVLM(), questions=questions, data=folder)
    message = str(err.value)
    assert str(questions) in message and "question 'q2'" in message
    assert "image 'b.png' is not a file in --data" in message and str(folder / "b.png") in message


def test_an_unreadable_image_names_the_file_the_question_and_the_image(tmp_path, images):
    folder, _ = images
    (folder / "sub" / "c.png").write_bytes(b"not a png")
    questions = _write(tmp_path / "q.jsonl", FOLDER_RECORDS)
    with pytest.raises(QuestionFileError) as err:
        bind_questions(FakeVLM(), questions=questions, data=folder)
    message = str(err.value)
    assert str(questions) in message and "question 'q3'" in message
    assert str(folder / "sub" / "c.png") in message and "cannot be read" in message


def test_a_record_without_an_image_reference_is_refused_by_name(tmp_path, images):
    folder, _ = images
    records = [*FOLDER_RECORDS[:1], _record("Is there edema?", ["Any edema?"], "yes")]
    questions = _write(tmp_path / "q.jsonl", records)
    with pytest.raises(QuestionFileError) as err:
        bind_questions(FakeVLM(), questions=questions, data=folder)
    message = str(err.value)
    assert str(questions) in message and "question 'q2'" in message
    assert "no image reference" in message


def test_an_image_the_model_cannot_take_names_its_question_and_file(tmp_path, images):
    """prepare_images refuses an image by its row; binding says which question and file."""
    folder, _ = images
    questions = _write(tmp_path / "q.jsonl", FOLDER_RECORDS)
    with pytest.raises(QuestionFileError) as err:
        bind_questions(FakeVLM("RGB", size=(12, 10)), questions=questions, data=folder)
    message = str(err.value)
    assert str(questions) in message and "question 'q2'" in message
    assert str(folder / "b.png") in message and "[9, 14, 3]" in message


def test_question_file_errors_name_the_file(tmp_path, images):
    folder, _ = images
    missing = tmp_path / "none.jsonl"
    with pytest.raises(QuestionFileError, match=r"none\.jsonl"):
        bind_questions(FakeVLM(), questions=missing, data=folder)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(QuestionFileError, match=r"empty.jsonl: no usable question records"):
        bind_questions(FakeVLM(), questions=empty, data=folder)
    bad = _write(tmp_path / "bad.jsonl", [*FOLDER_RECORDS[:2], {"question": "Is it?"}])
    with pytest.raises(QuestionFileError, match=r"bad.jsonl.*3"):
        bind_questions(FakeVLM(), questions=bad, data=folder)
    said: list[str] = []
    bound = bind_questions(FakeVLM(), questions=bad, data=folder, skip_bad=True, log=said.append)
    assert len(bound.sets) == 2 and bound.info["questions"]["rows_read"] == 3
    assert any("read 3 records" in m and "skipped 1" in m for m in said)


def test_settings_nothing_would_read_are_refused(tmp_path, images):
    folder, _ = images
    with pytest.raises(ConfigError, match="give --questions"):
        bind_questions(FakeVLM(), questions=None, data=None)
    questions = _write(tmp_path / "q.jsonl", FOLDER_RECORDS)
    with pytest.raises(ConfigError, match=r"--split must be one of train, val, test, got 'dev'"):
        bind_questions(FakeVLM(), questions=questions, data=folder, split="dev")
    with pytest.raises(QuestionFileError, match="no such file or folder"):
        bind_questions(FakeVLM(), questions=questions, data=tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown data layout"):  # a file that is no manifest
        bind_questions(FakeVLM(), questions=questions, data=folder / "a.png")


# -- an image-study source --------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    folder = tmp_path_factory.mktemp("world") / "world"
    save_world(make_world(WorldConfig.seeded(24, 0)), folder)
    return folder


def test_a_source_binds_records_by_study_id_or_image_reference(tmp_path, world_dir, reads):
    source = open_source(world_dir)
    items = source.studies()
    records = [
        _record("Is there edema?", ["Any edema?"], "no", image=items[7].image_ref),
        _record("Is there an effusion?", ["Any effusion?"], "yes", study_id=items[3].study_id),
        _record(
            "Is the heart enlarged?",
            ["Is there cardiomegaly?"],
            "no",
            study_id="x",
            image=items[3].study_id,
        ),
        _record("Is there a pneumothorax?", ["Any pneumothorax?"], "no", image=items[7].image_ref),
    ]
    vlm = FakeVLM("L")
    bound = bind_questions(vlm, questions=_write(tmp_path / "q.jsonl", records), data=world_dir)
    assert reads == Counter({f"study:{items[7].study_id}": 1, f"study:{items[3].study_id}": 1})
    assert [q.image for q in bound.sets] == [0, 1, 1, 0]
    for q, study in zip(bound.sets, [items[7], items[3], items[3], items[7]], strict=True):
        np.testing.assert_array_equal(bound.pixels[q.image], source.load_image(study, "L"))
    assert bound.info["data"] == {"path": str(world_dir), "layout": "phantom-world", "items": 24}
    train = source.split("train")
    assert bound.corpus == sorted({s.report for s in train if s.report})
    assert bound.source is not None and bound.source.layout == "phantom-world"


def test_a_source_reads_a_file_below_its_folder_and_names_what_it_is_not(
    tmp_path, world_dir, reads
):
    extra = world_dir / "extra" / "x.png"
    pixels = _png(extra, 5, (16, 16))
    try:
        records = [
            _record("Is there edema?", ["Any edema?"], "no", image="extra/x.png"),
            _record("Is there an effusion?", ["Any effusion?"], "yes", image="images.npy#2"),
        ]
        questions = _write(tmp_path / "q.jsonl", records)
        bound = bind_questions(FakeVLM("L"), questions=questions, data=world_dir)
        np.testing.assert_array_equal(bound.pixels[0], pixels)
        assert [q.image for q in bound.sets] == [0, 1]
        assert reads[f"file:{extra.resolve()}"] == 1
        records[1]["image"] = "images.npy#999"
        questions = _write(tmp_path / "q.jsonl", records)
        with pytest.raises(QuestionFileError) as err:
            bind_questions(FakeVLM("L"), questions=questions, data=world_dir)
        message = str(err.value)
        assert str(questions) in message and "question 'q2'" in message
        assert "image 'images.npy#999' is neither a study id nor an image reference of" in message
        # a record with neither an image nor a study of the data names its study id
        records[1] = _record("Is there an effusion?", ["Any effusion?"], "yes", study_id="s-x")
        questions = _write(tmp_path / "q.jsonl", records)
        with pytest.raises(QuestionFileError, match=r"question 'q2'.*study id 's-x'"):
            bind_questions(FakeVLM("L"), questions=questions, data=world_dir)
    finally:
        extra.unlink()
        extra.parent.rmdir()


def test_a_plain_folder_is_not_a_source(tmp_path, world_dir):
    """The world's image references bind to its items when --data is the world; the same
    references in a plain folder are file paths, and the error says so."""
    source = open_source(world_dir)
    plain = tmp_path / "plain"
    for name in ("images.npy", "studies.jsonl"):  # the files, without the world manifest
        plain.mkdir(exist_ok=True)
        (plain / name).write_bytes((world_dir / name).read_bytes())
    records = [_record("Is there edema?", ["Any edema?"], "no", image="images.npy#4")]
    questions = _write(tmp_path / "q.jsonl", records)
    bound = bind_questions(FakeVLM("L"), questions=questions, data=world_dir)
    np.testing.assert_array_equal(bound.pixels[0], source.load_image(source.studies()[4], "L"))
    with pytest.raises(QuestionFileError, match=r"'images.npy#4' is not a file in --data"):
        bind_questions(FakeVLM("L"), questions=questions, data=plain)
    # the same image as a PNG in the plain folder binds by its path
    Image.fromarray(source.load_image(source.studies()[4], "L")).save(plain / "s4.png")
    records[0]["image"] = "s4.png"
    questions = _write(tmp_path / "q.jsonl", records)
    from_folder = bind_questions(FakeVLM("L"), questions=questions, data=plain)
    np.testing.assert_array_equal(from_folder.pixels[0], bound.pixels[0])
    assert from_folder.info["data"]["layout"] == "image folder" and from_folder.corpus == []


@pytest.fixture
def manifest(tmp_path):
    """A manifest CSV beside its PNGs (an image-study source that is a file)."""
    folder = tmp_path / "mf"
    pixels = {f"img/{i}.png": _png(folder / "img" / f"{i}.png", 10 + i, (8, 8)) for i in range(3)}
    rows = ["image,patient_id,study_id,split,Edema"]
    rows += [f"img/{i}.png,p{i},s{i},{'test' if i == 2 else 'train'},{i % 2}" for i in range(3)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv", pixels


def test_a_manifest_file_source_reads_other_files_beside_it(tmp_path, manifest, reads):
    path, _ = manifest
    other = _png(path.parent / "other.png", 20, (8, 8))
    records = [
        _record("Is there edema?", ["Any edema?"], "yes", study_id="s1"),
        _record("Is there an effusion?", ["Any effusion?"], "no", image="other.png"),
        _record("Is the heart enlarged?", ["Is there cardiomegaly?"], "no", image="img/0.png"),
        # the file of item s0, by another spelling of its path: the same image, read once
        _record("Is there a pneumothorax?", ["Any pneumothorax?"], "no", image="./img/0.png"),
    ]
    bound = bind_questions(FakeVLM("L"), questions=_write(tmp_path / "q.jsonl", records), data=path)
    assert [q.image for q in bound.sets] == [0, 1, 2, 2]
    np.testing.assert_array_equal(bound.pixels[1], read_image_file(path.parent / "other.png", "L"))
    np.testing.assert_array_equal(bound.pixels[2], read_image_file(path.parent / "img/0.png", "L"))
    assert other.shape == (8, 8) and len(bound.pixels) == 3
    assert sum(reads.values()) == 3
    assert bound.info["data"]["layout"] == "manifest"


def test_a_source_image_that_cannot_be_read_names_the_question(monkeypatch, tmp_path, world_dir):
    """Readers check their files when opened; an image that fails later (a file changed
    underneath) is named with the question that asked about it."""
    from mechtune.sim.source import PhantomWorldSource

    def broken(self, study, mode):
        raise DataError(f"{self.root / 'images.npy'}: truncated")

    monkeypatch.setattr(PhantomWorldSource, "_load", broken)
    records = [_record("Is there edema?", ["Any edema?"], "yes", image="images.npy#1")]
    questions = _write(tmp_path / "q.jsonl", records)
    with pytest.raises(QuestionFileError) as err:
        bind_questions(FakeVLM("L"), questions=questions, data=world_dir)
    message = str(err.value)
    assert str(questions) in message and "question 'q1'" in message
    assert "image 'images.npy#1'" in message and "truncated" in message
    with pytest.raises(QuestionFileError, match=r"--data .*world, study 's0000000\d'.*truncated"):
        bind_questions(FakeVLM("L"), questions=None, data=world_dir)


# -- the data's own questions ---------------------------------------------------------------


def test_without_questions_a_source_asks_its_own_of_a_split(world_dir, reads):
    source = open_source(world_dir)
    bound = bind_questions(FakeVLM("L"), questions=None, data=world_dir)
    train = source.split("train")
    assert reads == Counter({f"study:{s.study_id}": 1 for s in train})
    assert {q.record.study_id for q in bound.sets} == {s.study_id for s in train}
    assert len(bound.sets) > len(train)  # several questions per study, one image each
    assert {q.record.split for q in bound.sets} == {"train"} and bound.split_labels
    assert len(bound.pixels) == len(train)
    by_id = {s.study_id: s for s in train}
    for q in bound.sets:
        np.testing.assert_array_equal(
            bound.pixels[q.image], source.load_image(by_id[q.record.study_id], "L")
        )
    assert bound.info["own_questions"] == {
        "split": "train",
        "heldout_families": False,
        "sets": len(bound.sets),
    }
    test = bind_questions(FakeVLM("L"), questions=None, data=world_dir, split="test")
    assert {q.record.study_id for q in test.sets} == {s.study_id for s in source.split("test")}
    held = bind_questions(FakeVLM("L"), questions=None, data=world_dir, split="test", heldout=True)
    assert all(all(q.record.heldout_family) for q in held.sets)
    assert not any(any(q.record.heldout_family) for q in test.sets)
    reseeded = bind_questions(FakeVLM("L"), questions=None, data=world_dir, seed=1)
    assert [q.record.question for q in reseeded.sets] != [q.record.question for q in bound.sets]


def test_a_split_without_usable_studies_is_refused_naming_it(tmp_path, manifest):
    path, _ = manifest
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], *(r.rsplit(",", 1)[0] + "," for r in rows[1:])]) + "\n")
    with pytest.raises(QuestionFileError, match=r"no train-split studies with definite labels"):
        bind_questions(FakeVLM("L"), questions=None, data=path)


# -- splits of a questions file ---------------------------------------------------------------


def _set(qid: str, split: str, patient: str = "p") -> ParaphraseSet:
    return ParaphraseSet(
        question_id=qid,
        study_id=qid,
        patient_id=patient,
        condition=None,
        question="Is there edema?",
        paraphrases=("Any edema?",),
        strategies=("lexical",),
        families=(),
        answer=True,
        image_ref="a.png",
        split=split,
    )


def test_select_split_keeps_a_labelled_files_split_and_uses_an_unlabelled_file_whole():
    records = [_set("a", "train"), _set("b", "val"), _set("c", "train")]
    assert [r.question_id for r in select_split(records, "train", True, Path("q"))] == ["a", "c"]
    said: list[str] = []
    whole = select_split(records, "test", False, Path("q.jsonl"), said.append)
    assert whole == records and said == ["q.jsonl has no split labels: using all 3 records"]
    with pytest.raises(QuestionFileError, match=r"q.jsonl: no records of split 'test' "):
        select_split(records, "test", True, Path("q.jsonl"))
    with pytest.raises(QuestionFileError, match=r"\['train', 'val'\]"):
        select_split(records, "test", True, Path("q.jsonl"))
    bound = [ImageQuestion(r, 0) for r in records]
    assert [q.record.question_id for q in split_sets(bound, "val")] == ["b"]


def test_bind_keeps_the_split_of_a_file_that_labels_splits(monkeypatch, tmp_path, images):
    """The import report's ``split_labels`` decides: labelled, a split is selected;
    unlabelled, the whole file is used and the log says so."""
    folder, _ = images
    records = [_set("a", "train"), _set("b", "val"), _set("c", "train")]

    class Report:
        rows_read = rows_kept = 3

        def __init__(self, labelled: bool) -> None:
            self.labelled = labelled
            self.skipped: dict[str, int] = {}

        def to_dict(self) -> dict[str, Any]:
            return {"rows_read": 3, "split_labels": self.labelled}

    for labelled in (True, False):
        monkeypatch.setattr(
            qmod, "read_psf_records", lambda p, skip_bad, lab=labelled: (records, Report(lab))
        )
        said: list[str] = []
        questions = tmp_path / "q.jsonl"
        bound = bind_questions(
            FakeVLM(), questions=questions, data=folder, split="val", log=said.append
        )
        ids = [q.record.question_id for q in bound.sets]
        assert bound.split_labels is labelled
        assert ids == (["b"] if labelled else ["a", "b", "c"])
        assert any("no split labels" in m for m in said) is not labelled
        everything = bind_questions(FakeVLM(), questions=questions, data=folder, split=None)
        assert len(everything.sets) == 3  # no split: every record


@needs_split_field
def test_a_labelled_questions_file_is_split_end_to_end(tmp_path, images):
    folder, _ = images
    splits = ["train", "val", "train", "test"]
    records = [{**r, "split": s} for r, s in zip(FOLDER_RECORDS, splits, strict=True)]
    questions = _write(tmp_path / "q.jsonl", records)
    bound = bind_questions(FakeVLM(), questions=questions, data=folder, split="train")
    assert [q.record.question_id for q in bound.sets] == ["q1", "q3"] and bound.split_labels
    assert bound.info["questions"]["split_labels"] == 4  # records that carry a split
    assert len(bound.pixels) == 2  # images of other splits are not read
    with pytest.raises(
        QuestionFileError, match=r"no records of split 'val' \(splits: \['train'\]\)"
    ):
        bind_questions(
            FakeVLM(), questions=_write(tmp_path / "t.jsonl", records[:1]), data=folder, split="val"
        )


def test_an_unlabelled_questions_file_reports_no_split_labels(tmp_path, images):
    folder, _ = images
    questions = _write(tmp_path / "q.jsonl", FOLDER_RECORDS)
    said: list[str] = []
    bound = bind_questions(
        FakeVLM(), questions=questions, data=folder, split="train", log=said.append
    )
    assert len(bound.sets) == 4 and not bound.split_labels
    assert f"{questions} has no split labels: using all 4 records" in said


def test_subset_keeps_the_image_batch(tmp_path, images):
    folder, _ = images
    bound = bind_questions(
        FakeVLM(), questions=_write(tmp_path / "q.jsonl", FOLDER_RECORDS), data=folder
    )
    part = bound.subset(bound.sets[1:3])
    assert part.images is bound.images and part.pixels is bound.pixels
    assert [q.record.question_id for q in part.sets] == ["q2", "q3"]
    assert len(bound.sets) == 4
