"""The paraphrase-consistency task on yes/no VLMs (PSF-Med, arXiv 2602.21428): LoRA on
chosen language-model layers, trained with answer cross-entropy plus a symmetric KL
between a question and one of its paraphrases
(:class:`~mechtune.train.losses.ConsistencyLoss`).

The defaults of the answer term and the batch follow the released adapter
``saillab/medgemma-4b-targeted-lora-mimic-mt-12k`` (its model card): cross-entropy over
the vocabulary of the first answer token (``answer_loss="vocab"``), and an effective batch
of ``batch_size`` × ``grad_accum`` questions (there 1 × 8), accumulated over
``grad_accum`` micro-batches, one per shard of the
:class:`~mechtune.train.trainer.Trainer` (under DDP the micro-batches are spread over the
ranks). Works on any :class:`~mechtune.models.yes_no.YesNoVLM`; the trainer is the one
of both tasks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mechtune.data.schema import ImageQuestion
from mechtune.errors import ConfigError, DataError
from mechtune.models.yes_no import YesNoVLM, take_rows
from mechtune.train.lora import LoraSettings
from mechtune.train.losses import ANSWER_LOSSES, ConsistencyBatch
from mechtune.train.optimizers import check_optimizer


@dataclass(frozen=True)
class ConsistencyConfig:
    """Settings of a consistency run.

    ``lora`` (its ``layers`` are LM blocks; None: all); the optimiser's ``lr`` /
    ``weight_decay``; ``optimizer``: "adamw" (the released adapter's) or "sgd" with
    heavy-ball ``momentum`` in [0, 1) (sgd only; :mod:`mechtune.train.optimizers`);
    ``steps`` optimiser steps, each on ``batch_size`` × ``grad_accum`` questions (the
    effective batch) in ``grad_accum`` micro-batches of ``batch_size`` whose gradients are
    averaged (accumulation; under DDP spread over the ranks, so ``grad_accum`` must be a
    multiple of the number of processes); the KL weight ``consistency_weight``;
    ``answer_loss``: ``"vocab"`` (cross-entropy over the vocabulary of the first answer
    token towards the correct answer's canonical token, as the released adapter) or
    ``"binary"`` (binary cross-entropy on the yes/no margin); the sampler ``seed`` and
    ``checkpoint_every``; ``gradient_checkpointing``: recompute each language block's
    activations in the backward pass instead of keeping them (transformers' activation
    checkpointing, non-reentrant; same loss and gradients, less memory, about one more
    forward pass of time; a transformers model only,
    :func:`~mechtune.train.lora.enable_gradient_checkpointing`); ``eval_every``: every
    this many steps, the flip rate and accuracy on validation-split question groups are
    measured and logged (``eval/flip_rate``, ``eval/accuracy``; 0: never; read-only, the
    run trains the same). Other defaults match the phantom recipe. Raises ConfigError
    naming the field."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 5e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.0
    steps: int = 150
    batch_size: int = 32
    consistency_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    grad_accum: int = 1
    answer_loss: str = "vocab"
    gradient_checkpointing: bool = False
    eval_every: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings.from_dict(self.lora))
        if not isinstance(self.lora, LoraSettings):
            raise ConfigError(f"lora must be LoRA settings, got {self.lora!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: never), got {self.eval_every}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        check_optimizer(self.optimizer, self.momentum)
        if self.consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.answer_loss not in ANSWER_LOSSES:
            raise ConfigError(
                f"answer_loss must be one of {ANSWER_LOSSES}, got {self.answer_loss!r}"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(
                f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConsistencyConfig:
        return cls(**d)


@dataclass(frozen=True)
class ConsistencyExample:
    """One training question: its image (by index into the caller's image batch, whatever
    the VLM's ``margin`` takes), the original text, its paraphrases, the answer."""

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


class ConsistencyTask:
    """Batches of the consistency task for :class:`~mechtune.train.trainer.Trainer`.

    Each step draws ``batch_size × grad_accum`` questions and, from the sampler's own
    stream (so a resumed run replays it), one paraphrase of each. The trainer splits them
    into ``shards = grad_accum`` micro-batches of ``batch_size``; for each, one forward
    pass over the originals and the paraphrases gives the float32 first-token logits
    ``[2b, V]`` and, from them, the margins ``[2b]``
    (:meth:`~mechtune.models.yes_no.YesNoVLM.margin_from_logits`), which ``loss`` gets as
    a :class:`~mechtune.train.losses.ConsistencyBatch`. Raises DataError for no questions
    or a question without paraphrases.
    """

    def __init__(
        self,
        vlm: YesNoVLM,
        images: Any,
        examples: Sequence[ConsistencyExample],
        loss: nn.Module,
        config: ConsistencyConfig,
    ) -> None:
        if not examples:
            raise DataError("consistency training needs at least one question")
        empty = [e.question for e in examples if not e.paraphrases]
        if empty:
            raise DataError(f"questions without paraphrases: {empty[:3]}")
        self.vlm, self.images, self.loss, self.config = vlm, images, loss, config
        self.examples = list(examples)
        self.shards = config.grad_accum

    def sample(self, generator: torch.Generator) -> list[tuple[ConsistencyExample, str]]:
        """``batch_size × grad_accum`` (question, chosen paraphrase) pairs."""
        size = self.config.batch_size * self.config.grad_accum
        picks = torch.randint(len(self.examples), (size,), generator=generator)
        batch = [self.examples[i] for i in picks.tolist()]
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        chooser = random.Random(seed)
        return [(e, chooser.choice(e.paraphrases)) for e in batch]

    def loss_terms(
        self, batch: list[tuple[ConsistencyExample, str]], shard: int, shards: int
    ) -> dict[str, torch.Tensor]:
        """The loss terms of micro-batch ``shard`` of ``shards`` (equal consecutive parts)."""
        part = batch[shard * len(batch) // shards : (shard + 1) * len(batch) // shards]
        rows = [e.image for e, _ in part]
        texts = [e.question for e, _ in part] + [p for _, p in part]
        logits = self.vlm.first_token_logits(take_rows(self.images, rows + rows), texts).float()
        margins = self.vlm.margin_from_logits(logits).float()
        n = len(part)
        answer = torch.tensor([e.answer for e, _ in part], device=logits.device)
        terms: dict[str, torch.Tensor] = self.loss(
            ConsistencyBatch(
                original=logits[:n],
                paraphrase=logits[n:],
                original_margin=margins[:n],
                paraphrase_margin=margins[n:],
                answer=answer,
                answer_ids=self.vlm.answer_ids,
            )
        )
        return terms
