"""A negation study with a held-out finding (issue 18): the recipe key, the training data
without the condition, the counts in results.json and the table, the condition's slice
in every run's report (checked against its items) with paired differences, the run key,
and the free-form validation half that early stopping reads."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mechtune.data.sources import open_source
from mechtune.errors import ConfigError
from mechtune.pipelines import negation as neg
from mechtune.pipelines.negation import RunOptions
from mechtune.pipelines.negation_config import NegationStudyConfig, grid_cells, recipe_from_dict
from mechtune.pipelines.negation_controls import StudyRun
from mechtune.pipelines.negation_study import run_key, run_negation_study
from mechtune.train.negation import LoopConfig
from tests.tiny_models import tiny_clip


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    root = tmp_path_factory.mktemp("holdout")
    save_world(make_world(WorldConfig.seeded(120, 0)), root / "world")
    return root / "world", f"hf:{tiny_clip(root / 'clip', text_layers=2)}"


def test_recipe_key_is_checked_and_stored_as_ids(tmp_path):
    recipe = recipe_from_dict({"holdout_conditions": ["Pneumothorax"]}, "r.yaml")
    assert recipe.holdout_conditions == ("pneumothorax",)
    assert recipe.to_dict()["holdout_conditions"] == ["pneumothorax"]
    assert NegationStudyConfig().holdout_conditions == ()
    with pytest.raises(ConfigError, match=r"r.yaml: holdout_conditions: 'ptx' is not a cond"):
        recipe_from_dict({"holdout_conditions": ["ptx"]}, "r.yaml")
    with pytest.raises(ConfigError, match="holdout_conditions must be a list"):
        recipe_from_dict({"holdout_conditions": "pneumothorax"}, "r.yaml")
    from mechtune.pipelines.dry_run import dry_run_report
    from mechtune.sim.world import WorldConfig, make_world, save_world

    save_world(make_world(WorldConfig.seeded(30, 0)), tmp_path / "world")
    lines = dry_run_report(recipe, tmp_path / "world")
    assert lines[1].startswith("held out of training: pneumothorax")
    assert not any(
        "held out" in line for line in dry_run_report(NegationStudyConfig(), tmp_path / "world")
    )
    grid = NegationStudyConfig(grid={"holdout_conditions": [[], ["pneumothorax"]]})
    assert [c.holdout_conditions for _, _, c in grid_cells(grid)] == [(), ("pneumothorax",)]
    # the run key tells a held-out run from the other
    run, alpha = StudyRun("uniform-lora", 0), [1.0, 1.0, 1.0]
    plain, held = NegationStudyConfig(), NegationStudyConfig(holdout_conditions=("pneumothorax",))
    assert run_key(run, plain, alpha) != run_key(run, held, alpha)
    assert run_key(StudyRun("zero-shot", 0), plain, alpha) != run_key(
        StudyRun("zero-shot", 0), held, alpha
    )


def test_keep_best_on_free_form_needs_the_free_form_sets():
    loop = LoopConfig(eval_every=2, keep_best="freeform_goal")
    with pytest.raises(ConfigError, match=r"loop\.keep_best 'freeform_goal' reads the free-form"):
        NegationStudyConfig(freeform=None, loop=loop)
    NegationStudyConfig(freeform=None, loop=replace(loop, keep_best="claim_accuracy"))


def test_validation_reads_the_val_half_without_the_held_out_condition(world_and_model):
    from mechtune.data.freeform import load_freeform
    from mechtune.eval.holdout import freeform_about

    world, model = world_and_model
    source = open_source(world)
    data = neg.study_data(neg.RunOptions().load(model), source, model, RunOptions())
    loop = LoopConfig(eval_every=1)
    plain = neg.validation_freeform(data, NegationStudyConfig(), loop)
    held_recipe = NegationStudyConfig(holdout_conditions=("pneumothorax",))
    held = neg.validation_freeform(data, held_recipe, loop)
    sets = load_freeform()
    val = {cs.candidates: cs for cs in sets.half("val")}
    assert plain and all(c.candidates in val for c in plain)  # the val half only
    assert {c.polarity for c in plain} == {"affirmative", "negated"}
    val_rows = {i for i, _ in data.rows("val")}
    assert {c.image for c in plain} <= val_rows
    about = [c for c in plain if freeform_about(val[c.candidates], ["pneumothorax"])]
    assert about and len(held) == len(plain) - len(about)
    assert neg.validation_freeform(data, NegationStudyConfig(freeform=None), loop) == []
    assert neg.validation_freeform(data, NegationStudyConfig(), LoopConfig()) == []
    claims = neg.validation_claims(data, loop, 0, ("pneumothorax",))
    everything = neg.validation_claims(data, loop, 0)
    assert len(claims) < len(everything)
    assert not any("pneumothorax" in t.lower() for c in claims for t in c.candidates)


def _proportion_of(items, keep):
    picked = [c for c, k in zip(items["correct"], keep, strict=True) if k]
    return float(np.mean(picked))


def test_a_held_out_study_counts_removals_and_reports_the_slice(world_and_model, tmp_path):
    world, model = world_and_model
    recipe = NegationStudyConfig(
        model=model,
        methods=("zero-shot", "uniform-lora", "nast"),
        trace_max_pairs=20,
        holdout_conditions=("pneumothorax",),
        loop=LoopConfig(
            steps=2,
            caption_batch=4,
            claim_batch=4,
            checkpoint_every=2,
            lr=1e-3,
            eval_every=1,
            keep_best="freeform_mean",
        ),
    )
    source = open_source(world)
    results = run_negation_study(recipe, source, tmp_path, RunOptions())
    record = results["holdout"]
    data = neg.study_data(neg.RunOptions().load(model), source, model, RunOptions())
    examples = neg.training_data(data, recipe)
    assert record["removed"] == dict(examples.removed) and record["removed"]["claim_sets"] > 0
    assert record["kept"]["claim_sets"] == len(examples.claims)
    assert record["conditions"] == ["pneumothorax"]
    assert record["validation"]["freeform_items"] > 0
    for method, reports in results["runs"].items():
        report = reports[0]
        block = report["holdout"]["pneumothorax"]
        claims, freeform = report["items"]["claims"], report["items"]["freeform"]
        about = [c == "pneumothorax" for c in claims["condition"]]
        held = [a and h for a, h in zip(about, claims["heldout"], strict=True)]
        assert block["template"]["claim_accuracy"]["value"] == pytest.approx(
            _proportion_of(claims, held)
        ), method
        for kind in ("affirmative", "negated", "contralateral"):
            keep = [h and s == kind for h, s in zip(held, claims["slice"], strict=True)]
            got = block["template"]["accuracy_by_polarity"][kind]
            if not any(keep):  # a rare finding: no such claim set in this small world
                assert got is None
                continue
            assert got["value"] == pytest.approx(_proportion_of(claims, keep)), method
            assert got["n"] == sum(keep)
        assert block["template"]["accuracy_by_polarity"]["negated"] is not None
        ff_neg = [
            "pneumothorax" in cs and s == "negated"
            for cs, s in zip(freeform["conditions"], freeform["slice"], strict=True)
        ]
        assert any(ff_neg)
        got = block["freeform"]["accuracy_by_polarity"]["negated"]["value"]
        assert got == pytest.approx(_proportion_of(freeform, ff_neg)), method
    # early stopping read the free-form validation half and recorded the kept step
    trained = json.loads((tmp_path / "runs/uniform-lora/seed0/train.json").read_text())
    assert trained["kept"]["criterion"] == "freeform_mean"
    assert set(trained["eval"][0]) == {
        "step",
        "claim_accuracy",
        "freeform_accuracy",
        "freeform_affirmative",
        "freeform_negated",
    }
    assert trained["kept"]["step"] in {e["step"] for e in trained["eval"]}
    assert results["runs"]["uniform-lora"][0]["kept"] == trained["kept"]
    assert "kept" not in results["runs"]["zero-shot"][0]
    # the run's identity names what it was trained without: resuming it otherwise is refused
    run_folder = tmp_path / "runs/uniform-lora/seed0"
    identity = json.loads((run_folder / "run.json").read_text())
    assert identity["holdout"] == ["pneumothorax"]
    without = {k: v for k, v in identity.items() if k != "holdout"}
    with pytest.raises(ConfigError, match=r"holdout \['pneumothorax'\] -> None"):
        neg.check_resume(run_folder, without, 2)
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("**Held out of training: pneumothorax.** Removed from the training")
    assert f"{record['removed']['claim_sets']} claim sets" in table.splitlines()[0]
    assert "Held-out condition **pneumothorax**" in table
    assert "Δ vs zero-shot on the items about pneumothorax" in table
    assert "Δ vs uniform-lora on the items about pneumothorax" in table
    assert "| nast | 1 |" in table.split("Δ vs zero-shot on the items about pneumothorax")[1]


NEGATION_HOLDOUT_FIELDS = {
    "holdout_conditions": "test_a_held_out_study_counts_removals_and_reports_the_slice",
}
FIELD_TESTS = {"mechtune.pipelines.negation_config.NegationStudyConfig": NEGATION_HOLDOUT_FIELDS}


def test_negation_train_says_what_it_held_out(world_and_model, tmp_path):
    from typer.testing import CliRunner

    from mechtune.cli.main import app

    world, model = world_and_model
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {model}\ndata: {world}\nholdout_conditions: [pneumothorax]\n"
        "loop: {steps: 1, caption_batch: 4, claim_batch: 4, checkpoint_every: 1}\n"
    )
    args = ["negation", "train", "--recipe", str(recipe), "--method", "uniform-lora"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "held out of training: pneumothorax; removed" in said and "claim sets" in said
    identity = json.loads((tmp_path / "run" / "run.json").read_text())
    assert identity["holdout"] == ["pneumothorax"]


def test_grid_table_shows_free_form_accuracy_per_cell_and_method():
    """The candidates grid is chosen on free-form accuracy: grid.md shows each method's
    mean free-form affirmative and negated accuracy (over its runs) in every cell."""
    from mechtune.pipelines.negation_grid import grid_record, grid_table

    def report(aff, negated):
        block = {"accuracy_by_polarity": {"affirmative": {"value": aff}, "negated": None}}
        if negated is not None:
            block["accuracy_by_polarity"]["negated"] = {"value": negated}
        return {"claims": {"heldout": {"claim_accuracy": {"value": 0.5}}}, "freeform": block}

    recipe = NegationStudyConfig(grid={"loop.margin_weight": [0.0, 1.0]})
    results = {
        "runs": {
            "zero-shot": [report(0.56, 0.55)],
            "nast": [report(0.40, 0.80), report(0.50, 0.70)],
            "uniform-lora": [report(0.30, None)],
        }
    }
    record = grid_record(recipe, [("loop.margin_weight=1.0", {"loop.margin_weight": 1.0}, results)])
    nast = record["cells"][0]["methods"]["nast"]["freeform"]
    assert nast == {"free-form aff": pytest.approx(0.45), "free-form neg": pytest.approx(0.75)}
    assert record["cells"][0]["methods"]["uniform-lora"]["freeform"]["free-form neg"] is None
    table = grid_table(record)
    assert table.splitlines()[2].endswith("| free-form aff | free-form neg |")
    assert "| 1.0 | nast | 2 | 50.0 | n/a | n/a | n/a | 45.0 | 75.0 |" in table
    assert "| 1.0 | zero-shot | 1 | 50.0 | n/a | n/a | n/a | 56.0 | 55.0 |" in table
    assert (
        "| 1.0 | uniform-lora | 1 | 50.0 | (reference) | (reference) | (reference) | 30.0 | n/a |"
        in table
    )


def test_a_run_that_keeps_the_untrained_step_has_no_update_share(
    world_and_model, tmp_path, monkeypatch
):
    """Early stopping may keep step 0 (issue 18's goal criterion did, on the phantom): the
    update is then zero everywhere, its top-k share undefined (None, n/a in the table),
    and the study must still finish; a run that moved keeps its share."""
    from mechtune.pipelines.negation_study import top_shares
    from mechtune.train import selection

    assert top_shares({0: 0.0, 1: 0.0}, [0.5, 0.1]) == {"top3": None, "top5": None}
    assert top_shares({0: 3.0, 1: 1.0}, [0.1, 0.5, 0.2]) == {"top3": 1.0, "top5": None}
    assert top_shares({0: 3.0, 1: 1.0, 2: 0.0, 3: 0.0}, [0.1, 0.5, 0.2, 0.0])["top3"] == 1.0
    world, model = world_and_model
    first = selection.best_evaluation
    monkeypatch.setattr(
        selection, "best_evaluation", lambda evals, criterion: first(evals[:1], criterion)
    )
    recipe = NegationStudyConfig(
        model=model,
        methods=("zero-shot", "uniform-lora"),
        trace_max_pairs=20,
        loop=LoopConfig(
            steps=2,
            caption_batch=4,
            claim_batch=4,
            checkpoint_every=2,
            eval_every=1,
            keep_best="freeform_goal",
        ),
    )
    results = run_negation_study(recipe, open_source(world), tmp_path, RunOptions())
    report = results["runs"]["uniform-lora"][0]
    assert report["kept"]["step"] == 0
    assert set(report["update_norms"].values()) == {0.0}
    assert report["update_share"] == {"top3": None, "top5": None}
    assert "| uniform-lora | 1 |" in (tmp_path / "table.md").read_text()
