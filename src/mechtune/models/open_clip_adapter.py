"""open_clip dual encoders (BiomedCLIP: ``HFTextEncoder`` BERT tower), behind ``openclip:``.

Optional: open_clip imports torchvision, which mechtune's core does not need. Images go
through open_clip's own ``preprocess`` transform, as ``create_model_from_pretrained``
returns it for the checkpoint (resize, centre crop, interpolation, mean/std).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechtune.errors import MissingExtraError, UnsupportedModelError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.images import ImageBatch, pil_images
from mechtune.models.precision import resolve_device, resolve_dtype


class OpenCLIPDualEncoder(DualEncoder):
    """open_clip models, e.g. BiomedCLIP; needs the ``openclip`` extra to load.

    ``preprocess``: open_clip's image transform (PIL RGB image -> ``[3, S, S]`` float
    tensor). Without it (a model built in memory), ``encode_images`` raises
    ``UnsupportedModelError``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        preprocess: Callable[[Any], torch.Tensor] | None = None,
        *,
        weight_files: Sequence[str] = (),
    ) -> None:
        # open_clip's HFTokenizer pads every text to its context length (256 for BiomedCLIP).
        super().__init__(
            model, tokenizer, max_length=int(tokenizer.context_length), weight_files=weight_files
        )
        self.pad_id = int(getattr(model.text, "config").pad_token_id or 0)  # noqa: B009
        self.preprocess = preprocess

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """open_clip's own call (fixed-length ids); the mask is what ``HFTextEncoder``
        computes from them, ``ids != pad_token_id``."""
        ids = self.tokenizer(list(texts))
        return self._on_device({"input_ids": ids, "attention_mask": (ids != self.pad_id).long()})

    @property
    def offsets_tokenizer(self) -> Any:
        return self.tokenizer.tokenizer  # open_clip HFTokenizer wraps a transformers one

    def pixel_values(self, batch: ImageBatch) -> torch.Tensor:
        """Images -> ``[B, 3, S, S]`` float32 by open_clip's ``preprocess``."""
        if self.preprocess is None:
            raise UnsupportedModelError(
                "this open_clip model was built without its preprocess transform; load it "
                "with a spec (openclip:...) to encode images"
            )
        return torch.stack([self.preprocess(img) for img in pil_images(batch, "RGB")])

    def _image_features(self, batch: ImageBatch) -> torch.Tensor:
        pixels = self.pixel_values(batch).to(device=self.device, dtype=self.dtype)
        return self.model.encode_image(pixels, normalize=False)

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["input_ids"], normalize=False)

    def preprocess_config(self) -> dict[str, Any]:
        # torchvision's Compose repr lists every step with its sizes, interpolation and
        # mean/std: the preprocessing, as text.
        return {"adapter": type(self).__name__, "preprocess": repr(self.preprocess)}

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> OpenCLIPDualEncoder:
        """``openclip:NAME`` (``hf-hub:...`` or ``local-dir:...``). Raises
        ``MissingExtraError`` when open_clip cannot be imported."""
        where, torch_dtype = resolve_device(device), resolve_dtype(dtype)
        try:
            import open_clip
        except ImportError as exc:  # open_clip imports torchvision
            raise MissingExtraError(
                f"open_clip could not be imported ({exc}); install the extra: "
                "pip install 'mechtune[openclip]' (it needs a working torchvision)"
            ) from exc
        precision = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "pure_bf16"}
        precision[torch.float16] = "pure_fp16"
        model, preprocess = open_clip.create_model_from_pretrained(
            name, device=where, precision=precision[torch_dtype]
        )
        return cls(model, open_clip.get_tokenizer(name), preprocess)
