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
