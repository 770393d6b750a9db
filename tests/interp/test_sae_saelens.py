"""SAELens folders: every config variant SAELens has written is read with the right math
(checked against SAELens's encode/decode written out in numpy) or refused naming the key
and value."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mechtune.interp.sae import SAEFormatError, load_sae
from mechtune.interp.sae_saelens import (
    BOOKKEEPING_KEYS,
    MATH_KEYS,
    load_saelens,
    read_saelens_config,
    save_saelens,
)
from tests.interp.sae_helpers import (
    D_IN,
    D_SAE,
    random_sae,
    saelens_reference,
    saelens_weights,
    write_saelens,
)

X = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(11))


def assert_matches_saelens(folder: Path, cfg: dict, weights: dict, **load: Any) -> None:
    sae = load_saelens(folder, **load)
    f_ref, x_hat_ref = saelens_reference(cfg, weights, X.double().numpy())
    assert (f_ref != 0).any() and (f_ref == 0).any()  # the activation is exercised
    np.testing.assert_allclose(sae.encode(X).detach().double().numpy(), f_ref, atol=2e-5)
    np.testing.assert_allclose(sae(X).detach().double().numpy(), x_hat_ref, atol=5e-5)


# ---------------------------------------------------------------- case01


@pytest.mark.parametrize("architecture", ["standard", None])
def test_topk_marked_only_by_activation_fn_str_is_read_as_topk(tmp_path, architecture) -> None:
    """case01 (SAELens #553): the older layout marks TopK only through
    activation_fn_str="topk" + activation_fn_kwargs.k; it was loaded as a ReLU with L0 16."""
    g = torch.Generator().manual_seed(0)
    d_in, d_sae, k = 8, 32, 2
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in),
    }
    cfg: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": k},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "hook_name": "blocks.3.hook_resid_post",
        "hook_layer": 3,
        "model_name": "tiny",
    }
    if architecture is not None:
        cfg["architecture"] = architecture
    sae = load_sae(write_saelens(tmp_path, cfg, weights))
    x = torch.randn(64, d_in, generator=g)
    f = sae.encode(x)
    assert (sae.config.kind, sae.config.k, sae.config.layer) == ("topk", 2, 3)
    assert float((f != 0).float().sum(-1).mean()) == 2.0
    np.testing.assert_allclose(
        f.detach().numpy(), saelens_reference(cfg, weights, x.double().numpy())[0], atol=1e-5
    )


# ---------------------------------------------------------------- variants read

READ = {
    # pre-3.0: the whole runner config, hook_point, activation_fn, bool normalisation
    "1.x/2.x runner config": (
        "standard",
        {"hook_point": "blocks.2.hook_resid_pre", "hook_point_layer": 2, "activation_fn": "relu",
         "normalize_activations": False, "dtype": "torch.float32", "lr": 3e-4,
         "l1_coefficient": 5.0, "tokens_per_buffer": 1000, "noise_scale": 0.0},
    ),
    "no architecture, no activation": ("standard", {}),
    "3.x-5.x standard relu": (
        "standard",
        {"architecture": "standard", "activation_fn_str": "relu", "activation_fn_kwargs": {},
         "finetuning_scaling_factor": False, "normalize_activations": "none"},
    ),
    "5.x topk architecture": (
        "topk",
        {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}},
    ),
    "6.x topk": ("topk", {"architecture": "topk", "k": 3, "metadata": {"sae_lens_version": "6.5"}}),
    "6.x topk, k in both places": (
        "topk", {"architecture": "topk", "k": 3, "activation_fn_kwargs": {"k": 3}}
    ),
    "6.x topk rescaled by decoder norm": (
        "topk", {"architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True}
    ),
    "jumprelu": ("jumprelu", {"architecture": "jumprelu"}),
    "jumprelu, Gemma Scope via SAELens": (
        "jumprelu", {"architecture": "jumprelu", "apply_b_dec_to_input": False,
                     "normalize_activations": None}
    ),
    "gated": ("gated", {"architecture": "gated"}),
    "gated, no b_dec on input": ("gated", {"architecture": "gated", "apply_b_dec_to_input": False}),
    "hook_z SAE": (
        "standard", {"hook_name": "blocks.1.attn.hook_z", "reshape_activations": "hook_z"}
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(READ))
@pytest.mark.parametrize("apply_b_dec", [True, False, None])
def test_every_config_variant_is_read_with_saelens_math(tmp_path, name, apply_b_dec) -> None:
    architecture, extra = READ[name]
    cfg = {"d_in": D_IN, "d_sae": D_SAE, **extra}
    if apply_b_dec is not None:
        cfg["apply_b_dec_to_input"] = apply_b_dec
    weights = saelens_weights(architecture, seed=3)
    assert_matches_saelens(write_saelens(tmp_path, cfg, weights), cfg, weights)


def test_apply_b_dec_to_input_changes_the_encoding(tmp_path) -> None:
    weights = saelens_weights("standard", seed=4)
    base = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE}
    on = load_saelens(
        write_saelens(tmp_path / "on", base | {"apply_b_dec_to_input": True}, weights)
    )
    off = load_saelens(
        write_saelens(tmp_path / "off", base | {"apply_b_dec_to_input": False}, weights)
    )
    absent = load_saelens(write_saelens(tmp_path / "absent", base, weights))
    w = {key: value.double().numpy() for key, value in weights.items()}
    x = X.double().numpy()
    by_hand = {
        "on": np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0),
        "off": np.maximum(x @ w["W_enc"] + w["b_enc"], 0),
    }
    np.testing.assert_allclose(on.encode(X).detach().numpy(), by_hand["on"], atol=1e-5)
    np.testing.assert_allclose(off.encode(X).detach().numpy(), by_hand["off"], atol=1e-5)
    assert not np.allclose(by_hand["on"], by_hand["off"], atol=1e-2)
    torch.testing.assert_close(absent.encode(X), on.encode(X))  # SAELens's default is true


@pytest.mark.parametrize(
    ("flag", "key", "values", "applied"),
    [
        (True, "finetuning_scaling_factor", "random", True),  # 3.x-5.x fine-tuned
        (None, "scaling_factor", "random", True),  # 2.x applied it always
        (False, "scaling_factor", "ones", False),  # 2.x-3.x wrote ones; SAELens drops them
        (None, None, None, False),
    ],
)
def test_the_fine_tuning_scale_multiplies_the_decoder(tmp_path, flag, key, values, applied) -> None:
    weights = saelens_weights("standard", seed=5)
    if key is not None:
        scale = torch.rand(D_SAE, generator=torch.Generator().manual_seed(1)) + 0.5
        weights[key] = scale if values == "random" else torch.ones(D_SAE)
    cfg = {"d_in": D_IN, "d_sae": D_SAE}
    if flag is not None:
        cfg["finetuning_scaling_factor"] = flag
    sae = load_saelens(write_saelens(tmp_path, cfg, weights))
    assert_matches_saelens(tmp_path, cfg, weights)
    plain = weights["W_dec"].double()
    assert torch.allclose(sae.w_dec.double(), plain, atol=1e-6) != applied


# ---------------------------------------------------------------- variants refused

REFUSED = [
    ({"activation_fn_str": "tanh-relu"}, "activation_fn_str='tanh-relu'"),
    ({"activation_fn": "gelu"}, "activation_fn_str='gelu'"),
    ({"activation_fn_str": "relu", "activation_fn": "topk"}, "activation_fn_str='relu', activation_fn='topk'"),
    ({"architecture": "transcoder"}, "architecture='transcoder'"),
    ({"architecture": "jumprelu_skip_transcoder"}, "architecture='jumprelu_skip_transcoder'"),
    ({"architecture": "batchtopk", "k": 3}, "architecture='batchtopk'"),
    ({"architecture": "matryoshka_batchtopk"}, "architecture='matryoshka_batchtopk'"),
    ({"architecture": "sparse_magic"}, "architecture='sparse_magic'"),
    ({"architecture": "topk", "activation_fn_str": "relu", "k": 3}, "architecture='topk' contradicts activation 'relu'"),
    ({"architecture": "jumprelu", "activation_fn_str": "topk"}, "architecture='jumprelu' contradicts activation 'topk'"),
    ({"architecture": "topk"}, "a TopK SAE without k"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {}}, "a TopK SAE without k"),
    ({"architecture": "topk", "k": 3, "activation_fn_kwargs": {"k": 4}}, "two different TopK k"),
    ({"architecture": "topk", "k": 0}, "k=0: expected an int in"),
    ({"architecture": "topk", "k": D_SAE + 1}, f"k={D_SAE + 1}: expected an int in"),
    ({"architecture": "topk", "k": 2.0}, "k=2.0: expected an int"),
    ({"architecture": "topk", "k": True}, "k=True: expected an int"),
    ({"k": 3}, "k=3: k given for a non-TopK SAE"),
    ({"activation_fn_kwargs": {"k": 3}}, "activation_fn_kwargs=\\{'k': 3\\}: key\\(s\\) \\['k'\\] mean nothing to 'relu'"),
    ({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3, "postact": "gelu"}}, "key\\(s\\) \\['postact'\\]"),
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations='expected_average_only_in': its input scale factor"),
    ({"normalize_activations": True}, "normalize_activations=True: its input scale factor"),
    ({"normalize_activations": "constant_norm_rescale"}, "normalize_activations='constant_norm_rescale': it rescales each row"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm': it standardises"),
    ({"normalize_activations": "unit"}, "normalize_activations='unit': unknown"),
    ({"normalize_activations": 0}, "normalize_activations=0: unknown"),
    ({"normalize_activations": ["none"]}, "normalize_activations=\\['none'\\]: unknown"),
    ({"reshape_activations": "hook_q"}, "reshape_activations='hook_q'"),
    ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm=True: only TopK"),
    ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input='yes': expected bool"),
    ({"finetuning_scaling_factor": 1}, "finetuning_scaling_factor=1: expected bool"),
    ({"dtype": "float8"}, "dtype='float8' is not a dtype"),
    ({"dtype": "int8"}, "dtype='int8' is not a dtype"),
    ({"dtype": 32}, "dtype=32 is not a dtype"),
    ({"hook_name": "blocks.3.hook_resid_post", "hook_point": "blocks.4.hook_resid_post"}, "hook_name='blocks.3.hook_resid_post', hook_point='blocks.4.hook_resid_post'"),
    ({"hook_name": "blocks.3.hook_resid_post", "metadata": {"hook_name": "blocks.5.hook_resid_post"}}, "metadata.hook_name='blocks.5.hook_resid_post'"),
    ({"hook_name": "blocks.3.hook_resid_post", "hook_layer": 4}, "hook_layer=4 but the hook 'blocks.3.hook_resid_post' is in block 3"),
    ({"hook_point_layer": [1, 2]}, "hook_point_layer=\\[1, 2\\]: expected int"),
    ({"hook_head_index": 2}, "hook_head_index=2: an SAE of one attention head"),
    ({"hook_name": "blocks.3.ln2.hook_normalized", "hook_name_out": "blocks.3.hook_mlp_out"}, "hook_name_out='blocks.3.hook_mlp_out'"),
    ({"d_out": D_IN}, f"d_out={D_IN}: a transcoder"),
    ({"noise_scale": 0.1}, "noise_scale=0.1"),
    ({"fancy_new_option": 1}, "unknown key\\(s\\) fancy_new_option=1"),
    ({"metadata": ["gpt2"]}, "metadata=\\['gpt2'\\]: expected a JSON object"),
    ({"d_in": "6"}, "d_in='6': expected int"),
    ({"d_sae": 0}, "d_sae=0: expected a positive int"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_variants_that_cannot_be_read_exactly_are_refused_naming_key_and_value(
    tmp_path, extra, message
) -> None:
    cfg = {"d_in": D_IN, "d_sae": D_SAE, **extra}
    folder = write_saelens(tmp_path, cfg, saelens_weights("standard"))
    with pytest.raises(SAEFormatError, match=message) as info:
        load_sae(folder)
    assert "cfg.json" in str(info.value)


def test_missing_d_in_is_named(tmp_path) -> None:
    folder = write_saelens(tmp_path, {"d_sae": D_SAE}, saelens_weights("standard"))
    with pytest.raises(SAEFormatError, match=r"cfg\.json: missing key 'd_in'"):
        load_sae(folder)


@pytest.mark.parametrize(
    ("architecture", "flag", "change", "message"),
    [
        ("standard", None, {"log_threshold": torch.zeros(D_SAE)}, r"unknown key\(s\) \['log_threshold'\]"),
        ("standard", None, {"threshold": torch.zeros(D_SAE)}, r"unknown key\(s\) \['threshold'\]"),
        ("jumprelu", None, {"threshold": None}, "missing key 'threshold'"),
        ("gated", None, {"b_mag": None}, "missing key 'b_mag'"),
        ("gated", None, {"b_enc": torch.zeros(D_SAE)}, r"unknown key\(s\) \['b_enc'\]"),
        ("standard", None, {"W_enc": torch.zeros(D_IN + 1, D_SAE)}, r"key 'W_enc' has shape \(7, 10\)"),
        ("standard", None, {"b_dec": torch.full((D_IN,), float("nan"))}, "key 'b_dec' contains NaN"),
        ("standard", None, {"b_enc": torch.zeros(D_SAE, dtype=torch.int32)}, "key 'b_enc' has dtype torch.int32"),
        ("standard", True, {}, "finetuning_scaling_factor=true but there is no"),
        ("standard", False, {"scaling_factor": torch.full((D_SAE,), 2.0)}, "'scaling_factor' holds values other than 1"),
        ("standard", None, {"scaling_factor": torch.ones(D_SAE), "finetuning_scaling_factor": torch.ones(D_SAE)}, "both"),
    ],
)  # fmt: skip
def test_weights_files_are_checked_against_the_architecture(
    tmp_path, architecture, flag, change, message
) -> None:
    weights = saelens_weights(architecture)
    for key, value in change.items():
        if value is None:
            del weights[key]
        else:
            weights[key] = value
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE}
    if flag is not None:
        cfg["finetuning_scaling_factor"] = flag
    with pytest.raises(SAEFormatError, match=message) as info:
        load_sae(write_saelens(tmp_path, cfg, weights))
    assert "sae_weights.safetensors" in str(info.value)


def test_bad_json_is_named(tmp_path) -> None:
    folder = write_saelens(tmp_path, {}, saelens_weights("standard"))
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match=r"cfg\.json: not valid JSON"):
        load_sae(folder)


def test_bookkeeping_keys_change_nothing_and_are_apart_from_math_keys(tmp_path) -> None:
    assert not MATH_KEYS & BOOKKEEPING_KEYS
    weights = saelens_weights("standard", seed=6)
    bare = {"d_in": D_IN, "d_sae": D_SAE}
    noisy = bare | {key: f"any value of {key}" for key in BOOKKEEPING_KEYS}
    noisy["metadata"] = {"sae_lens_version": "6.1", "anything": [1, 2]}  # metadata: bookkeeping
    a = load_saelens(write_saelens(tmp_path / "bare", bare, weights))
    b = load_saelens(write_saelens(tmp_path / "noisy", noisy, weights))
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name


# ---------------------------------------------------------------- site and dtype


@pytest.mark.parametrize(
    ("site", "hook", "layer"),
    [
        ({"hook_name": "blocks.3.hook_resid_post", "hook_layer": 3}, "blocks.3.hook_resid_post", 3),
        ({"hook_point": "blocks.3.hook_resid_post", "hook_point_layer": 3}, "blocks.3.hook_resid_post", 3),
        ({"metadata": {"hook_name": "blocks.3.hook_resid_post"}}, "blocks.3.hook_resid_post", 3),
        ({"hook_name": "blocks.3.hook_resid_pre", "hook_layer": 3}, "blocks.3.hook_resid_pre", 2),
        ({"hook_name": "blocks.0.hook_resid_pre"}, "blocks.0.hook_resid_pre", None),
        ({"hook_name": "blocks.3.hook_mlp_out", "hook_layer": 3}, "blocks.3.hook_mlp_out", None),
        ({"hook_name": "model.layers.5.output"}, "model.layers.5.output", 5),
        ({"hook_layer": 4}, None, 4),
        ({}, None, None),
    ],
)  # fmt: skip
def test_hook_name_and_hook_point_give_the_block_output_layer(tmp_path, site, hook, layer) -> None:
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "model_name": "gpt2", **site}
    sae = load_saelens(write_saelens(tmp_path, cfg, saelens_weights("standard")))
    assert (sae.config.hook, sae.config.layer, sae.config.model) == (hook, layer, "gpt2")


@pytest.mark.parametrize(
    ("stored", "cfg_dtype", "requested", "loaded"),
    [
        (torch.float32, None, None, torch.float32),
        (torch.float64, None, None, torch.float64),  # the tensors' own dtype
        (torch.bfloat16, "float32", None, torch.float32),  # exact upcast, as SAELens does
        (torch.float32, "torch.bfloat16", None, torch.bfloat16),  # the writer asked for it
        (torch.bfloat16, None, torch.float32, torch.float32),  # exact
    ],
)
def test_dtype_is_the_writers_and_never_rounds_unasked(
    tmp_path, stored, cfg_dtype, requested, loaded
) -> None:
    weights = {k: v.to(stored) for k, v in saelens_weights("standard").items()}
    cfg = {"d_in": D_IN, "d_sae": D_SAE}
    if cfg_dtype is not None:
        cfg["dtype"] = cfg_dtype
    sae = load_saelens(write_saelens(tmp_path, cfg, weights), dtype=requested)
    assert sae.w_enc.dtype == loaded
    torch.testing.assert_close(sae.w_dec, weights["W_dec"].to(loaded))


def test_a_requested_dtype_that_would_round_is_refused(tmp_path) -> None:
    weights = {k: v.double() / 3 for k, v in saelens_weights("standard").items()}
    folder = write_saelens(tmp_path, {"d_in": D_IN, "d_sae": D_SAE}, weights)
    message = r"key 'W_dec' holds torch\.float64 values that dtype=torch\.float32"
    with pytest.raises(SAEFormatError, match=message):
        load_saelens(folder, dtype=torch.float32)
    assert load_saelens(folder).w_enc.dtype == torch.float64


# ---------------------------------------------------------------- writing


@pytest.mark.parametrize(("kind", "k"), [("jumprelu", None), ("topk", 3)])
def test_saelens_round_trip(tmp_path: Path, kind: str, k: int | None) -> None:
    sae = random_sae(kind, k=k)
    save_saelens(sae, tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["architecture"] == kind and cfg["apply_b_dec_to_input"] is False
    loaded = load_sae(tmp_path / "sl")
    assert loaded.config == sae.config
    for name, tensor in sae.tensors().items():
        assert torch.equal(tensor, loaded.tensors()[name]), name


def test_round_trip_keeps_a_resid_pre_hook_and_its_layer(tmp_path) -> None:
    folder = write_saelens(
        tmp_path / "in",
        {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.3.hook_resid_pre", "hook_layer": 3},
        saelens_weights("standard"),
    )
    sae = load_saelens(folder)
    again = load_saelens(save_saelens(sae, tmp_path / "out"))
    assert again.config == sae.config and again.config.layer == 2
    assert json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]["hook_layer"] == 3


def test_read_saelens_config_normalises_the_versions() -> None:
    old = read_saelens_config(
        {"d_in": 4, "d_sae": 8, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2},
         "hook_point": "blocks.1.hook_resid_post", "dtype": "torch.float16"}, "old",
    )  # fmt: skip
    new = read_saelens_config(
        {"d_in": 4, "d_sae": 8, "architecture": "topk", "k": 2, "dtype": "float16",
         "metadata": {"hook_name": "blocks.1.hook_resid_post"}}, "new",
    )  # fmt: skip
    assert replace(old, architecture="topk") == new  # 5.x said "standard" or "topk"
    assert (new.kind, new.k, new.layer, new.dtype) == ("topk", 2, 1, torch.float16)


# SAELensConfig is what a cfg.json says; each field is read with the writer's meaning.
FIELD_TESTS = {
    "mechtune.interp.sae_saelens.SAELensConfig": {
        "architecture": "test_every_config_variant_is_read_with_saelens_math",
        "d_in": "test_every_config_variant_is_read_with_saelens_math",
        "d_sae": "test_every_config_variant_is_read_with_saelens_math",
        "k": "test_topk_marked_only_by_activation_fn_str_is_read_as_topk",
        "apply_b_dec_to_input": "test_apply_b_dec_to_input_changes_the_encoding",
        "finetuning_scaling_factor": "test_the_fine_tuning_scale_multiplies_the_decoder",
        "rescale_acts_by_decoder_norm": "test_every_config_variant_is_read_with_saelens_math",
        "hook": "test_hook_name_and_hook_point_give_the_block_output_layer",
        "layer": "test_hook_name_and_hook_point_give_the_block_output_layer",
        "model": "test_saelens_round_trip",
        "dtype": "test_dtype_is_the_writers_and_never_rounds_unasked",
    }
}
