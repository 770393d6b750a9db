"""A toy yes/no VLM whose every step can be recomputed by hand: word embeddings plus an
image vector, three residual blocks, mean over the words, a linear margin head."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

D = 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.proj(x))


class ToyVLM(nn.Module):
    """Word embeddings -> 3 residual blocks -> mean over words -> margin; images are
    vectors added to every position."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vocab: dict[str, int] = {}
        self.embed = nn.Embedding(64, D)
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.readout = nn.Linear(D, 1)

    @property
    def layers(self) -> nn.ModuleList:
        return self.blocks

    @property
    def layers_pattern(self) -> str:
        return "blocks"

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return ("proj",)

    @property
    def module(self) -> nn.Module:
        return self

    def tokens(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        words = [q.lower().rstrip("?").split() for q in questions]
        width = max(len(w) for w in words)
        ids = torch.zeros(len(words), width, dtype=torch.long)
        mask = torch.zeros(len(words), width, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                ids[i, j] = self.vocab.setdefault(w, len(self.vocab) + 1)
                mask[i, j] = True
        return ids, mask

    def states(self, images: Any, questions: Sequence[str], upto: int | None = None):
        ids, mask = self.tokens(questions)
        x = self.embed(ids) + torch.as_tensor(images, dtype=torch.float32)[:, None, :]
        for block in self.blocks[:upto]:
            x = block(x)
        return x, mask

    def head(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float().unsqueeze(-1)
        return self.readout((x * m).sum(1) / m.sum(1)).squeeze(-1)

    def margin(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        x, mask = self.states(images, questions)
        return self.head(x, mask)

    def first_token_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, 2]``: (margin, 0) as (yes, no) logits."""
        margin = self.margin(images, questions)
        return torch.stack([margin, torch.zeros_like(margin)], dim=-1)

    @property
    def answer_ids(self) -> tuple[int, int]:
        return 0, 1

    def margin_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0] - logits[:, 1]

    def readout_positions(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        return self.tokens(questions)[1]

    def blank_images(self, images: Any) -> Any:
        return torch.zeros_like(torch.as_tensor(images))

    @property
    def image_mode(self) -> str:
        return "L"

    def prepare_images(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.as_tensor(np.stack(images), dtype=torch.float32)

    @property
    def states_depend_on_image(self) -> bool:
        return True  # images are added to every position
