"""Grids of negation studies from a recipe: keys checked against the recipe schema, every
cell run once (finished cells skipped, runs resumed from their checkpoints), one table
with each method minus uniform LoRA of the same cell on the same items."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from mechtune.data.sources import open_source
from mechtune.errors import ConfigError
from mechtune.pipelines import negation_grid
from mechtune.pipelines.negation import RunOptions
from mechtune.pipelines.negation_config import NegationStudyConfig, grid_cells, load_recipe
from mechtune.pipelines.negation_grid import finished_cell, run_negation_grid
from mechtune.pipelines.negation_study import run_negation_study
from mechtune.train.negation import LoopConfig
from mechtune.train.trainer import Trainer
from tests.pipelines.test_negation_report import NAST, UNIFORM
from tests.tiny_models import tiny_clip


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"loop.bta": [1]}, r"grid key 'loop\.bta' is not a recipe setting"),
        ({"data": ["x"]}, r"grid key 'data' .*the data is the command's --data"),
        ({"grid": [None]}, r"grid key 'grid' is not a recipe setting"),
        ({"loop.seed": [1]}, r"grid key 'loop\.seed' is not a recipe setting"),
        ({"alpha_norm": ["minmax", "bogus"]}, r"grid key 'alpha_norm': alpha_norm must be one"),
        ({"loop.beta": ["x"]}, r"grid key 'loop\.beta': beta must be a number, got 'x'"),
        ({"loop.lora.rank": [0]}, r"grid key 'loop\.lora\.rank': rank must be >= 1"),
        ({"loop.steps": [1.5]}, r"grid key 'loop\.steps': steps must be an integer"),
        ({"loop.beta": []}, r"grid key 'loop\.beta': give a non-empty list"),
        ({"loop.beta": 1}, r"grid key 'loop\.beta': give a non-empty list"),
        ({"loop.beta": [1, 1]}, r"grid key 'loop\.beta': values repeat"),
        ({}, "grid must be a mapping"),
    ],
)
def test_grid_keys_and_values_are_checked_naming_the_key(grid, message):
    with pytest.raises(ConfigError, match=message):
        NegationStudyConfig(grid=grid)


def test_recipe_grids_cross_the_settings(tmp_path):
    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        "methods: [uniform-lora, nast]\n"
        "grid: {loop.beta: [0.5, 1, 2], alpha_norm: [minmax, rank], loop.lora.rank: [4]}\n"
    )
    config = load_recipe(recipe)
    cells = grid_cells(config)
    assert len(cells) == 6
    name, settings, first = cells[0]
    assert name == "loop.beta=0.5,alpha_norm=minmax,loop.lora.rank=4"
    assert settings == {"loop.beta": 0.5, "alpha_norm": "minmax", "loop.lora.rank": 4}
    assert (first.loop.beta, first.alpha_norm, first.loop.lora.rank, first.grid) == (
        0.5,
        "minmax",
        4,
        None,
    )
    # the first key varies slowest; everything else is the recipe's
    assert [(c.loop.beta, c.alpha_norm) for _, _, c in cells] == [
        (b, n) for b in (0.5, 1, 2) for n in ("minmax", "rank")
    ]
    assert all(c.methods == ("uniform-lora", "nast") for _, _, c in cells)
    assert config.to_dict()["grid"]["loop.beta"] == [0.5, 1, 2]
    assert grid_cells(replace(config, grid=None)) == [("study", {}, replace(config, grid=None))]
    # a study of a grid recipe would silently run the base settings only: refused
    with pytest.raises(ConfigError, match=r"the recipe has a grid \(loop\.beta, alpha_norm"):
        run_negation_study(config, None, tmp_path / "never")
    # a list-valued setting is a value of its own; a recipe's bad grid key names the file
    listed = NegationStudyConfig(grid={"methods": [["nast"], ["uniform-lora", "nast"]]})
    assert [c.methods for _, _, c in grid_cells(listed)] == [("nast",), ("uniform-lora", "nast")]
    assert grid_cells(listed)[1][0] == "methods=uniform-lora+nast"
    recipe.write_text("grid: {loop.lr: [0.1], loop.betta: [1]}\n")
    with pytest.raises(ConfigError, match=r"g\.yaml: grid key 'loop\.betta'"):
        load_recipe(recipe)
    recipe.write_text("loop: {lora: null}\ngrid: {loop.lora.rank: [2, 4]}\n")
    with pytest.raises(ConfigError, match=r"loop\.lora is null \(full fine-tuning\)"):
        load_recipe(recipe)


def test_a_joined_grid_key_varies_its_settings_together_and_checks_them_together(tmp_path):
    """``loop.optimizer+loop.momentum+loop.lr``: two cells, not a cross of three lists; the
    momentum (refused unless the optimizer is sgd) is checked with the cell's optimizer."""
    recipe = tmp_path / "o.yaml"
    recipe.write_text(
        "methods: [uniform-lora, nast]\n"
        "loop: {optimizer: sgd, momentum: 0.9, lr: 0.05}\n"
        "grid:\n"
        "  loop.optimizer+loop.momentum+loop.lr: [[adamw, 0.0, 0.0005], [sgd, 0.9, 0.05]]\n"
        "  loop.scaling: [gradient, lr]\n"
    )
    config = load_recipe(recipe)
    cells = grid_cells(config)
    assert len(cells) == 4
    got = [(c.loop.optimizer, c.loop.momentum, c.loop.lr, c.loop.scaling) for _, _, c in cells]
    assert got == [
        ("adamw", 0.0, 0.0005, "gradient"),
        ("adamw", 0.0, 0.0005, "lr"),
        ("sgd", 0.9, 0.05, "gradient"),
        ("sgd", 0.9, 0.05, "lr"),
    ]
    name, settings, _ = cells[0]
    assert settings == {
        "loop.optimizer": "adamw",
        "loop.momentum": 0.0,
        "loop.lr": 0.0005,
        "loop.scaling": "gradient",
    }
    assert name == "loop.optimizer=adamw,loop.momentum=0.0,loop.lr=0.0005,loop.scaling=gradient"
    # the base recipe's sgd momentum would refuse adamw if the keys were set one by one
    with pytest.raises(ConfigError, match="momentum"):
        grid_cells(
            NegationStudyConfig(
                loop=LoopConfig(optimizer="sgd", momentum=0.9), grid={"loop.optimizer": ["adamw"]}
            )
        )
    # the grid table has one column per setting
    from mechtune.pipelines.negation_grid import grid_table

    record = {
        "grid": config.to_dict()["grid"],
        "reference": "uniform-lora",
        "eval_split": "val",
        "cells": [{"name": name, "settings": settings, "folder": "x", "methods": {}}],
    }
    header = grid_table(record).splitlines()[2]
    assert header.startswith("| loop.optimizer | loop.momentum | loop.lr | loop.scaling | method")


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"loop.optimizer+loop.lr": [["sgd"]]}, r"sets 2 settings together: each value must be"),
        ({"loop.optimizer+loop.lr": ["sgd"]}, r"sets 2 settings together"),
        ({"loop.lr+loop.bta": [[1, 2]]}, r"grid key 'loop\.bta' is not a recipe setting"),
        ({"loop.lr+loop.beta": [[1, 2]], "loop.beta": [1]}, r"'loop\.beta' is set by two"),
        ({"loop.lr+loop.beta": [[1, 2], [1, 2]]}, r"values repeat"),
        ({"loop.optimizer+loop.momentum": [["adamw", 0.9]]}, r"grid keys .*momentum"),
        ({"loop.lr+loop.beta": [["x", 1]]}, r"grid key 'loop\.lr': lr must be a number"),
    ],
)
def test_joined_grid_keys_are_checked_naming_the_key(grid, message):
    with pytest.raises(ConfigError, match=message):
        NegationStudyConfig(grid=grid)


def _fake_study(calls):
    """A stand-in for run_negation_study: records its call, writes results.json."""

    def fake(config, source, out, options, log, track, tracker, *, inputs, run_prefix, shared):
        calls.append((config, inputs, run_prefix))
        results = {
            "config": config.to_dict(),
            "runs": {"uniform-lora": list(UNIFORM), "nast": list(NAST)},
        }
        from mechtune.data.io import to_jsonable, write_json
        from mechtune.pipelines.negation_report import paired_comparisons

        results["paired"] = to_jsonable(paired_comparisons(results))
        write_json(out / "results.json", to_jsonable(results))
        return json.loads((out / "results.json").read_text())

    return fake


def test_cells_share_the_trace_unless_a_key_changes_it_and_finished_cells_are_skipped(
    tmp_path, monkeypatch
):
    calls, prepared = [], []
    monkeypatch.setattr(negation_grid, "run_negation_study", _fake_study(calls))
    monkeypatch.setattr(
        negation_grid, "study_inputs", lambda config, *a: prepared.append(config) or object()
    )
    config = NegationStudyConfig(grid={"alpha_norm": ["minmax", "rank"], "loop.beta": [1.0, 2.0]})
    record = run_negation_grid(config, None, tmp_path)
    assert len(calls) == 4 and len(prepared) == 1  # one trace for every cell
    assert len({id(inputs) for _, inputs, _ in calls}) == 1
    assert [prefix for *_, prefix in calls][:2] == [
        "alpha_norm=minmax,loop.beta=1.0/",
        "alpha_norm=minmax,loop.beta=2.0/",
    ]
    # a rerun reads every finished cell back
    assert run_negation_grid(config, None, tmp_path) == record and len(calls) == 4
    # a cell whose results hold other settings is not finished: it reruns
    folder = tmp_path / "cells" / "alpha_norm=rank,loop.beta=2.0"
    _, _, cell = grid_cells(config)[3]
    assert finished_cell(folder, cell) is not None
    assert finished_cell(folder, replace(cell, alpha_tau=0.5)) is None
    (folder / "results.json").write_text("{torn")
    run_negation_grid(config, None, tmp_path)
    assert len(calls) == 5 and calls[-1][0] == cell
    # a key the trace depends on: each cell traces its own
    calls.clear(), prepared.clear()
    per_cell = NegationStudyConfig(grid={"data_seed": [0, 1]})
    run_negation_grid(per_cell, None, tmp_path / "seeds")
    assert [c.data_seed for c in prepared] == [0, 1] and len(calls) == 2


def test_grid_table_has_the_paired_difference_against_uniform_lora(tmp_path, monkeypatch):
    monkeypatch.setattr(negation_grid, "run_negation_study", _fake_study([]))
    monkeypatch.setattr(negation_grid, "study_inputs", lambda *a: object())
    config = NegationStudyConfig(grid={"loop.beta": [0.5, 1.0]})
    record = run_negation_grid(config, None, tmp_path)
    results = json.loads((tmp_path / "cells/loop.beta=0.5/results.json").read_text())
    row = record["cells"][0]["methods"]["nast"]
    assert row["paired"]["claim acc"] == results["paired"]["nast"]["claim acc"]
    assert row["claim_accuracy"] == pytest.approx(0.5) and row["runs"] == "2"
    assert record["cells"][0]["methods"]["uniform-lora"]["paired"] is None
    table = (tmp_path / "grid.md").read_text()
    assert json.loads((tmp_path / "grid.json").read_text()) == record
    lines = table.splitlines()
    assert lines[2].startswith("| loop.beta | method | seeds | claim acc | Δ claim acc |")
    diff = results["paired"]["nast"]["claim acc"]
    expected = f"{100 * diff['value']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"
    assert f"| 0.5 | nast | 2 | 50.0 | {expected} |" in table
    assert "| 1.0 | uniform-lora | 2 | 50.0 | (reference) |" in table


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    """A small saved phantom world and a tiny random CLIP (fast to train and evaluate)."""
    from mechtune.sim.world import WorldConfig, make_world, save_world

    root = tmp_path_factory.mktemp("grid")
    save_world(make_world(WorldConfig.seeded(60, 0)), root / "world")
    return root / "world", f"hf:{tiny_clip(root / 'clip')}"


def test_grid_runs_every_cell_and_resumes_from_checkpoints(tmp_path, world_and_model, monkeypatch):
    """On a tiny CLIP: at beta 0, NAST is uniform LoRA, so its paired difference is exactly
    0; a cell interrupted after its training resumes from the checkpoints, without a
    training step."""
    world_dir, model = world_and_model
    config = NegationStudyConfig(
        model=model,
        methods=("uniform-lora", "nast"),
        trace_max_pairs=10,
        eval_split="val",
        grid={"loop.beta": [0.0, 1.0]},
        loop=LoopConfig(steps=1, caption_batch=4, claim_batch=4, checkpoint_every=1),
    )
    source = open_source(world_dir)
    record = run_negation_grid(config, source, tmp_path, RunOptions())
    zero, one = record["cells"]
    assert (zero["name"], one["name"]) == ("loop.beta=0.0", "loop.beta=1.0")
    same = zero["methods"]["nast"]["paired"]["claim acc"]
    assert (same["value"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    for cell in record["cells"]:
        results = json.loads((tmp_path / cell["folder"] / "results.json").read_text())
        assert results["config"]["loop"]["beta"] == cell["settings"]["loop.beta"]
        assert (tmp_path / cell["folder"] / "runs/nast/seed0/adapter").is_dir()
        # uniform LoRA (beta fixed to 0) is the same run in both cells: trained once
        (uniform,) = results["runs"]["uniform-lora"]
        assert uniform["trained_in"] == str(tmp_path / zero["folder"] / "runs/uniform-lora/seed0")
    assert not (tmp_path / one["folder"] / "runs/uniform-lora").exists()
    # the second cell lost its results after training: it reruns, its runs resume from
    # their last checkpoint (no training step), and the table is the same
    (tmp_path / one["folder"] / "results.json").unlink()

    def no_training(self):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(Trainer, "train_step", no_training)
    assert run_negation_grid(config, source, tmp_path, RunOptions()) == record


def test_a_resumed_study_reuses_each_evaluated_report_only_under_the_same_settings(
    tmp_path, world_and_model, monkeypatch
):
    """Each run saves its report (report.json, keyed by run_key) beside its checkpoints:
    a rerun neither trains nor evaluates it again, and gives the same results; a report
    saved under other settings is not used (the run is evaluated again)."""
    import mechtune.pipelines.negation_study as study

    world_dir, model = world_and_model
    config = NegationStudyConfig(
        model=model,
        methods=("zero-shot", "uniform-lora"),
        trace_max_pairs=10,
        eval_split="val",
        loop=LoopConfig(steps=1, caption_batch=4, claim_batch=4, checkpoint_every=1),
    )
    source = open_source(world_dir)
    first = run_negation_study(config, source, tmp_path, RunOptions())
    saved = tmp_path / "runs/uniform-lora/seed0/report.json"
    record = json.loads(saved.read_text())
    assert record["report"] == first["runs"]["uniform-lora"][0]
    calls = []
    evaluate = study.evaluate_model

    def counted(*args, **kwargs):
        calls.append(1)
        return evaluate(*args, **kwargs)

    def no_training(self):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(study, "evaluate_model", counted)
    monkeypatch.setattr(Trainer, "train_step", no_training)
    again = run_negation_study(config, source, tmp_path, RunOptions())
    assert calls == [] and again["runs"] == first["runs"]
    # a report saved under another key (other settings) is evaluated again, and replaced
    record["run_key"] = "0" * 20
    saved.write_text(json.dumps(record))
    run_negation_study(config, source, tmp_path, RunOptions())
    assert calls == [1]
    assert json.loads(saved.read_text())["run_key"] != "0" * 20


def test_run_keys_tell_which_runs_train_the_same():
    from mechtune.pipelines.negation_controls import StudyRun
    from mechtune.pipelines.negation_study import reused_report, run_key

    base = NegationStudyConfig()
    ones, alpha = torch.ones(4), torch.tensor([0.2, 1.0, 0.0, 0.5])

    def key(method, config=base, given=alpha, seed=0):
        return run_key(StudyRun(method, seed), config, given)

    other_beta = replace(base, loop=replace(base.loop, beta=2.0))
    # uniform LoRA fixes beta to 0 and is given ones: the same run whatever beta or alpha
    assert key("uniform-lora", given=ones) == key("uniform-lora", other_beta, ones)
    assert key("uniform-lora", given=ones) != key("uniform-lora", given=ones, seed=1)
    assert key("nast") != key("nast", other_beta) and key("nast") != key("nast", given=ones)
    assert key("effective-lr") != key("effective-lr", other_beta)  # its rate moves
    assert key("nast") != key("random-alpha")
    assert key("zero-shot", given=ones) == key("zero-shot", other_beta, ones)
    assert key("zero-shot", given=ones) != key("zero-shot", replace(base, eval_split="val"), ones)
    # a reused report gets this study's update share, and no training time
    report = {"seed": 0, "train_seconds": 9.0, "update_norms": {"0": 1.0, "1": 3.0, "2": 0.0}}
    reused = reused_report(report, StudyRun("nast", 0), [0.0, 0.9, 0.1])
    assert reused["update_share"] == {"top3": 1.0, "top5": None} and reused["train_seconds"] == 0
    top = reused_report(report, StudyRun("nast", 0), [0.9, 0.0, 0.1, 0.5, 0.2, 0.3])
    assert top["update_share"]["top3"] == pytest.approx(1 / 4) and report["train_seconds"] == 9


FIELDS = {"grid": "test_grid_runs_every_cell_and_resumes_from_checkpoints"}
FIELD_TESTS = {"mechtune.pipelines.negation_config.NegationStudyConfig": FIELDS}
