"""SAE training: the threshold's gradient estimate, recovery of a known dictionary, and
every SAETrainConfig field changing the result."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, replace

import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.interp.sae import SAEConfig, reconstruction_stats
from mechtune.interp.sae_train import JUMPRELU_ONLY, SAETrainConfig, _JumpReLU, _Step, train_sae


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These matrices are tiny: with two threads on a busy 2-core machine, OpenMP's
    # spin-waiting makes training 20-50x slower, not faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    with pytest.raises(ConfigError, match="stepz"):
        train_sae(torch.ones(4, 8), SAEConfig(8, 16, "topk", k=2), stepz=3)


# ---------------------------------------------------------------- the config


def _outcome(config: SAEConfig, training: SAETrainConfig) -> dict:
    """Everything training produces: weights, logged terms and their steps, final stats."""
    x, _ = sparse_dictionary_data(n=600, d=16, atoms=32, seed=1)
    sae, report = train_sae(x + 0.3, config, training)  # off-centre, so b_dec_init matters
    return {
        "weights": {name: t.numpy().round(6).tolist() for name, t in sae.tensors().items()},
        "history": report.history,
        "logged_steps": report.logged_steps,
        "final": report.final.to_dict(),
        "scale": report.scale,
    }


SWEEP_BASE = SAETrainConfig(
    steps=20, batch_size=64, lr=3e-3, log_every=5, stats_rows=10_000, bandwidth=0.2,
    init_threshold=0.05, b_dec_init="median",
)  # fmt: skip
TOPK_BASE = replace(SWEEP_BASE, bandwidth=1e-3, init_threshold=1e-3)  # jumprelu defaults
SWEEP = {
    "steps": 21,
    "batch_size": 48,
    "lr": 1e-2,
    "seed": 1,
    "sparsity_coefficient": 0.3,
    "sparsity_warmup_steps": 10,
    "bandwidth": 0.05,
    "init_threshold": 0.2,
    "b_dec_init": "mean",
    "normalize": False,
    "betas": (0.5, 0.9),
    "stats_rows": 100,
    "log_every": 7,
}


def test_the_sweep_covers_every_field() -> None:
    assert set(SWEEP) == {f.name for f in fields(SAETrainConfig)}


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_every_train_config_field_changes_the_result(name) -> None:
    config = SAEConfig(16, 32, "jumprelu")
    changed = SAETrainConfig.from_dict({**SWEEP_BASE.to_dict(), name: SWEEP[name]})
    assert _outcome(config, changed) != _outcome(config, SWEEP_BASE)


def test_b_dec_init_zero_and_median_differ_too() -> None:
    config = SAEConfig(16, 32, "topk", k=3)
    zero = _outcome(config, replace(TOPK_BASE, b_dec_init="zero"))
    assert zero != _outcome(config, TOPK_BASE)


@pytest.mark.parametrize("name", JUMPRELU_ONLY)
def test_jumprelu_settings_on_a_topk_sae_are_refused(name) -> None:
    x, _ = sparse_dictionary_data(n=64, d=16)
    with pytest.raises(ConfigError, match=f"{name} only act on jumprelu SAEs, not 'topk'"):
        train_sae(x, SAEConfig(16, 32, "topk", k=3), TOPK_BASE, **{name: SWEEP[name]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be an int >= 1, got 0"),
        ({"batch_size": True}, "batch_size must be an int >= 1, got True"),
        ({"sparsity_warmup_steps": -1}, "sparsity_warmup_steps must be an int >= 0"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"init_threshold": -0.1}, "init_threshold must be >= 0"),
        ({"b_dec_init": "mode"}, "unknown b_dec_init 'mode'"),
        ({"normalize": "yes"}, "normalize must be a bool"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
    ],
)
def test_train_config_rejects_bad_values(change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SAETrainConfig(**change)


def test_train_config_round_trips_and_names_unknown_fields() -> None:
    config = SAETrainConfig(steps=7, betas=(0.5, 0.6))
    assert SAETrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown SAETrainConfig field\(s\) \['stepz'\]"):
        SAETrainConfig.from_dict({"stepz": 3})


FIELD_TESTS = {
    "mechtune.interp.sae_train.SAETrainConfig": {
        name: "test_every_train_config_field_changes_the_result" for name in SWEEP
    }
}
