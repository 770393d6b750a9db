"""The negation task on dual encoders: its settings, examples and batches.

The image tower is frozen, so image embeddings are computed once and passed in. Each step
draws a batch of (image, negated caption) pairs for L_CLIP and a batch of claim sets (or
NegBench MCQ options) for the claim term, encodes every distinct text of the step once,
casts the embeddings to float32 (a bf16 model's rounding distorts score gaps of about
1e-2) and calls the method's loss. :class:`~mechtune.train.trainer.Trainer` does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mechtune.errors import ConfigError, DataError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.train.lora import LoraSettings
from mechtune.train.losses import NegationBatch
from mechtune.train.optimizers import check_optimizer
from mechtune.train.trainer import SCALINGS


@dataclass(frozen=True)
class CaptionExample:
    """A negated caption and its image's row in the image-embedding tensor."""

    text: str
    image: int


@dataclass(frozen=True)
class ClaimExample:
    """A claim set (or MCQ options), the correct one first, and its image's row.

    ``polarity``: the correct claim's, "affirmative" (it states a finding present) or
    "negated" (absent), None when unknown (MCQ options); ``twin``: the index in
    ``candidates`` of the foil that states the correct claim's finding with the opposite
    existence ("No left pneumothorax." for "Small left pneumothorax."), None when there is
    none. Both are read only by the per-batch polarity balance and the pair-margin term
    (:class:`LoopConfig` ``batch_polarity``, ``margin_weight``).
    """

    candidates: tuple[str, ...]
    image: int
    polarity: str | None = None
    twin: int | None = None


@dataclass(frozen=True)
class LoopConfig:
    """Settings of a negation run. A method may fix some (``beta``, ``lora``; see
    :data:`mechtune.train.methods.METHODS`); its loss is the method's, not a setting.

    ``caption_batch`` / ``claim_batch``: captions and claim sets per step; ``lam``: the
    weight of L_CLIP in the NAST loss; ``beta``: the NAST exponent of the per-block factor
    alpha_l ** beta; ``shards``: the global batch is split into this many shards (accumulated
    in one process; under DDP a multiple of the number of ranks, spread evenly); ``scaling``:
    "gradient" (NAST as specified: block l's gradients times its factor; Adam divides each
    parameter's step by its own gradient scale, so under AdamW this only matters where the
    factor is 0 or tiny, while SGD's step scales with it) or "lr" (per-block learning rates,
    which both keep); ``optimizer``: "adamw" (torch.optim.AdamW, decoupled weight decay)
    or "sgd" (torch.optim.SGD, coupled L2 weight decay) with heavy-ball ``momentum`` in
    [0, 1) (sgd only); docs/optimizers.md derives how each meets the scaling
    (:mod:`mechtune.train.optimizers`); ``lora``: LoRA settings, None for full
    fine-tuning of the text blocks;
    ``eval_every``: every this many steps, the claim accuracy on validation-split claim
    sets is measured and logged (``eval/claim_accuracy``; 0: never; read-only, the run
    trains the same; :meth:`~mechtune.train.trainer.Trainer.run_evaluation`).
    Raises ConfigError naming the field for a bad value.
    """

    steps: int = 200
    caption_batch: int = 32
    claim_batch: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    lam: float = 0.5
    beta: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    shards: int = 1
    scaling: str = "gradient"
    optimizer: str = "adamw"
    momentum: float = 0.0
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    eval_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "caption_batch", "claim_batch", "checkpoint_every", "shards"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: never), got {self.eval_every}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.scaling not in SCALINGS:
            raise ConfigError(f"scaling must be 'gradient' or 'lr', got {self.scaling!r}")
        check_optimizer(self.optimizer, self.momentum)
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam must be in [0, 1], got {self.lam}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings.from_dict(self.lora))
        # Every shard (DDP rank) must get the same number of examples: an empty shard has
        # no loss to back-propagate, and unequal shards would weight examples unequally
        # when the shards' mean losses are averaged.
        for name in ("caption_batch", "claim_batch"):
            if getattr(self, name) % self.shards:
                raise ConfigError(
                    f"{name} ({getattr(self, name)}) must be a multiple of shards "
                    f"({self.shards}): each shard takes an equal part of the batch"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict() if self.lora is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        return cls(**d)


def _encode_distinct(encoder: DualEncoder, texts: Sequence[str]) -> torch.Tensor:
    """Encode each distinct text once (with gradients); rows follow ``texts``."""
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    # float32 for the loss whatever the model's dtype
    emb = encoder.encode_tokens(encoder.tokenize(unique)).float()
    return emb[torch.tensor([index[t] for t in texts], device=emb.device)]


def _claim_tensors(
    encoder: DualEncoder, batch: Sequence[ClaimExample]
) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(c.candidates) for c in batch)
    texts = [t for c in batch for t in c.candidates]
    flat = _encode_distinct(encoder, texts)
    cands = flat.new_zeros(len(batch), k, flat.shape[1])
    mask = torch.zeros(len(batch), k, dtype=torch.bool, device=flat.device)
    row = 0
    for i, c in enumerate(batch):
        n = len(c.candidates)
        cands[i, :n] = flat[row : row + n]
        mask[i, :n] = True
        row += n
    return cands, mask


def _slice(items: list[Any], shard: int, shards: int) -> list[Any]:
    """Shard ``shard`` of ``shards`` equal consecutive parts of ``items``."""
    return items[shard * len(items) // shards : (shard + 1) * len(items) // shards]


class NegationTask:
    """Batches of the negation task for :class:`~mechtune.train.trainer.Trainer`.

    ``images``: ``[N, D]`` image embeddings (rows named by the examples); ``claims``: the
    claim sets (or MCQ options) the method trains on; ``loss``: the method's loss module
    (from :func:`~mechtune.train.losses.create_loss`), called with a float32
    :class:`~mechtune.train.losses.NegationBatch` whose ``scale`` is the encoder's
    exp(logit scale) read when the task is built. Raises DataError when captions or
    claims are empty or name an image row outside ``images``.
    """

    def __init__(
        self,
        encoder: DualEncoder,
        images: torch.Tensor,
        captions: Sequence[CaptionExample],
        claims: Sequence[ClaimExample],
        loss: nn.Module,
        config: LoopConfig,
    ) -> None:
        if not captions or not claims:
            raise DataError("training needs at least one caption and one claim set")
        rows = [c.image for c in captions] + [c.image for c in claims]
        bad = [r for r in rows if not 0 <= r < len(images)]
        if bad:
            raise DataError(
                f"examples name image rows {sorted(set(bad))[:3]} outside the "
                f"{len(images)} image embeddings"
            )
        self.encoder, self.loss, self.config = encoder, loss, config
        # Read once: the logit scale is not trained (the trainer refuses any trainable
        # parameter outside the blocks), and a read per step would wait for the device.
        self.scale = float(encoder.logit_scale)
        self.images = images.detach().float()
        self.captions, self.claims = list(captions), list(claims)
        self.shards = config.shards

    def sample(self, generator: torch.Generator) -> tuple[list[CaptionExample], list[ClaimExample]]:
        """The step's captions then claim sets, drawn uniformly with replacement."""
        cap = torch.randint(len(self.captions), (self.config.caption_batch,), generator=generator)
        clm = torch.randint(len(self.claims), (self.config.claim_batch,), generator=generator)
        return [self.captions[i] for i in cap.tolist()], [self.claims[i] for i in clm.tolist()]

    def loss_terms(
        self, batch: tuple[list[CaptionExample], list[ClaimExample]], shard: int, shards: int
    ) -> dict[str, torch.Tensor]:
        """The loss terms of shard ``shard`` (an equal slice of both lists)."""
        captions, claims = (_slice(part, shard, shards) for part in batch)
        text = _encode_distinct(self.encoder, [c.text for c in captions])
        cands, mask = _claim_tensors(self.encoder, claims)
        device = text.device
        return self.loss(
            NegationBatch(
                caption_image=self.images[[c.image for c in captions]].to(device),
                caption_text=text,
                claim_image=self.images[[c.image for c in claims]].to(device),
                candidates=cands,
                mask=mask,
                scale=self.scale,
            )
        )
