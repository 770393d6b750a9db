"""`mechtune data verify` and `mechtune data build ... --print-recipe`."""

from __future__ import annotations

import json
import platform
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.data.io import MANIFEST_NAME

runner = CliRunner()
BUILD = ["data", "build", "polarity", "--n", "24", "--no-check"]

OPTION_TESTS = {
    "mechtune data build": {"--print-recipe": "test_print_recipe_prints_every_option_and_versions_and_builds_nothing"},
    "mechtune data build polarity": {"--print-recipe": "test_print_recipe_prints_every_option_and_versions_and_builds_nothing"},
    "mechtune data build contextual": {"--print-recipe": "test_every_builder_prints_its_own_recipe"},
    "mechtune data build paraphrase": {"--print-recipe": "test_every_builder_prints_its_own_recipe"},
    "mechtune data verify": {
        "path": "test_verify_another_seed_names_the_table_and_row_group",
        "--expect": "test_verify_a_rebuild_matches_the_manifest_and_the_hash",
    },
}  # fmt: skip


def _build(out, *extra):
    result = runner.invoke(app, [*BUILD, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / MANIFEST_NAME).read_text())


def test_verify_a_rebuild_matches_the_manifest_and_the_hash(tmp_path):
    published = _build(tmp_path / "pub", "--seed", "5")
    _build(tmp_path / "mine", "--seed", "5")
    for expect in (str(tmp_path / "pub" / MANIFEST_NAME), published["canonical_hash"]):
        result = runner.invoke(app, ["data", "verify", str(tmp_path / "mine"), "--expect", expect])
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines() == [
            f"OK: {tmp_path / 'mine'}: content matches {published['canonical_hash']}"
        ]


def test_verify_a_rewrite_with_other_parquet_settings_still_matches(tmp_path):
    published = _build(tmp_path / "pub", "--seed", "5")
    table = pq.read_table(tmp_path / "pub" / "mcq.parquet")
    mine = tmp_path / "mine"
    mine.mkdir()
    pq.write_table(table, mine / "mcq.parquet", compression="gzip", row_group_size=5)
    (mine / MANIFEST_NAME).write_text(json.dumps(published))  # the copied manifest
    assert (mine / "mcq.parquet").read_bytes() != (tmp_path / "pub" / "mcq.parquet").read_bytes()
    result = runner.invoke(app, ["data", "verify", str(mine), "--expect", str(tmp_path / "pub")])
    assert result.exit_code == 0, result.output


def test_verify_another_seed_names_the_table_and_row_group(tmp_path):
    _build(tmp_path / "pub", "--seed", "5")
    _build(tmp_path / "mine", "--seed", "6")
    result = runner.invoke(
        app, ["data", "verify", str(tmp_path / "mine"), "--expect", str(tmp_path / "pub")]
    )
    assert result.exit_code == 1
    rows = pq.read_metadata(tmp_path / "pub" / "mcq.parquet").num_rows
    assert f"MISMATCH: mcq.parquet: row group 0 (rows 0-{rows - 1}) differs" in result.output


def test_verify_a_missing_manifest_is_named(tmp_path):
    _build(tmp_path / "mine", "--seed", "5")
    missing = tmp_path / "published.json"
    result = runner.invoke(
        app, ["data", "verify", str(tmp_path / "mine"), "--expect", str(missing)]
    )
    assert result.exit_code != 0 and result.exit_code != 1
    assert f"{missing}: no manifest" in result.output
    result = runner.invoke(app, ["data", "verify", str(tmp_path), "--expect", "0" * 64])
    assert result.exit_code != 0
    assert f"{tmp_path / MANIFEST_NAME}: no manifest" in result.output


def test_print_recipe_prints_every_option_and_versions_and_builds_nothing(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [*BUILD, "--out", str(out), "--seed", "7", "--print-recipe"])
    assert result.exit_code == 0, result.output
    command, *comments = result.output.strip().splitlines()
    assert command == (
        f"mechtune data build polarity --out {out} --report-facts --max-missing 0.01 "
        "--label-table chexpert --n 24 --seed 7 --format parquet --uncertain skip "
        "--no-check --max-disagreement 0.02 --max-uncertain 0.05"
    )
    assert comments[1] == (
        f"# python {platform.python_version()}, pyarrow {pa.__version__}, numpy {np.__version__}"
    )
    assert comments[0].startswith("# mechtune ")
    assert not out.exists()
    # the same on the build group, with a plain flag set
    result = runner.invoke(
        app, ["data", "build", "--out", str(out), "--skip-bad", "--print-recipe"]
    )
    assert result.output.startswith(f"mechtune data build --out {out} --report-facts")
    assert " --skip-bad --check " in result.output and not out.exists()


def test_the_printed_recipe_rebuilds_the_same_content(tmp_path):
    published = _build(tmp_path / "pub", "--seed", "9", "--format", "jsonl")
    result = runner.invoke(
        app,
        [
            *BUILD,
            "--out",
            str(tmp_path / "re"),
            "--seed",
            "9",
            "--format",
            "jsonl",
            "--print-recipe",
        ],
    )
    words = shlex.split(result.output.splitlines()[0])
    assert words[0] == "mechtune"
    rebuilt = runner.invoke(app, words[1:])
    assert rebuilt.exit_code == 0, rebuilt.output
    manifest = json.loads((tmp_path / "re" / MANIFEST_NAME).read_text())
    assert manifest["canonical_hash"] == published["canonical_hash"]


def test_every_builder_prints_its_own_recipe(tmp_path):
    for kind in ("contextual", "paraphrase"):
        out = tmp_path / kind
        result = runner.invoke(
            app, ["data", "build", kind, "--n", "24", "--out", str(out), "--print-recipe"]
        )
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"mechtune data build {kind} --out {out} ")
        assert " --n 24 " in result.output and not out.exists()
