"""Train a JumpReLU or TopK sparse autoencoder on a matrix of activations.

* **TopK** minimises the reconstruction error ``||x - x_hat||²`` alone; sparsity is fixed
  by k.
* **JumpReLU** minimises ``||x - x_hat||² + λ·L0(f)`` as in the Gemma Scope / JumpReLU
  papers (Rajamanoharan et al., 2024). The step function in ``relu(pre)·H(pre - θ)`` and
  in L0 has no useful gradient with respect to θ, so the backward pass uses a
  straight-through estimator: H's derivative is replaced by a rectangle kernel of width
  ``bandwidth`` around the threshold. The pre-activations themselves get the plain
  gradient through ``pre·H`` (none through L0).

Both start from ``w_dec`` with random unit rows, ``w_enc = w_decᵀ``, ``b_enc = 0``,
``b_dec`` = the data mean or median, and renormalise decoder rows to unit norm after
each Adam step. Inputs are scaled by one scalar c so that ``E||c·x||² = 1`` (so lr,
λ and bandwidth do not depend on the activations' scale); at the end the scale is folded
into b_enc, b_dec and the threshold, so the returned SAE works on **raw** activations
(its features are those of the normalised SAE divided by c).

Randomness (initialisation, batch order) comes from one ``torch.Generator`` seeded with
``seed``: on CPU the same seed and data give bit-identical weights.

:func:`train_sae` holds all N rows; :mod:`mechtune.interp.sae_stream` trains from a disk
store through a fixed-size buffer with the same pieces (:func:`init_weights`, :func:`fit`,
:func:`finish`), so the two differ only in where batches come from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae import SAE, ReconstructionStats, SAEConfig, reconstruction_stats

B_DEC_INITS: tuple[str, ...] = ("mean", "median", "zero")
# Settings of the JumpReLU loss; a TopK SAE's sparsity is fixed by k instead.
JUMPRELU_ONLY = ("sparsity_coefficient", "sparsity_warmup_steps", "bandwidth", "init_threshold")


@dataclass(frozen=True)
class SAETrainConfig:
    """Optimisation settings; ``sparsity_coefficient``, ``bandwidth`` and
    ``init_threshold`` are for jumprelu and are in normalised units (E||x||² = 1)."""

    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    sparsity_coefficient: float = 1e-3  # λ, weight of the L0 penalty
    sparsity_warmup_steps: int = 0  # λ rises linearly from 0 over these steps
    bandwidth: float = 1e-3  # width of the rectangle kernel of the threshold's STE
    init_threshold: float = 1e-3
    b_dec_init: str = "median"
    normalize: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    stats_rows: int = 65536  # rows for the b_dec median and for the final stats
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "stats_rows", "log_every", "sparsity_warmup_steps"):
            value = getattr(self, name)
            least = 0 if name == "sparsity_warmup_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("lr", "bandwidth"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("sparsity_coefficient", "init_threshold"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ConfigError(
                f"unknown b_dec_init {self.b_dec_init!r}; choose one of {', '.join(B_DEC_INITS)}"
            )
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"normalize must be a bool, got {self.normalize!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainConfig:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown SAETrainConfig field(s) {unknown}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


@dataclass
class TrainReport:
    """What happened in training: logged loss terms, timing, scale and final stats."""

    steps: int
    seconds: float
    scale: float  # c, the input normalisation factor (1.0 when normalize=False)
    history: dict[str, list[float]]  # term -> mean over each log interval
    logged_steps: list[int]  # last step of each log interval
    final: ReconstructionStats  # on (up to stats_rows of) the training activations
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # activation rows held in memory: "tokens" (N), "peak_tokens" and "peak_bytes" at most at
    # once (all N for train_sae; a fixed buffer when streamed); more keys when streamed
    memory: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "seconds": self.seconds,
            "scale": self.scale,
            "history": self.history,
            "logged_steps": self.logged_steps,
            "final": self.final.to_dict(),
            "config": self.config,
            "training": self.training,
            "memory": self.memory,
        }


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1 on |u| < 1/2, else 0."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre·H(pre - θ)``; dθ via the rectangle-kernel pseudo-derivative."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> Any:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold).to(pre.dtype)
        d_threshold = -(threshold / eps) * _rectangle((pre - threshold) / eps)
        grad_threshold = (grad * d_threshold).reshape(-1, pre.shape[-1]).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """``H(pre - θ)``; no gradient to pre, dθ via the rectangle-kernel pseudo-derivative."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> Any:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        d_threshold = -(1.0 / eps) * _rectangle((pre - threshold) / eps)
        grad_threshold = (grad * d_threshold).reshape(-1, pre.shape[-1]).sum(0)
        return None, grad_threshold, None


Terms = dict[str, torch.Tensor]


def _squared_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).square().sum(-1).mean()


def _topk_terms(sae: SAE, x: torch.Tensor, training: SAETrainConfig, step: int) -> Terms:
    f = sae.encode(x)
    mse = _squared_error(sae.decode(f), x)
    return {"loss": mse, "mse": mse, "l0": (f != 0).sum(-1).to(x.dtype).mean()}


def _jumprelu_terms(sae: SAE, x: torch.Tensor, training: SAETrainConfig, step: int) -> Terms:
    assert sae.threshold is not None
    pre = sae.pre(x)
    f = _JumpReLU.apply(pre, sae.threshold, training.bandwidth)
    mse = _squared_error(sae.decode(f), x)
    l0 = _Step.apply(pre, sae.threshold, training.bandwidth).sum(-1).mean()
    warmup = training.sparsity_warmup_steps
    coefficient = training.sparsity_coefficient * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
    sparsity = coefficient * l0
    return {"loss": mse + sparsity, "mse": mse, "sparsity": sparsity, "l0": l0}


_TERMS: dict[str, Callable[[SAE, torch.Tensor, SAETrainConfig, int], Terms]] = {
    "jumprelu": _jumprelu_terms,
    "topk": _topk_terms,
}


def _row_sample(x: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    if x.shape[0] <= rows:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:rows]]


def _input_scale(x: torch.Tensor, chunk_rows: int = 65536) -> float:
    """c with ``mean ||c·x||² = 1``, accumulated in float64 over chunks."""
    total = 0.0
    for start in range(0, x.shape[0], chunk_rows):
        total += float(x[start : start + chunk_rows].to(torch.float64).square().sum())
    mean_sq = total / x.shape[0]
    if mean_sq <= 0:
        raise DataError("activations are all zero; cannot train an SAE on them")
    return mean_sq**-0.5


@torch.no_grad()
def init_weights(sae: SAE, training: SAETrainConfig, generator: torch.Generator) -> None:
    """Everything but b_dec: random unit decoder rows (drawn first from ``generator``),
    ``w_enc = w_decᵀ``, ``b_enc = 0``, the threshold at ``init_threshold``."""
    w_dec = torch.randn(sae.d_sae, sae.d_in, generator=generator, dtype=torch.float32)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    sae.w_dec.copy_(w_dec)
    sae.w_enc.copy_(w_dec.T)
    sae.b_enc.zero_()
    if sae.threshold is not None:
        sae.threshold.fill_(training.init_threshold)


@torch.no_grad()
def _initialise(
    sae: SAE, x: torch.Tensor, scale: float, training: SAETrainConfig, generator: torch.Generator
) -> None:
    init_weights(sae, training, generator)
    if training.b_dec_init == "mean":
        total = torch.zeros(sae.d_in, dtype=torch.float64)
        for start in range(0, x.shape[0], 65536):
            total += x[start : start + 65536].to(torch.float64).sum(0).cpu()
        sae.b_dec.copy_(total / x.shape[0] * scale)
    elif training.b_dec_init == "median":
        sample = _row_sample(x, training.stats_rows, generator).to(torch.float32)
        sae.b_dec.copy_(sample.median(dim=0).values * scale)
    else:
        sae.b_dec.zero_()


@torch.no_grad()
def _project(sae: SAE) -> None:
    """Unit-norm decoder rows; a threshold below 0 would just be a ReLU, clamp it there."""
    sae.w_dec /= sae.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if sae.threshold is not None:
        sae.threshold.clamp_(min=0.0)


@torch.no_grad()
def _fold_scale(sae: SAE, scale: float) -> None:
    """Turn the SAE trained on c·x into one on x whose features are divided by c."""
    sae.b_enc /= scale
    sae.b_dec /= scale
    if sae.threshold is not None:
        sae.threshold /= scale


Progress = Callable[[int, dict[str, float]], None]


def resolve_training(
    config: SAEConfig, training: SAETrainConfig | None, overrides: dict[str, Any]
) -> SAETrainConfig:
    """``training`` (default: ``SAETrainConfig()``) with ``overrides`` applied; ConfigError
    for an unknown field, or for a jumprelu-only setting changed on another kind."""
    unknown = sorted(set(overrides) - {f.name for f in fields(SAETrainConfig)})
    if unknown:
        raise ConfigError(f"unknown SAETrainConfig field(s) {unknown}")
    training = replace(training or SAETrainConfig(), **overrides)
    if config.kind != "jumprelu":
        default = SAETrainConfig()
        unread = [n for n in JUMPRELU_ONLY if getattr(training, n) != getattr(default, n)]
        if unread:
            raise ConfigError(f"{', '.join(unread)} only act on jumprelu SAEs, not {config.kind!r}")
    return training


def fit(
    sae: SAE,
    next_batch: Callable[[], torch.Tensor],
    scale: float,
    training: SAETrainConfig,
    progress: Progress | None = None,
) -> tuple[dict[str, list[float]], list[int]]:
    """``training.steps`` Adam steps of ``sae`` (in train mode, on its device) on raw
    batches ``next_batch() -> [B, d_in]`` scaled by ``scale``, each step followed by
    :func:`_project`. Returns the loss terms' means per log interval and the last step of
    each interval; ``progress(step, means)`` is called at each."""
    sae.train()
    optimiser = torch.optim.Adam(sae.parameters(), lr=training.lr, betas=training.betas)
    terms_of = _TERMS[sae.config.kind]
    history: dict[str, list[float]] = {}
    logged_steps: list[int] = []
    running: dict[str, float] = {}
    since_log = 0
    for step in range(training.steps):
        x = next_batch().to(torch.float32) * scale
        terms = terms_of(sae, x, training, step)
        optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimiser.step()
        _project(sae)

        for name, term in terms.items():
            running[name] = running.get(name, 0.0) + float(term.detach())
        since_log += 1
        if since_log == training.log_every or step == training.steps - 1:
            means = {name: total / since_log for name, total in running.items()}
            for name, mean in means.items():
                history.setdefault(name, []).append(mean)
            logged_steps.append(step)
            if progress is not None:
                progress(step, means)
            running, since_log = {}, 0
    return history, logged_steps


def train_sae(
    activations: torch.Tensor,
    config: SAEConfig,
    training: SAETrainConfig | None = None,
    *,
    progress: Progress | None = None,
    **overrides: Any,
) -> tuple[SAE, TrainReport]:
    """Train an SAE of ``config`` on activations ``[N, d_in]`` (kept on their device).

    ``overrides`` replace fields of ``training`` (e.g. ``steps=500, seed=1``); setting a
    field of ``JUMPRELU_ONLY`` for another kind is a ConfigError.
    ``progress(step, terms)`` is called at each log interval. Returns the SAE (float32,
    raw activation space, eval mode) and a ``TrainReport``. All N rows are held at once
    (``report.memory``); :mod:`mechtune.interp.sae_stream` trains from a disk store
    through a fixed-size buffer instead.
    """
    training = resolve_training(config, training, overrides)
    if activations.ndim != 2 or activations.shape[1] != config.d_in:
        raise DataError(
            f"activations must be [N, d_in={config.d_in}], got {tuple(activations.shape)}"
        )
    if activations.shape[0] == 0:
        raise DataError("activations have no rows")
    if not torch.isfinite(activations).all():
        raise DataError("activations contain NaN or inf")
    started = time.perf_counter()
    device = activations.device
    generator = torch.Generator().manual_seed(training.seed)
    scale = _input_scale(activations) if training.normalize else 1.0

    sae = SAE(config)
    _initialise(sae, activations, scale, training, generator)
    sae.to(device)

    n = activations.shape[0]
    batch_size = min(training.batch_size, n)
    order = torch.randperm(n, generator=generator)
    cursor = 0

    def next_batch() -> torch.Tensor:
        nonlocal order, cursor
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        return activations[rows.to(device)]

    history, logged_steps = fit(sae, next_batch, scale, training, progress)
    sample = _row_sample(activations, training.stats_rows, generator)
    memory = {
        "tokens": n,
        "peak_tokens": n,
        "peak_bytes": n * activations.shape[1] * activations.element_size(),
    }
    return sae, finish(sae, scale, sample, training, started, history, logged_steps, memory)


def finish(
    sae: SAE,
    scale: float,
    sample: torch.Tensor,
    training: SAETrainConfig,
    started: float,
    history: dict[str, list[float]],
    logged_steps: list[int],
    memory: dict[str, int],
) -> TrainReport:
    """Fold the input scale into ``sae`` (now in eval mode) and report, with the final
    reconstruction statistics on ``sample [n, d_in]`` (raw activations)."""
    _fold_scale(sae, scale)
    sae.eval()
    return TrainReport(
        steps=training.steps,
        seconds=time.perf_counter() - started,
        scale=scale,
        history=history,
        logged_steps=logged_steps,
        final=reconstruction_stats(sae, sample),
        config=sae.config.to_dict(),
        training=training.to_dict(),
        memory=memory,
    )
