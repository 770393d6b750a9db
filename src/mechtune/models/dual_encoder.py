"""One small interface over CLIP-style models: what tracing, training and evaluation need.

- ``encode_images`` / ``encode_texts``: L2-normalised embeddings;
- ``tokenize`` and ``encode_tokens`` (the model's own, differentiable text path);
- ``token_layouts``: each text's real tokens (attention mask 1) with their character
  offsets and special-tokens mask, from the tokenizer's own output (token roles);
- ``text_layers``: the text transformer blocks; ``site``: where they are (LoRA, hooks);
- ``pooling`` / ``pooled_positions``: which positions the text embedding pools, as the
  site table declares it for the model's class;
- ``capture`` / ``run_layers`` / ``head``: the text forward pass cut at block boundaries,
  so causal tracing can re-run only the blocks after a patch.

Block calls re-use exactly the positional and keyword arguments the model itself passed to
its first block (captured by a hook), so masks and flags are the model's own.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mechtune.errors import DataError, MissingExtraError, UnsupportedModelError
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


@dataclass(frozen=True)
class TokenLayout:
    """One text as the model receives it: its real tokens and where each comes from.

    Only positions with attention mask 1 are listed (padding is never a token here).
    ``positions[k]`` is the column of real token k in the model's ``[T]`` input,
    ``offsets[k]`` its ``(start, end)`` character span in ``text`` (``(0, 0)`` for special
    tokens) and ``special[k]`` the tokenizer's special-tokens mask.
    """

    text: str
    ids: tuple[int, ...]
    positions: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    special: tuple[bool, ...]
    width: int  # T, the padded width of the model's input

    def __len__(self) -> int:
        return len(self.ids)


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

    @property
    def offsets_tokenizer(self) -> Any:
        """The transformers fast tokenizer behind ``tokenize`` (offsets, special tokens)."""
        return self.tokenizer

    def token_strings(self, ids: list[int]) -> list[str]:
        """Token ids -> token strings (for reports; roles come from ``token_layouts``)."""
        return list(self.offsets_tokenizer.convert_ids_to_tokens(ids))

    def token_layouts(self, texts: Sequence[str]) -> list[TokenLayout]:
        """Each text's real tokens, from the tokenizer's own output.

        Real tokens are those with attention mask 1 in ``tokenize``'s output; their
        character offsets (``return_offsets_mapping``) and special-tokens mask
        (``return_special_tokens_mask``) come from the same fast tokenizer, run without
        padding. Raises ``UnsupportedModelError`` for a tokenizer without offsets and
        ``DataError`` when the two runs disagree on a text's ids.
        """
        texts = list(texts)
        tokens = self.tokenize(texts)
        try:
            notes = self.offsets_tokenizer(
                texts,
                truncation=True,
                max_length=self.max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
        except NotImplementedError as exc:  # transformers' slow tokenizers have no offsets
            raise UnsupportedModelError(
                f"{type(self.offsets_tokenizer).__name__} gives no character offsets; token "
                "roles need a fast (tokenizers-backed) tokenizer"
            ) from exc
        ids, mask = tokens["input_ids"], tokens["attention_mask"].bool()
        out = []
        for i, text in enumerate(texts):
            positions = torch.nonzero(mask[i]).view(-1)
            real = ids[i, positions].tolist()
            if real != list(notes["input_ids"][i]):
                raise DataError(
                    f"text {text!r}: the model's input ids at attention mask 1 {real} differ "
                    f"from the tokenizer's own ids {list(notes['input_ids'][i])}; token "
                    "offsets cannot be aligned"
                )
            out.append(
                TokenLayout(
                    text=text,
                    ids=tuple(real),
                    positions=tuple(positions.tolist()),
                    offsets=tuple((int(a), int(b)) for a, b in notes["offset_mapping"][i]),
                    special=tuple(bool(x) for x in notes["special_tokens_mask"][i]),
                    width=int(ids.shape[1]),
                )
            )
        return out

    @property
    def pooling(self) -> str:
        """Where the text embedding pools: ``"eos"``, ``"cls"``, ``"mean"`` or ``"last"``
        (see :mod:`mechtune.models.sites`), as the site table declares for this model."""
        return self.site.pooling(self.model)

    def pooled_positions(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` bool: the input positions the text embedding reads."""
        return self.site.pooled_positions(self.model, tokens)

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
        # open_clip's HFTokenizer pads every text to its context length (256 for BiomedCLIP).
        super().__init__(model, tokenizer, max_length=int(tokenizer.context_length))
        self.pad_id = int(getattr(model.text, "config").pad_token_id or 0)  # noqa: B009

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """open_clip's own call (fixed-length ids); the mask is what ``HFTextEncoder``
        computes from them, ``ids != pad_token_id``."""
        ids = self.tokenizer(list(texts))
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}

    @property
    def offsets_tokenizer(self) -> Any:
        return self.tokenizer.tokenizer  # open_clip HFTokenizer wraps a transformers one

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
