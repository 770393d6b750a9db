"""The phantom VQA model: the default yes/no VLM of the paraphrase half.

- **Image:** the shipped phantom CLIP's image tower, frozen.
- **Question:** the real pretrained MiniLM (all-MiniLM-L6-v2), mean-pooled, frozen while
  the head trains (LoRA may adapt it later).
- **Fusion head:** a small gated MLP over the image and question embeddings that outputs
  (yes, no) logits.

The head is trained on one narrow register only, the benchmark's question families
("Is there X?", "Is there evidence of X?", "Does the chest X-ray show X?"), as real VQA
training sets are. Paraphrases in other registers move MiniLM's question embedding, and
the answers that flip with them expose a genuine phrasing sensitivity of the pretrained
text encoder.

``images`` passed to :meth:`PhantomVQA.margin` are either radiographs (``uint8
[B, H, W]``) or image embeddings already computed by :meth:`PhantomVQA.embed_images`
(``float [B, D]``); training and evaluation cache the latter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import ConfigError, DataError
from mechtune.models.minilm import MiniLMTower
from mechtune.models.sites import BERT_LORA
from mechtune.sim.clip import (
    ImageEncoder,
    PhantomCLIPConfig,
    default_checkpoint,
    drop_legacy_text_model,
)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass(frozen=True)
class PhantomVQAConfig:
    """``hidden``: the fusion head's width; ``image``: the shape of the frozen image tower,
    which must match the phantom CLIP checkpoint its weights are loaded from."""

    hidden: int = 256
    image: PhantomCLIPConfig = field(default_factory=PhantomCLIPConfig)

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ConfigError(f"hidden must be >= 1, got {self.hidden}")
        if isinstance(self.image, dict):
            object.__setattr__(self, "image", PhantomCLIPConfig.from_dict(self.image))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image"] = self.image.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhantomVQAConfig:
        """Inverse of ``to_dict``. Older heads (the shipped one among them) also hold
        ``text_model``, which nothing read; it must name MiniLM, the question encoder
        every phantom VQA head is built on, or a ``ConfigError`` names it."""
        d = dict(d)
        drop_legacy_text_model(d, "phantom VQA head")
        return cls(hidden=d["hidden"], image=PhantomCLIPConfig.from_dict(d["image"]))


class FusionHead(nn.Module):
    """``image [B, D], question [B, D] -> logits [B, 2]`` (yes, no).

    h = relu(W_i i + W_q q + (U_i i) * (U_q q) + b): the gated product lets the question
    select which image features matter, which a plain concatenation MLP learns slowly.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.image = nn.Linear(dim, hidden)
        self.question = nn.Linear(dim, hidden, bias=False)
        self.image_gate = nn.Linear(dim, hidden, bias=False)
        self.question_gate = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.logits = nn.Linear(hidden, 2)

    def forward(self, image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        h = (
            self.image(image)
            + self.question(question)
            + self.image_gate(image) * self.question_gate(question)
        )
        return self.logits(self.out(h))


class PhantomVQA(nn.Module):
    """Frozen phantom image tower + MiniLM question encoder + fusion head (YesNoVLM)."""

    def __init__(
        self, config: PhantomVQAConfig | None = None, text: MiniLMTower | None = None
    ) -> None:
        super().__init__()
        self.config = config or PhantomVQAConfig()
        self.image_encoder = ImageEncoder(self.config.image)
        self.question = text or MiniLMTower()
        if self.question.dim != self.config.image.embed_dim:
            raise ConfigError(
                f"image.embed_dim {self.config.image.embed_dim} must equal the question "
                f"encoder's width {self.question.dim}: the fusion head takes both at one width"
            )
        self.head = FusionHead(self.config.image.embed_dim, self.config.hidden)
        for p in self.image_encoder.parameters():
            p.requires_grad_(False)
        for p in self.question.parameters():
            p.requires_grad_(False)
        self._blank: torch.Tensor | None = None

    # -- YesNoVLM ----------------------------------------------------------------------------

    @property
    def layers(self) -> nn.ModuleList:
        return self.question.layers

    @property
    def layers_pattern(self) -> str:
        return "question.bert.encoder.layer"

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return BERT_LORA

    @property
    def module(self) -> nn.Module:
        return self

    def margin(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B]`` logit(yes) − logit(no)."""
        return self.margin_from_logits(self.first_token_logits(images, questions))

    def first_token_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, 2]`` float32: the answer head's (yes, no) logits. The phantom model has
        no language-model head, so its answer "vocabulary" is the 2-way head (``V = 2``,
        ``answer_ids = (0, 1)``). Over two classes the vocabulary cross-entropy towards
        the answer equals the binary cross-entropy on the margin m = yes − no:
        −log softmax(yes, no)[yes] = −log sigmoid(m), so ``answer_loss="vocab"`` and
        ``"binary"`` train it on the same objective."""
        return self.answer_logits(images, questions).float()

    @property
    def answer_ids(self) -> tuple[int, int]:
        """``(0, 1)``: the answer head's yes and no columns."""
        return 0, 1

    def margin_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, 2] -> [B]`` logit(yes) − logit(no), float32."""
        logits = logits.float()
        return logits[:, 0] - logits[:, 1]

    def answer_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, 2]`` (yes, no) logits."""
        if len(questions) != len(images):
            raise DataError(f"{len(images)} images but {len(questions)} questions")
        image = self._image_embeddings(images)
        return self.head(image, self.embed_questions(questions))

    def embed_questions(self, questions: Sequence[str]) -> torch.Tensor:
        """``[B, D]`` pooled MiniLM embeddings (differentiable through any LoRA)."""
        tokens = self.question.tokenize(questions)
        device = next(self.head.parameters()).device
        tokens = {k: v.to(device) for k, v in tokens.items()}
        return self.question(**tokens)

    def readout_positions(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """Every real question token: the head reads their mean."""
        return self.question.tokenize(questions)["attention_mask"].bool()

    def blank_images(self, images: Any) -> Any:
        if torch.is_tensor(images) and images.is_floating_point():
            return self.blank_embedding().expand(len(images), -1).to(images.device)
        return np.zeros_like(np.asarray(images))

    @property
    def image_mode(self) -> str:
        """L: the phantom image tower reads 8-bit grey radiographs."""
        return "L"

    def prepare_images(self, images: Sequence[Any]) -> torch.Tensor:
        """``uint8 [H, W]`` radiographs (one per row, all of the tower's size) -> their
        ``[N, D]`` embeddings (:meth:`embed_images`): the tower is frozen, so each image is
        embedded once. Raises ``DataError`` naming the first image of another shape."""
        size = self.config.image.image_size
        for i, image in enumerate(images):
            array = np.asarray(image)
            if array.shape != (size, size) or array.dtype != np.uint8:
                raise DataError(
                    f"image {i} is {array.dtype} {list(array.shape)} but the phantom image "
                    f"tower takes uint8 [{size}, {size}] grey radiographs"
                )
        if not len(images):
            return torch.zeros(0, self.config.image.embed_dim)
        return self.embed_images(np.stack([np.asarray(im) for im in images]))

    @property
    def states_depend_on_image(self) -> bool:
        """False: the MiniLM question encoder never sees the image."""
        return False

    # -- images -------------------------------------------------------------------------------

    def embed_images(self, images: np.ndarray | torch.Tensor, batch: int = 256) -> torch.Tensor:
        """``uint8 [B, H, W] -> [B, D]`` L2-normalised phantom CLIP image embeddings."""
        x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        device = next(self.head.parameters()).device
        with torch.no_grad():
            parts = [
                nn.functional.normalize(self.image_encoder(x[i : i + batch].to(device)), dim=-1)
                for i in range(0, len(x), batch)
            ]
        return torch.cat(parts) if parts else torch.zeros(0, self.config.image.embed_dim)

    def blank_embedding(self) -> torch.Tensor:
        """``[1, D]``: the embedding of an all-black radiograph."""
        if self._blank is None:
            size = self.config.image.image_size
            self._blank = self.embed_images(np.zeros((1, size, size), dtype=np.uint8))
        return self._blank

    def _image_embeddings(self, images: Any) -> torch.Tensor:
        if torch.is_tensor(images) and images.is_floating_point():
            if images.dim() != 2 or images.shape[1] != self.config.image.embed_dim:
                raise DataError(
                    f"image embeddings must be [B, {self.config.image.embed_dim}], "
                    f"got {list(images.shape)}"
                )
            return images.to(next(self.head.parameters()).device)
        array = np.asarray(images)
        if array.dtype != np.uint8 or array.ndim != 3:
            raise DataError(
                f"images must be uint8 [B, H, W] radiographs or float [B, D] embeddings, "
                f"got {array.dtype} {list(array.shape)}"
            )
        return self.embed_images(array)

    # -- persistence --------------------------------------------------------------------------

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
        """The head's weights (the towers come from their own checkpoints) and config."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        with atomic_path(out / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        meta = {"model": self.config.to_dict(), **(extra or {})}
        write_json(out / CONFIG, meta, sort_keys=True)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        text: MiniLMTower | None = None,
        image_checkpoint: str | Path | None = None,
    ) -> PhantomVQA:
        """A saved head, with the image tower from the phantom CLIP checkpoint."""
        path = Path(folder)
        if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path}: expected {WEIGHTS} and {CONFIG}")
        meta = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        model = cls(PhantomVQAConfig.from_dict(meta["model"]), text=text)
        model.head.load_state_dict(load_file(str(path / WEIGHTS)))
        model.load_image_tower(image_checkpoint or default_checkpoint())
        return model.eval()

    def load_image_tower(self, clip_folder: str | Path) -> None:
        """Copy the image tower weights from a phantom CLIP checkpoint.

        Raises ``ConfigError`` naming the fields where ``config.image`` differs from the
        shape the checkpoint was trained with.
        """
        meta = json.loads((Path(clip_folder) / CONFIG).read_text(encoding="utf-8"))
        theirs = PhantomCLIPConfig.from_dict(meta["model"])
        if theirs != self.config.image:
            differ = {
                k: (v, theirs.to_dict()[k])
                for k, v in self.config.image.to_dict().items()
                if v != theirs.to_dict()[k]
            }
            raise ConfigError(
                f"image config differs from the checkpoint {clip_folder}: "
                + ", ".join(f"image.{k} = {a} here, {b} there" for k, (a, b) in differ.items())
            )
        state = load_file(str(Path(clip_folder) / WEIGHTS))
        self.image_encoder.load_state_dict(
            {
                k.removeprefix("image_encoder."): v
                for k, v in state.items()
                if k.startswith("image_encoder.")
            }
        )
        self._blank = None


def default_vqa_checkpoint() -> Path:
    """The trained phantom VQA head shipped inside the package."""
    return Path(__file__).parent / "resources" / "phantom_vqa"


def load_default_vqa(text: MiniLMTower | None = None) -> PhantomVQA:
    return PhantomVQA.load(default_vqa_checkpoint(), text=text)
