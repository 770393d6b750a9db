"""NAST gradient scaling: every LoRA parameter of text block l gets its gradient multiplied
by alpha_l ** beta before the optimiser step (the learning rate is unchanged).

alpha comes from causal tracing over the hidden states h_0..h_L (h_0 = embedding output,
h_l = output of block l-1), so block b is weighted by the effect at its output,
alpha[b + 1]. beta = 0 is uniform LoRA (0 ** 0 = 1); larger beta concentrates updates in
the high-effect blocks. Hooks are per parameter and linear, so they commute with DDP's
gradient averaging; they are registered inside a context manager and always removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mechtune.errors import ConfigError
from mechtune.train.lora import LoraSite, trainable_block_parameters


def block_scales(alpha: Sequence[float] | torch.Tensor, beta: float, n_blocks: int) -> torch.Tensor:
    """Per-block gradient multipliers ``alpha[b + 1] ** beta`` for b in 0..n_blocks-1."""
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.numel() != n_blocks + 1:
        raise ConfigError(
            f"alpha has {a.numel()} entries; expected {n_blocks + 1} "
            "(embedding output + one per block)"
        )
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}")
    if ((a < 0) | (a > 1)).any() or not torch.isfinite(a).all():
        raise ConfigError(f"alpha must lie in [0, 1], got {a.tolist()}")
    return a[1:].pow(beta)


@contextlib.contextmanager
def scaled_gradients(
    model: nn.Module, scales: torch.Tensor, site: LoraSite | None = None
) -> Iterator[dict[str, float]]:
    """Within the block, gradients of the trainable parameters of block l of ``site``
    (default: the text tower; LoRA, or the block itself under full fine-tuning) are
    multiplied by ``scales[l]`` (``scales``: ``[n_blocks]``).

    Yields ``{parameter name: scale}``. Raises ConfigError for a trainable parameter
    outside the blocks (:func:`~mechtune.train.lora.trainable_block_parameters`).
    """
    params = trainable_block_parameters(model, site)
    handles = []
    applied: dict[str, float] = {}
    factors = scales.detach().cpu().tolist()  # one read, not one per parameter
    for name, (layer, param) in params.items():
        scale = float(factors[layer])
        applied[name] = scale
        handles.append(param.register_hook(lambda g, s=scale: g * s))
    try:
        yield applied
    finally:
        for h in handles:
            h.remove()


def effective_lr(alpha: Sequence[float] | torch.Tensor, beta: float, lr: float) -> float:
    """The learning rate of the effective-lr control: the mean over the blocks of NAST's
    per-block rate lr * alpha[b + 1] ** beta (every block, those with alpha 0 included).

    Uniform LoRA at this rate spends the same total step size as NAST under per-block
    learning rates, spread evenly; it asks whether NAST is only a smaller learning rate
    (issue 17). ``alpha``: ``[n_blocks + 1]`` (embedding output, then each block's output,
    as :func:`block_scales` reads it). Raises ConfigError as :func:`block_scales` does.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if a.numel() < 2:
        raise ConfigError(f"alpha has {a.numel()} entries; a model with blocks has at least 2")
    return float(lr * block_scales(a, beta, a.numel() - 1).mean())
