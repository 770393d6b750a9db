"""The site table: where each supported architecture keeps its text-tower parts.

Adapters never probe a model with ``hasattr``: they look its class up here. A site says
where the text transformer blocks live (also the ``layers_pattern`` peft needs to keep
LoRA out of the vision tower), how the raw text features are computed from the last
block's output (the *head*; the adapter L2-normalises them in float32), and which
positions that head pools (the *pooling*):

- ``"eos"``: the end-of-text token (transformers' ``CLIPTextTransformer`` rule);
- ``"cls"``: the first column (BERT [CLS] and its pooler, as in
  ``VisionTextDualEncoderModel``; open_clip's ``ClsPooler`` and
  ``ClsLastHiddenStatePooler`` read position 0);
- ``"mean"``: the mean over real tokens (sentence-transformers; open_clip's ``MeanPooler``);
- ``"last"``: the last column of the padded input, whatever token is there (transformers'
  ``SiglipTextModel``: ``pooled_output = last_hidden_state[:, -1, :]``; with the
  processor's ``padding="max_length"`` it is usually a padding token).

Causal tracing patches and scores where the model itself pools: it asks the site, never
assumes a rule.
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
POOLINGS: tuple[str, ...] = ("eos", "cls", "mean", "last")


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def clip_eos_index(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` position CLIP pools, by transformers' ``CLIPTextTransformer`` rule: with the
    legacy ``eos_token_id == 2`` the highest id, otherwise the first ``eos_token_id``."""
    text_model = model.text_model
    ids = input_ids.to(torch.int)
    if text_model.eos_token_id == 2:  # legacy configs: EOS is the highest id
        return ids.argmax(dim=-1)
    return (ids == text_model.eos_token_id).int().argmax(dim=-1)


def clip_text_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """transformers ``CLIPModel``: final LayerNorm, EOS pooling, projection."""
    hidden = model.text_model.final_layer_norm(hidden)
    eos = clip_eos_index(model, tokens["input_ids"]).to(hidden.device)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]
    return model.text_projection(pooled)


def siglip_text_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """transformers ``SiglipModel`` (``SiglipTextModel.forward``): final LayerNorm, the
    last column, the text ``head`` projection."""
    text = model.text_model
    return text.head(text.final_layer_norm(hidden)[:, -1, :])


def bert_pooler_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """transformers ``VisionTextDualEncoderModel`` over a BERT-family text tower
    (``get_text_features``): the tower's pooler (dense + tanh on [CLS]), then
    ``text_projection``."""
    return model.text_projection(model.text_model.pooler(hidden))


def mean_pooled_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sentence-transformers towers (the phantom CLIP's MiniLM): mean pooling over real
    tokens, L2 norm, minus the fixed centre (the adapter's L2 norm completes
    ``center_text``)."""
    return model.text.pool(hidden, tokens["attention_mask"]) - model.text_center


def openclip_hf_text_head(
    model: Any, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> torch.Tensor:
    """open_clip ``HFTextEncoder`` (BiomedCLIP's BERT): its pooler, projection.

    The pooler gets what ``HFTextEncoder.forward`` gives it: a transformers output with the
    last hidden state and, when the tower has one, the transformer's own pooler output
    (``ClsPooler(use_pooler_output=True)`` reads it).
    """
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    text = model.text
    # BERT-family models have a ``pooler`` attribute, None unless built with a pooling layer.
    transformer_pooler = getattr(text.transformer, "pooler", None)
    output = BaseModelOutputWithPoolingAndCrossAttentions(
        last_hidden_state=hidden,
        pooler_output=None if transformer_pooler is None else transformer_pooler(hidden),
    )
    pooled = text.pooler(output, tokens["attention_mask"])
    return text.proj(pooled)


# open_clip's registered HF poolers (src/open_clip/hf_model.py) -> the positions they read.
OPENCLIP_POOLERS = {
    "ClsPooler": "cls",
    "ClsLastHiddenStatePooler": "cls",
    "MeanPooler": "mean",
}


def openclip_pooling(model: Any) -> str:
    """The pooling of an open_clip ``HFTextEncoder``, from its pooler's class."""
    name = type(model.text.pooler).__name__
    if name not in OPENCLIP_POOLERS:
        known = ", ".join(sorted(OPENCLIP_POOLERS))
        raise UnsupportedModelError(
            f"open_clip text pooler {name} is not supported for tracing; supported: {known}"
        )
    return OPENCLIP_POOLERS[name]


def _pooling(kind: str) -> Callable[[Any], str]:
    def declared(model: Any) -> str:
        return kind

    return declared


def pooled_positions(
    kind: str,
    tokens: dict[str, torch.Tensor],
    eos_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T]`` bool: the input positions a head of pooling ``kind`` reads.

    ``"mean"``: every real token (attention mask 1); ``"cls"``: the first column;
    ``"eos"``: ``eos_index [B]``; ``"last"``: the last column.
    """
    real = tokens["attention_mask"].bool()
    if kind == "mean":
        return real
    out = torch.zeros_like(real)
    if kind == "cls":
        out[:, 0] = True
    elif kind == "eos":
        if eos_index is None:
            raise UnsupportedModelError("pooling 'eos' needs the site's eos_index")
        out[torch.arange(real.shape[0], device=out.device), eos_index.to(out.device)] = True
    elif kind == "last":
        out[:, -1] = True
    else:
        raise UnsupportedModelError(f"unknown pooling {kind!r}; known: {', '.join(POOLINGS)}")
    return out


@dataclass(frozen=True)
class TextSite:
    """Where a dual encoder's text blocks are and how its text embedding ends."""

    layers: str  # dotted path of the ModuleList of transformer blocks
    head: Head
    pooling: Callable[[Any], str]  # model -> one of POOLINGS: the positions ``head`` reads
    # Linear layers inside a block that LoRA adapts: attention projections and MLP.
    lora_targets: tuple[str, ...] = ()
    # For pooling "eos": (model, input_ids [B, T]) -> [B] pooled position.
    eos_index: Callable[[Any, torch.Tensor], torch.Tensor] | None = None

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

    def pooled_positions(self, model: Any, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` bool: the positions this site's head pools for ``tokens``."""
        kind = self.pooling(model)
        eos = None
        if kind == "eos" and self.eos_index is not None:
            eos = self.eos_index(model, tokens["input_ids"])
        return pooled_positions(kind, tokens, eos)

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
    "CLIPModel": TextSite(
        "text_model.encoder.layers",
        clip_text_head,
        _pooling("eos"),
        CLIP_LORA,
        eos_index=clip_eos_index,
    ),
    # SigLIP's text blocks are CLIP-shaped (self_attn.{q,k,v,out}_proj, mlp.fc1/fc2).
    "SiglipModel": TextSite(
        "text_model.encoder.layers", siglip_text_head, _pooling("last"), CLIP_LORA
    ),
    # A BERT-family text tower (BertModel, RobertaModel): the adapter checks the class.
    "VisionTextDualEncoderModel": TextSite(
        "text_model.encoder.layer", bert_pooler_head, _pooling("cls"), BERT_LORA
    ),
    "PhantomCLIP": TextSite(
        "text.bert.encoder.layer", mean_pooled_head, _pooling("mean"), BERT_LORA
    ),
    "SentenceTowerCLIP": TextSite(
        "text.bert.encoder.layer", mean_pooled_head, _pooling("mean"), BERT_LORA
    ),
    # open_clip wraps HF text towers (BiomedCLIP) in CustomTextCLIP.
    "CustomTextCLIP": TextSite(
        "text.transformer.encoder.layer", openclip_hf_text_head, openclip_pooling, BERT_LORA
    ),
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
