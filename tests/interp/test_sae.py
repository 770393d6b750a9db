"""SAE: the written formulas, the three file layouts, training and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mechtune.interp.sae import (
    SAE,
    SAEConfig,
    SAEFormatError,
    load_gemma_scope,
    load_gemma_scope_npz,
    load_sae,
    load_saelens,
    reconstruction_stats,
    save_gemma_scope,
    save_saelens,
)
from mechtune.interp.sae_train import SAETrainConfig, _JumpReLU, _Step, train_sae

D_IN, D_SAE = 6, 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These matrices are tiny: with two threads on a busy 2-core machine, OpenMP's
    # spin-waiting makes training 20-50x slower, not faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_sae(kind: str = "jumprelu", seed: int = 0, k: int | None = None) -> SAE:
    """A small SAE with every parameter random; thresholds put about half the
    positive pre-activations below threshold."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(D_IN, D_SAE, kind, k=k, layer=3, model="tiny", hook="lm.layer.3"))
    with torch.no_grad():
        for tensor in sae.tensors().values():
            tensor.copy_(torch.randn(tensor.shape, generator=g))
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(D_SAE, generator=g))
    return sae


def sparse_dictionary_data(
    n: int = 8192, d: int = 64, atoms: int = 128, active: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that are ``active``-sparse positive combinations of random unit atoms, plus
    small noise: ``([n, d], [atoms, d])``."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    support = torch.rand(n, atoms, generator=g).argsort(dim=1)[:, :active]
    coefficients = torch.zeros(n, atoms).scatter(
        1, support, 0.5 + torch.rand(n, active, generator=g)
    )
    x = coefficients @ dictionary + 0.01 * torch.randn(n, d, generator=g)
    return x, dictionary


def numpy_params(sae: SAE) -> dict[str, np.ndarray]:
    return {name: t.numpy().astype(np.float64) for name, t in sae.tensors().items()}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_in": 0, "d_sae": 4}, "d_in must be a positive int, got 0"),
        ({"d_in": 4, "d_sae": 4, "kind": "gated"}, "unknown SAE kind 'gated'"),
        ({"d_in": 4, "d_sae": 4, "kind": "topk"}, "needs an int k, got k=None"),
        ({"d_in": 4, "d_sae": 4, "kind": "topk", "k": 5}, r"k must be in \[1, d_sae=4\], got 5"),
        ({"d_in": 4, "d_sae": 4, "k": 2}, "k is only for kind 'topk'"),
        ({"d_in": 4, "d_sae": 4, "layer": -1}, "layer must be a non-negative int"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SAEConfig(**kwargs)


def test_config_round_trips_and_names_unknown_fields() -> None:
    config = SAEConfig(8, 32, "topk", k=4, layer=2, model="m", hook="h")
    assert SAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="'widht'"):
        SAEConfig.from_dict({"d_in": 8, "d_sae": 32, "widht": 3})
    with pytest.raises(ValueError, match="unknown b_dec_init 'mode'"):
        SAETrainConfig(b_dec_init="mode")


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


def test_threshold_gradient_is_the_rectangle_kernel_estimate() -> None:
    eps = 0.1
    pre = torch.tensor([[0.46, 0.52, 0.9], [0.2, 0.58, 0.5]], requires_grad=True)
    threshold = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    # Inside the window |pre - θ| < eps/2 = 0.05: 0.46, 0.52 and 0.5.
    window = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    _Step.apply(pre, threshold, eps).sum().backward()
    torch.testing.assert_close(threshold.grad, -(1 / eps) * window.sum(0))
    assert pre.grad is None  # L0 sends no gradient to the pre-activations

    threshold.grad = None
    f = _JumpReLU.apply(pre, threshold, eps)
    torch.testing.assert_close(f, pre.detach() * (pre.detach() > 0.5))
    f.sum().backward()
    torch.testing.assert_close(threshold.grad, -(0.5 / eps) * window.sum(0))
    torch.testing.assert_close(pre.grad, (pre.detach() > 0.5).float())


# ---------------------------------------------------------------- files


def assert_same_sae(a: SAE, b: SAE) -> None:
    assert a.config.kind == b.config.kind and a.config.k == b.config.k
    assert a.tensors().keys() == b.tensors().keys()
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name
    x = torch.randn(4, 3, D_IN, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a(x), b(x))


def test_gemma_scope_2_round_trip(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    file = save_gemma_scope(sae, tmp_path / "gs2")
    assert file.name == "params.safetensors"
    assert sorted(load_file(str(file))) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]
    loaded = load_gemma_scope(tmp_path / "gs2")
    assert_same_sae(sae, loaded)
    assert loaded.config == sae.config  # layer, model and hook ride in the header
    assert_same_sae(sae, load_sae(tmp_path / "gs2"))
    assert_same_sae(sae, load_sae(file))
    with pytest.raises(ValueError, match="jumprelu SAEs only"):
        save_gemma_scope(random_sae("topk", k=2), tmp_path / "no")


def test_gemma_scope_2_file_without_our_metadata(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    folder = tmp_path / "resid_post" / "layer_17_width_16k_l0_medium"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sae.tensors().items()}, folder / "params.safetensors")
    loaded = load_sae(folder)
    assert_same_sae(sae, loaded)
    assert loaded.config == SAEConfig(D_IN, D_SAE, "jumprelu", layer=17)


def test_gemma_scope_1_npz(tmp_path: Path) -> None:
    sae = random_sae("jumprelu", seed=3)
    folder = tmp_path / "layer_7" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    p = {k: v.numpy() for k, v in sae.tensors().items()}
    np.savez(
        folder / "params.npz",
        W_enc=p["w_enc"],
        W_dec=p["w_dec"],
        b_enc=p["b_enc"],
        b_dec=p["b_dec"],
        threshold=p["threshold"],
    )
    loaded = load_sae(folder)
    assert_same_sae(sae, loaded)
    assert loaded.config.layer == 7
    assert_same_sae(sae, load_gemma_scope_npz(folder / "params.npz"))


@pytest.mark.parametrize(("kind", "k"), [("jumprelu", None), ("topk", 3)])
def test_saelens_round_trip(tmp_path: Path, kind: str, k: int | None) -> None:
    sae = random_sae(kind, k=k)
    save_saelens(sae, tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["architecture"] == kind and cfg["apply_b_dec_to_input"] is False
    loaded = load_sae(tmp_path / "sl")
    assert_same_sae(sae, loaded)
    assert loaded.config == sae.config


def write_saelens(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, folder / "sae_weights.safetensors")
    return folder


def test_saelens_older_cfg_with_nested_k(tmp_path: Path) -> None:
    sae = random_sae("topk", k=4)
    cfg = {
        "architecture": "topk",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "activation_fn_kwargs": {"k": 4},
        "hook_name": "blocks.5.hook_resid_post",
        "model_name": "gpt2",
        "normalize_activations": None,
        "apply_b_dec_to_input": False,
    }
    names = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec"}
    write_saelens(tmp_path, cfg, {names[n]: t for n, t in sae.tensors().items()})
    loaded = load_saelens(tmp_path)
    assert_same_sae(sae, loaded)
    assert (loaded.config.k, loaded.config.layer, loaded.config.model) == (4, 5, "gpt2")


def test_saelens_standard_sae_with_b_dec_on_input(tmp_path: Path) -> None:
    """A ReLU SAE that centres its input: f = relu((x - b_dec) @ W_enc + b_enc)."""
    g = torch.Generator().manual_seed(4)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    # apply_b_dec_to_input is absent: SAELens's default for it is True.
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE}
    sae = load_sae(write_saelens(tmp_path, cfg, w))
    assert sae.config.kind == "jumprelu"
    x = torch.randn(9, D_IN, generator=g)
    n = {k: v.numpy().astype(np.float64) for k, v in w.items()}
    f_ref = np.maximum((x.numpy() - n["b_dec"]) @ n["W_enc"] + n["b_enc"], 0)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        sae(x).detach().numpy(), f_ref @ n["W_dec"] + n["b_dec"], rtol=1e-5, atol=1e-5
    )


def test_missing_and_misshaped_keys_name_the_file_and_key(tmp_path: Path) -> None:
    tensors = {k: v.contiguous() for k, v in random_sae("jumprelu").tensors().items()}
    missing = dict(tensors)
    del missing["threshold"]
    save_file(missing, tmp_path / "params.safetensors")
    with pytest.raises(SAEFormatError, match=r"params\.safetensors: missing key 'threshold'"):
        load_sae(tmp_path)

    misshaped = {**tensors, "b_enc": torch.zeros(D_SAE + 1)}
    save_file(misshaped, tmp_path / "params.safetensors")
    with pytest.raises(SAEFormatError, match=r"params\.safetensors: key 'b_enc' has shape \(11,\)"):
        load_sae(tmp_path)

    np.savez(tmp_path / "params.npz", W_enc=np.ones(3))
    with pytest.raises(SAEFormatError, match=r"params\.npz: missing key 'W_dec'"):
        load_sae(tmp_path / "params.npz")

    folder = write_saelens(
        tmp_path / "sl", {"architecture": "gated", "d_in": D_IN, "d_sae": D_SAE}, tensors
    )
    with pytest.raises(SAEFormatError, match=r"cfg\.json: architecture 'gated'"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_sae": D_SAE}))
    with pytest.raises(SAEFormatError, match=r"cfg\.json: missing key 'd_in'"):
        load_sae(folder)
    (folder / "cfg.json").write_text(
        json.dumps({"architecture": "jumprelu", "d_in": 5, "d_sae": D_SAE})
    )
    with pytest.raises(SAEFormatError, match=r"sae_weights\.safetensors: missing key 'W_enc'"):
        load_sae(folder)


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


# ---------------------------------------------------------------- training

FAST = SAETrainConfig(steps=300, batch_size=256, lr=3e-3, seed=0, log_every=50)


def test_topk_training_recovers_a_sparse_dictionary() -> None:
    x, dictionary = sparse_dictionary_data()
    sae, report = train_sae(x, SAEConfig(64, 256, "topk", k=3), FAST)
    stats = reconstruction_stats(sae, x)
    assert stats.r2 >= 0.9
    assert stats.l0 <= 3
    assert report.final.r2 == pytest.approx(stats.r2)
    assert report.logged_steps == [49, 99, 149, 199, 249, 299]
    assert report.history["mse"][-1] < report.history["mse"][0]
    # Most atoms have a decoder row pointing at them.
    best_cosine = (sae.w_dec @ dictionary.T).max(dim=0).values
    assert (best_cosine > 0.9).float().mean() >= 0.9
    torch.testing.assert_close(sae.w_dec.norm(dim=1), torch.ones(256))


def test_training_is_deterministic_for_a_seed() -> None:
    x, _ = sparse_dictionary_data(n=1024)
    config = SAEConfig(64, 128, "topk", k=3)
    first, _ = train_sae(x, config, FAST, steps=40)
    second, _ = train_sae(x, config, FAST, steps=40)
    other, _ = train_sae(x, config, FAST, steps=40, seed=1)
    for name, tensor in first.tensors().items():
        assert torch.equal(tensor, second.tensors()[name]), name
    assert not torch.equal(first.w_dec, other.w_dec)


def test_jumprelu_training_learns_sparse_features() -> None:
    x, _ = sparse_dictionary_data()
    config = SAEConfig(64, 256, "jumprelu")
    sparse, report = train_sae(x, config, FAST, steps=500, sparsity_coefficient=1e-2)
    assert report.final.r2 >= 0.9
    assert 1.5 <= report.final.l0 <= 6  # the data are 3-sparse
    assert sparse.threshold is not None and (sparse.threshold > 0).all()
    assert set(report.history) == {"loss", "mse", "sparsity", "l0"}
    dense, _ = train_sae(x, config, FAST, steps=500, sparsity_coefficient=1e-3)
    assert reconstruction_stats(dense, x).l0 > report.final.l0


def test_trained_sae_works_in_raw_activation_space() -> None:
    """Normalisation is folded into the weights: 1000x inputs give 1000x biases,
    thresholds and features, and the same fit."""
    x, _ = sparse_dictionary_data(n=2048)
    config = SAEConfig(64, 128, "jumprelu")
    small, _ = train_sae(x, config, FAST, steps=100, sparsity_coefficient=1e-2)
    large, _ = train_sae(x * 1000, config, FAST, steps=100, sparsity_coefficient=1e-2)
    assert small.threshold is not None and large.threshold is not None
    torch.testing.assert_close(large.b_dec, 1000 * small.b_dec, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(large.threshold, 1000 * small.threshold, rtol=1e-3, atol=1e-3)
    r2_small = reconstruction_stats(small, x).r2
    assert reconstruction_stats(large, x * 1000).r2 == pytest.approx(r2_small, abs=1e-3)


def test_train_sae_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[N, d_in=8\], got \(4, 5\)"):
        train_sae(torch.zeros(4, 5), SAEConfig(8, 16, "topk", k=2))
    with pytest.raises(TypeError, match="stepz"):
        train_sae(torch.ones(4, 8), SAEConfig(8, 16, "topk", k=2), stepz=3)
