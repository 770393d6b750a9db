"""The phantom CLIP: a small CNN image tower trained LiT-style against locked MiniLM.

The image tower ends in flatten -> MLP rather than global pooling, and training uses no
horizontal flips: both would destroy laterality (phantom probe, PHANTOM-NOTES.md). Text
embeddings are centred by a fixed mean report embedding and re-normalised, for training
and evaluation alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import ConfigError
from mechtune.models.minilm import MINILM_ID, MiniLMTower

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def drop_legacy_text_model(d: dict[str, Any], what: str) -> None:
    """Remove ``text_model`` from a checkpoint config dict in place. Older phantom
    checkpoints recorded it though nothing read it; it must name MiniLM, the only text
    tower a phantom model is built on, or a ConfigError names the key and value."""
    text_model = d.pop("text_model", MINILM_ID)
    if text_model != MINILM_ID:
        raise ConfigError(
            f"text_model {text_model!r} in a checkpoint config: the {what} is built on "
            f"MiniLM ({MINILM_ID}) and cannot be loaded for another text tower"
        )


@dataclass(frozen=True)
class PhantomCLIPConfig:
    """Image tower shape: a patchify stem, strided convolutions, then flatten -> MLP.

    ``image_size``: the side of the square uint8 radiographs it takes, in pixels;
    ``stem_patch``: the stem's kernel and stride; ``channels``: the stem's output channels,
    then one stride-2 3x3 convolution per further entry; ``hidden``: the MLP's width;
    ``embed_dim``: the output width, which must equal the text tower's (MiniLM: 384).
    """

    image_size: int = 128
    embed_dim: int = 384
    stem_patch: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    hidden: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        for name in ("image_size", "embed_dim", "stem_patch", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"channels must be one or more positive widths, got {self.channels}")
        if self.image_size % self.downsample:
            raise ConfigError(
                f"image_size {self.image_size} must be divisible by stem_patch * "
                f"2**(len(channels) - 1) = {self.downsample}"
            )

    @property
    def downsample(self) -> int:
        return self.stem_patch * 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhantomCLIPConfig:
        """Inverse of ``to_dict``. Older checkpoints (the shipped ones among them) also hold
        ``text_model``, a record of the text tower that nothing read; it is accepted only
        when it names the tower a checkpoint loads with by default (MiniLM), and otherwise
        refused with a ``ConfigError`` naming the key and value."""
        d = dict(d)
        drop_legacy_text_model(d, "phantom CLIP")
        return cls(**d)


class ImageEncoder(nn.Module):
    """uint8 radiographs ``[B, H, W]`` -> embeddings ``[B, embed_dim]`` (not normalised).

    No global pooling: the flattened map keeps where things are, so left and right stay
    distinguishable.
    """

    def __init__(self, config: PhantomCLIPConfig) -> None:
        super().__init__()
        c0 = config.channels[0]
        blocks: list[nn.Module] = [
            nn.Conv2d(1, c0, config.stem_patch, stride=config.stem_patch),
            nn.ReLU(),
        ]
        for c_in, c_out in zip(config.channels[:-1], config.channels[1:], strict=True):
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*blocks)
        side = config.image_size // config.downsample
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.channels[-1] * side * side, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.embed_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1).to(torch.float32) * (1.0 / 255.0)
        x = (x - 0.45) * 4.0
        # The scaling stays float32; the tower runs in its weights' dtype (bf16 when loaded so).
        return self.head(self.conv(x.to(next(self.conv.parameters()).dtype)))


class PhantomCLIP(nn.Module):
    """Dual encoder: trainable image tower, locked MiniLM text tower with fixed centring."""

    text_center: torch.Tensor

    def __init__(
        self, config: PhantomCLIPConfig | None = None, text: MiniLMTower | None = None
    ) -> None:
        super().__init__()
        self.config = config or PhantomCLIPConfig()
        self.image_encoder = ImageEncoder(self.config)
        self.text = text or MiniLMTower()
        if self.text.dim != self.config.embed_dim:
            raise ConfigError(
                f"embed_dim {self.config.embed_dim} must equal the text tower's width "
                f"{self.text.dim}: image and text embeddings share one space"
            )
        for p in self.text.parameters():
            p.requires_grad_(False)
        self.register_buffer("text_center", torch.zeros(self.config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # -- the dual-encoder interface --------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.text.tokenizer

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.text.layers

    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8 [B, H, W] -> [B, D]``, L2-normalised."""
        x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        return nn.functional.normalize(self.image_encoder(x), dim=-1)

    def center_text(self, raw: torch.Tensor) -> torch.Tensor:
        """Centre raw MiniLM embeddings and re-normalise. ``[B, D] -> [B, D]``."""
        return nn.functional.normalize(raw - self.text_center, dim=-1)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """``N texts -> [N, D]``, centred and L2-normalised (no gradient)."""
        return self.center_text(self.text.encode(texts, batch_size=batch_size))

    def encode_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Differentiable text path from token ids. ``-> [B, D]``."""
        return self.center_text(self.text(input_ids, attention_mask, token_type_ids))

    # -- persistence ------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the image tower, the centring vector, the logit scale."""
        state = {f"image_encoder.{k}": v for k, v in self.image_encoder.state_dict().items()}
        state["text_center"] = self.text_center.detach().clone()
        state["logit_scale"] = self.logit_scale.detach().clone()
        return {k: v.contiguous() for k, v in state.items()}

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / WEIGHTS) as tmp:
            save_file(self.trainable_state(), str(tmp), metadata={"format": "pt"})
        meta = {"model": self.config.to_dict(), **(extra or {})}
        write_json(out / CONFIG, meta, sort_keys=True)

    @classmethod
    def load(cls, folder: str | Path, text: MiniLMTower | None = None) -> PhantomCLIP:
        path = Path(folder)
        if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path}: expected {WEIGHTS} and {CONFIG}")
        meta = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        model = cls(PhantomCLIPConfig.from_dict(meta["model"]), text=text)
        state = load_file(str(path / WEIGHTS))
        encoder = {
            k.removeprefix("image_encoder."): v
            for k, v in state.items()
            if k.startswith("image_encoder.")
        }
        model.image_encoder.load_state_dict(encoder)
        model.text_center.copy_(state["text_center"])
        with torch.no_grad():
            model.logit_scale.copy_(state["logit_scale"])
        return model.eval()


def default_checkpoint() -> Path:
    """The trained phantom CLIP shipped inside the package."""
    return Path(__file__).parent / "resources" / "phantom_clip"


def load_default(text: MiniLMTower | None = None) -> PhantomCLIP:
    return PhantomCLIP.load(default_checkpoint(), text=text)
