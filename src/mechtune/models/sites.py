"""The site table: where each supported architecture keeps its text-tower parts.

Adapters never probe a model with ``hasattr``: they look its class up here. A site says
where the text transformer blocks live (also the ``layers_pattern`` peft needs to keep
LoRA out of the vision tower) and how the text embedding is computed from the last
block's output (the *head*).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from mechtune.errors import UnsupportedModelError

Head = Callable[[Any, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def clip_text_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """transformers ``CLIPModel``: final LayerNorm, EOS pooling, projection, L2 norm."""
    text_model = model.text_model
    hidden = text_model.final_layer_norm(hidden)
    ids = tokens["input_ids"]
    if text_model.eos_token_id == 2:  # legacy configs: EOS is the highest id
        eos = ids.to(torch.int).argmax(dim=-1)
    else:
        eos = (ids.to(torch.int) == text_model.eos_token_id).int().argmax(dim=-1)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]
    return nn.functional.normalize(model.text_projection(pooled), dim=-1)


def mean_pooled_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sentence-transformers towers (the phantom CLIP's MiniLM): mean pooling over real
    tokens, L2 norm, fixed centring, L2 norm."""
    pooled = model.text.pool(hidden, tokens["attention_mask"])
    return model.center_text(pooled)


def openclip_hf_text_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """open_clip ``HFTextEncoder`` (BiomedCLIP's BERT): its pooler, projection, L2 norm."""
    text = model.text
    pooled = text.pooler(_HFOutput(hidden), tokens["attention_mask"])
    return nn.functional.normalize(text.proj(pooled), dim=-1)


class _HFOutput:
    """The one attribute open_clip's poolers read from a transformers output."""

    def __init__(self, last_hidden_state: torch.Tensor) -> None:
        self.last_hidden_state = last_hidden_state


@dataclass(frozen=True)
class TextSite:
    """Where a dual encoder's text blocks are and how its text embedding ends."""

    layers: str  # dotted path of the ModuleList of transformer blocks
    head: Head
    # Linear layers inside a block that LoRA adapts: attention projections and MLP.
    lora_targets: tuple[str, ...] = ()

    @property
    def layers_pattern(self) -> str:
        """The dotted path peft's ``layers_pattern`` needs to address these blocks only."""
        return self.layers

    def text_layers(self, model: nn.Module) -> nn.ModuleList:
        layers = _get(model, self.layers)
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedModelError(
                f"{self.layers} is a {type(layers).__name__}, not a ModuleList"
            )
        return layers

    def layer_index(self, parameter_name: str) -> int | None:
        """Text-block index of a parameter name (``None`` if it is not in a text block).

        Handles the ``module.`` prefix DDP adds and peft's ``base_model.model.`` prefix.
        """
        match = re.search(rf"(?:^|\.){re.escape(self.layers)}\.(\d+)\.", parameter_name)
        return int(match.group(1)) if match else None


CLIP_LORA = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
BERT_LORA = (
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

TEXT_SITES: dict[str, TextSite] = {
    "CLIPModel": TextSite("text_model.encoder.layers", clip_text_head, CLIP_LORA),
    "PhantomCLIP": TextSite("text.bert.encoder.layer", mean_pooled_head, BERT_LORA),
    "SentenceTowerCLIP": TextSite("text.bert.encoder.layer", mean_pooled_head, BERT_LORA),
    # open_clip wraps HF text towers (BiomedCLIP) in CustomTextCLIP.
    "CustomTextCLIP": TextSite("text.transformer.encoder.layer", openclip_hf_text_head, BERT_LORA),
}


_Site = TypeVar("_Site")


def site_for_class(table: Mapping[str, _Site], model: object) -> _Site | None:
    """The entry of ``table`` for the model's class name, walking its base classes."""
    for cls in type(model).__mro__:
        site = table.get(cls.__name__)
        if site is not None:
            return site
    return None


def text_site(model: nn.Module) -> TextSite:
    """The site of a model, by class (walking base classes), or a clear error."""
    site = site_for_class(TEXT_SITES, model)
    if site is not None:
        return site
    known = ", ".join(sorted(TEXT_SITES))
    raise UnsupportedModelError(
        f"no text site for {type(model).__name__}; supported classes: {known}"
    )
