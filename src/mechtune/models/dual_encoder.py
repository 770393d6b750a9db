"""One small interface over CLIP-style models: what tracing, training and evaluation need.

- ``encode_images`` / ``encode_texts``: L2-normalised float32 embeddings on the CPU. Images
  are whatever a user has (paths, PIL images, uint8 arrays of any size, or one uint8
  batch); each adapter applies its model's *own* preprocessing (``image_mode`` says which
  pixels it wants from an image-study source);
- ``tokenize`` and ``encode_tokens`` (the model's own, differentiable text path, on the
  model's device, upcast to float32: :mod:`mechtune.models.precision`);
- ``token_layouts``: each text's traced tokens with their character offsets and
  special-tokens mask, from the tokenizer's own output (token roles);
- ``text_layers``: the text transformer blocks; ``site``: where they are (LoRA, hooks);
- ``pooling`` / ``pooled_positions`` / ``traced_positions``: which positions the text
  embedding pools, as the site table declares it for the model's class, and which
  positions can reach the embedding at all (attended tokens and pooled ones);
- ``capture`` / ``run_layers`` / ``head``: the text forward pass cut at block boundaries,
  so causal tracing can re-run only the blocks after a patch;
- ``device`` / ``dtype`` / ``preprocess_config`` / ``weights_fingerprint``: what a
  caller needs to place inputs and to key an image-embedding cache.

Block calls re-use exactly the positional and keyword arguments the model itself passed to
its first block (captured by a hook), so masks and flags are the model's own.

Adding an architecture takes three things:

1. an adapter: a :class:`DualEncoder` subclass implementing ``_image_features`` (a batch of
   images -> raw features), ``_text_features`` (tokens -> raw features), ``logit_scale``
   and ``preprocess_config`` (and ``tokenize`` when the model pads in its own way);
2. one entry in :data:`mechtune.models.sites.TEXT_SITES` for the model's class (blocks,
   head, pooling, LoRA targets);
3. one registration: :func:`mechtune.models.hf_dual.register_hf_adapter` for a
   transformers ``model_type`` reached by ``hf:``, or
   :func:`mechtune.models.spec.register_scheme` for a new spec scheme.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mechtune.data.io import sha256_file
from mechtune.errors import DataError, UnsupportedModelError
from mechtune.models.images import ImageBatch, image_items, to_array
from mechtune.models.precision import unit
from mechtune.models.sites import TextSite, text_site


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
    """Base adapter. Subclasses supply the model's own image and text paths.

    ``weight_files``: the files the weights were loaded from (their hashes are the
    :meth:`weights_fingerprint`); empty for a model built in memory.
    """

    image_mode: ClassVar[str] = "RGB"  # the pixels the model's processing starts from

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_length: int = 77,
        *,
        weight_files: Sequence[str | Path] = (),
    ) -> None:
        self.model: Any = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.site: TextSite = text_site(model)
        self.weight_files: tuple[Path, ...] = tuple(Path(p) for p in weight_files)
        self._fingerprint: str | None = None

    # -- to implement -----------------------------------------------------------------------

    @abstractmethod
    def _image_features(self, batch: ImageBatch) -> torch.Tensor:
        """A batch of images (see :func:`mechtune.models.images.image_items`) -> the
        model's raw image features ``[B, D]`` (not normalised), any dtype and device."""

    @abstractmethod
    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens (on ``device``) -> the model's raw text features ``[B, D]`` (not
        normalised), differentiable, in the model's dtype."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """exp(logit scale): the temperature that multiplies cosine similarities."""

    @abstractmethod
    def preprocess_config(self) -> dict[str, Any]:
        """The image preprocessing, as JSON-able values (sizes, crop, resampling,
        normalisation): part of the image-embedding cache key."""

    # -- device, dtype, identity --------------------------------------------------------------

    @property
    def logit_bias(self) -> float:
        """The bias added to scaled similarities (SigLIP's sigmoid score); 0 elsewhere."""
        return 0.0

    @property
    def device(self) -> torch.device:
        """Where the model's weights are; ``tokenize`` puts its tensors there."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's (first floating-point) weights."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32  # pragma: no cover - every supported model has float weights

    def weights_fingerprint(self) -> str:
        """``"sha256:<hex>"`` of the weights: of the weight files the encoder was loaded
        from (names and contents, computed once), or, for a model built in memory, of its
        state dict (names, dtypes, shapes and bytes, at each call).

        A model changed in memory after loading from files (its text tower trained) keeps
        its files' fingerprint: the image-embedding cache relies on this, since every
        negation method keeps the image tower frozen.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        if self.weight_files:
            for path in sorted(self.weight_files, key=lambda p: (p.name, str(p))):
                h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
            self._fingerprint = f"sha256:{h.hexdigest()}"
            return self._fingerprint
        for name, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return f"sha256:{h.hexdigest()}"

    # -- images -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Images -> ``[N, D]`` L2-normalised float32 embeddings on the CPU, in input order.

        ``images``: a sequence of file paths, PIL images or uint8 arrays (``[H, W]`` grey
        or ``[H, W, 3]`` RGB, any size, sizes may differ), or one uint8 array/tensor
        ``[B, H, W]`` / ``[B, H, W, 3]``. The model's own preprocessing is applied (see the
        adapter); inputs follow the model's device and dtype, embeddings are upcast to
        float32 before normalising. Raises ``DataError`` for unreadable files or pixels
        that are not uint8.
        """
        batch = image_items(images)
        out = [
            unit(self._image_features(batch[lo : lo + batch_size])).cpu()
            for lo in range(0, len(batch), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0)

    # -- text ---------------------------------------------------------------------------------

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.site.text_layers(self.model)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts -> the model's input tensors (``input_ids``, ``attention_mask``, and
        ``token_type_ids`` where the tokenizer gives them), ``[B, T]`` on ``device``;
        padded to the longest text, truncated to ``max_length``."""
        out = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return self._on_device(out)

    def _on_device(self, out: Any) -> dict[str, torch.Tensor]:
        keep = ("input_ids", "attention_mask", "token_type_ids")
        device = self.device
        return {k: v.to(device) for k, v in out.items() if k in keep}

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own (differentiable) text path: tokens -> ``[B, D]`` L2-normalised,
        float32 (float64 for a float64 model) on ``device``."""
        return unit(self._text_features(tokens))

    @property
    def offsets_tokenizer(self) -> Any:
        """The transformers fast tokenizer behind ``tokenize`` (offsets, special tokens)."""
        return self.tokenizer

    def token_strings(self, ids: list[int]) -> list[str]:
        """Token ids -> token strings (for reports; roles come from ``token_layouts``)."""
        return list(self.offsets_tokenizer.convert_ids_to_tokens(ids))

    def token_layouts(self, texts: Sequence[str]) -> list[TokenLayout]:
        """Each text's traced tokens (:meth:`traced_positions`), from the tokenizer's own
        output.

        Attended tokens (attention mask 1) get their character offsets
        (``return_offsets_mapping``) and special-tokens mask
        (``return_special_tokens_mask``) from the same fast tokenizer, run without
        padding. A position traced only because the model pools it (SigLIP's last
        column, a padding token when the text is shorter than the padded width) is listed
        after them as a special token with offsets ``(0, 0)``. Raises
        ``UnsupportedModelError`` for a tokenizer without offsets and ``DataError`` when
        the two runs disagree on a text's ids.
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
        ids = tokens["input_ids"].cpu()
        attended = tokens["attention_mask"].bool().cpu()
        traced = self.traced_positions(tokens).cpu()
        out = []
        for i, text in enumerate(texts):
            real = ids[i, torch.nonzero(attended[i]).view(-1)].tolist()
            if real != list(notes["input_ids"][i]):
                raise DataError(
                    f"text {text!r}: the model's input ids at attention mask 1 {real} differ "
                    f"from the tokenizer's own ids {list(notes['input_ids'][i])}; token "
                    "offsets cannot be aligned"
                )
            offsets = [(int(a), int(b)) for a, b in notes["offset_mapping"][i]]
            special = [bool(x) for x in notes["special_tokens_mask"][i]]
            positions = torch.nonzero(traced[i]).view(-1).tolist()
            k, lay_offsets, lay_special = 0, [], []
            for p in positions:
                if attended[i, p]:
                    lay_offsets.append(offsets[k])
                    lay_special.append(special[k])
                    k += 1
                else:  # pooled but not attended: a padding token the embedding reads
                    lay_offsets.append((0, 0))
                    lay_special.append(True)
            out.append(
                TokenLayout(
                    text=text,
                    ids=tuple(ids[i, positions].tolist()),
                    positions=tuple(positions),
                    offsets=tuple(lay_offsets),
                    special=tuple(lay_special),
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

    def traced_positions(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T]`` bool: the positions whose state can reach the text embedding, which
        causal tracing patches: the attended tokens (attention mask 1), whose states every
        attended position reads, and the pooled positions, which the head reads even when
        they are padding (SigLIP pools the last column of text padded to 64 tokens)."""
        attended = tokens["attention_mask"].bool()
        return attended | self.pooled_positions(tokens).to(attended.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> ``[N, D]`` normalised float32 on the CPU (no gradient), in input order."""
        out = []
        for lo in range(0, len(texts), batch_size):
            out.append(self.encode_tokens(self.tokenize(texts[lo : lo + batch_size])).cpu())
        return torch.cat(out) if out else torch.empty(0)

    def capture(self, tokens: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], LayerCall]:
        """Run the text tower once; return states ``[h_0 .. h_L]`` and the block arguments.

        ``h_0`` is the embedding output (the first block's input) and ``h_l`` the output
        of block ``l-1``, in the model's dtype and on its device. Hooks are removed even
        if the forward pass fails.
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
            self._text_features(tokens)
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
        """Text embedding from the last block's output, exactly as ``encode_tokens``
        computes it: ``[B, T, H] -> [B, D]``, L2-normalised after the upcast to float32."""
        return unit(self.site.head(self.model, hidden, tokens))


class PhantomDualEncoder(DualEncoder):
    """The phantom CLIP (a sentence-transformers MiniLM tower paired with a CNN).

    Images: grey (Pillow's luma for RGB input), ``image_size`` square. A uint8 array
    ``[B, S, S]`` (or a grey ``[S, S]`` image) already of that size passes through
    unchanged; any other image is resized to ``S x S`` with Pillow's bilinear filter
    (``Image.Resampling.BILINEAR``, antialiased when shrinking), the aspect ratio not kept
    (the phantom renders square radiographs).
    """

    image_mode = "L"
    RESAMPLE = "bilinear"

    def __init__(self, model: Any, *, weight_files: Sequence[str | Path] = ()) -> None:
        super().__init__(
            model, model.tokenizer, max_length=model.text.max_length, weight_files=weight_files
        )
        self.image_size = int(model.config.image_size)

    def grey_batch(self, batch: ImageBatch) -> np.ndarray:
        """A batch of images -> uint8 ``[B, S, S]`` (see the class docstring)."""
        s = self.image_size
        if isinstance(batch, np.ndarray) and batch.ndim == 3 and batch.shape[1:] == (s, s):
            return batch
        return (
            np.stack([self._grey(item) for item in batch])
            if len(batch)
            else np.empty((0, s, s), dtype=np.uint8)
        )

    def _grey(self, item: Any) -> np.ndarray:
        from PIL import Image

        s = self.image_size
        grey = to_array(item, "L")
        if grey.shape == (s, s):
            return grey
        resized = Image.fromarray(grey).resize((s, s), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)

    def _image_features(self, batch: ImageBatch) -> torch.Tensor:
        grey = torch.from_numpy(np.ascontiguousarray(self.grey_batch(batch)))
        return self.model.image_encoder(grey.to(self.device))

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        # PhantomCLIP.center_text normalises (raw - centre); the base normalises in float32.
        return self.model.text(**tokens) - self.model.text_center

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "adapter": type(self).__name__,
            "mode": self.image_mode,
            "image_size": self.image_size,
            "resample": self.RESAMPLE,
        }

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())


# The adapters of other libraries' classes live in their own modules (hf_dual,
# open_clip_adapter), which import this one; they are also reachable from here, where the
# adapter interface is, without an import cycle.
_ADAPTERS = {
    "HFCLIPDualEncoder": "mechtune.models.hf_dual",
    "SiglipDualEncoder": "mechtune.models.hf_dual",
    "VisionTextDualEncoder": "mechtune.models.hf_dual",
    "OpenCLIPDualEncoder": "mechtune.models.open_clip_adapter",
}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        import importlib

        return getattr(importlib.import_module(_ADAPTERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
