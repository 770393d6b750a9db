"""How NAST's per-block factor meets the optimiser (docs/optimizers.md), against hand
computations: AdamW cancels a constant gradient factor c > 0 exactly as if its eps were
eps / c, so the cancellation holds for moderate gradients and fails where c·|g| meets eps;
the first steps are sign steps and do not break it; decoupled weight decay still moves a
block whose factor is 0; SGD with momentum scales its step by c, as a learning rate would.
Then the same on the real Trainer, and the optimiser settings themselves (recipe keys,
resume, model card)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.models.spec import load_dual_encoder
from mechtune.train.lora import LoraSettings, lora_update_norms
from mechtune.train.methods import NegationData, negation_trainer
from mechtune.train.negation import LoopConfig
from mechtune.train.optimizers import build_optimizer
from tests.tiny_models import tiny_clip
from tests.train.test_trainer import CAPTIONS, CLAIMS, _images

BETAS = (0.9, 0.999)
EPS = 1e-8  # torch.optim.AdamW's default, which the trainer uses


def adamw_reference(
    grads: list[torch.Tensor], theta: torch.Tensor, lr: float, weight_decay: float = 0.0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """AdamW written out (Loshchilov & Hutter 2019, Algorithm 2, with Kingma & Ba 2015's
    bias-corrected moments), in float64: per step t, theta <- theta (1 - lr λ)
    - lr m̂_t / (sqrt(v̂_t) + eps). Returns the parameters after each step and sqrt(v̂_t)."""
    b1, b2 = BETAS
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    thetas, roots = [], []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + EPS)
        thetas.append(theta)
        roots.append(v_hat.sqrt())
    return thetas, roots


def run_optimizer(
    grads: list[torch.Tensor],
    theta: torch.Tensor,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    **kw: float,
) -> list[torch.Tensor]:
    """The parameter after each step of the trainer's optimiser (``build_optimizer``) fed
    the gradients ``grads`` (float64)."""
    p = torch.nn.Parameter(theta.clone())
    optim = build_optimizer(
        [{"params": [p]}],
        optimizer=optimizer,
        lr=lr,
        weight_decay=kw.pop("weight_decay", 0.0),
        momentum=kw.pop("momentum", 0.0),
    )
    for name, value in kw.items():  # eps: the equivalence below
        optim.param_groups[0][name] = value
    out = []
    for g in grads:
        p.grad = g.clone()
        optim.step()
        out.append(p.detach().clone())
    return out


def _steps(thetas: list[torch.Tensor], theta0: torch.Tensor) -> list[torch.Tensor]:
    return [b - a for a, b in zip([theta0, *thetas], thetas, strict=False)]


def _gradients(scale: float, n: int = 5, size: int = 6) -> list[torch.Tensor]:
    """A fixed gradient sequence whose magnitudes vary over two decades (float64)."""
    gen = torch.Generator().manual_seed(0)
    return [
        scale * torch.randn(size, generator=gen, dtype=torch.float64) * 10 ** (-(t % 3))
        for t in range(n)
    ]


def test_the_trainers_adamw_is_the_written_algorithm() -> None:
    theta0 = torch.linspace(-1, 1, 6, dtype=torch.float64)
    grads = _gradients(0.1)
    torch_thetas = run_optimizer(grads, theta0, lr=1e-2, weight_decay=0.1)
    ours, _ = adamw_reference(grads, theta0, lr=1e-2, weight_decay=0.1)
    for a, b in zip(torch_thetas, ours, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("c", [1e-3, 0.1, 10.0])
def test_adam_cancels_a_constant_gradient_factor_for_moderate_gradients(c) -> None:
    """c·g in, the same steps out: each step differs from the unscaled one by the factor
    (sqrt(v̂) + eps) / (sqrt(v̂) + eps/c), within 1e-3 of 1 here (|g| >= 1e-4·0.1)."""
    theta0 = torch.zeros(6, dtype=torch.float64)
    grads = _gradients(0.1)
    plain = _steps(run_optimizer(grads, theta0), theta0)
    scaled = _steps(run_optimizer([c * g for g in grads], theta0), theta0)
    _, roots = adamw_reference(grads, theta0, lr=1e-2)
    for a, b, root in zip(plain, scaled, roots, strict=True):
        assert torch.allclose(b, a, rtol=1e-3)
        predicted = (root + EPS) / (root + EPS / c)
        assert torch.allclose(b / a, predicted, rtol=1e-9)


def test_gradient_factor_under_adam_is_exactly_eps_over_c() -> None:
    """c m̂ / (c sqrt(v̂) + eps) = m̂ / (sqrt(v̂) + eps/c): on a trajectory with feedback
    (gradients of a quadratic at the current parameters), AdamW fed c·grad with eps equals
    AdamW fed grad with eps/c, step for step."""
    h = torch.tensor([3.0, 1.0, 0.2, 5e-3], dtype=torch.float64)
    target = torch.tensor([1.0, -2.0, 0.5, 4.0], dtype=torch.float64)
    c = 1e-3

    def trajectory(factor: float, eps: float) -> list[torch.Tensor]:
        p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        optim = build_optimizer([{"params": [p]}], optimizer="adamw", lr=0.05, weight_decay=0.0)
        optim.param_groups[0]["eps"] = eps
        out = []
        for _ in range(20):
            p.grad = factor * h * (p.detach() - target)  # ∇ of ½ Σ h (θ - target)²
            optim.step()
            out.append(p.detach().clone())
        return out

    for a, b in zip(trajectory(c, EPS), trajectory(1.0, EPS / c), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("g", "c", "ratio"),
    [
        (1e-6, 1e-2, 0.505),  # c·|g| = eps: (1e-6 + 1e-8) / (1e-6 + 1e-6)
        (1e-6, 1e-3, (1e-6 + 1e-8) / (1e-6 + 1e-5)),  # c·|g| = eps/10: about a tenth
        (1e-2, 1e-2, (1e-2 + 1e-8) / (1e-2 + 1e-6)),  # c·|g| = 1e4·eps: 1 - 1e-4
    ],
)
def test_adam_cancellation_fails_where_the_scaled_gradient_meets_eps(g, c, ratio) -> None:
    """A constant gradient g gives sqrt(v̂_t) = |g| and m̂_t = g at every step, so the
    scaled run's step over the unscaled one's is (|g| + eps) / (|g| + eps/c): half the step
    where c·|g| = eps, and c·|g|/eps of it (SGD-like) once c·|g| << eps."""
    theta0 = torch.zeros(3, dtype=torch.float64)
    grads = [torch.tensor([g, -g, 2 * g], dtype=torch.float64)] * 4
    plain = _steps(run_optimizer(grads, theta0), theta0)
    scaled = _steps(run_optimizer([c * x for x in grads], theta0), theta0)
    for a, b in zip(plain, scaled, strict=True):
        got = (b / a)[:2]
        assert torch.allclose(got, torch.full_like(got, ratio), rtol=1e-9)
    assert abs(float((scaled[0] / plain[0])[0]) - 1) == pytest.approx(abs(ratio - 1), rel=1e-6)


def test_the_first_steps_are_sign_steps_and_keep_the_cancellation() -> None:
    """Bias correction divides m_t and v_t by factors that do not depend on c, so warm-up
    keeps the cancellation. Step 1: m̂ = g and sqrt(v̂) = |g|, a step of -lr·g/(|g| + eps),
    lr·sign(g) whatever the gradient's size. A coordinate whose first gradient is 0 (LoRA's
    A while B is 0) does not move at step 1 and then steps lr·sqrt(1 + β2)/(1 + β1)·sign(g)
    (0.744 lr), for c = 1 and c = 1e-3 alike."""
    lr, c = 1e-2, 1e-3
    b1, b2 = BETAS
    theta0 = torch.zeros(3, dtype=torch.float64)
    grads = [
        torch.tensor([0.5, -2e-3, 0.0], dtype=torch.float64),
        torch.tensor([0.1, -3e-3, 0.4], dtype=torch.float64),
    ]
    for factor in (1.0, c):
        steps = _steps(run_optimizer([factor * g for g in grads], theta0, lr=lr), theta0)
        g1 = factor * grads[0][:2]
        assert torch.allclose(steps[0][:2], -lr * g1 / (g1.abs() + EPS), rtol=1e-12)
        # a sign step, short by eps/(|g| + eps): 0.5% for c·|g| = 2e-6
        assert torch.allclose(steps[0][:2], -lr * g1.sign(), rtol=EPS / float(g1.abs().min()))
        assert steps[0][2] == 0.0
        g2 = factor * grads[1][2]
        hand = -lr * (g2 / (1 + b1)) / (g2.abs() / math.sqrt(1 + b2) + EPS)
        assert float(steps[1][2]) == pytest.approx(float(hand), rel=1e-12)
        # to eps·sqrt(1 + β2)/|g|: 4e-5 for c·|g| = 4e-4
        assert float(steps[1][2]) == pytest.approx(-lr * math.sqrt(1 + b2) / (1 + b1), rel=1e-4)


def test_weight_decay_moves_a_block_whose_factor_is_zero_under_adamw_not_under_plain_sgd() -> None:
    """A factor of 0 zeroes the gradient, so Adam's moments stay 0 and its gradient step is
    0/(0 + eps) = 0; AdamW's decoupled decay still multiplies the parameter by (1 - lr λ)
    each step. SGD without weight decay leaves it exactly in place; SGD's coupled L2
    (λθ added to the zero gradient) decays it too, through the momentum buffer:
    b_t = μ b_{t-1} + λ θ_{t-1}, θ_t = θ_{t-1} - lr b_t."""
    lr, decay, mu, n = 1e-2, 0.5, 0.9, 5
    theta0 = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    zeros = [torch.zeros(3, dtype=torch.float64)] * n
    adamw = run_optimizer(zeros, theta0, lr=lr, weight_decay=decay)
    for t, theta in enumerate(adamw, start=1):
        assert torch.allclose(theta, theta0 * (1 - lr * decay) ** t, rtol=1e-12)
    sgd = run_optimizer(zeros, theta0, "sgd", lr=lr, momentum=mu)
    assert all(torch.equal(theta, theta0) for theta in sgd)
    sgd_l2 = run_optimizer(zeros, theta0, "sgd", lr=lr, momentum=mu, weight_decay=decay)
    k, buf = 1.0, 0.0  # θ_t = k_t θ_0
    for theta in sgd_l2:
        buf = mu * buf + decay * k
        k -= lr * buf
        assert torch.allclose(theta, k * theta0, rtol=1e-12)
    assert k < 1 - n * lr * decay  # the momentum makes it shrink faster than plain L2


def test_sgd_with_momentum_scales_its_step_by_the_factor() -> None:
    """buf_t = μ buf_{t-1} + c g_t = c (the unscaled buffer), so every step scales by c:
    exactly (bit for bit) for a power of two, and c·grad at lr equals grad at c·lr on a
    trajectory with feedback."""
    theta0 = torch.zeros(6, dtype=torch.float64)
    grads = _gradients(0.1)
    mu, lr = 0.9, 1e-2
    plain = _steps(run_optimizer(grads, theta0, "sgd", lr=lr, momentum=mu), theta0)
    quarter = _steps(
        run_optimizer([0.25 * g for g in grads], theta0, "sgd", lr=lr, momentum=mu), theta0
    )
    buf = torch.zeros(6, dtype=torch.float64)
    for g, a, b in zip(grads, plain, quarter, strict=True):
        buf = mu * buf + g  # torch starts the buffer at the first gradient: the same
        assert torch.allclose(a, -lr * buf, rtol=1e-12)
        assert torch.allclose(b, 0.25 * a, rtol=1e-12)

    h = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)

    def trajectory(factor: float, rate: float) -> list[torch.Tensor]:
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        optim = build_optimizer(
            [{"params": [p]}], optimizer="sgd", lr=rate, weight_decay=0.0, momentum=mu
        )
        out = []
        for _ in range(10):
            p.grad = factor * h * p.detach()
            optim.step()
            out.append(p.detach().clone())
        return out

    for a, b in zip(trajectory(0.3, 0.1), trajectory(1.0, 0.03), strict=True):
        assert torch.allclose(a, b, rtol=1e-12)


# -- on the real Trainer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def _trainer(folder, out, alpha, *, init=True, **kw):
    settings = {
        "steps": 3,
        "caption_batch": 3,
        "claim_batch": 2,
        "lr": 1e-2,
        "beta": 1.0,
        "checkpoint_every": 3,
        "lora": LoraSettings(rank=2, alpha=4, dropout=0.0),
    }
    config = LoopConfig(**{**settings, **kw})
    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    trainer = negation_trainer(
        "nast", enc, _images(), NegationData(CAPTIONS, CLAIMS), alpha, config, out
    )
    if init:  # B non-zero, so every factor gets a gradient from step 1
        gen = torch.Generator().manual_seed(3)
        for _, p in trainer.params.values():
            torch.nn.init.normal_(p, std=0.05, generator=gen)
    return trainer


def _block_updates(folder, out, alpha, **kw) -> tuple[list[float], list[float]]:
    """Per block (0, 1): the L2 norm of its parameters' change after step 1 and after
    step 3 of one run."""
    trainer = _trainer(folder, out, alpha, **kw)
    start = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}

    def norms() -> list[float]:
        sums = [0.0, 0.0]
        for n, (block, p) in trainer.params.items():
            sums[block] += float((p.detach() - start[n]).double().square().sum())
        return [math.sqrt(s) for s in sums]

    trainer.fit(stop_after=1)
    first = norms()
    trainer.fit()
    return first, norms()


def test_trainer_gradient_scaling_scales_sgd_updates_but_not_adamw_updates(
    clip_folder, tmp_path
) -> None:
    """The three variants of issue 17 on the tiny CLIP (2 blocks), block factors
    alpha^beta = (0.5, 0.25) against 1: gradient scaling under SGD with momentum scales
    each block's step-1 update by its factor (the weights are the same at step 1), and
    to first order in lr later; under AdamW it changes nothing (to eps), except that a
    factor of 0 freezes its block; per-block learning rates under AdamW scale the step-1
    update by the factor."""
    uniform, graded = [1.0, 1.0, 1.0], [1.0, 0.5, 0.25]
    frozen, frozen_ref = [1.0, 0.0, 0.5], [1.0, 0.0, 1.0]
    sgd = {"optimizer": "sgd", "momentum": 0.9, "lr": 1e-3}
    first_u, last_u = _block_updates(clip_folder, tmp_path / "su", uniform, **sgd)
    first_g, last_g = _block_updates(clip_folder, tmp_path / "sg", graded, **sgd)
    first_f, _ = _block_updates(clip_folder, tmp_path / "sf", frozen, **sgd)
    assert [g / u for g, u in zip(first_g, first_u, strict=True)] == pytest.approx(
        [0.5, 0.25], rel=1e-5
    )
    assert [g / u for g, u in zip(last_g, last_u, strict=True)] == pytest.approx(
        [0.5, 0.25], rel=2e-2
    )
    assert first_f[0] == 0.0 and first_f[1] / first_u[1] == pytest.approx(0.5, rel=1e-5)

    _, last_u = _block_updates(clip_folder, tmp_path / "au", uniform)
    _, last_g = _block_updates(clip_folder, tmp_path / "ag", graded)
    _, last_f = _block_updates(clip_folder, tmp_path / "af", frozen)
    _, last_r = _block_updates(clip_folder, tmp_path / "ar", frozen_ref)
    assert last_g == pytest.approx(last_u, rel=1e-3)  # AdamW: the factors cancel
    assert last_f[0] == 0.0 == last_r[0]  # ...except 0, which freezes the block
    assert last_f[1] == pytest.approx(last_r[1], rel=1e-3)  # 0.5 cancels against 1

    first_u, _ = _block_updates(clip_folder, tmp_path / "lu", uniform, scaling="lr")
    first_g, _ = _block_updates(clip_folder, tmp_path / "lg", graded, scaling="lr")
    assert [g / u for g, u in zip(first_g, first_u, strict=True)] == pytest.approx(
        [0.5, 0.25], rel=1e-5
    )


def test_trainer_weight_decay_moves_an_alpha_zero_block_only_under_gradient_scaling(
    clip_folder, tmp_path
) -> None:
    """Block 0 has alpha 0. With peft's initialisation (B = 0, A random) and AdamW's
    decoupled decay λ, gradient scaling leaves B at 0 (so ΔW = 0) but shrinks A by
    (1 - lr λ) per step; per-block learning rates give the block lr 0, so its decay is 0
    too and nothing moves. Under full fine-tuning nothing shields the block: gradient
    scaling shrinks every weight of it by (1 - lr λ)^steps."""
    lr, decay, steps = 1e-2, 0.5, 3
    shrink = (1 - lr * decay) ** steps
    alpha = [1.0, 0.0, 1.0]
    for scaling in ("gradient", "lr"):
        trainer = _trainer(
            clip_folder, tmp_path / scaling, alpha, init=False, weight_decay=decay, scaling=scaling
        )
        start = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
        trainer.fit()
        block0 = {n: p.detach() for n, (b, p) in trainer.params.items() if b == 0}
        assert block0
        for name, p in block0.items():
            if "lora_B" in name:
                assert torch.equal(p, torch.zeros_like(p)), name
            elif scaling == "gradient":
                assert torch.allclose(p, start[name] * shrink, rtol=1e-5), name
            else:
                assert torch.equal(p, start[name]), name
        assert lora_update_norms(trainer.model)[0] == 0.0
        assert lora_update_norms(trainer.model)[1] > 0.0

    full = _trainer(
        clip_folder, tmp_path / "full", alpha, init=False, weight_decay=decay, lora=None
    )
    start = {n: p.detach().clone() for n, (b, p) in full.params.items() if b == 0}
    full.fit()
    for name, before in start.items():
        assert torch.allclose(full.params[name][1].detach(), before * shrink, rtol=1e-5), name

    sgd = _trainer(clip_folder, tmp_path / "sgd", alpha, init=False, lora=None, optimizer="sgd")
    sgd.fit()  # SGD without weight decay: the alpha-0 block stays exactly where it was
    for name, before in start.items():
        assert torch.equal(sgd.params[name][1].detach(), before), name


# -- the settings ------------------------------------------------------------------------------


def test_an_sgd_run_killed_and_resumed_ends_with_the_same_weights(clip_folder, tmp_path) -> None:
    """The momentum buffers are in the checkpoint: a resumed SGD run continues exactly."""
    settings = {"optimizer": "sgd", "momentum": 0.9, "steps": 6, "lr": 0.05}
    straight = _trainer(clip_folder, tmp_path / "a", [0.2, 1.0, 0.5], **settings)
    straight.fit()
    first = _trainer(clip_folder, tmp_path / "b", [0.2, 1.0, 0.5], **settings)
    first.fit(stop_after=4)  # last checkpoint: step 3
    resumed = _trainer(clip_folder, tmp_path / "b", [0.2, 1.0, 0.5], **settings)
    resumed.fit(resume=True)
    assert resumed.step == 6 and isinstance(resumed.optim, torch.optim.SGD)
    assert "momentum_buffer" in next(iter(resumed.optim.state.values()))
    for name, (_, p) in straight.params.items():
        assert torch.equal(p.detach(), resumed.params[name][1].detach()), name


def test_a_checkpoint_from_before_the_setting_resumes_as_adamw_only(clip_folder, tmp_path) -> None:
    """A checkpoint whose config has no optimizer/momentum was written by AdamW: it
    resumes under the defaults and is refused under SGD (whose state it does not hold)."""
    run = tmp_path / "run"
    _trainer(clip_folder, run, [0.2, 1.0, 0.5]).fit()
    state = run / "step_000003" / "state.json"
    saved = json.loads(state.read_text())
    for key in ("optimizer", "momentum"):
        del saved["config"][key]
    state.write_text(json.dumps(saved))
    shutil.copytree(run, tmp_path / "copy")
    longer = _trainer(clip_folder, run, [0.2, 1.0, 0.5], steps=4)
    longer.fit(resume=True)
    assert [h["step"] for h in longer.history] == [1, 2, 3, 4]
    sgd = _trainer(clip_folder, tmp_path / "copy", [0.2, 1.0, 0.5], optimizer="sgd", momentum=0.9)
    with pytest.raises(ConfigError, match=r"written with other settings \(momentum, optimizer\)"):
        sgd.fit(resume=True)


def test_the_optimizer_is_a_recipe_key_of_both_studies(tmp_path) -> None:
    from mechtune.pipelines.negation_config import load_recipe
    from mechtune.pipelines.paraphrase import load_paraphrase_recipe

    negation = tmp_path / "negation.yaml"
    negation.write_text("loop:\n  optimizer: sgd\n  momentum: 0.9\n  scaling: gradient\n")
    loop = load_recipe(negation).loop
    assert (loop.optimizer, loop.momentum, loop.scaling) == ("sgd", 0.9, "gradient")
    negation.write_text("loop:\n  optimizer: adam\n")
    with pytest.raises(ConfigError, match=r"negation.yaml: optimizer must be one of"):
        load_recipe(negation)
    negation.write_text("loop:\n  momentum: fast\n  optimizer: sgd\n")
    with pytest.raises(ConfigError, match=r"negation.yaml: loop.momentum must be a number"):
        load_recipe(negation)

    paraphrase = tmp_path / "paraphrase.yaml"
    paraphrase.write_text("lora:\n  optimizer: sgd\n  momentum: 0.5\n")
    lora = load_paraphrase_recipe(paraphrase).config.lora
    assert (lora.optimizer, lora.momentum) == ("sgd", 0.5)
    paraphrase.write_text("lora:\n  momentum: 0.5\n")
    with pytest.raises(ConfigError, match=r"paraphrase.yaml: momentum \(0.5\) is read by"):
        load_paraphrase_recipe(paraphrase)


def test_the_model_card_and_the_report_name_the_optimizer(tmp_path) -> None:
    from mechtune.report.sections import train_section
    from mechtune.train.model_card import CardFacts, training_rows

    facts = CardFacts(None, "negation", 10, 100, True, "CLIPModel")
    config = LoopConfig(optimizer="sgd", momentum=0.9).to_dict()
    info = {"method": "nast", "config": config, "step": 3}
    assert dict(training_rows(info, facts))["Optimizer"] == "SGD, momentum 0.9"
    info["config"] = LoopConfig().to_dict()
    assert dict(training_rows(info, facts))["Optimizer"] == "AdamW"
    del info["config"]["optimizer"], info["config"]["momentum"]  # a run from before
    assert dict(training_rows(info, facts))["Optimizer"] == "AdamW"

    run = tmp_path / "run"
    run.mkdir()
    for config, shown in (
        (LoopConfig(optimizer="sgd", momentum=0.9), {"optimizer": "sgd", "momentum": "0.9"}),
        (LoopConfig(), {"optimizer": "adamw"}),
    ):
        info = {"method": "nast", "config": config.to_dict(), "step": 3, "history": []}
        (run / "train.json").write_text(json.dumps(info))
        facts = dict(train_section(run, tmp_path).facts)
        assert {k: facts.get(k) for k in ("optimizer", "momentum")} == {
            "optimizer": shown["optimizer"],
            "momentum": shown.get("momentum"),
        }
