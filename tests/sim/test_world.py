import numpy as np

from mechtune.sim.reports import ReportConfig, write_report
from mechtune.sim.world import WorldConfig, load_world, make_world, save_world, showcase_studies


def test_world_round_trip_and_determinism(tmp_path):
    config = WorldConfig(n_studies=60, seed=3)
    world = make_world(config)
    save_world(world, tmp_path / "a")
    again = load_world(tmp_path / "a")
    assert np.array_equal(again.images, world.images)
    assert again.studies == world.studies
    save_world(make_world(config), tmp_path / "b")
    for name in ("images.npy", "studies.jsonl", "acquisition.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert world.studies[5].image_ref == "images.npy#5"


def test_splits_are_patient_level():
    world = make_world(WorldConfig(n_studies=300))
    by_patient: dict[str, set[str]] = {}
    for s in world.studies:
        by_patient.setdefault(s.patient_id, set()).add(world.split_of(s))
    assert all(len(v) == 1 for v in by_patient.values())
    sizes = {k: len(world.indices(k)) for k in ("train", "val", "test")}
    assert sum(sizes.values()) == 300 and sizes["train"] > sizes["test"] > 0


def test_reports_state_findings_and_rate_controls_negatives():
    world = make_world(WorldConfig(n_studies=200))
    for s in world.studies:
        assert s.report
    none = [write_report(s, ReportConfig(negative_rate=0.0)) for s in world.studies]
    many = [write_report(s, ReportConfig(negative_rate=1.0)) for s in world.studies]
    count = lambda reps: sum(r.count(".") for r in reps)  # noqa: E731
    assert count(many) > count(none) + 150
    normal = next(s for s in world.studies if s.label("no_finding"))
    assert "No " not in write_report(normal, ReportConfig(negative_rate=0.0)).replace(
        "No acute", ""
    )


def test_showcase_covers_every_condition():
    studies = showcase_studies(64)
    conditions = {f.condition for s in studies for f in s.present()} - {"no_finding"}
    assert len(conditions) == 13
    assert studies[0].label("no_finding")
