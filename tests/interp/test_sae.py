"""SAE: the config, the written formulas, where an SAE reads, loading and metrics.

The file layouts are tested in test_sae_saelens.py and test_sae_gemma_scope.py, training
in test_sae_train.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.interp.sae import (
    SAE,
    SAEConfig,
    block_output_layer,
    hook_block_index,
    layer_folder,
    load_sae,
    reconstruction_stats,
)
from mechtune.interp.sae_gemma_scope import save_gemma_scope
from mechtune.interp.sae_saelens import save_saelens
from tests.interp.sae_helpers import D_IN, D_SAE, numpy_params, random_sae

# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_in": 0, "d_sae": 4}, "d_in must be a positive int, got 0"),
        ({"d_in": True, "d_sae": 4}, "d_in must be a positive int, got True"),
        ({"d_in": 4, "d_sae": 4, "kind": "gated"}, "unknown SAE kind 'gated'"),
        ({"d_in": 4, "d_sae": 4, "kind": "topk"}, "needs an int k, got k=None"),
        ({"d_in": 4, "d_sae": 4, "kind": "topk", "k": 5}, r"k must be in \[1, d_sae=4\], got 5"),
        ({"d_in": 4, "d_sae": 4, "k": 2}, "k is only for kind 'topk'"),
        ({"d_in": 4, "d_sae": 4, "layer": -1}, "layer must be a non-negative int"),
        ({"d_in": 4, "d_sae": 4, "model": 3}, "model must be a string or None, got 3"),
        (
            {"d_in": 4, "d_sae": 4, "layer": 2, "hook": "blocks.3.hook_resid_post"},
            "hook 'blocks.3.hook_resid_post' reads the output of block 3, but layer=2",
        ),
        (
            {"d_in": 4, "d_sae": 4, "layer": 3, "hook": "blocks.3.hook_mlp_out"},
            "hook 'blocks.3.hook_mlp_out' is not a block output, so layer must be None",
        ),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SAEConfig(**kwargs)


def test_config_round_trips_and_names_unknown_fields() -> None:
    config = SAEConfig(8, 32, "topk", k=4, layer=2, model="m", hook="blocks.2.hook_resid_post")
    assert SAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="'widht'"):
        SAEConfig.from_dict({"d_in": 8, "d_sae": 32, "widht": 3})


X = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(9))


def _behaviour(config: SAEConfig, tmp_path: Path) -> dict:
    """What an SAEConfig field can change: the parameters' shapes, the features, and
    what the savers write (metadata that places the SAE at a site of a model)."""
    g = torch.Generator().manual_seed(0)
    sae = SAE(config)
    with torch.no_grad():
        for tensor in sae.tensors().values():
            tensor.copy_(torch.randn(tensor.shape, generator=g))
    folder = save_saelens(sae, tmp_path / "sl")
    out: dict = {name: tuple(t.shape) for name, t in sae.tensors().items()}
    if config.d_in == D_IN:
        out["features"] = sae.encode(X).detach().numpy().round(5).tolist()
    out["cfg.json"] = json.loads((folder / "cfg.json").read_text())
    out["loaded"] = load_sae(folder).config
    if config.kind == "jumprelu":
        out["header"] = load_sae(save_gemma_scope(sae, tmp_path / "gs")).config
    return out


BASE = SAEConfig(D_IN, D_SAE, "topk", k=3, layer=2, model="m", hook="blocks.2.hook_resid_post")


@pytest.mark.parametrize(
    "change",
    [
        {"d_in": D_IN + 1},
        {"d_sae": D_SAE + 2},
        {"kind": "jumprelu", "k": None},
        {"k": 5},
        {"layer": 4, "hook": "blocks.4.hook_resid_post"},
        {"layer": 2, "hook": "blocks.3.hook_resid_pre"},  # same layer, another hook
        {"layer": 5, "hook": None},
        {"model": "other"},
    ],
    ids=lambda change: ",".join(change),
)
def test_every_sae_config_field_changes_behaviour(tmp_path, change) -> None:
    """Each field of SAEConfig changes the SAE or what is saved and read back of it."""
    before = _behaviour(BASE, tmp_path / "a")
    changed = replace(BASE, **change)
    after = _behaviour(changed, tmp_path / "b")
    assert after != before
    assert after["loaded"] == changed  # and every field survives saving


@pytest.mark.parametrize(
    ("hook", "block", "layer"),
    [
        ("blocks.3.hook_resid_post", 3, 3),
        ("blocks.3.hook_resid_pre", 3, 2),
        ("blocks.0.hook_resid_pre", 0, None),  # the embeddings
        ("blocks.3.hook_resid_mid", 3, None),
        ("blocks.3.hook_mlp_out", 3, None),
        ("blocks.3.attn.hook_z", 3, None),
        ("model.layers.17.output", 17, 17),  # Gemma Scope 2's hf_hook_point_in
        ("model.layers.17.self_attn.o_proj.input", 17, None),
        ("model.language_model.layers.2", 2, 2),  # mechtune's own hook names
        ("question.bert.encoder.layer.4", 4, 4),
        ("transformer.h.5", 5, 5),
        ("hook_embed", None, None),
        ("ln_final.hook_normalized", None, None),
    ],
)
def test_hook_names_give_the_block_and_the_block_output(hook, block, layer) -> None:
    assert hook_block_index(hook) == block
    assert block_output_layer(hook) == layer


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("layer_3", (3, "")),
        ("layer_17_width_16k_l0_medium", (17, "width_16k_l0_medium")),
        ("layer_0_width_262k_l0_small_affine", (0, "width_262k_l0_small_affine")),
        ("layer_7_13_17_22_width_262k_l0_medium", None),  # a crosscoder over four layers
        ("layer_", None),
        ("layers_3", None),
        ("report.json", None),
    ],
)
def test_layer_folder_names(name, parsed) -> None:
    assert layer_folder(name) == parsed


# ---------------------------------------------------------------- formulas


def test_jumprelu_matches_the_written_formula() -> None:
    sae = random_sae("jumprelu")
    p = numpy_params(sae)
    x = torch.randn(2, 5, D_IN, generator=torch.Generator().manual_seed(1))  # [B, T, d]
    xn = x.numpy().astype(np.float64)
    pre = xn @ p["w_enc"] + p["b_enc"]
    f_ref = np.maximum(pre, 0) * (pre > p["threshold"])
    x_hat_ref = f_ref @ p["w_dec"] + p["b_dec"]

    f = sae.encode(x)
    assert f.shape == (2, 5, D_SAE)
    assert 0 < (f != 0).sum() < f.numel()  # the threshold matters
    np.testing.assert_allclose(sae.pre(x).detach().numpy(), pre, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.detach().numpy(), f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(f).detach().numpy(), x_hat_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae(x).detach().numpy(), x_hat_ref, rtol=1e-5, atol=1e-5)

    # The trap: SAELens-style (x - b_dec) input centring would give different features.
    centred = (xn - p["b_dec"]) @ p["w_enc"] + p["b_enc"]
    assert not np.allclose(np.maximum(centred, 0) * (centred > p["threshold"]), f_ref)


def test_topk_matches_the_written_formula() -> None:
    sae = random_sae("topk", k=3)
    p = numpy_params(sae)
    x = torch.randn(7, D_IN, generator=torch.Generator().manual_seed(2))
    pre = np.maximum(x.numpy().astype(np.float64) @ p["w_enc"] + p["b_enc"], 0)
    f_ref = np.zeros_like(pre)
    for row in range(len(pre)):
        top = np.argsort(pre[row])[-3:]
        f_ref[row, top] = pre[row, top]

    f = sae.encode(x)
    assert ((f != 0).sum(-1) <= 3).all()
    np.testing.assert_allclose(f.detach().numpy(), f_ref, rtol=1e-5, atol=1e-5)
    x_hat_ref = f_ref @ p["w_dec"] + p["b_dec"]
    np.testing.assert_allclose(sae(x).detach().numpy(), x_hat_ref, rtol=1e-5, atol=1e-5)
    assert sae.encode(x.reshape(7, 1, D_IN)).shape == (7, 1, D_SAE)
    assert sae.threshold is None
    assert set(sae.tensors()) == {"w_enc", "w_dec", "b_enc", "b_dec"}


# ---------------------------------------------------------------- loading


def test_load_sae_lists_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError) as info:
        load_sae(tmp_path)
    message = str(info.value)
    for expected in ("cfg.json", "sae_weights.safetensors", "params.safetensors", "params.npz"):
        assert expected in message
    assert "notes.txt" in message


# ---------------------------------------------------------------- metrics


def test_reconstruction_stats_match_a_hand_computation() -> None:
    sae = random_sae("jumprelu", seed=6)
    x = torch.randn(3, 11, D_IN, generator=torch.Generator().manual_seed(7))
    stats = reconstruction_stats(sae, x, chunk_rows=5)  # chunks that split the rows unevenly

    p = numpy_params(sae)
    rows = x.reshape(-1, D_IN).numpy().astype(np.float64)
    pre = rows @ p["w_enc"] + p["b_enc"]
    f = np.maximum(pre, 0) * (pre > p["threshold"])
    err = ((rows - (f @ p["w_dec"] + p["b_dec"])) ** 2).sum()
    fvu = err / ((rows - rows.mean(0)) ** 2).sum()
    active = f != 0
    assert stats.n_rows == 33
    assert stats.fvu == pytest.approx(fvu, rel=1e-5)
    assert stats.r2 == pytest.approx(1 - fvu, rel=1e-5)
    assert stats.mse == pytest.approx(err / 33, rel=1e-5)
    assert stats.l0 == pytest.approx(active.sum(1).mean())
    assert stats.dead_fraction == pytest.approx((~active.any(0)).mean())
    np.testing.assert_allclose(stats.frequency.numpy(), active.mean(0), rtol=1e-6)
    assert set(stats.to_dict()) == {"r2", "fvu", "mse", "l0", "dead_fraction", "n_rows"}


FIELD_TESTS = {
    "mechtune.interp.sae.SAEConfig": {
        name: "test_every_sae_config_field_changes_behaviour"
        for name in ("d_in", "d_sae", "kind", "k", "layer", "model", "hook")
    }
}
