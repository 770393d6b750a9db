"""Gemma Scope 1 (params.npz) and 2 (params.safetensors + config.json) files: read with
Gemma Scope's JumpReLU math (no b_dec subtracted from the input) or refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mechtune.interp.sae import SAEConfig, SAEFormatError, load_sae
from mechtune.interp.sae_gemma_scope import (
    load_gemma_scope,
    load_gemma_scope_npz,
    save_gemma_scope,
)
from tests.interp.sae_helpers import D_IN, D_SAE, numpy_params, random_sae

GS2_FOLDER = "layer_17_width_16k_l0_medium"


def assert_same_sae(a, b) -> None:
    assert a.config.kind == b.config.kind and a.config.k == b.config.k
    assert a.tensors().keys() == b.tensors().keys()
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name


def write_gs2(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "params.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def gs2_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(random_sae("jumprelu", seed=seed).tensors())


def test_gemma_scope_2_is_the_jumprelu_formula_without_centring(tmp_path) -> None:
    tensors = gs2_tensors(seed=2)
    sae = load_sae(write_gs2(tmp_path / GS2_FOLDER, tensors))
    p = {k: v.double().numpy() for k, v in tensors.items()}
    x = torch.randn(9, D_IN, generator=torch.Generator().manual_seed(1))
    pre = x.double().numpy() @ p["w_enc"] + p["b_enc"]  # b_dec NOT subtracted (REFERENCE §3)
    f = np.maximum(pre, 0) * (pre > p["threshold"])
    assert 0 < (f != 0).sum() < f.size
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f, atol=1e-5)
    np.testing.assert_allclose(sae(x).detach().numpy(), f @ p["w_dec"] + p["b_dec"], atol=1e-5)


def test_gemma_scope_2_round_trip(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    file = save_gemma_scope(sae, tmp_path / "gs2")
    assert file.name == "params.safetensors"
    assert sorted(load_file(str(file))) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]
    loaded = load_gemma_scope(tmp_path / "gs2")
    assert_same_sae(sae, loaded)
    assert loaded.config == sae.config  # layer, model and hook ride in the header
    assert_same_sae(sae, load_sae(file))
    with pytest.raises(ValueError, match="jumprelu SAEs only"):
        save_gemma_scope(random_sae("topk", k=2), tmp_path / "no")


@pytest.mark.parametrize(
    ("config", "hook", "layer", "model"),
    [
        (None, None, 17, None),  # the folder name alone
        ({"hf_hook_point_in": "model.layers.17.output", "model_name": "google/gemma-3-4b-it",
          "width": D_SAE, "l0": 60, "architecture": "jump_relu", "type": "sae",
          "affine_connection": False}, "model.layers.17.output", 17, "google/gemma-3-4b-it"),
        ({"hf_hook_point_in": "model.layers.17.self_attn.o_proj.input"},
         "model.layers.17.self_attn.o_proj.input", None, None),  # attn_out: no block output
    ],
)  # fmt: skip
def test_gemma_scope_2_site_from_folder_and_config(tmp_path, config, hook, layer, model) -> None:
    tensors = gs2_tensors()
    loaded = load_sae(write_gs2(tmp_path / "resid_post" / GS2_FOLDER, tensors, config))
    assert loaded.config == SAEConfig(D_IN, D_SAE, "jumprelu", layer=layer, model=model, hook=hook)
    assert_same_sae(random_sae("jumprelu"), loaded)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hf_hook_point_in": "model.layers.12.output"},
         "folder 'layer_17_width_16k_l0_medium' says layer 17 but the SAE's hook 'model.layers.12.output' is in block 12"),
        ({"architecture": "topk"}, "architecture='topk' is not a JumpReLU SAE"),
        ({"affine_connection": True}, "affine_connection=True"),
        ({"hf_hook_point_in": "model.layers.17.pre_feedforward_layernorm.output",
          "hf_hook_point_out": "model.layers.17.post_feedforward_layernorm.output"}, "hf_hook_point_out="),
        ({"type": "transcoder"}, "type='transcoder' is not an SAE"),
        ({"width": 16384}, f"width=16384 but the tensors have d_sae={D_SAE}"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)  # fmt: skip
def test_gemma_scope_2_config_that_changes_the_math_is_refused(tmp_path, config, message) -> None:
    folder = write_gs2(tmp_path / GS2_FOLDER, gs2_tensors(), config)
    with pytest.raises(SAEFormatError, match=message):
        load_sae(folder)


def test_gemma_scope_2_header_and_folder_must_agree(tmp_path) -> None:
    sae = random_sae("jumprelu")  # layer 3, hook lm.layers.3
    save_gemma_scope(sae, tmp_path / GS2_FOLDER)
    message = "folder 'layer_17_width_16k_l0_medium' says layer 17 but the SAE's hook"
    with pytest.raises(SAEFormatError, match=rf"{message} 'lm\.layers\.3' is in block 3"):
        load_sae(tmp_path / GS2_FOLDER)
    save_gemma_scope(sae, tmp_path / "layer_3_width_16k_l0_small")
    assert load_sae(tmp_path / "layer_3_width_16k_l0_small").config.layer == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": None}, r"missing key 'threshold'"),
        ({"b_enc": torch.zeros(D_SAE + 1)}, r"key 'b_enc' has shape \(11,\)"),
        ({"w_enc": torch.zeros(D_IN)}, r"key 'w_enc' must be 2-D, got \(6,\)"),
        ({"w_dec": torch.zeros(D_IN, D_SAE)}, r"key 'w_dec' has shape \(6, 10\), expected \(10, 6\)"),
        ({"w_skip": torch.zeros(D_IN, D_IN)}, r"unknown key\(s\) \['w_skip'\]"),
        ({"threshold": torch.full((D_SAE,), float("inf"))}, "key 'threshold' contains NaN or inf"),
        ({"b_dec": torch.zeros(D_IN, dtype=torch.int64)}, "key 'b_dec' has dtype torch.int64"),
    ],
)  # fmt: skip
def test_malformed_gemma_scope_2_files_are_refused(tmp_path, change, message) -> None:
    tensors = gs2_tensors()
    for key, value in change.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    with pytest.raises(SAEFormatError, match=rf"params\.safetensors: {message}"):
        load_sae(write_gs2(tmp_path, tensors))


def test_a_stored_config_that_contradicts_the_tensors_is_refused(tmp_path) -> None:
    file = save_gemma_scope(random_sae("jumprelu"), tmp_path)
    header = json.dumps(SAEConfig(D_IN, D_SAE, "topk", k=2).to_dict())
    save_file(load_file(str(file)), str(file), metadata={"mechtune_sae_config": header})
    with pytest.raises(SAEFormatError, match="stored config says kind='topk'"):
        load_sae(tmp_path)


def test_gemma_scope_dtype_is_the_files_and_never_rounded_unasked(tmp_path) -> None:
    tensors = {k: v.double() / 3 for k, v in gs2_tensors().items()}
    write_gs2(tmp_path, tensors)
    assert load_sae(tmp_path).w_enc.dtype == torch.float64
    with pytest.raises(SAEFormatError, match=r"dtype=torch\.float32 cannot represent"):
        load_sae(tmp_path, dtype=torch.float32)
    write_gs2(tmp_path, {k: v.to(torch.bfloat16) for k, v in gs2_tensors().items()})
    assert load_sae(tmp_path).w_enc.dtype == torch.bfloat16
    exact = load_sae(tmp_path, dtype=torch.float32)  # bf16 -> f32 is exact
    torch.testing.assert_close(exact.w_enc, gs2_tensors()["w_enc"].to(torch.bfloat16).float())


@pytest.mark.parametrize("case", ["W_enc", "w_enc"])
def test_gemma_scope_1_npz(tmp_path: Path, case: str) -> None:
    sae = random_sae("jumprelu", seed=3)
    folder = tmp_path / "layer_7" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    p = {k: v.numpy() for k, v in sae.tensors().items()}
    prefix = case[0]
    np.savez(
        folder / "params.npz",
        **{f"{prefix}_enc": p["w_enc"], f"{prefix}_dec": p["w_dec"]},
        b_enc=p["b_enc"],
        b_dec=p["b_dec"],
        threshold=p["threshold"],
    )
    loaded = load_sae(folder)
    assert_same_sae(sae, loaded)
    assert loaded.config == SAEConfig(D_IN, D_SAE, "jumprelu", layer=7)
    assert_same_sae(sae, load_gemma_scope_npz(folder / "params.npz"))
    ref = numpy_params(sae)
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(0))
    pre = x.double().numpy() @ ref["w_enc"] + ref["b_enc"]
    np.testing.assert_allclose(
        loaded.encode(x).detach().numpy(), np.maximum(pre, 0) * (pre > ref["threshold"]), atol=1e-5
    )


def test_malformed_gemma_scope_1_files_are_refused(tmp_path) -> None:
    p = {k: v.numpy() for k, v in random_sae("jumprelu").tensors().items()}
    np.savez(tmp_path / "params.npz", W_enc=p["w_enc"], w_enc=p["w_enc"])
    with pytest.raises(SAEFormatError, match="both 'w_enc' and 'W_enc'"):
        load_sae(tmp_path / "params.npz")
    np.savez(tmp_path / "params.npz", W_enc=p["w_enc"], W_dec=p["w_dec"], b_enc=p["b_enc"])
    with pytest.raises(SAEFormatError, match=r"params\.npz: missing key 'b_dec'"):
        load_sae(tmp_path)
    everything = {
        "W_enc": p["w_enc"],
        "W_dec": p["w_dec"],
        "b_enc": p["b_enc"],
        "b_dec": p["b_dec"],
    }
    np.savez(tmp_path / "params.npz", **everything, threshold=p["threshold"], extra=p["b_dec"])
    with pytest.raises(SAEFormatError, match=r"unknown key\(s\) \['extra'\]"):
        load_sae(tmp_path)
