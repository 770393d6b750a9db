"""An exported phantom folder read back with the MIMIC-CXR-JPG reader a real user runs:
the same studies, labels, splits, images and reports as the world it came from."""

from __future__ import annotations

import numpy as np
import pytest

from mechtune.data.psf import read_psf_records
from mechtune.data.sources import open_source
from mechtune.data.sources.mimic import MimicCxrJpg
from mechtune.sim.export import QUESTIONS_FILE, export_mimic
from mechtune.sim.mimic_layout import mimic_study_id, mimic_subject_id
from mechtune.sim.render import RenderConfig
from mechtune.sim.reports import ReportConfig
from mechtune.sim.source import PhantomWorldSource
from mechtune.sim.world import WorldConfig, make_world, save_world


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("readback")
    world = make_world(WorldConfig(60, 5, RenderConfig(size=32, seed=5), ReportConfig(seed=5)))
    export = export_mimic(
        world,
        root / "mimic",
        image_format="png",
        lateral_rate=0.5,
        second_frontal_rate=0.5,
        lateral_only_studies=3,
        seed=5,
    )
    save_world(world, root / "world")
    return world, export, root


def test_read_back_gives_the_worlds_studies_labels_and_splits(exported):
    world, export, root = exported
    source = open_source(root / "mimic")
    assert isinstance(source, MimicCxrJpg)
    by_id = {s.study_id: s for s in source}
    assert set(by_id) == {str(mimic_study_id(s.study_id)) for s in world.studies}
    # The extra lateral-only studies are counted and skipped, never silently dropped.
    assert source.report.skipped.get("lateral_only") == export.counts["lateral_only_studies"] == 3
    for row, truth in enumerate(world.studies):
        item = by_id[str(mimic_study_id(truth.study_id))]
        assert item.patient_id == str(mimic_subject_id(truth.patient_id))
        assert {(f.condition, f.present) for f in item.findings} == {
            (f.condition, f.present) for f in truth.findings
        }
        assert source.split_of(item) == world.split_of(truth)
        # The view rule picks the world's own image, pixel for pixel (PNG is lossless).
        assert np.array_equal(source.load_image(item), world.images[row])
        # FINDINGS hold the world's report; IMPRESSION repeats a sentence of it.
        assert truth.report is not None and item.report is not None
        assert " ".join(truth.report.split()) in " ".join(item.report.split())


def test_a_saved_world_opens_through_the_same_protocol(exported):
    world, _, root = exported
    source = open_source(root / "world")
    assert isinstance(source, PhantomWorldSource)
    assert [s.study_id for s in source] == [s.study_id for s in world.studies]
    assert [source.split_of(s) for s in source] == [world.split_of(s) for s in world.studies]
    assert np.array_equal(source.load_image(source.studies()[7]), world.images[7])


def test_report_facts_restore_side_zone_and_size(exported):
    """Labels give existence only; the exported reports give back each finding's side,
    zone and size, so the read-back studies equal the world's truth finding for finding."""
    pytest.importorskip("medspacy")
    world, _, root = exported
    source = MimicCxrJpg(root / "mimic")
    labels_only = {s.study_id: s.findings for s in source}
    done: list[int] = []
    source.with_report_facts(progress=done.append)
    assert done == [1] * sum(1 for s in source if s.report)  # one call per report read
    by_id = {s.study_id: s for s in source}
    attributed = 0
    for truth in world.studies:
        item = by_id[str(mimic_study_id(truth.study_id))]
        assert set(item.findings) == set(truth.findings), truth.report
        attributed += item.findings != labels_only[item.study_id]
    facts = source.report.notes["report_facts"]
    assert facts["reports"] == len(world.studies) and facts["changed"] == attributed > 10


def test_exported_questions_resolve_to_the_sources_studies_and_images(exported):
    """questions.jsonl, read as a user reads it, names for every record an image file under
    the export root and the source study whose image_ref it is, in that study's split."""
    world, export, root = exported
    source = open_source(root / "mimic")
    sets, report = read_psf_records(root / "mimic" / QUESTIONS_FILE)
    assert export.questions == root / "mimic" / QUESTIONS_FILE
    assert report.rows_kept == len(sets) == export.counts["questions"]["records"] > 0
    assert report.labels_splits and report.labels_heldout_families and not report.skipped
    by_ref = {s.image_ref: s for s in source}
    assert len(by_ref) == len(source)
    truth = {str(mimic_study_id(s.study_id)): s for s in world.studies}
    pools: dict[str, set[bool]] = {}
    for q in sets:
        assert q.image_ref is not None and not q.image_ref.startswith("/")
        path = root / "mimic" / q.image_ref
        assert path.is_file() and path.resolve().is_relative_to((root / "mimic").resolve())
        study = by_ref[q.image_ref]
        assert source.image_file(study) == path
        assert (q.study_id, q.patient_id) == (study.study_id, study.patient_id)
        assert q.split == source.split_of(study) == world.split_of(truth[q.study_id])
        assert q.condition is not None and q.answer is truth[q.study_id].label(q.condition)
        pools.setdefault(q.study_id, set()).add(all(q.heldout_family))
    # every study is asked about; train studies with training families only, val and test
    # studies with both (the lateral-only extras have no frontal image, so no questions)
    assert set(pools) == set(truth)
    for study_id, held in pools.items():
        expected = {False} if world.split_of(truth[study_id]) == "train" else {False, True}
        assert held == expected, study_id
