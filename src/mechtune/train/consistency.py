"""Targeted consistency LoRA (PSF-Med, arXiv 2602.21428): LoRA on chosen LM layers,
trained with answer cross-entropy plus a symmetric KL between a question and its paraphrase.

Works on any :class:`~mechtune.models.yes_no.YesNoVLM`. The yes/no distribution of one
(image, question) is the softmax over its (yes, no) logits, which depends on the margin
m = logit(yes) − logit(no) only: p(yes) = sigmoid(m). For two such distributions the
symmetric KL has the closed form (p − q)·(m_p − m_q), used here and checked against the
definition in the tests. Pure consistency training collapses to one answer for every
question, so the cross-entropy term is required (``consistency_weight`` < inf).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from mechtune.data.schema import ImageQuestion
from mechtune.errors import ConfigError, DataError
from mechtune.models.yes_no import YesNoVLM, layer_of_parameter, take_rows
from mechtune.train.checkpoint import load_latest_checkpoint, save_checkpoint
from mechtune.train.lora import block_indices


def symmetric_kl(margin_a: torch.Tensor, margin_b: torch.Tensor) -> torch.Tensor:
    """``[B], [B] -> [B]``: KL(p‖q) + KL(q‖p) for p = sigmoid(a), q = sigmoid(b)."""
    return (torch.sigmoid(margin_a) - torch.sigmoid(margin_b)) * (margin_a - margin_b)


class ConsistencyLoss(nn.Module):
    """CE on the answer (original and paraphrase) + w · symmetric KL between them."""

    def __init__(self, consistency_weight: float = 1.0) -> None:
        super().__init__()
        if consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {consistency_weight}")
        self.weight = consistency_weight

    def forward(
        self, original: torch.Tensor, paraphrase: torch.Tensor, answer: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Margins ``[B]`` of the original and one paraphrase; ``answer [B]`` bool."""
        target = answer.to(original.dtype)
        bce = nn.functional.binary_cross_entropy_with_logits
        ce = (bce(original, target) + bce(paraphrase, target)) / 2
        kl = symmetric_kl(original, paraphrase).mean()
        return {"answer_ce": ce, "symmetric_kl": kl, "loss": ce + self.weight * kl}


@dataclass(frozen=True)
class ConsistencyConfig:
    """``layers``: LM blocks that get LoRA (None: all). Defaults match the phantom recipe."""

    layers: tuple[int, ...] | None = None
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    lr: float = 5e-4
    weight_decay: float = 0.0
    steps: int = 150
    batch_size: int = 32
    consistency_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.layers is not None:
            object.__setattr__(self, "layers", block_indices(self.layers, "layers"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConsistencyConfig:
        return cls(**d)


def lm_lora_config(vlm: YesNoVLM, config: ConsistencyConfig) -> LoraConfig:
    """LoRA on ``config.layers`` of the VLM's language blocks and nothing else."""
    n_layers = len(vlm.layers)
    layers = list(range(n_layers)) if config.layers is None else list(config.layers)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(f"LoRA layers {bad} out of range: the model has blocks 0..{n_layers - 1}")
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(vlm.lora_targets),
        layers_to_transform=layers,
        layers_pattern=vlm.layers_pattern,
        bias="none",
    )


@dataclass(frozen=True)
class ConsistencyExample:
    """One training question: its image (whatever the VLM's ``margin`` takes, by index
    into the caller's image batch), the original text, its paraphrases, the answer."""

    image: int
    question: str
    paraphrases: tuple[str, ...]
    answer: bool


def consistency_examples(questions: Sequence[ImageQuestion]) -> list[ConsistencyExample]:
    """Training examples of paraphrase sets bound to their image rows."""
    return [
        ConsistencyExample(q.image, q.record.question, tuple(q.record.paraphrases), q.record.answer)
        for q in questions
    ]


class ConsistencyTrainer:
    """Consistency LoRA on a YesNoVLM, with checkpoints and exact resume."""

    def __init__(self, vlm: YesNoVLM, config: ConsistencyConfig, out_dir: str | Path) -> None:
        self.vlm = vlm
        self.config = config
        self.out = Path(out_dir)
        # peft injects adapters into the VLM's own modules, so vlm.margin uses them.
        self.model = get_peft_model(vlm.module, lm_lora_config(vlm, config))
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        outside = [n for n in self.params if layer_of_parameter(n, vlm.layers_pattern) is None]
        if outside:
            raise ConfigError(f"trainable parameters outside the LM blocks: {outside[:3]}")
        self.optim = torch.optim.AdamW(
            list(self.params.values()), lr=config.lr, weight_decay=config.weight_decay
        )
        self.loss = ConsistencyLoss(config.consistency_weight)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []

    def save(self) -> Path:
        state = {"config": self.config.to_dict(), "history": self.history}
        return save_checkpoint(
            self.out, self.step, self.params, self.optim, self.generator, state, self.model
        )

    def resume(self) -> bool:
        state = load_latest_checkpoint(self.out, self.params, self.optim, self.generator)
        if state is None:
            return False
        self.step, self.history = int(state["step"]), list(state["history"])
        return True

    def train_step(self, images: Any, examples: Sequence[ConsistencyExample]) -> dict[str, float]:
        cfg = self.config
        picks = torch.randint(len(examples), (cfg.batch_size,), generator=self.generator)
        batch = [examples[i] for i in picks.tolist()]
        # the sampler's own stream picks the paraphrase, so resume replays it exactly
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        chooser = random.Random(seed)
        paraphrases = [chooser.choice(e.paraphrases) for e in batch]
        rows = [e.image for e in batch]
        texts = [e.question for e in batch] + paraphrases
        margins = self.vlm.margin(take_rows(images, rows + rows), texts)
        n = len(batch)
        answer = torch.tensor([e.answer for e in batch], device=margins.device)
        terms = self.loss(margins[:n], margins[n:], answer)
        self.optim.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optim.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def fit(
        self,
        images: Any,
        examples: Sequence[ConsistencyExample],
        *,
        resume: bool = False,
        stop_after: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train to ``config.steps``; ``stop_after`` ends early, as a kill would."""
        if not examples:
            raise DataError("consistency training needs at least one question")
        empty = [e.question for e in examples if not e.paraphrases]
        if empty:
            raise DataError(f"questions without paraphrases: {empty[:3]}")
        if resume:
            self.resume()
        done = 0
        self.model.train()
        while self.step < self.config.steps:
            terms = self.train_step(images, examples)
            self.history.append({"step": self.step, **terms})
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save()
            done += 1
            if progress is not None:
                progress(1)
            if stop_after is not None and done >= stop_after:
                break
        self.model.eval()
        return self.history


def lora_layers(model: PeftModel | nn.Module, layers_pattern: str) -> list[int]:
    """The LM blocks that hold trainable LoRA parameters."""
    return sorted(
        {
            layer
            for name, p in model.named_parameters()
            if p.requires_grad
            and "lora_" in name
            and (layer := layer_of_parameter(name, layers_pattern)) is not None
        }
    )
