"""LoRA on a dual encoder's text tower only, through peft.

The site table gives the text blocks' dotted path, used as peft's ``layers_pattern``: without
it, ``layers_to_transform`` would also pick the same indices in the vision tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from mechtune.errors import ConfigError, DataError
from mechtune.models.sites import TextSite, text_site


@dataclass(frozen=True)
class LoraSettings:
    """Rank, alpha, dropout, and which text blocks get adapters (None: all)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.layers is not None:
            object.__setattr__(self, "layers", block_indices(self.layers, "layers"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_indices(layers: Sequence[int], name: str) -> tuple[int, ...]:
    """``layers`` as a tuple of distinct non-negative block indices, in the given order.

    Raises ConfigError naming ``name`` when it is empty, repeats a block or has a negative
    index (peft would silently adapt a repeated block once, and an empty list adapts none).
    """
    out = tuple(int(i) for i in layers)
    if not out:
        raise ConfigError(f"{name} must be None (all blocks) or name at least one block")
    if len(set(out)) != len(out) or any(i < 0 for i in out):
        raise ConfigError(f"{name} must be distinct block indices >= 0, got {list(out)}")
    return out


def lora_config(model: nn.Module, settings: LoraSettings) -> LoraConfig:
    """A peft config that adapts the text blocks of ``model`` and nothing else."""
    site = text_site(model)
    n_layers = len(site.text_layers(model))
    layers = list(range(n_layers)) if settings.layers is None else list(settings.layers)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(
            f"LoRA layers {bad} out of range: the text tower has blocks 0..{n_layers - 1}"
        )
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(site.lora_targets),
        layers_to_transform=layers,
        layers_pattern=site.layers_pattern,
        bias="none",
    )


def apply_text_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on its text blocks; everything else is frozen."""
    return get_peft_model(model, lora_config(model, settings))


def base_model(model: nn.Module) -> nn.Module:
    """The wrapped model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def trainable_text_parameters(
    model: nn.Module, site: TextSite | None = None
) -> dict[str, tuple[int, Any]]:
    """``{name: (text block index, parameter)}`` for every trainable parameter.

    Every trainable parameter must sit in a text block: anything else is an error, so a
    method cannot silently train the vision tower.
    """
    site = site or text_site(base_model(model))
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = site.layer_index(name)
        if layer is None:
            raise DataError(
                f"trainable parameter {name!r} is outside the text blocks ({site.layers})"
            )
        out[name] = (layer, param)
    return out


def lora_parameters(model: nn.Module, site: TextSite | None = None) -> dict[str, tuple[int, Any]]:
    """``{name: (text block index, parameter)}`` for every trainable LoRA parameter."""
    return {n: v for n, v in trainable_text_parameters(model, site).items() if "lora_" in n}


def enable_text_finetune(model: nn.Module) -> nn.Module:
    """Full fine-tuning of the text blocks (as NegCLIP does): they train, all else frozen."""
    site = text_site(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in site.text_layers(model).parameters():
        p.requires_grad_(True)
    return model


def active_layers(model: nn.Module) -> Sequence[int]:
    return sorted({layer for layer, _ in lora_parameters(model).values()})


def lora_update_norms(model: nn.Module) -> dict[int, float]:
    """Per text block, the summed Frobenius norm of the LoRA weight updates.

    For each adapted linear layer the update is ``delta W = (alpha / r) * B @ A``; the norms
    of a block's updates are added up. ``{block index: norm}`` for every adapted block.
    """
    site = text_site(base_model(model))
    norms: dict[int, float] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        layer = site.layer_index(name + ".")
        if layer is None:
            continue
        for adapter, a in module.lora_A.items():
            a_weight = cast(torch.Tensor, a.weight)
            b_weight = cast(torch.Tensor, module.lora_B[adapter].weight)
            delta = module.scaling[adapter] * (b_weight @ a_weight)
            norms[layer] = norms.get(layer, 0.0) + float(delta.detach().norm())
    return norms
