"""The phantom world exported in MIMIC-CXR-JPG layout: files, tables, images, reports.

Every check reads the export back with plain csv/gzip/Pillow (not with mechtune's readers,
which are tested on their own) and compares it with the world it came from.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.data.importers import read_label_csv
from mechtune.data.ontology import load_ontology
from mechtune.data.sources.base import read_image_file
from mechtune.errors import ConfigError, DataError
from mechtune.sim.export import (
    QUESTIONS_FILE,
    MimicExportConfig,
    export_mimic,
    lateral_only_extras,
)
from mechtune.sim.mimic_layout import (
    CHEXPERT_TABLE,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    METADATA_TABLE,
    NEGBIO_TABLE,
    NORMAL_IMPRESSION,
    SPLIT_COLUMNS,
    SPLIT_TABLE,
    dicom_id,
    mimic_study_id,
    mimic_subject_id,
    render_lateral,
)
from mechtune.sim.render import RenderConfig
from mechtune.sim.reports import ReportConfig
from mechtune.sim.world import World, WorldConfig, load_world, make_world, save_world

runner = CliRunner()
DICOM = r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}"
IMAGE_RE = re.compile(rf"files/p(\d\d)/p(\d{{8}})/s(\d{{8}})/({DICOM})\.(png|jpg)")
REPORT_RE = re.compile(r"files/p(\d\d)/p(\d{8})/s(\d{8})\.txt")
# PNG, so that the world's pixels can be compared exactly (JPEG is the default format)
OPTIONS = {
    "image_format": "png",
    "lateral_rate": 0.5,
    "second_frontal_rate": 0.5,
    "lateral_only_studies": 4,
}


def small_world(n: int = 48, seed: int = 3) -> World:
    return make_world(
        WorldConfig(n, seed, RenderConfig(size=32, seed=seed), ReportConfig(seed=seed))
    )


@pytest.fixture(scope="module")
def world() -> World:
    return small_world()


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mimic") / "export"
    export_mimic(world, out, seed=5, **OPTIONS)
    return out


def table(root: Path, name: str) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(root / name, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def by_study(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault(r["study_id"], []).append(r)
    return out


def chosen_image(rows: list[dict[str, str]]) -> dict[str, str] | None:
    """The readers' rule: the first PA by dicom_id, else the first AP, else none."""
    for view in ("PA", "AP"):
        found = sorted((r for r in rows if r["ViewPosition"] == view), key=lambda r: r["dicom_id"])
        if found:
            return found[0]
    return None


def image_path(root: Path, r: dict[str, str], suffix: str = "png") -> Path:
    s = r["subject_id"]
    return root / f"files/p{s[:2]}/p{s}/s{r['study_id']}/{r['dicom_id']}.{suffix}"


# -- ids and the tree ---------------------------------------------------------------------


def test_mimic_ids_follow_the_offsets():
    assert mimic_subject_id("p0000007") == 10000007
    assert mimic_study_id("s00000012") == 50000012
    assert re.fullmatch(DICOM, dicom_id(0, "s00000012", 1))
    assert dicom_id(0, "s00000012", 1) != dicom_id(0, "s00000012", 2) != dicom_id(1, "s00000012", 2)
    with pytest.raises(DataError, match="'patient7'"):
        mimic_subject_id("patient7")
    with pytest.raises(DataError, match="too large"):
        mimic_study_id("s10000000")


def test_the_tree_and_file_names_follow_mimic_rules(world, exported):
    files = set(tree(exported))
    tables = {CHEXPERT_TABLE, NEGBIO_TABLE, METADATA_TABLE, SPLIT_TABLE, "manifest.json"}
    tables.add(QUESTIONS_FILE)
    assert tables <= files
    images, reports = set(), set()
    for rel in files - tables:
        if m := IMAGE_RE.fullmatch(rel):
            assert m.group(1) == m.group(2)[:2] and m.group(5) == "png", rel
            images.add((m.group(2), m.group(3), m.group(4)))
        else:
            m = REPORT_RE.fullmatch(rel)
            assert m and m.group(1) == m.group(2)[:2], rel
            reports.add((m.group(2), m.group(3)))
    _, meta = table(exported, METADATA_TABLE)
    assert images == {(r["subject_id"], r["study_id"], r["dicom_id"]) for r in meta}
    extras = OPTIONS["lateral_only_studies"]
    expected = {
        (str(mimic_subject_id(s.patient_id)), str(mimic_study_id(s.study_id)))
        for s in world.studies
    }
    assert expected < reports and len(reports) == len(world.studies) + extras
    # the world's ids map to the MIMIC ids by the offsets, patient by patient
    assert ("10000000", "50000000") in reports


def test_tables_parse_with_mimic_headers_and_fixed_gzip_headers(exported):
    headers = {
        CHEXPERT_TABLE: ["subject_id", "study_id", *LABEL_COLUMNS],
        NEGBIO_TABLE: ["subject_id", "study_id", *LABEL_COLUMNS],
        METADATA_TABLE: list(METADATA_COLUMNS),
        SPLIT_TABLE: list(SPLIT_COLUMNS),
    }
    # MIMIC's label order is alphabetical, "No Finding" among the conditions
    assert list(LABEL_COLUMNS) == sorted(load_ontology().columns)
    for name, header in headers.items():
        found, rows = table(exported, name)
        assert found == header and rows, name
        raw = (exported / name).read_bytes()
        assert raw[:3] == b"\x1f\x8b\x08" and raw[4:8] == b"\0\0\0\0", name  # gzip, mtime 0
        member = raw[10 : raw.index(b"\0", 10)].decode()
        assert member == name.removesuffix(".gz")
    assert table(exported, CHEXPERT_TABLE) == table(exported, NEGBIO_TABLE)
    _, meta = table(exported, METADATA_TABLE)
    keys = [(int(r["subject_id"]), int(r["study_id"]), r["dicom_id"]) for r in meta]
    assert keys == sorted(keys)
    assert {r["Rows"] for r in meta} == {r["Columns"] for r in meta} == {"32"}
    assert all(re.fullmatch(r"21\d{6}", r["StudyDate"]) for r in meta)
    assert all(re.fullmatch(r"\d{1,6}\.\d{3}", r["StudyTime"]) for r in meta)


def test_labels_equal_the_world_truth(world, exported, tmp_path):
    _, rows = table(exported, CHEXPERT_TABLE)
    extras = lateral_only_extras(world, OPTIONS["lateral_only_studies"])
    truth = {
        str(mimic_study_id(s.study_id)): (s, str(mimic_subject_id(s.patient_id)))
        for s in [*world.studies, *extras]
    }
    assert [r["study_id"] for r in rows] == sorted(truth)
    onto = load_ontology()
    for r in rows:
        study, subject = truth[r["study_id"]]
        assert r["subject_id"] == subject
        expected = {onto.condition(f.condition).column: f.present for f in study.findings}
        assert {c: r[c] for c in LABEL_COLUMNS} == {
            c: "1.0" if expected[c] else "0.0" for c in LABEL_COLUMNS
        }
    # and mechtune's own label-CSV importer reads the same facts
    plain = tmp_path / "chexpert.csv"
    plain.write_bytes(gzip.decompress((exported / CHEXPERT_TABLE).read_bytes()))
    studies, report = read_label_csv(plain)
    assert report.rows_kept == len(truth) and not report.skipped
    for s in studies:  # labels carry existence only
        existence = {(f.condition, f.present) for f in truth[s.study_id][0].findings}
        assert {(f.condition, f.present) for f in s.findings} == existence
        assert s.patient_id == truth[s.study_id][1]


def test_splits_equal_the_world_split_with_validate_for_val(world, exported):
    _, rows = table(exported, SPLIT_TABLE)
    _, meta = table(exported, METADATA_TABLE)
    assert {r["dicom_id"] for r in rows} == {r["dicom_id"] for r in meta}
    mimic = {"train": "train", "val": "validate", "test": "test"}
    expected = {str(mimic_study_id(s.study_id)): mimic[world.split_of(s)] for s in world.studies}
    for r in rows:
        if r["study_id"] in expected:
            assert r["split"] == expected[r["study_id"]], r
    assert {r["split"] for r in rows} == {"train", "validate", "test"}
    by_subject: dict[str, set[str]] = {}
    for r in rows:
        by_subject.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_subject.values())


# -- images ---------------------------------------------------------------------------------


def test_reader_rule_selects_the_world_image_and_decodes_it_exactly(world, exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    world_ids = manifest["ids"]["world_image"]
    _, meta = table(exported, METADATA_TABLE)
    studies = by_study(meta)
    pa_beaten = 0
    for i, s in enumerate(world.studies):
        rows = studies[str(mimic_study_id(s.study_id))]
        chosen = chosen_image(rows)
        assert chosen is not None and chosen["dicom_id"] == world_ids[s.study_id]
        assert chosen["ViewPosition"] == world.acquisitions[i]["view"]
        assert np.array_equal(read_image_file(image_path(exported, chosen)), world.images[i])
        frontal = sorted(
            (r for r in rows if r["ViewPosition"] in ("PA", "AP")), key=lambda r: r["dicom_id"]
        )
        pa_beaten += frontal[0]["dicom_id"] != chosen["dicom_id"]
    # some studies have an AP repeat whose id sorts before their PA: "first frontal" is wrong
    assert pa_beaten > 0


def test_laterals_and_second_frontals_exist_where_planned(world, exported):
    _, meta = table(exported, METADATA_TABLE)
    studies = by_study(meta)
    counts = json.loads((exported / "manifest.json").read_text())["counts"]
    world_ids = {str(mimic_study_id(s.study_id)) for s in world.studies}
    laterals = seconds = second_ap_of_ap = 0
    for sid in world_ids:
        rows = studies[sid]
        chosen = chosen_image(rows)
        views = [r["ViewPosition"] for r in rows]
        lateral = [r for r in rows if r["ViewPosition"] in ("LATERAL", "LL")]
        laterals += bool(lateral)
        assert len(lateral) <= 1 and len(rows) <= 3 and views.count("PA") <= 1
        for r in lateral:
            pixels = read_image_file(image_path(exported, r))
            assert pixels.shape == (32, 32)
            assert not np.array_equal(pixels, read_image_file(image_path(exported, chosen)))
            assert r["ViewCodeSequence_CodeMeaning"] in ("lateral", "left lateral")
        second = [r for r in rows if r is not chosen and r not in lateral]
        if second:
            (r,) = second
            seconds += 1
            assert r["ViewPosition"] == "AP"
            second_ap_of_ap += chosen["ViewPosition"] == "AP"
            pixels = read_image_file(image_path(exported, r))
            assert not np.array_equal(pixels, read_image_file(image_path(exported, chosen)))
    assert counts["studies_with_lateral"] == laterals and 10 < laterals < 38
    assert counts["studies_with_second_frontal"] == seconds and seconds >= 8
    assert 0 < second_ap_of_ap < seconds  # both halves of the rule are exercised
    assert counts["images"] == len(meta)


def test_lateral_only_studies_follow_the_world_and_have_only_a_lateral(world, exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    listed = manifest["ids"]["lateral_only"]
    extras = lateral_only_extras(world, OPTIONS["lateral_only_studies"])
    n = len(world.studies)
    assert [e["phantom_study_id"] for e in listed] == [f"s{n + k:08d}" for k in range(4)]
    assert [e["phantom_study_id"] for e in listed] == [s.study_id for s in extras]
    assert manifest["counts"]["lateral_only_studies"] == 4
    _, meta = table(exported, METADATA_TABLE)
    studies = by_study(meta)
    for e in listed:
        rows = studies[str(e["study_id"])]
        assert [r["ViewPosition"] in ("LATERAL", "LL") for r in rows] == [True]
        assert chosen_image(rows) is None
        s = str(e["subject_id"])
        assert (exported / f"files/p{s[:2]}/p{s}/s{e['study_id']}.txt").is_file()
        assert e["study_id"] > max(mimic_study_id(w.study_id) for w in world.studies)


def test_extras_continue_the_worlds_stream_or_fail_by_name(world, tmp_path):
    """The extras are the next studies of the world's synthetic stream: a larger world
    from the same config holds them, findings and report alike."""
    bigger = make_world(dataclasses.replace(world.config, n_studies=len(world.studies) + 2))
    assert bigger.studies[: len(world.studies)] == world.studies
    # (an extra has no row of images.npy, hence no image_ref)
    expected = [dataclasses.replace(s, image_ref=None) for s in bigger.studies[-2:]]
    assert lateral_only_extras(world, 2) == expected
    renamed = [dataclasses.replace(s, study_id=f"x{i}") for i, s in enumerate(world.studies)]
    foreign = dataclasses.replace(world, studies=renamed)
    with pytest.raises(DataError, match="not the first n of its synthetic stream"):
        lateral_only_extras(foreign, 1)
    assert lateral_only_extras(foreign, 0) == []


def test_lateral_view_is_deterministic_and_not_a_frontal_film():
    a, b = render_lateral(64, 0, "x"), render_lateral(64, 0, "x")
    assert a.dtype == np.uint8 and a.shape == (64, 64) and np.array_equal(a, b)
    assert not np.array_equal(a, render_lateral(64, 0, "y"))
    # the spine runs down the image's right fifth (u = 0.6: columns 49-52), brighter than
    # the lung in front of it; a lateral chest is far from mirror-symmetric
    cols = a.astype(float).mean(0)
    assert cols[49:53].min() > cols[38:46].max() + 40
    assert np.abs(a.astype(float) - a[:, ::-1]).mean() > 20


# -- reports --------------------------------------------------------------------------------

SECTIONS = (
    "FINAL REPORT",
    "EXAMINATION:",
    "INDICATION:",
    "TECHNIQUE:",
    "COMPARISON:",
    "FINDINGS:",
    "IMPRESSION:",
)


def section(text: str, name: str, following: str | None) -> str:
    body = text.split(f" {name}:", 1)[1]
    if following:
        body = body.split(f" {following}:", 1)[0]
    return " ".join(body.split())


def test_reports_hold_findings_and_impression_in_mimic_style(world, exported):
    for s in world.studies:
        subject, study = mimic_subject_id(s.patient_id), mimic_study_id(s.study_id)
        text = (exported / f"files/p{str(subject)[:2]}/p{subject}/s{study}.txt").read_text()
        positions = [text.index(name) for name in SECTIONS]
        assert positions == sorted(positions), s.study_id
        assert text.startswith(" " * 33 + "FINAL REPORT\n") and "\n \n" in text
        assert all(line.startswith(" ") for line in text.splitlines())
        assert all(len(line) <= 78 for line in text.splitlines())
        assert section(text, "FINDINGS", "IMPRESSION") == s.report
        impression = section(text, "IMPRESSION", None)
        if s.label("no_finding"):
            assert impression == NORMAL_IMPRESSION
        else:
            assert impression == re.split(r"(?<=\.) ", s.report)[0]
            assert s.label("no_finding") is False
        # the preamble names no condition: it cannot contradict the truth
        preamble = text.split(" FINDINGS:")[0].lower()
        names = [c.name for c in load_ontology().conditions if not c.summary]
        assert not any(name in preamble for name in names), preamble


# -- determinism and options ----------------------------------------------------------------


def test_same_world_and_options_give_the_same_bytes(world, exported, tmp_path):
    from tests.progress_helpers import Recorder

    again, track = tmp_path / "again", Recorder()
    result = export_mimic(world, again, seed=5, workers=1, track=track, **OPTIONS)
    assert tree(again) == tree(exported)
    # one count per study written: the world's and the lateral-only ones
    track.check_complete()
    (stage,) = track.stages
    assert stage.total == result.counts["studies"] + result.counts["lateral_only_studies"]
    assert stage.total == len(world.studies) + OPTIONS.get("lateral_only_studies", 3)
    reloaded = tmp_path / "reloaded"
    save_world(world, tmp_path / "w")
    export_mimic(load_world(tmp_path / "w"), reloaded, seed=5, **OPTIONS)
    assert tree(reloaded) == tree(exported)


# Every MimicExportConfig field, a changed value and what must follow from it.
FIELD_CHANGES = {
    "image_format": "jpeg",
    "jpeg_quality": 60,
    "lateral_rate": 0.0,
    "second_frontal_rate": 1.0,
    "lateral_only_studies": 1,
    "seed": 6,
    "questions": False,
    "questions_per_study": 3,
}


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_changing_an_export_option_changes_the_export(world, exported, tmp_path, field):
    base = {"seed": 5, **OPTIONS}
    if field == "jpeg_quality":  # quality matters for JPEG files
        base["image_format"] = "jpeg"
        export_mimic(world, tmp_path / "base", **base)
        before = tree(tmp_path / "base")
    else:
        before = tree(exported)
    out = tmp_path / "changed"
    result = export_mimic(world, out, **{**base, field: FIELD_CHANGES[field]})
    after = tree(out)
    assert after != before
    _, meta = table(out, METADATA_TABLE)
    counts = result.counts
    if field == "image_format":
        images = [p for p in after if p.endswith((".png", ".jpg"))]
        assert images and all(p.endswith(".jpg") for p in images)
        r = chosen_image(by_study(meta)["50000000"])
        assert r is not None
        decoded = read_image_file(image_path(out, r, "jpg"))
        error = np.abs(decoded.astype(int) - world.images[0]).mean()
        assert 0 < error < 6  # lossy, and close
    elif field == "lateral_rate":
        assert counts["studies_with_lateral"] == 0
        assert {r["ViewPosition"] for r in meta} - {"PA", "AP"}  # the extras' laterals only
    elif field == "second_frontal_rate":
        assert counts["studies_with_second_frontal"] == len(world.studies)
    elif field == "lateral_only_studies":
        assert counts["lateral_only_studies"] == 1
    elif field == "seed":
        assert {r["dicom_id"] for r in meta}.isdisjoint(
            r["dicom_id"] for r in table(exported, METADATA_TABLE)[1]
        )
        # the questions are drawn from the seed too (the same studies, other conditions)
        assert questions_of(out) != questions_of(exported)
    elif field == "questions":
        assert QUESTIONS_FILE not in after and "questions" not in counts
        assert {p for p in before if p != QUESTIONS_FILE} == set(after)
        assert QUESTIONS_FILE not in json.loads((out / "manifest.json").read_text())["files"]
    elif field == "questions_per_study":
        # only the questions change: at most 3 per study and family pool, more of them
        assert {p for p in before if after[p] != before[p]} == {QUESTIONS_FILE, "manifest.json"}
        per_pool = Counter((q["study_id"], q["question_id"][-1]) for q in questions_of(out))
        assert max(per_pool.values()) == 3
        assert counts["questions"]["records"] > len(questions_of(exported))


def questions_of(root: Path) -> list[dict]:
    """The records of an export's questions file, as plain JSON."""
    lines = (root / QUESTIONS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_the_manifest_records_the_questions_file_and_its_counts(world, exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    records = questions_of(exported)
    assert QUESTIONS_FILE in manifest["files"]
    assert (
        manifest["files"][QUESTIONS_FILE]
        == hashlib.sha256((exported / QUESTIONS_FILE).read_bytes()).hexdigest()
    )
    counts = manifest["counts"]["questions"]
    assert counts["file"] == QUESTIONS_FILE and counts["records"] == len(records)
    assert (counts["questions_per_study"], counts["seed"]) == (2, 5)
    assert manifest["config"]["export"]["questions_per_study"] == 2
    by_split = Counter(r["split"] for r in records)
    assert counts["records_by_split"] == {s: by_split[s] for s in ("train", "val", "test")}
    held = sum(all(r["heldout_family"]) for r in records)
    assert counts["records_by_family_pool"] == {
        "in_distribution": len(records) - held,
        "heldout": held,
    }
    assert counts["studies"] == counts["studies_with_questions"] == len(world.studies)
    # each world study: 2 questions (train) or 2 + 2 (val, test: held-out families too)
    n_eval = sum(world.split_of(s) != "train" for s in world.studies)
    assert len(records) == 2 * len(world.studies) + 2 * n_eval


def test_every_export_field_has_a_change_test_and_one_default():
    import inspect

    assert {f.name for f in dataclasses.fields(MimicExportConfig)} == set(FIELD_CHANGES)
    params = inspect.signature(export_mimic).parameters
    for name, value in MimicExportConfig().to_dict().items():
        assert params[name].default == value, name


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"image_format": "tiff"}, "image_format must be one of"),
        ({"jpeg_quality": 0}, r"jpeg_quality must be in 1\.\.100"),
        ({"lateral_rate": 1.5}, r"lateral_rate must be in \[0, 1\]"),
        ({"second_frontal_rate": -0.1}, r"second_frontal_rate must be in \[0, 1\]"),
        ({"lateral_only_studies": -1}, "lateral_only_studies must be >= 0"),
        ({"questions_per_study": 0}, "questions_per_study must be >= 1, got 0"),
    ],
)
def test_bad_export_options_are_refused_by_name(kw, message):
    with pytest.raises(ConfigError, match=message):
        MimicExportConfig(**kw)


def test_export_refuses_a_non_empty_folder(world, tmp_path):
    (tmp_path / "stale.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_mimic(world, tmp_path)


FIELD_TESTS = {
    "mechtune.sim.export.MimicExportConfig": {
        f: "test_changing_an_export_option_changes_the_export" for f in FIELD_CHANGES
    }
}


# -- CLI --------------------------------------------------------------------------------------

CLI_BASE = ["--n", "24", "--size", "32"]


def _cli(args: list[str], out: Path) -> dict[str, str]:
    result = runner.invoke(app, ["sim", "export", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return tree(out)


@pytest.fixture(scope="module")
def cli_base(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cli")
    out = root / "chosen" / "here"
    return root, out, _cli(CLI_BASE, out)


CLI_CHANGES: dict[str, list[str] | None] = {
    "--out": None,
    "--n": ["--n", "30", "--size", "32"],
    "--seed": [*CLI_BASE, "--seed", "1"],
    "--size": ["--n", "24", "--size", "64"],
    "--format": [*CLI_BASE, "--format", "png"],
    "--from-world": None,
    "--quality": None,
    "--layout": None,
    "--questions": [*CLI_BASE, "--no-questions"],
    "--questions-per-study": [*CLI_BASE, "--questions-per-study", "3"],
}


@pytest.mark.parametrize("option", sorted(CLI_CHANGES))
def test_every_sim_export_option_changes_the_output(tmp_path, cli_base, option):
    root, out, before = cli_base
    if option == "--out":  # the export is there, and nothing was written elsewhere
        written = {p for p in root.rglob("*") if p.is_file()}
        assert written and all(out in p.parents for p in written)
        assert json.loads((out / "manifest.json").read_text())["kind"] == "mimic-export"
    elif option == "--quality":
        assert _cli([*CLI_BASE, "--quality", "50"], tmp_path / "q50") != before
    elif option == "--layout":  # one layout for now: it is accepted, and no other is
        assert _cli([*CLI_BASE, "--layout", "mimic-cxr-jpg"], tmp_path / "same") == before
        result = runner.invoke(
            app, ["sim", "export", *CLI_BASE, "--layout", "chexpert", "--out", str(tmp_path / "x")]
        )
        assert result.exit_code != 0 and "chexpert" in result.output
    elif option == "--from-world":
        build = ["sim", "build", "--n", "24", "--size", "32", "--seed", "2", "--out"]
        assert runner.invoke(app, [*build, str(tmp_path / "w")]).exit_code == 0
        # the saved seed-2 world, exported with its own seed, is what --seed 2 builds
        saved = _cli(["--from-world", str(tmp_path / "w")], tmp_path / "from")
        assert saved != before
        assert saved == _cli([*CLI_BASE, "--seed", "2"], tmp_path / "seed2")
        refused = runner.invoke(
            app,
            [
                "sim",
                "export",
                "--from-world",
                str(tmp_path / "w"),
                "--n",
                "5",
                "--out",
                str(tmp_path / "y"),
            ],
        )
        assert refused.exit_code == 2 and "--from-world exports a saved one" in refused.output
    else:
        changes = CLI_CHANGES[option]
        assert changes is not None
        after = _cli(changes, tmp_path / "changed")
        assert after != before
        if option == "--format":  # JPEG is the default
            assert any(p.endswith(".jpg") for p in before)
            assert any(p.endswith(".png") for p in after)
            assert not any(p.endswith(".jpg") for p in after)
        if option == "--size":
            _, meta = table(tmp_path / "changed", METADATA_TABLE)
            assert {r["Rows"] for r in meta} == {"64"}
        if option == "--questions":  # the questions file goes; images and tables stay
            assert QUESTIONS_FILE in before and QUESTIONS_FILE not in after
            assert {p for p in before if p != QUESTIONS_FILE} == set(after)
            assert all(after[p] == before[p] for p in after if p != "manifest.json")
        if option == "--questions-per-study":  # the questions change, nothing else
            assert {p for p in after if after[p] != before[p]} == {QUESTIONS_FILE, "manifest.json"}
            records = questions_of(tmp_path / "changed")
            per_pool = Counter((q["study_id"], q["question_id"][-1]) for q in records)
            assert max(per_pool.values()) == 3
            refused = runner.invoke(
                app,
                [
                    "sim",
                    "export",
                    *CLI_BASE,
                    "--no-questions",
                    "--questions-per-study",
                    "3",
                    "--out",
                    str(tmp_path / "z"),
                ],
            )
            assert refused.exit_code == 2 and "--no-questions omits it" in refused.output
            assert not (tmp_path / "z").exists()


OPTION_TESTS = {
    "mechtune sim export": {
        o: "test_every_sim_export_option_changes_the_output" for o in CLI_CHANGES
    }
}


def test_export_cli_defaults_match_the_library(tmp_path):
    """`sim export` with no options writes what export_mimic writes for the world
    `sim build` makes from the same seed (defaults: 2000 studies at 128 px; checked here
    on a small world)."""
    via_cli = _cli(CLI_BASE, tmp_path / "cli")
    export_mimic(small_world(24, 0), tmp_path / "lib")
    assert tree(tmp_path / "lib") == via_cli
