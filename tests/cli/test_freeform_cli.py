"""`negation eval` and `negation study` score the free-form claim sets by default; each
option (and recipe key) that changes which sets, or how many studies per set, changes
the report."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app

runner = CliRunner()

USER_SET = {
    "id": "mine1",
    "half": "test",
    "polarity": "negated",
    "kinds": ["plain"],
    "conditions": ["pneumothorax"],
    "attributes": [],
    "correct": {"text": "Lungs reach the chest wall on both sides.", "truth": ["-pneumothorax"]},
    "foils": [{"text": "Air outlines the lung edge.", "truth": ["+pneumothorax"]}],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    root = tmp_path_factory.mktemp("freeform_cli")
    save_world(make_world(WorldConfig.seeded(120, 0)), root / "world")
    user = root / "mine.jsonl"
    user.write_text(json.dumps(USER_SET) + "\n")
    return root / "world", user


def invoke(*args, code=0):
    result = runner.invoke(app, ["negation", *map(str, args)])
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def test_eval_freeform_options_change_the_report(world, tmp_path):
    data, user = world
    base = ["--model", "phantom:default", "--data", data, "--cache-dir", tmp_path / "cache"]

    def evaluate(name, *extra):
        invoke("eval", *base, *extra, "--out", tmp_path / name)
        return json.loads((tmp_path / name / "eval.json").read_text())

    default = evaluate("default")
    block = default["freeform"]
    assert block["file"].endswith("freeform_claims.yaml") and block["half"] == "test"
    assert block["matched_sets"] > 10 and block["max_studies"] == 20
    assert max(Counter(default["items"]["freeform"]["set"]).values()) > 2
    assert "free-form claim accuracy" in (tmp_path / "default" / "table.md").read_text()

    off = evaluate("off", "--no-freeform")
    assert "freeform" not in off and "turned off" in off["not_available"]["freeform"]

    mine = evaluate("mine", "--freeform", user)
    assert mine["freeform"]["file"] == str(user) and mine["freeform"]["sets"] == 1
    assert set(mine["items"]["freeform"]["set"]) == {"mine1"}

    capped = evaluate("capped", "--freeform-max-studies", 2)
    assert max(Counter(capped["items"]["freeform"]["set"]).values()) == 2
    assert capped["freeform"]["max_studies"] == 2 and capped["freeform"]["capped"] > 0

    val = evaluate("val", "--split", "val")
    assert val["freeform"]["half"] == "val"
    assert not set(val["items"]["freeform"]["set"]) & set(default["items"]["freeform"]["set"])

    both = invoke("eval", *base, "--freeform", user, "--no-freeform", code=2)
    assert "--freeform and --no-freeform" in both
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**USER_SET, "polarity": "maybe"}) + "\n")
    refused = invoke("eval", *base, "--freeform", bad, "--out", tmp_path / "bad", code=2)
    assert "bad.jsonl, line 1 (id mine1)" in refused and "'maybe'" in refused
    assert not (tmp_path / "bad").exists()  # refused before any data is read


def test_study_freeform_options_and_recipe_keys(world, tmp_path):
    data, user = world
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"methods: [zero-shot]\ntrace_max_pairs: 4\nfreeform: {user}\nfreeform_max_studies: 1\n"
    )
    base = ["--model", "phantom:default", "--data", data, "--cache-dir", tmp_path / "cache"]

    def study(name, *extra):
        invoke("study", *base, "--recipe", recipe, *extra, "--out", tmp_path / name)
        results = json.loads((tmp_path / name / "results.json").read_text())
        return results["runs"]["zero-shot"][0]

    from_recipe = study("recipe")
    assert from_recipe["freeform"]["file"] == str(user)
    assert from_recipe["items"]["freeform"]["set"] == ["mine1"]  # one study: the cap
    assert "free-form aff / neg" in (tmp_path / "recipe" / "table.md").read_text()

    packaged = study("packaged", "--freeform", "src/mechtune/data/resources/freeform_claims.yaml")
    assert packaged["freeform"]["sets"] == 121
    assert max(Counter(packaged["items"]["freeform"]["set"]).values()) == 1

    off = study("off", "--no-freeform")
    assert "freeform" not in off and "freeform" in off["not_available"]


FIELD_TESTS = {
    "mechtune.pipelines.negation_config.NegationStudyConfig": {
        "freeform": "test_study_freeform_options_and_recipe_keys",
        "freeform_max_studies": "test_study_freeform_options_and_recipe_keys",
    }
}
OPTION_TESTS = {
    "mechtune negation eval": {
        "--freeform": "test_eval_freeform_options_change_the_report",
        "--no-freeform": "test_eval_freeform_options_change_the_report",
        "--freeform-max-studies": "test_eval_freeform_options_change_the_report",
    },
    "mechtune negation study": {
        "--freeform": "test_study_freeform_options_and_recipe_keys",
        "--no-freeform": "test_study_freeform_options_and_recipe_keys",
    },
}
