"""Every key of every recipe reaches the config it names (a recipe key nothing reads is a
defect), and every recipe is a valid config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mechtune.pipelines.negation_config import load_recipe
from mechtune.pipelines.paraphrase import load_paraphrase_recipe

RECIPES = Path(__file__).parents[1] / "recipes"


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.mark.parametrize(
    ("name", "load"),
    [
        ("nast-phantom.yaml", load_recipe),
        ("nast-biomedclip-mimic.yaml", load_recipe),
        ("nast-controls-phantom.yaml", load_recipe),
        ("nast-variants-phantom.yaml", load_recipe),
        ("negation-holdout-phantom.yaml", load_recipe),
        ("negation-shortcut-phantom.yaml", load_recipe),
        ("consistency-phantom.yaml", lambda path: load_paraphrase_recipe(path).config),
        ("consistency-medgemma-mimic.yaml", lambda path: load_paraphrase_recipe(path).config),
    ],
)
def test_phantom_recipes_reach_every_config_field(name, load):
    raw = yaml.safe_load((RECIPES / name).read_text())
    config = _leaves(load(RECIPES / name).to_dict())
    for key, value in _leaves(raw).items():
        assert key in config, f"{name}: recipe key {key} reaches no config field"
        assert config[key] == value, (
            f"{name}: {key} is {value!r} in the recipe, {config[key]!r} in the config"
        )


def test_recipes_refuse_unknown_keys(tmp_path):
    from mechtune.errors import ConfigError

    bad = tmp_path / "r.yaml"
    bad.write_text("data_seed: 100\nwolrd_seed: 3\n")
    with pytest.raises(ConfigError, match=r"unknown recipe keys \['wolrd_seed'\]"):
        load_recipe(bad)
    bad.write_text("seed: 100\nwolrd_seed: 3\n")
    with pytest.raises(ConfigError, match=r"unknown recipe keys \['wolrd_seed'\]"):
        load_paraphrase_recipe(bad)


def test_mimic_recipes_are_valid_configs():
    """The real-data recipes hold valid settings (nast-biomedclip-mimic.yaml is read whole
    above; its scaling is the per-block learning rate that validation chose, not the
    gradient scaling AdamW cancels)."""
    nast = load_recipe(RECIPES / "nast-biomedclip-mimic.yaml")
    assert nast.model.startswith("openclip:") and nast.loop.scaling == "lr"
    assert nast.loop.steps == 3000
    consistency = load_paraphrase_recipe(RECIPES / "consistency-medgemma-mimic.yaml").config
    assert consistency.lora.steps == 1075  # ~2,865 questions x 3 epochs / effective batch 8


def test_shortcut_candidates_recipe_has_one_cell_per_candidate():
    """recipes/negation-shortcut-candidates-phantom.yaml (issue 18): one cell per candidate
    change (a joined key: not a cross), today's training first, on validation patients."""
    from mechtune.pipelines.negation_config import grid_cells

    recipe = load_recipe(RECIPES / "negation-shortcut-candidates-phantom.yaml")
    assert recipe.eval_split == "val"
    assert recipe.methods == ("zero-shot", "uniform-lora", "nast")
    assert recipe.freeform == "packaged" and recipe.seeds == (0,)
    cells = [c for _, _, c in grid_cells(recipe)]
    assert len(cells) == 11
    first = cells[0].loop
    assert (first.batch_polarity, first.margin_weight, first.retention_weight) == (False, 0, 0)
    assert (first.mcq_weight, first.steps, first.eval_every, first.keep_best) == (0, 150, 0, None)
    assert {c.loop.keep_best for c in cells} == {None, "freeform_goal", "freeform_mean"}
    assert any(c.loop.batch_polarity for c in cells)
    assert {c.loop.retention_kind for c in cells if c.loop.retention_weight} == {"cosine", "kl"}
    assert any(c.loop.mcq_weight for c in cells) and any(c.loop.steps == 50 for c in cells)
    assert any(c.loop.margin_weight for c in cells)
    held = load_recipe(RECIPES / "negation-holdout-phantom.yaml")
    assert held.holdout_conditions == ("pneumothorax",) and held.seeds == (0, 1, 2)
    assert held.eval_split == "test"


def test_the_chosen_shortcut_change_differs_from_the_headline_only_by_it():
    """recipes/negation-shortcut-phantom.yaml (issue 18's chosen change) trains as the
    headline study (recipes/nast-controls-phantom.yaml) does, on the same test patients and
    seeds, except for early stopping on the free-form validation half by the goal, so
    experiments/compare_studies.py pairs the two on the same items."""
    from dataclasses import replace

    chosen = load_recipe(RECIPES / "negation-shortcut-phantom.yaml")
    headline = load_recipe(RECIPES / "nast-controls-phantom.yaml")
    assert (chosen.loop.eval_every, chosen.loop.keep_best) == (10, "freeform_goal")
    assert chosen.methods == ("zero-shot", "uniform-lora", "nast")
    same = replace(
        chosen,
        loop=replace(chosen.loop, eval_every=0, keep_best=None),
        methods=headline.methods,
    )
    assert same == headline
