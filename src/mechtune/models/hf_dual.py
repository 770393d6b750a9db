"""transformers dual encoders behind ``hf:``: ``CLIPModel``, ``SiglipModel`` and
``VisionTextDualEncoderModel``, each with its own tokenizer and image processor.

``hf:NAME`` reads the saved config's ``model_type`` and loads the adapter registered for it
(:func:`register_hf_adapter`). Images go through the model's own image processor, loaded
from the folder's ``preprocessor_config.json`` with ``AutoImageProcessor``; without
torchvision it resolves to the Pillow processors (``CLIPImageProcessorPil``,
``SiglipImageProcessorPil``, ``ViTImageProcessorPil``), which resize, crop, rescale and
normalise exactly as the checkpoint declares. A folder without that file gets the class's
default processor at the vision tower's ``image_size``, and ``preprocess_config()`` says
so (``"source": "default"``). Grey radiographs reach these RGB models as three equal
channels.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from mechtune.errors import ConfigError, UnsupportedModelError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.images import ImageBatch, pil_images
from mechtune.models.precision import resolve_device, resolve_dtype

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def _pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` return an output object in transformers 5, a tensor before."""
    return out if torch.is_tensor(out) else out.pooler_output


def weight_files(name: str) -> list[Path]:
    """The weight files of a local model folder (``*.safetensors``, ``*.bin``); none for a
    hub id (its fingerprint is then the loaded state dict's)."""
    folder = Path(name)
    if not folder.is_dir():
        return []
    return sorted(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern))


class HFDualEncoder(DualEncoder):
    """Shared by the transformers adapters: the image processor and the image path.

    ``image_processor``: a transformers image processor (called with a list of RGB PIL
    images, returning ``pixel_values [B, 3, S, S]`` float32); None builds the class
    default (:meth:`default_image_processor`) at the vision tower's ``image_size``.
    """

    model_class: ClassVar[str] = ""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any = None,
        *,
        max_length: int | None = None,
        weight_files: Sequence[str | Path] = (),
        processor_source: str = "checkpoint",
    ) -> None:
        if max_length is None:
            max_length = int(model.config.text_config.max_position_embeddings)
        super().__init__(model, tokenizer, max_length=max_length, weight_files=weight_files)
        self.image_size = int(model.config.vision_config.image_size)
        if image_processor is None:
            image_processor, processor_source = self.default_image_processor(), "default"
        self.image_processor = image_processor
        self.processor_source = processor_source

    def default_image_processor(self) -> Any:
        """The class's processor with its default normalisation at ``image_size``.
        Raises ``UnsupportedModelError`` for an adapter that names none."""
        raise UnsupportedModelError(
            f"{type(self).__name__} has no default image processor; pass image_processor"
        )

    def pixel_values(self, batch: ImageBatch) -> torch.Tensor:
        """Images -> ``[B, 3, S, S]`` float32, by the model's image processor (on CPU)."""
        out = self.image_processor(images=pil_images(batch, "RGB"), return_tensors="pt")
        return out["pixel_values"]

    def _image_features(self, batch: ImageBatch) -> torch.Tensor:
        pixels = self.pixel_values(batch).to(device=self.device, dtype=self.dtype)
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return _pooled(self.model.get_text_features(**tokens))

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "adapter": type(self).__name__,
            "processor": json.loads(self.image_processor.to_json_string()),
            "source": self.processor_source,
        }

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @classmethod
    def load_model(cls, name: str, dtype: torch.dtype | None) -> Any:
        """``from_pretrained`` of the model class, weights loaded directly in ``dtype``
        (None: the checkpoint's, transformers' ``dtype="auto"``)."""
        import transformers

        model_cls = getattr(transformers, cls.model_class)
        return model_cls.from_pretrained(name, dtype=dtype if dtype is not None else "auto")

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> HFDualEncoder:
        """Load model, tokenizer and image processor from a folder or hub id.

        Raises ``OSError`` for files that cannot be read (``load_dual_encoder`` names the
        spec), ``ConfigError`` for a bad ``device``/``dtype``.
        """
        from transformers import AutoImageProcessor, AutoTokenizer

        where, torch_dtype = resolve_device(device), resolve_dtype(dtype)
        model = cls.load_model(name, torch_dtype).to(where)
        tokenizer = AutoTokenizer.from_pretrained(name)
        try:
            processor, source = AutoImageProcessor.from_pretrained(name), "checkpoint"
        except OSError:
            processor, source = None, "default"
            warnings.warn(
                f"{name}: no preprocessor_config.json; using {cls.__name__}'s default image "
                "processing at the model's image size",
                stacklevel=2,
            )
        return cls(
            model,
            tokenizer,
            processor,
            weight_files=weight_files(name),
            processor_source=source,
        )


class HFCLIPDualEncoder(HFDualEncoder):
    """transformers ``CLIPModel``: its tokenizer (dynamic padding) and CLIP image
    processor (shortest edge to S, centre crop, bicubic, CLIP mean/std)."""

    model_class = "CLIPModel"

    def default_image_processor(self) -> Any:
        from transformers import CLIPImageProcessorPil

        s = self.image_size
        return CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})


class SiglipDualEncoder(HFDualEncoder):
    """transformers ``SiglipModel`` (MedSigLIP, ``google/medsiglip-448``).

    Text is tokenised as ``SiglipProcessor`` is meant to be called (transformers' own
    docstrings: "make sure to set padding='max_length' as that's how the model was
    trained"): every text padded (and truncated) to ``max_position_embeddings`` (64),
    passing on the attention mask when the tokenizer returns one, as the processor does.
    ``SiglipTextModel`` pools ``last_hidden_state[:, -1, :]`` (site pooling ``"last"``):
    for a text shorter than 64 tokens that is a padding token, which tracing therefore
    patches and scores (:meth:`DualEncoder.traced_positions`). The score is
    ``sigmoid(logit_scale * cos + logit_bias)``; its ranking is the cosine's.
    """

    model_class = "SiglipModel"

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = dict(
            self.tokenizer(
                list(texts),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        if "attention_mask" not in out:  # the model attends every column; say so for tracing
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        return self._on_device(out)

    def default_image_processor(self) -> Any:
        from transformers import SiglipImageProcessorPil

        s = self.image_size
        return SiglipImageProcessorPil(size={"height": s, "width": s})

    @property
    def logit_bias(self) -> float:
        return float(self.model.logit_bias.detach().float())


# BERT-family towers with ``encoder.layer`` blocks and a [CLS] pooler, as the site declares.
BERT_FAMILY = ("BertModel", "RobertaModel", "XLMRobertaModel")


class VisionTextDualEncoder(HFDualEncoder):
    """transformers ``VisionTextDualEncoderModel`` with a BERT-family text tower: text
    features are the tower's pooler output on [CLS], projected (``text_projection``).

    Raises ``UnsupportedModelError`` for another text tower, or a BERT built without its
    pooling layer (``get_text_features`` would read a missing ``pooler_output``).
    """

    model_class = "VisionTextDualEncoderModel"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any = None, **kw: Any):
        text = type(model.text_model).__name__
        if text not in BERT_FAMILY or model.text_model.pooler is None:
            raise UnsupportedModelError(
                f"VisionTextDualEncoderModel text tower {text}"
                f"{' without a pooler' if text in BERT_FAMILY else ''} is not supported; "
                f"supported: {', '.join(BERT_FAMILY)} with their pooling layer"
            )
        super().__init__(model, tokenizer, image_processor, **kw)

    def default_image_processor(self) -> Any:
        from transformers import ViTImageProcessorPil

        s = self.image_size
        return ViTImageProcessorPil(size={"height": s, "width": s})


# -- hf: dispatch on the saved config's model_type -------------------------------------------

HFLoader = Callable[..., DualEncoder]
HF_ADAPTERS: dict[str, HFLoader] = {}


def register_hf_adapter(model_type: str, load: HFLoader) -> None:
    """Make ``hf:`` load configs of ``model_type`` with ``load(name, device=, dtype=)``.
    Raises ``ConfigError`` for an empty type."""
    if not model_type:
        raise ConfigError("register_hf_adapter: model_type must be a non-empty string")
    HF_ADAPTERS[model_type] = load


register_hf_adapter("clip", HFCLIPDualEncoder.from_pretrained)
register_hf_adapter("siglip", SiglipDualEncoder.from_pretrained)
register_hf_adapter("vision-text-dual-encoder", VisionTextDualEncoder.from_pretrained)


def load_hf(
    name: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> DualEncoder:
    """``hf:NAME``: the adapter of the config's ``model_type``.

    Raises ``UnsupportedModelError`` listing the supported types for any other, ``OSError``
    when the config cannot be read (offline hub ids among them).
    """
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name).model_type
    if model_type not in HF_ADAPTERS:
        raise UnsupportedModelError(
            f"hf:{name}: model_type {model_type!r} is not a supported dual encoder; "
            f"supported: {', '.join(sorted(HF_ADAPTERS))}"
        )
    return HF_ADAPTERS[model_type](name, device=device, dtype=dtype)


__all__ = [
    "HF_ADAPTERS",
    "HFCLIPDualEncoder",
    "HFDualEncoder",
    "SiglipDualEncoder",
    "VisionTextDualEncoder",
    "load_hf",
    "register_hf_adapter",
]
