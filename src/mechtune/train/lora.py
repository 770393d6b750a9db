"""LoRA settings and where they apply, for both tasks, through peft.

A :class:`LoraSite` says where a model's trainable blocks are: peft's ``layers_pattern``
(the dotted path of the block list), the linear layers inside a block that LoRA adapts,
and the number of blocks. Dual encoders take theirs from the site table's
:class:`~mechtune.models.sites.TextSite` (:func:`text_lora_site`); yes/no VLMs from their
``layers_pattern`` / ``lora_targets`` (:func:`lm_lora_site`). One :func:`lora_config`
builds the peft config from a site and a :class:`LoraSettings`. Without the pattern,
``layers_to_transform`` would also pick the same indices in the vision tower.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from mechtune.errors import ConfigError
from mechtune.models.sites import text_site


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's rank r, its alpha (the update is ``(alpha / r) * B @ A``, Hu et al. 2021,
    eq. 3; peft's ``lora_alpha``), the dropout on the adapter input, which blocks get
    adapters (None: all) and which linear layers inside them (``target_modules``, peft's
    names; None: every one of the site's ``lora_targets``, e.g. the seven Gemma
    projections q/k/v/o/gate/up/down, as the released MedGemma adapter). Used by every
    method of both tasks.

    Raises ConfigError naming the field for rank < 1, alpha <= 0, dropout outside [0, 1),
    a bad ``layers`` list (see :func:`block_indices`) or an empty or repeating
    ``target_modules``; a name the model's site does not adapt is refused by
    :func:`lora_config`, which knows the site.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    layers: tuple[int, ...] | None = None
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.layers is not None:
            object.__setattr__(self, "layers", block_indices(self.layers, "layers"))
        if self.target_modules is not None:
            names = self.target_modules
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"target_modules must be a list of module names, got {names!r}")
            names = tuple(names)
            if not names or len(set(names)) != len(names):
                raise ConfigError(
                    "target_modules must be None (the site's LoRA targets) or distinct "
                    f"module names, got {list(names)}"
                )
            object.__setattr__(self, "target_modules", names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        d["target_modules"] = None if self.target_modules is None else list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraSettings:
        """Inverse of :meth:`to_dict` (lists become tuples)."""
        layers, targets = d.get("layers"), d.get("target_modules")
        return cls(
            **{
                **d,
                "layers": None if layers is None else tuple(layers),
                "target_modules": None if targets is None else tuple(targets),
            }
        )


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


@dataclass(frozen=True)
class LoraSite:
    """Where a task trains: the block list's dotted path (peft's ``layers_pattern``), the
    linear layers inside a block that LoRA adapts, and how many blocks there are."""

    layers_pattern: str
    lora_targets: tuple[str, ...]
    n_layers: int

    def layer_index(self, parameter_name: str) -> int | None:
        """Block index of a parameter (or module) name, None outside the blocks.

        Handles prefixes such as DDP's ``module.`` and peft's ``base_model.model.``.
        """
        pattern = rf"(?:^|\.){re.escape(self.layers_pattern)}\.(\d+)(?:\.|$)"
        match = re.search(pattern, parameter_name)
        return int(match.group(1)) if match else None


def text_lora_site(model: nn.Module) -> LoraSite:
    """The text-tower site of a dual encoder's model (by the site table; a peft-wrapped
    model is looked up by its base model). Raises UnsupportedModelError for an unknown
    class."""
    base = base_model(model)
    site = text_site(base)
    return LoraSite(site.layers_pattern, tuple(site.lora_targets), len(site.text_layers(base)))


def lm_lora_site(vlm: Any) -> LoraSite:
    """The language-model site of a :class:`~mechtune.models.yes_no.YesNoVLM`."""
    return LoraSite(vlm.layers_pattern, tuple(vlm.lora_targets), len(vlm.layers))


def lora_config(site: LoraSite, settings: LoraSettings) -> LoraConfig:
    """A peft config that adapts ``settings.target_modules`` (None: all the site's
    ``lora_targets``) in ``settings.layers`` of the site's blocks, and nothing else.

    Raises ConfigError when a chosen block is outside ``0..site.n_layers - 1`` or a target
    module is not one of the site's ``lora_targets`` (the message lists them): peft
    matches names by suffix anywhere in the model, so only the site's names are known to
    stay inside the blocks' linear layers.
    """
    n_layers = site.n_layers
    layers = list(range(n_layers)) if settings.layers is None else list(settings.layers)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(
            f"LoRA layers {bad} out of range: the model has blocks 0..{n_layers - 1} "
            f"at {site.layers_pattern}"
        )
    targets = site.lora_targets if settings.target_modules is None else settings.target_modules
    unknown = [t for t in targets if t not in site.lora_targets]
    if unknown:
        raise ConfigError(
            f"LoRA target_modules {unknown} are not LoRA targets of this model's blocks "
            f"({site.layers_pattern}); allowed: {list(site.lora_targets)}"
        )
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        layers_to_transform=layers,
        layers_pattern=site.layers_pattern,
        bias="none",
    )


def apply_lora(module: nn.Module, site: LoraSite, settings: LoraSettings) -> PeftModel:
    """Wrap ``module`` with LoRA adapters on the site's blocks; everything else is frozen.

    peft injects the adapters into ``module``'s own submodules, so code holding the
    unwrapped module (an adapter's ``encode_tokens``, a VLM's ``margin``) uses them.
    """
    return get_peft_model(module, lora_config(site, settings))


def apply_text_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """:func:`apply_lora` on a dual encoder model's text blocks."""
    return apply_lora(model, text_lora_site(model), settings)


def enable_block_finetune(model: nn.Module, site: LoraSite) -> nn.Module:
    """Full fine-tuning of the site's blocks (as NegCLIP does): their parameters train,
    every other parameter is frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(site.layer_index(name) is not None)
    return model


def base_model(model: nn.Module) -> nn.Module:
    """The wrapped model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def trainable_block_parameters(
    model: nn.Module, site: LoraSite | None = None
) -> dict[str, tuple[int, Any]]:
    """``{name: (block index, parameter)}`` for every trainable parameter of ``model``.

    The fence: every trainable parameter must sit in one of the site's blocks (default:
    the text tower's), so a method cannot silently train the vision tower, embeddings or
    a head. Raises ConfigError naming the first such parameter.
    """
    site = site or text_lora_site(model)
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = site.layer_index(name)
        if layer is None:
            raise ConfigError(
                f"trainable parameter {name!r} is outside the blocks ({site.layers_pattern})"
            )
        out[name] = (layer, param)
    return out


def lora_parameters(model: nn.Module, site: LoraSite | None = None) -> dict[str, tuple[int, Any]]:
    """``{name: (block index, parameter)}`` for every trainable LoRA parameter."""
    return {n: v for n, v in trainable_block_parameters(model, site).items() if "lora_" in n}


def active_layers(model: nn.Module, site: LoraSite | None = None) -> list[int]:
    """The blocks that hold trainable LoRA parameters, ascending."""
    return sorted({layer for layer, _ in lora_parameters(model, site).values()})


def lora_update_norms(model: nn.Module, site: LoraSite | None = None) -> dict[int, float]:
    """Per block, the summed Frobenius norm of the LoRA weight updates.

    For each adapted linear layer the update is ``delta W = (alpha / r) * B @ A`` (Hu et
    al. 2021, eq. 3; peft's ``scaling``); the norms of a block's updates are added up.
    ``{block index: norm}`` for every adapted block (default site: the text tower).
    """
    site = site or text_lora_site(model)
    norms: dict[int, float] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        layer = site.layer_index(name)
        if layer is None:
            continue
        for adapter, a in module.lora_A.items():
            a_weight = cast(torch.Tensor, a.weight)
            b_weight = cast(torch.Tensor, module.lora_B[adapter].weight)
            delta = module.scaling[adapter] * (b_weight.float() @ a_weight.float())
            norms[layer] = norms.get(layer, 0.0) + float(delta.detach().norm())
    return norms


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on transformers' activation (gradient) checkpointing in ``model``, a
    transformers ``PreTrainedModel`` (the unwrapped module a peft model wraps): each
    decoder block keeps only its input and recomputes its activations in the backward
    pass (Chen et al. 2016, "Training deep nets with sublinear memory cost"), with
    ``torch.utils.checkpoint``'s non-reentrant implementation (``use_reentrant=False``).

    transformers (and peft, when checkpointing is on as it wraps a model) also hook the
    input embeddings so that their outputs require grad, which the REENTRANT checkpoint
    needs to back-propagate into a block whose inputs do not. The non-reentrant one does
    not (it gives the same LoRA gradients without them: tests/train/
    test_gradient_checkpointing.py), and with them every backward pass would run through
    the frozen blocks below the first LoRA block and the whole vision tower, recomputing
    them for gradients nobody reads; so those hooks are removed.

    Raises ConfigError for a model without transformers' checkpointing support
    (:func:`check_gradient_checkpointing`).
    """
    enable = check_gradient_checkpointing(model)
    kwargs = {"use_reentrant": False}
    if enable.__name__ == "activation_checkpointing_enable":
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()  # type: ignore[operator]


def check_gradient_checkpointing(model: nn.Module) -> Any:
    """The method that turns on ``model``'s activation checkpointing (transformers 5's
    ``activation_checkpointing_enable``, or ``gradient_checkpointing_enable`` of earlier
    versions). Raises ConfigError naming the class when it has none."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is None:
        enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            "gradient_checkpointing needs a transformers model that supports activation "
            f"checkpointing; {type(model).__name__} does not"
        )
    return enable


def gradient_checkpointing_enabled(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` checkpoints its activations (transformers'
    ``gradient_checkpointing`` flag on its blocks)."""
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())
