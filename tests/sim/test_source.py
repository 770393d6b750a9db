"""The phantom world read through the image-study protocol (PhantomWorldSource)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from mechtune.data.schema import Study
from mechtune.data.sources.base import ImageStudySource
from mechtune.errors import ConfigError, DataError
from mechtune.sim.render import RenderConfig
from mechtune.sim.reports import ReportConfig
from mechtune.sim.source import PhantomWorldSource
from mechtune.sim.world import STUDIES, WorldConfig, load_world, make_world, save_world


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    config = WorldConfig(60, 2, RenderConfig(size=32, seed=2), ReportConfig(seed=2))
    out = tmp_path_factory.mktemp("world") / "w"
    save_world(make_world(config), out)
    return out


def test_items_are_the_worlds_studies_with_their_reports(folder):
    source = PhantomWorldSource(folder)
    world = load_world(folder)
    assert isinstance(source, ImageStudySource) and source.layout == "phantom-world"
    assert source.studies() == world.studies and list(source) == world.studies
    assert len(source) == 60
    assert [s.image_ref for s in source] == [f"images.npy#{i}" for i in range(60)]
    assert all(source.report_text(s) == s.report and s.report for s in source)
    assert (source.report.rows_read, source.report.items, source.report.n_skipped) == (60, 60, 0)
    assert source.report.notes["reports"] == 60
    assert source.description["layout"] == "phantom-world"
    assert source.description["world_config"] == world.config.to_dict()


def test_images_are_the_rows_of_images_npy_in_grey_and_rgb(folder):
    source = PhantomWorldSource(folder)
    world = load_world(folder)
    for i in (0, 17, 59):
        study = source.items[i]
        grey = source.load_image(study)
        assert grey.dtype == np.uint8 and grey.shape == (32, 32)
        assert np.array_equal(grey, world.images[i])
        assert grey.flags.writeable  # a copy, not a view on the memory map
        rgb = source.load_image(study, "RGB")
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
        assert all(np.array_equal(rgb[..., c], grey) for c in range(3))
    pil = source.load_pil(source.items[3])
    assert pil.mode == "RGB" and pil.size == (32, 32)
    assert np.array_equal(np.asarray(pil)[..., 0], world.images[3])
    batch = source.load_images(source.items[:4], "L")
    assert [b.shape for b in batch] == [(32, 32)] * 4
    with pytest.raises(ConfigError, match="image mode"):
        source.load_image(source.items[0], "CMYK")


def test_splits_are_the_worlds_patient_splits(folder):
    source = PhantomWorldSource(folder)
    world = load_world(folder)
    assert [source.split_of(s) for s in source] == [world.split_of(s) for s in world.studies]
    for name in ("train", "val", "test"):
        assert [s.study_id for s in source.split(name)] == [
            world.studies[i].study_id for i in world.indices(name)
        ]
    counts = source.split_counts()
    assert sum(counts.values()) == 60 and counts["train"] > counts["test"] > 0
    by_patient: dict[str, set[str]] = {}
    for s in source:
        by_patient.setdefault(s.patient_id, set()).add(source.split_of(s))
    assert all(len(v) == 1 for v in by_patient.values())


def test_split_seed_reseeds_the_patient_split(folder):
    own, reseeded = PhantomWorldSource(folder), PhantomWorldSource(folder, split_seed=9)
    assert PhantomWorldSource(folder, split_seed=2).split_counts() == own.split_counts()
    assert [reseeded.split_of(s) for s in reseeded] != [own.split_of(s) for s in own]
    by_patient: dict[str, set[str]] = {}
    for s in reseeded:
        by_patient.setdefault(s.patient_id, set()).add(reseeded.split_of(s))
    assert all(len(v) == 1 for v in by_patient.values())
    assert reseeded.report.notes["split_seed"] == 9


def test_a_foreign_study_or_a_broken_folder_fails_by_name(folder, tmp_path):
    source = PhantomWorldSource(folder)
    stranger = dataclasses.replace(source.items[0], study_id="s99999999")
    with pytest.raises(DataError, match="'s99999999' is not in this world"):
        source.load_image(stranger)
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in folder.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    lines = (broken / STUDIES).read_text().splitlines()
    record = json.loads(lines[4])
    record["image_ref"] = "images.npy#7"
    lines[4] = json.dumps(record)
    (broken / STUDIES).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 5: image_ref 'images.npy#7' is not 'images.npy#4'"):
        PhantomWorldSource(broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "kind": "benchmark"}))
    with pytest.raises(DataError, match="not 'world'"):
        PhantomWorldSource(broken)
    assert isinstance(source.items[0], Study)
