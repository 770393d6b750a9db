"""Questions files from any image-study source (builders.paraphrase.write_source_questions):
a manifest source built here, read back with the PSF reader."""

from __future__ import annotations

from collections import Counter

import pytest

from mechtune.data.builders.paraphrase import (
    image_paraphrase_sets,
    source_paraphrase_sets,
    write_source_questions,
)
from mechtune.data.psf import read_psf_records
from mechtune.data.sources import Manifest
from mechtune.errors import ConfigError

from .sources.builders import write_image, write_text

HEADER = "image,patient_id,study_id,split,Pleural Effusion,Edema,Cardiomegaly,Pneumothorax"
ROWS = [
    "img/a.png,p1,s1,train,1.0,0.0,0.0,1.0",
    "img/b.png,p1,s2,train,0.0,1.0,,0.0",
    "img/c.png,p2,s3,validate,1.0,0.0,1.0,0.0",
    "img/d.png,p3,s4,test,0.0,0.0,1.0,1.0",
    "img/e.png,p3,s5,test,-1.0,,,",  # no definite label: no question
    "img/f.png,p4,s6,test,1.0,,,0.0",
]


@pytest.fixture()
def source(tmp_path):
    for i, row in enumerate(ROWS):
        write_image(tmp_path / row.split(",")[0], seed=i)
    return Manifest(write_text(tmp_path / "manifest.csv", "\n".join([HEADER, *ROWS]) + "\n"))


def test_questions_follow_the_sources_items_splits_and_labels(source, tmp_path):
    path = tmp_path / "out" / "questions.jsonl"
    counts = write_source_questions(source, path, questions_per_study=2, seed=3)
    sets, report = read_psf_records(path)
    assert report.labels_splits and report.split_labels == len(sets)
    items = {s.study_id: s for s in source}
    by_study: dict[str, list] = {}
    for q in sets:
        study = items[q.study_id]
        by_study.setdefault(q.study_id, []).append(q)
        assert q.image_ref == study.image_ref and (source.root / q.image_ref).is_file()
        assert q.patient_id == study.patient_id and q.split == source.split_of(study)
        assert q.condition is not None and q.answer is study.label(q.condition)
        pool = q.question_id.rsplit("-", 1)[1]
        assert q.heldout_family == ((pool == "h"),) * len(q.paraphrases)
    # train items: training families only; val and test items: both pools; s5 none
    pools = {sid: Counter(q.question_id[-1] for q in qs) for sid, qs in by_study.items()}
    assert pools == {
        "s1": {"i": 2},
        "s2": {"i": 2},
        "s3": {"i": 2, "h": 2},
        "s4": {"i": 2, "h": 2},
        "s6": {"i": 2, "h": 2},
    }
    assert source.split_of(items["s3"]) == "val"
    assert counts == {
        "file": "questions.jsonl",
        "questions_per_study": 2,
        "seed": 3,
        "studies": 6,
        "studies_with_questions": 5,
        "studies_without_definite_label": 1,
        "records": 16,
        "records_by_split": {"train": 4, "val": 4, "test": 8},
        "records_by_family_pool": {"in_distribution": 10, "heldout": 6},
        "answers": {"no": sum(not q.answer for q in sets), "yes": sum(q.answer for q in sets)},
        "paraphrases": sum(len(q.paraphrases) for q in sets),
        "paraphrases_by_strategy": dict(
            sorted(Counter(x for q in sets for x in q.strategies).items())
        ),
    }
    assert 0 < counts["answers"]["yes"] < 16


def test_the_file_asks_what_the_in_memory_path_asks(source):
    """Per split and family pool, the records are image_paraphrase_sets' for those items."""
    sets = source_paraphrase_sets(source, questions_per_study=3, seed=9)
    for split in ("train", "val", "test"):
        rows = [(i, s) for i, s in enumerate(source) if source.split_of(s) == split]
        for heldout in (False, True) if split != "train" else (False,):
            expected = image_paraphrase_sets(
                rows, split, heldout=heldout, questions_per_study=3, seed=9
            )
            chosen = [
                q
                for q in sets
                if q.split == split and q.question_id.endswith("-h" if heldout else "-i")
            ]
            assert chosen == [e.record for e in expected] and chosen
    assert not any(q.split == "train" and q.question_id.endswith("-h") for q in sets)


def test_questions_per_study_and_seed_reach_the_file(source, tmp_path):
    def written(name: str, **kw) -> bytes:
        write_source_questions(source, tmp_path / name, **kw)
        return (tmp_path / name).read_bytes()

    def per_pool(name: str) -> Counter:
        sets, _ = read_psf_records(tmp_path / name)
        return Counter((q.study_id, q.question_id[-1]) for q in sets)

    base = written("a.jsonl", questions_per_study=2, seed=0)
    assert written("b.jsonl", questions_per_study=2, seed=0) == base
    assert written("c.jsonl", questions_per_study=2, seed=1) != base
    assert written("d.jsonl", questions_per_study=3, seed=0) != base
    # s1 has 4 definite labels, s6 only 2: questions_per_study each, or as many as labels
    more = per_pool("d.jsonl")
    assert (more[("s1", "i")], more[("s6", "i")], more[("s6", "h")]) == (3, 2, 2)
    written("e.jsonl", questions_per_study=1, seed=0)
    assert set(per_pool("e.jsonl").values()) == {1}
    with pytest.raises(ConfigError, match="questions_per_study must be >= 1, got 0"):
        write_source_questions(source, tmp_path / "f.jsonl", questions_per_study=0)
