"""SAE folders as commands name them (mechtune.interp.sae_folders): a folder of per-layer
SAEs (``sae analyze --saes``, the study's ``saes``) and one SAE feature to clamp
(``paraphrase eval --clamp SAE_DIR:FEATURE:VALUE``). The commands' own tests run these
through the CLI (tests/cli/test_sae_cli.py); here the functions are called directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mechtune.errors import ConfigError
from mechtune.interp.sae import SAE, SAEConfig
from mechtune.interp.sae_folders import (
    Clamp,
    SAEFolderError,
    load_layer_saes,
    parse_clamp,
    sae_layer,
)
from mechtune.interp.sae_saelens import save_saelens

D_IN, WIDTH = 8, 16


def _saelens(folder: Path, layer: int | None, seed: int = 0) -> SAE:
    """A TopK SAE saved in SAELens layout; ``layer`` is what its own metadata says."""
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(D_IN, WIDTH, "topk", k=2, layer=layer))
    save_saelens(sae, folder)
    return sae


def _gs2(folder: Path, seed: int = 0, hook: str | None = None) -> dict[str, torch.Tensor]:
    """A Gemma Scope 2 folder: params.safetensors and, with ``hook``, its config.json."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    tensors = {
        "w_enc": torch.randn(D_IN, WIDTH, generator=g),
        "w_dec": torch.randn(WIDTH, D_IN, generator=g),
        "b_enc": torch.randn(WIDTH, generator=g),
        "b_dec": torch.zeros(D_IN),
        "threshold": torch.rand(WIDTH, generator=g),
    }
    save_file(tensors, folder / "params.safetensors")
    if hook is not None:
        config = {"hf_hook_point_in": hook, "width": WIDTH, "l0": 5, "model_name": "tiny"}
        (folder / "config.json").write_text(json.dumps(config))
    return tensors


# -- one SAE to clamp -----------------------------------------------------------------------


def test_a_good_clamp_loads_its_sae_at_the_folders_layer(tmp_path):
    sae = _saelens(tmp_path / "saes" / "layer_1", layer=1)
    clamp = parse_clamp(f"{tmp_path / 'saes' / 'layer_1'}:3:-2.5")
    assert isinstance(clamp, Clamp)
    assert (clamp.folder, clamp.layer, clamp.feature, clamp.value) == (
        tmp_path / "saes" / "layer_1",
        1,
        3,
        -2.5,
    )
    torch.testing.assert_close(clamp.sae.w_dec, sae.w_dec)
    assert not clamp.sae.training
    assert clamp.describe() == {
        "sae": str(tmp_path / "saes" / "layer_1"),
        "layer": 1,
        "feature": 3,
        "value": -2.5,
    }
    # the last feature is in range; a folder whose path holds a colon still parses
    odd = tmp_path / "a:b" / "layer_2_width_16"
    tensors = _gs2(odd, hook="model.layers.2.output")
    edge = parse_clamp(f"{odd}:{WIDTH - 1}:0")
    assert (edge.folder, edge.layer, edge.feature, edge.value) == (odd, 2, WIDTH - 1, 0.0)
    torch.testing.assert_close(edge.sae.w_enc, tensors["w_enc"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("saes/layer_1", "expected SAE_DIR:FEATURE:VALUE"),
        ("saes/layer_1:3", "expected SAE_DIR:FEATURE:VALUE"),
        (":3:0", "expected SAE_DIR:FEATURE:VALUE"),
        ("saes/layer_1:three:0", "FEATURE must be an integer and VALUE a number"),
        ("saes/layer_1:1.5:0", "FEATURE must be an integer and VALUE a number"),
        ("saes/layer_1::0", "FEATURE must be an integer and VALUE a number"),
        ("saes/layer_1:3:high", "FEATURE must be an integer and VALUE a number"),
        ("saes/layer_1:3:nan", "VALUE must be finite"),
        ("saes/layer_1:3:inf", "VALUE must be finite"),
        ("saes/layer_1:3:-inf", "VALUE must be finite"),
        ("saes/layer_1:3:1e999", "VALUE must be finite"),
    ],
)
def test_malformed_clamps_are_refused_before_any_sae_loads(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_clamp(text)
    assert f"--clamp {text!r}" in str(err.value)


@pytest.mark.parametrize("feature", [WIDTH, WIDTH + 100, -1])
def test_a_feature_outside_the_saes_width_is_refused(tmp_path, feature):
    _saelens(tmp_path / "layer_1", layer=1)
    with pytest.raises(ConfigError, match=f"feature {feature} is outside the SAE's {WIDTH}"):
        parse_clamp(f"{tmp_path / 'layer_1'}:{feature}:0")


def test_a_folder_and_metadata_that_disagree_on_the_layer_are_refused(tmp_path):
    _saelens(tmp_path / "layer_1", layer=2)
    with pytest.raises(SAEFolderError) as err:
        parse_clamp(f"{tmp_path / 'layer_1'}:3:0")
    message = str(err.value)
    assert str(tmp_path / "layer_1") in message
    assert "the folder name says layer 1 but the SAE's own metadata says layer 2" in message


def test_the_layer_comes_from_the_folder_or_the_metadata_and_one_must_know_it(tmp_path):
    _saelens(tmp_path / "mine", layer=2)
    assert parse_clamp(f"{tmp_path / 'mine'}:0:1").layer == 2
    _saelens(tmp_path / "layer_4", layer=None)
    assert parse_clamp(f"{tmp_path / 'layer_4'}:0:1").layer == 4
    _saelens(tmp_path / "unplaced", layer=None)
    with pytest.raises(SAEFolderError, match="cannot tell which layer this SAE reads"):
        parse_clamp(f"{tmp_path / 'unplaced'}:0:1")


def test_an_sae_of_a_site_that_is_not_a_block_output_is_refused(tmp_path):
    """Clamping edits a block's output: an SAE trained elsewhere (here an attention input)
    in a folder named for that block would edit the wrong site."""
    _gs2(tmp_path / "layer_1", hook="model.layers.1.self_attn.o_proj.input")
    with pytest.raises(SAEFolderError) as err:
        parse_clamp(f"{tmp_path / 'layer_1'}:3:0")
    assert "which is not the output of block 1" in str(err.value)
    with pytest.raises(SAEFolderError, match="which is not the output of block 1"):
        load_layer_saes(tmp_path, None)


def test_a_clamp_of_a_folder_without_an_sae_names_it(tmp_path):
    with pytest.raises(SAEFolderError, match=r"--clamp .*nowhere.*no such file or folder"):
        parse_clamp(f"{tmp_path / 'nowhere'}:3:0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEFolderError, match=r"--clamp .*empty"):
        parse_clamp(f"{tmp_path / 'empty'}:3:0")


def test_sae_layer_reads_name_and_metadata():
    placed = SAE(SAEConfig(D_IN, WIDTH, "topk", k=2, layer=3))
    unplaced = SAE(SAEConfig(D_IN, WIDTH, "topk", k=2))
    assert sae_layer(Path("x/layer_3"), placed) == 3
    assert sae_layer(Path("x/layer_3_width_16k_l0_small"), unplaced) == 3
    assert sae_layer(Path("x/custom"), placed) == 3
    with pytest.raises(SAEFolderError, match="says layer 5 but"):
        sae_layer(Path("x/layer_5"), placed)
    with pytest.raises(SAEFolderError, match="cannot tell"):
        sae_layer(Path("x/custom"), unplaced)


# -- a folder of per-layer SAEs -------------------------------------------------------------


def test_load_layer_saes_keeps_the_asked_layers_by_folder_name(tmp_path):
    saes = {layer: _saelens(tmp_path / f"layer_{layer}", layer, seed=layer) for layer in (0, 2, 5)}
    (tmp_path / "notes").mkdir()  # other folders are not SAEs and are left alone
    (tmp_path / "report.json").write_text("{}")
    loaded = load_layer_saes(tmp_path, None)
    assert list(loaded) == [0, 2, 5]
    for layer, sae in loaded.items():
        torch.testing.assert_close(sae.w_dec, saes[layer].w_dec)
        assert not sae.training
    assert list(load_layer_saes(tmp_path, [5, 0])) == [0, 5]
    with pytest.raises(SAEFolderError, match=r"no layer_<L>/ SAE folders for layers \[1\]"):
        load_layer_saes(tmp_path, [1])
    with pytest.raises(SAEFolderError, match="no such folder"):
        load_layer_saes(tmp_path / "nowhere", None)


def test_load_layer_saes_picks_a_variant_and_refuses_two_for_one_layer(tmp_path):
    _gs2(tmp_path / "layer_1_width_16_l0_small", seed=1)
    medium = _gs2(tmp_path / "layer_1_width_16_l0_medium", seed=2)
    with pytest.raises(SAEFolderError, match="two SAEs for layer 1") as err:
        load_layer_saes(tmp_path, None)
    assert "--sae-variant" in str(err.value)
    loaded = load_layer_saes(tmp_path, None, "width_16_l0_medium")
    assert list(loaded) == [1]
    torch.testing.assert_close(loaded[1].w_enc, medium["w_enc"])
    with pytest.raises(SAEFolderError, match="variant 'width_1m'"):
        load_layer_saes(tmp_path, None, "width_1m")


def test_load_layer_saes_refuses_a_misplaced_sae_and_odd_layer_names(tmp_path):
    _saelens(tmp_path / "a" / "layer_1", layer=2)
    with pytest.raises(SAEFolderError, match="folder name says layer 1 but the SAE's own"):
        load_layer_saes(tmp_path / "a", None)
    (tmp_path / "b" / "layer_7_13_17").mkdir(parents=True)  # a crosscoder's folder
    with pytest.raises(SAEFolderError, match="is not named layer_<L> or layer_<L>_<variant>"):
        load_layer_saes(tmp_path / "b", None)
    (tmp_path / "c" / "layer_3").mkdir(parents=True)  # named for a layer, but empty
    with pytest.raises(SAEFolderError, match=r"layer_3: no SAE found"):
        load_layer_saes(tmp_path / "c", None)
