"""The trainer's optimiser: AdamW (the default) or SGD with momentum.

Which optimiser runs decides what NAST's per-block factor does (docs/optimizers.md):

- ``"adamw"``: :class:`torch.optim.AdamW` (Loshchilov & Hutter 2019, Algorithm 2; Adam's
  moments and bias correction from Kingma & Ba 2015, Algorithm 1) with torch's defaults
  betas (0.9, 0.999) and eps 1e-8. Adam's step m̂/(sqrt(v̂) + eps) is homogeneous of
  degree 0 in the gradient, so gradients multiplied by a constant c > 0
  (``scaling="gradient"``) give the same step as gradients with eps/c in place of eps:
  the factor cancels unless c·|g| is comparable to eps, or c = 0. Per-block learning rates
  (``scaling="lr"``) survive. Weight decay is decoupled: theta ← theta(1 - lr·λ), not
  scaled by c.
- ``"sgd"``: :class:`torch.optim.SGD` with heavy-ball ``momentum`` (dampening 0, no
  Nesterov): buf ← momentum·buf + g, theta ← theta - lr·buf. The step is linear in the
  gradient, so a gradient factor c scales it by c, as a learning rate would. Weight decay
  is torch's coupled L2 (λ·theta added to the gradient in ``step``, after the gradient
  hooks, so not scaled by c).

The optimiser state (Adam's moments, SGD's momentum buffers) is part of every checkpoint
(:mod:`mechtune.train.checkpoint`), so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechtune.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")


def check_optimizer(optimizer: str, momentum: float) -> None:
    """Raise ConfigError naming the field unless ``optimizer`` is one of
    :data:`OPTIMIZERS` and ``momentum`` lies in [0, 1); ``momentum`` > 0 needs
    ``optimizer="sgd"`` (AdamW keeps its own moment estimates and would ignore it)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise ConfigError(f"momentum must be a number in [0, 1), got {momentum!r}")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if momentum and optimizer != "sgd":
        raise ConfigError(
            f"momentum ({momentum}) is read by optimizer 'sgd' only; optimizer is "
            f"{optimizer!r} (AdamW's moments use its own betas): set momentum to 0"
        )


def build_optimizer(
    groups: Sequence[dict[str, Any]],
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimiser over ``groups`` (torch parameter groups; a group's own ``"lr"``
    overrides ``lr``): ``"adamw"`` → ``torch.optim.AdamW(groups, lr, weight_decay)``,
    ``"sgd"`` → ``torch.optim.SGD(groups, lr, momentum, weight_decay)``. Raises
    ConfigError for an unknown optimiser or a bad momentum (:func:`check_optimizer`)."""
    check_optimizer(optimizer, momentum)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
