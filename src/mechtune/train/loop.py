"""The LoRA training loop for the negation methods, with checkpoints that resume exactly.

The image tower is frozen, so image embeddings are computed once and passed in. Each step
draws a batch of (image, negated caption) pairs for L_CLIP and a batch of claim sets for
L_claim, encodes every distinct text of the step once, and applies the NAST gradient
scaling (beta = 0 is uniform LoRA). A checkpoint holds the adapter weights, the optimiser
state, the sampler's RNG state and the step, so a killed run resumed from its last
checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechtune.errors import ConfigError, DataError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.train.checkpoint import checkpoint_folders, load_latest_checkpoint, save_checkpoint
from mechtune.train.lora import (
    LoraSettings,
    apply_text_lora,
    enable_text_finetune,
    trainable_text_parameters,
)
from mechtune.train.losses import LOSSES, NegationBatch, create_loss
from mechtune.train.scaling import block_scales, scaled_gradients


@dataclass(frozen=True)
class CaptionExample:
    text: str
    image: int


@dataclass(frozen=True)
class ClaimExample:
    candidates: tuple[str, ...]  # the correct claim first
    image: int


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 200
    caption_batch: int = 32
    claim_batch: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    lam: float = 0.5
    beta: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    shards: int = 1  # the global batch is split into this many shards (DDP: one per rank)
    # "nast": lam * L_CLIP + (1 - lam) * L_claim; "negclip": hard negatives in the
    # contrastive batch (mechtune.train.losses.create_loss builds either)
    loss: str = "nast"
    # "gradient": NAST as specified, gradients of block l times alpha_l ** beta. Adam divides
    # each parameter's step by its own gradient scale, so this only matters where alpha_l is
    # 0 (or tiny). "lr": per-block learning rates lr * alpha_l ** beta, which Adam keeps.
    scaling: str = "gradient"
    lora: LoraSettings | None = field(default_factory=LoraSettings)  # None: full fine-tuning

    def __post_init__(self) -> None:
        for name in ("steps", "caption_batch", "claim_batch", "checkpoint_every", "shards"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.scaling not in ("gradient", "lr"):
            raise ConfigError(f"scaling must be 'gradient' or 'lr', got {self.scaling!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam must be in [0, 1], got {self.lam}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        # Every shard (DDP rank) must get the same number of examples: an empty shard has
        # no loss to back-propagate, and unequal shards would weight examples unequally
        # when the shards' mean losses are averaged.
        for name in ("caption_batch", "claim_batch"):
            if getattr(self, name) % self.shards:
                raise ConfigError(
                    f"{name} ({getattr(self, name)}) must be a multiple of shards "
                    f"({self.shards}): each shard (DDP rank) takes an equal part of the batch"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict() if self.lora is not None else None
        return d


def _encode_distinct(encoder: DualEncoder, texts: Sequence[str]) -> torch.Tensor:
    """Encode each distinct text once (with gradients); rows follow ``texts``."""
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    emb = encoder.encode_tokens(encoder.tokenize(unique))
    return emb[torch.tensor([index[t] for t in texts])]


def _claim_tensors(
    encoder: DualEncoder, batch: Sequence[ClaimExample]
) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(c.candidates) for c in batch)
    texts = [t for c in batch for t in c.candidates]
    flat = _encode_distinct(encoder, texts)
    cands = flat.new_zeros(len(batch), k, flat.shape[1])
    mask = torch.zeros(len(batch), k, dtype=torch.bool)
    row = 0
    for i, c in enumerate(batch):
        n = len(c.candidates)
        cands[i, :n] = flat[row : row + n]
        mask[i, :n] = True
        row += n
    return cands, mask


class Trainer:
    """LoRA + NAST scaling on a dual encoder's text tower, with exact resume."""

    def __init__(
        self,
        encoder: DualEncoder,
        alpha: Sequence[float] | torch.Tensor,
        config: LoopConfig,
        out_dir: str | Path,
        accelerator: Any | None = None,
    ) -> None:
        self.encoder = encoder
        self.config = config
        self.out = Path(out_dir)
        # peft injects the adapters into the model's own modules, so the adapter (and its
        # site table lookups) keep working on the unwrapped model.
        if config.lora is None:
            self.model = enable_text_finetune(encoder.model)
        else:
            self.model = apply_text_lora(encoder.model, config.lora)
        self.params = trainable_text_parameters(self.model)
        n_blocks = len(encoder.text_layers)
        self.scales = block_scales(alpha, config.beta, n_blocks)
        if config.scaling == "gradient":
            groups: list[dict[str, Any]] = [{"params": [p for _, p in self.params.values()]}]
        else:  # per-block learning rates lr * alpha_l ** beta
            by_block: dict[int, list[Any]] = {}
            for layer, p in self.params.values():
                by_block.setdefault(layer, []).append(p)
            groups = [
                {"params": ps, "lr": config.lr * float(self.scales[b])}
                for b, ps in sorted(by_block.items())
            ]
        self.optim = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.loss = create_loss(config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.accelerator = accelerator
        if accelerator is not None and accelerator.num_processes != config.shards:
            raise ConfigError(
                f"under DDP, shards ({config.shards}) must equal the number of "
                f"processes ({accelerator.num_processes})"
            )

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        return checkpoint_folders(self.out)

    def save(self) -> Path:
        params = {n: p for n, (_, p) in self.params.items()}
        state = {"config": self.config.to_dict(), "history": self.history}
        return save_checkpoint(
            self.out, self.step, params, self.optim, self.generator, state, self.model
        )

    def resume(self) -> bool:
        """Load the newest checkpoint, if any. Returns whether one was loaded."""
        params = {n: p for n, (_, p) in self.params.items()}
        state = load_latest_checkpoint(self.out, params, self.optim, self.generator)
        if state is None:
            return False
        self.step, self.history = int(state["step"]), list(state["history"])
        return True

    # -- training ---------------------------------------------------------------------------------

    def _shard(self, batch: list, shard: int) -> list:
        n = self.config.shards
        return batch[shard * len(batch) // n : (shard + 1) * len(batch) // n]

    def train_step(
        self,
        images: torch.Tensor,
        captions: Sequence[CaptionExample],
        claims: Sequence[ClaimExample],
    ) -> dict[str, float]:
        """One optimiser step on a global batch split into ``config.shards`` shards.

        Single process: the shards' losses are averaged (gradient accumulation). Under
        DDP (``accelerator`` with one process per shard) each rank takes its own shard and
        the gradients are averaged across ranks, which is the same sum.
        """
        cfg = self.config
        cap = [
            captions[i]
            for i in torch.randint(
                len(captions), (cfg.caption_batch,), generator=self.generator
            ).tolist()
        ]
        clm = [
            claims[i]
            for i in torch.randint(
                len(claims), (cfg.claim_batch,), generator=self.generator
            ).tolist()
        ]
        scale = self.encoder.logit_scale
        if self.accelerator is not None:
            shards = [self.accelerator.process_index]
        else:
            shards = list(range(cfg.shards))
        totals: dict[str, float] = {}
        self.optim.zero_grad(set_to_none=True)
        scaling = (
            scaled_gradients(self.model, self.scales)
            if cfg.scaling == "gradient"
            else nullcontext()
        )
        with scaling:
            for shard in shards:
                c_cap, c_clm = self._shard(cap, shard), self._shard(clm, shard)
                text = _encode_distinct(self.encoder, [c.text for c in c_cap])
                cands, mask = _claim_tensors(self.encoder, c_clm)
                terms = self.loss(
                    NegationBatch(
                        caption_image=images[[c.image for c in c_cap]],
                        caption_text=text,
                        claim_image=images[[c.image for c in c_clm]],
                        candidates=cands,
                        mask=mask,
                        scale=scale,
                    )
                )
                (terms["loss"] / len(shards)).backward()
                for k, v in terms.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) / len(shards)
        if self.accelerator is not None:
            for _, p in self.params.values():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        self.optim.step()
        self.step += 1
        return totals

    def fit(
        self,
        images: torch.Tensor,
        captions: Sequence[CaptionExample],
        claims: Sequence[ClaimExample],
        *,
        resume: bool = False,
        stop_after: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train to ``config.steps`` (checkpointing every ``checkpoint_every`` steps).

        ``stop_after`` ends the run early after that many steps, as a kill would.
        """
        if not captions or not claims:
            raise DataError("training needs at least one caption and one claim set")
        if resume:
            self.resume()
        images = images.detach()
        done = 0
        self.model.train()
        while self.step < self.config.steps:
            terms = self.train_step(images, captions, claims)
            self.history.append({"step": self.step, **terms})
            last = self.step == self.config.steps
            main = self.accelerator is None or self.accelerator.is_main_process
            if main and (self.step % self.config.checkpoint_every == 0 or last):
                self.save()
            done += 1
            if progress is not None:
                progress(1)
            if stop_after is not None and done >= stop_after:
                break
        self.model.eval()
        return self.history
