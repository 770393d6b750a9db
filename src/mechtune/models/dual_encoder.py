"""One small interface over CLIP-style models: what tracing, training and evaluation need.

- ``encode_images`` / ``encode_texts``: L2-normalised embeddings;
- ``tokenize`` and ``encode_tokens`` (the model's own, differentiable text path);
- ``text_layers``: the text transformer blocks; ``site``: where they are (LoRA, hooks);
- ``capture`` / ``run_layers`` / ``head``: the text forward pass cut at block boundaries,
  so causal tracing can re-run only the blocks after a patch.

Block calls re-use exactly the positional and keyword arguments the model itself passed to
its first block (captured by a hook), so masks and flags are the model's own.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mechtune.errors import MissingExtraError
from mechtune.models.sites import TextSite, text_site

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _first(output: Any) -> torch.Tensor:
    """Blocks return a tensor (transformers 5) or a tuple whose first item is the state."""
    return output[0] if isinstance(output, tuple) else output


class LayerCall:
    """The arguments a model passes to its text blocks, re-usable on other batch sizes."""

    def __init__(self, args: tuple, kwargs: dict[str, Any], batch: int) -> None:
        self.args, self.kwargs, self.batch = args, kwargs, batch

    def expand(self, rows: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        """Arguments for a batch made of ``rows`` (indices into the captured batch)."""

        def pick(x: Any) -> Any:
            if torch.is_tensor(x) and x.dim() > 0 and x.shape[0] == self.batch and self.batch > 1:
                return x.index_select(0, rows.to(x.device))
            if torch.is_tensor(x) and x.dim() > 0 and x.shape[0] == 1 and self.batch == 1:
                return x.expand(len(rows), *x.shape[1:])
            return x

        return tuple(pick(a) for a in self.args), {k: pick(v) for k, v in self.kwargs.items()}


class DualEncoder(ABC):
    """Base adapter. Subclasses supply the model's own image and text paths."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 77) -> None:
        self.model: Any = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.site: TextSite = text_site(model)

    # -- to implement -----------------------------------------------------------------------

    @abstractmethod
    def encode_images(self, images: Any) -> torch.Tensor:
        """Images -> ``[B, D]`` L2-normalised embeddings."""

    @abstractmethod
    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own (differentiable) text path: tokens -> ``[B, D]`` normalised."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """exp(logit scale): the temperature that multiplies cosine similarities."""

    # -- shared -------------------------------------------------------------------------------

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.site.text_layers(self.model)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }

    def token_strings(self, ids: list[int]) -> list[str]:
        """Token ids -> token strings (for role labels and reports)."""
        return list(self.tokenizer.convert_ids_to_tokens(ids))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> ``[N, D]`` normalised (no gradient), in input order."""
        out = []
        for lo in range(0, len(texts), batch_size):
            out.append(self.encode_tokens(self.tokenize(texts[lo : lo + batch_size])))
        return torch.cat(out) if out else torch.empty(0)

    def capture(self, tokens: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], LayerCall]:
        """Run the text tower once; return states ``[h_0 .. h_L]`` and the block arguments.

        ``h_0`` is the embedding output (the first block's input) and ``h_l`` the output
        of block ``l-1``. Hooks are removed even if the forward pass fails.
        """
        layers = self.text_layers
        states: list[torch.Tensor] = []
        call: dict[str, Any] = {}

        def pre(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            states.append(args[0])
            call["args"], call["kwargs"] = args[1:], kwargs

        def post(module: nn.Module, args: tuple, output: Any) -> None:
            states.append(_first(output))

        handles = [layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
        handles += [layer.register_forward_hook(post) for layer in layers]
        try:
            self.encode_tokens(tokens)
        finally:
            for h in handles:
                h.remove()
        batch = tokens["input_ids"].shape[0]
        return states, LayerCall(call["args"], call["kwargs"], batch)

    def run_layers(
        self, hidden: torch.Tensor, start: int, call: LayerCall, rows: torch.Tensor
    ) -> torch.Tensor:
        """Blocks ``start ..`` on ``hidden`` (whose rows come from captured rows ``rows``)."""
        args, kwargs = call.expand(rows)
        for layer in list(self.text_layers)[start:]:
            hidden = _first(layer(hidden, *args, **kwargs))
        return hidden

    def head(self, hidden: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text embedding from the last block's output. ``[B, T, H] -> [B, D]``."""
        return self.site.head(self.model, hidden, tokens)


class PhantomDualEncoder(DualEncoder):
    """The phantom CLIP (a sentence-transformers MiniLM tower paired with a CNN)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, model.tokenizer, max_length=model.text.max_length)

    def encode_images(self, images: Any) -> torch.Tensor:
        return self.model.encode_images(images)

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_tokens(**tokens)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


class HFCLIPDualEncoder(DualEncoder):
    """transformers ``CLIPModel`` with its tokenizer and the CLIP image normalisation."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        max_length = int(model.config.text_config.max_position_embeddings)
        super().__init__(model, tokenizer, max_length=max_length)
        self.image_size = int(model.config.vision_config.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(self, images: Any) -> torch.Tensor:
        """uint8 ``[B, H, W]`` (grey) or ``[B, H, W, 3]`` -> normalised ``[B, 3, S, S]``.

        Float tensors ``[B, 3, S, S]`` are taken as already preprocessed.
        """
        x = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
        if x.is_floating_point() and x.dim() == 4 and x.shape[1] == 3:
            return x
        x = x.to(torch.float32) / 255.0
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        x = nn.functional.interpolate(
            x,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return (x - self.mean) / self.std

    def encode_images(self, images: Any) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=self.preprocess(images))
        return nn.functional.normalize(_pooled(out), dim=-1)

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model.get_text_features(**tokens)
        return nn.functional.normalize(_pooled(out), dim=-1)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> HFCLIPDualEncoder:
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        mean, std = CLIP_MEAN, CLIP_STD
        config = Path(name_or_path) / "preprocessor_config.json"
        if config.is_file():
            pre = json.loads(config.read_text())
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
        return cls(model, tokenizer, mean=mean, std=std)


def _pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` return an output object in transformers 5, a tensor before."""
    return out if torch.is_tensor(out) else out.pooler_output


class OpenCLIPDualEncoder(DualEncoder):
    """open_clip models, e.g. BiomedCLIP (``HFTextEncoder`` BERT tower); needs the extra.

    Images must already be preprocessed ``[B, 3, S, S]`` tensors (open_clip's transforms
    need torchvision, which mechtune's core does not import).
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        super().__init__(model, tokenizer)
        self.pad_id = int(getattr(model.text, "config").pad_token_id or 0)  # noqa: B009

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts))
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}

    def token_strings(self, ids: list[int]) -> list[str]:
        return list(self.tokenizer.tokenizer.convert_ids_to_tokens(ids))  # open_clip HFTokenizer

    def encode_images(self, images: Any) -> torch.Tensor:
        return self.model.encode_image(images, normalize=True)

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["input_ids"], normalize=True)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @classmethod
    def from_pretrained(cls, name: str) -> OpenCLIPDualEncoder:
        try:
            import open_clip
        except ImportError as exc:  # open_clip imports torchvision
            raise MissingExtraError(
                f"open_clip could not be imported ({exc}); install the extra: "
                "pip install 'mechtune[openclip]' (it needs a working torchvision)"
            ) from exc
        model, _preprocess = open_clip.create_model_from_pretrained(name)
        return cls(model, open_clip.get_tokenizer(name))
