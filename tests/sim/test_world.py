import dataclasses

import numpy as np
import pytest

from mechtune.data.builders.contextual import ContextualConfig
from mechtune.data.builders.paraphrase import ParaphraseConfig
from mechtune.data.builders.polarity import PolarityConfig
from mechtune.errors import ConfigError
from mechtune.sim.render import RenderConfig
from mechtune.sim.reports import PERTINENT, ReportConfig, write_report
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


# Every WorldConfig and ReportConfig field, with a value that must change the world. The
# nested render and report configs must reach the renderer and the report writer.
WORLD_FIELD_CHANGES = {
    "n_studies": 30,
    "seed": 1,
    "render": RenderConfig(size=64),
    "report": ReportConfig(negative_rate=1.0),
    "split_fractions": (0.5, 0.25, 0.25),
}
REPORT_FIELD_CHANGES = {"seed": 1, "negative_rate": 1.0, "max_negatives": 0}


def _world_fingerprint(**changes):
    """Pixels, studies (with reports) and each study's split of a 24-study world."""
    world = make_world(WorldConfig(**{"n_studies": 24, **changes}))
    return (
        world.images.tobytes(),
        [s.to_dict() for s in world.studies],
        [world.split_of(s) for s in world.studies],
    )


def test_every_world_and_report_field_has_a_change_test():
    assert {f.name for f in dataclasses.fields(WorldConfig)} == set(WORLD_FIELD_CHANGES)
    assert {f.name for f in dataclasses.fields(ReportConfig)} == set(REPORT_FIELD_CHANGES)


@pytest.mark.parametrize("field", sorted(WORLD_FIELD_CHANGES))
def test_changing_a_world_field_changes_the_world(field):
    before = _world_fingerprint()
    after = _world_fingerprint(**{field: WORLD_FIELD_CHANGES[field]})
    assert before != after
    if field in ("render", "report"):  # the nested config reaches its user, and only it
        images, studies, splits = after
        assert (images == before[0]) == (field == "report")
        reports = [s["report"] for s in studies]
        assert (reports == [s["report"] for s in before[1]]) == (field == "render")
        assert splits == before[2]


@pytest.mark.parametrize("field", sorted(REPORT_FIELD_CHANGES))
def test_changing_a_report_field_changes_the_reports(field):
    studies = make_world(WorldConfig(n_studies=40)).studies
    base = [write_report(s, ReportConfig()) for s in studies]
    changed = ReportConfig(**{field: REPORT_FIELD_CHANGES[field]})
    assert base != [write_report(s, changed) for s in studies]


def test_max_negatives_caps_the_pertinent_negatives():
    """With every pertinent absence stated, a report gains exactly min(cap, absences)
    sentences over the report with none (the findings sentences are drawn first)."""
    studies = make_world(WorldConfig(n_studies=40)).studies
    sentences = lambda s, config: write_report(s, config).count(".")  # noqa: E731
    for cap in (0, 1, 2):
        config = ReportConfig(negative_rate=1.0, max_negatives=cap)
        for s in studies:
            absent = sum(1 for c in PERTINENT if s.label(c) is False)
            extra = sentences(s, config) - sentences(s, ReportConfig(negative_rate=0.0))
            assert extra == min(cap, absent), s.study_id


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n_studies": 0}, "n_studies must be >= 1"),
        ({"split_fractions": (0.8, 0.1, 0.2)}, "split_fractions must be 3 numbers"),
        ({"split_fractions": (1.2, -0.1, -0.1)}, r"each in \[0, 1\]"),
        ({"split_fractions": (0.5, 0.5)}, "split_fractions must be 3 numbers"),
    ],
)
def test_world_config_refuses_bad_values_at_construction(kw, message):
    with pytest.raises(ConfigError, match=message):
        WorldConfig(**kw)
    if "split_fractions" in kw:  # the builders share the rule
        for config in (PolarityConfig, ContextualConfig, ParaphraseConfig):
            with pytest.raises(ConfigError, match="split_fractions"):
                config(**kw)


def test_report_config_refuses_bad_values_at_construction():
    with pytest.raises(ConfigError, match=r"negative_rate must be in \[0, 1\]"):
        ReportConfig(negative_rate=1.5)
    with pytest.raises(ConfigError, match="max_negatives must be >= 0"):
        ReportConfig(max_negatives=-1)


FIELD_TESTS = {
    "mechtune.sim.world.WorldConfig": {
        f: "test_changing_a_world_field_changes_the_world" for f in WORLD_FIELD_CHANGES
    },
    "mechtune.sim.reports.ReportConfig": {
        f: "test_changing_a_report_field_changes_the_reports" for f in REPORT_FIELD_CHANGES
    },
}


def test_seeded_world_follows_one_seed_everywhere():
    """Every --seed / world_seed means one world: studies, splits, acquisition and report
    wording all follow it, as `sim build --seed` makes it; seed 0 is the default world."""
    assert WorldConfig.seeded(30, 0) == WorldConfig(n_studies=30)
    config = WorldConfig.seeded(30, 4)
    assert (config.seed, config.render.seed, config.report.seed) == (4, 4, 4)
    a, b = make_world(WorldConfig.seeded(30, 4)), make_world(WorldConfig(n_studies=30, seed=4))
    assert [s.findings for s in a.studies] == [s.findings for s in b.studies]
    assert a.acquisitions != b.acquisitions  # the renderer follows the seed too
