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
from typing import Any, NamedTuple

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

    Against the "prefer No" shortcut (issue 18), each off by default, so that a run
    without them trains exactly as before:

    - ``batch_polarity``: every claim batch (and every shard of it) holds as many claim
      sets with an affirmative correct claim as with a negated one (contralateral
      negations count as negated), each with its negation twin among the foils
      (:class:`ClaimExample`), drawn uniformly from the distinct sets of each polarity,
      instead of a balance over the epoch only (``claim_batch`` then a multiple of
      2 * ``shards``);
    - ``margin_weight`` (>= 0) times the symmetric pair margin with ``margin`` (>= 0,
      logit units) (:class:`~mechtune.train.negation_terms.PairMarginTerm`);
    - ``retention_weight`` (>= 0) times the retention of the frozen tower on
      ``retention_batch`` affirmative sentences per step, by ``retention_kind``
      ("cosine" or "kl") (:class:`~mechtune.train.negation_terms.RetentionTerm`);
    - ``mcq_weight`` (>= 0) times NegBench's multiple-choice term on ``mcq_batch`` MCQs
      per step (:class:`~mechtune.train.negation_terms.MCQTerm`);
    - ``keep_best``: keep the adapter of the evaluated step that is best by this
      criterion (:data:`~mechtune.train.selection.KEEP_BEST`; needs ``eval_every``),
      instead of the last step's (:mod:`mechtune.train.selection`).

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
    batch_polarity: bool = False
    margin_weight: float = 0.0
    margin: float = 1.0
    retention_weight: float = 0.0
    retention_kind: str = "cosine"
    retention_batch: int = 32
    mcq_weight: float = 0.0
    mcq_batch: int = 32
    keep_best: str | None = None

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
        self._check_shortcut_settings()

    def _check_shortcut_settings(self) -> None:
        from mechtune.train.negation_terms import RETENTION_KINDS
        from mechtune.train.selection import KEEP_BEST

        if not isinstance(self.batch_polarity, bool):
            raise ConfigError(f"batch_polarity must be true or false, got {self.batch_polarity!r}")
        if self.batch_polarity and self.claim_batch % (2 * self.shards):
            raise ConfigError(
                f"batch_polarity: claim_batch ({self.claim_batch}) must be a multiple of 2 * "
                f"shards ({2 * self.shards}), half affirmative and half negated in every shard"
            )
        for name in ("margin_weight", "margin", "retention_weight", "mcq_weight"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and 0 <= value < float("inf")):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.retention_kind not in RETENTION_KINDS:
            raise ConfigError(
                f"retention_kind must be one of {RETENTION_KINDS}, got {self.retention_kind!r}"
            )
        for name, weight in (("retention_batch", "retention_weight"), ("mcq_batch", "mcq_weight")):
            size = getattr(self, name)
            if size < 1:
                raise ConfigError(f"{name} must be >= 1, got {size}")
            if getattr(self, weight) and size % self.shards:
                raise ConfigError(
                    f"{name} ({size}) must be a multiple of shards ({self.shards}) when "
                    f"{weight} > 0: each shard takes an equal part"
                )
        if self.retention_weight and self.retention_kind == "kl" and self.retention_batch < 2:
            raise ConfigError(
                "retention_kind 'kl' compares distributions over the retention batch's images: "
                f"retention_batch must be >= 2, got {self.retention_batch}"
            )
        if self.keep_best is not None:
            if self.keep_best not in KEEP_BEST:
                raise ConfigError(
                    f"keep_best must be one of {sorted(KEEP_BEST)} or null, got {self.keep_best!r}"
                )
            if not self.eval_every:
                raise ConfigError(
                    f"keep_best ({self.keep_best!r}) chooses among evaluated steps: set "
                    "eval_every > 0"
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


class NegationStep(NamedTuple):
    """One step's examples: captions and claim sets (always), the affirmative sentences
    of the retention term and the MCQs of the multiple-choice term (empty when off)."""

    captions: list[CaptionExample]
    claims: list[ClaimExample]
    retention: list[ClaimExample]
    mcq: list[ClaimExample]


def _draw(items: Sequence[Any], count: int, generator: torch.Generator) -> list[Any]:
    """``count`` of ``items`` drawn uniformly with replacement."""
    return [items[i] for i in torch.randint(len(items), (count,), generator=generator).tolist()]


class NegationTask:
    """Batches of the negation task for :class:`~mechtune.train.trainer.Trainer`.

    ``images``: ``[N, D]`` image embeddings (rows named by the examples); ``claims``: the
    claim sets (or MCQ options) the method trains on; ``loss``: the method's loss module
    (from :func:`~mechtune.train.losses.create_loss`), called with a float32
    :class:`~mechtune.train.losses.NegationBatch` whose ``scale`` is the encoder's
    exp(logit scale) read when the task is built; ``mcq``: the MCQ options of
    ``config.mcq_weight``. With ``config.retention_weight`` the frozen tower's embeddings
    of the affirmative correct claims are computed here, before any training (the
    trainer injects LoRA after the task is built). Raises DataError when captions or
    claims are empty or name an image row outside ``images``, when ``batch_polarity``
    finds no claim set of one polarity with a negation twin, when ``retention_weight``
    finds no affirmative claim, or when ``mcq_weight`` has no MCQ.
    """

    def __init__(
        self,
        encoder: DualEncoder,
        images: torch.Tensor,
        captions: Sequence[CaptionExample],
        claims: Sequence[ClaimExample],
        loss: nn.Module,
        config: LoopConfig,
        mcq: Sequence[ClaimExample] = (),
    ) -> None:
        if not captions or not claims:
            raise DataError("training needs at least one caption and one claim set")
        rows = [c.image for c in captions] + [c.image for c in claims] + [c.image for c in mcq]
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
        distinct = list(dict.fromkeys(self.claims))  # balance_polarity repeats some
        self.pools: tuple[list[ClaimExample], list[ClaimExample]] = ([], [])
        if config.batch_polarity:
            self.pools = tuple(  # type: ignore[assignment]
                [c for c in distinct if c.polarity == p and c.twin is not None]
                for p in ("affirmative", "negated")
            )
            if not all(self.pools):
                raise DataError(
                    f"batch_polarity needs claim sets of both polarities with a negation twin; "
                    f"the examples have {len(self.pools[0])} affirmative and "
                    f"{len(self.pools[1])} negated (MCQ options, which negbench trains on, "
                    "have no polarity)"
                )
        self.mcq = list(mcq)
        if config.mcq_weight and not self.mcq:
            raise DataError("mcq_weight > 0 needs MCQ options (no train study passes the filter)")
        self.affirmative = [c for c in distinct if c.polarity == "affirmative"]
        self.frozen: dict[str, torch.Tensor] = {}
        if config.retention_weight:
            if not self.affirmative:
                raise DataError("retention_weight > 0 needs claim sets with an affirmative claim")
            self.frozen = _frozen_embeddings(encoder, [c.candidates[0] for c in self.affirmative])

    def sample(self, generator: torch.Generator) -> NegationStep:
        """The step's captions then claim sets, drawn uniformly with replacement; with
        ``batch_polarity`` half the claim sets of every shard from each polarity's pool;
        then the retention sentences and the MCQs of the terms that are on. Nothing more
        is drawn for a setting that is off, so a default run draws what it always did."""
        config = self.config
        captions = _draw(self.captions, config.caption_batch, generator)
        if config.batch_polarity:
            half = config.claim_batch // 2
            affirmative = _draw(self.pools[0], half, generator)
            negated = _draw(self.pools[1], half, generator)
            per = half // config.shards  # each shard: its affirmative half, then its negated
            claims = [
                c
                for s in range(config.shards)
                for c in (*affirmative[s * per : (s + 1) * per], *negated[s * per : (s + 1) * per])
            ]
        else:
            claims = _draw(self.claims, config.claim_batch, generator)
        retention = (
            _draw(self.affirmative, config.retention_batch, generator)
            if config.retention_weight
            else []
        )
        mcq = _draw(self.mcq, config.mcq_batch, generator) if config.mcq_weight else []
        return NegationStep(captions, claims, retention, mcq)

    def loss_terms(
        self, batch: NegationStep | tuple[Any, ...], shard: int, shards: int
    ) -> dict[str, torch.Tensor]:
        """The loss terms of shard ``shard`` (an equal slice of every list)."""
        step = NegationStep(*batch, *([[]] * (4 - len(batch))))
        captions, claims, retention, mcq = (_slice(list(part), shard, shards) for part in step)
        text = _encode_distinct(self.encoder, [c.text for c in captions])
        cands, mask = _claim_tensors(self.encoder, claims)
        device = text.device
        extra: dict[str, Any] = {}
        if self.config.margin_weight:
            extra["twin"] = torch.tensor(
                [-1 if c.twin is None else c.twin for c in claims], device=device
            )
            extra["affirmative"] = torch.tensor(
                [c.polarity == "affirmative" for c in claims], device=device
            )
        if retention:
            sentences = [c.candidates[0] for c in retention]
            extra["retention_text"] = _encode_distinct(self.encoder, sentences)
            extra["retention_frozen"] = torch.stack([self.frozen[t] for t in sentences]).to(device)
            extra["retention_image"] = self.images[[c.image for c in retention]].to(device)
        if mcq:
            options, options_mask = _claim_tensors(self.encoder, mcq)
            extra.update(
                mcq_image=self.images[[c.image for c in mcq]].to(device),
                mcq_options=options,
                mcq_mask=options_mask,
            )
        return self.loss(
            NegationBatch(
                caption_image=self.images[[c.image for c in captions]].to(device),
                caption_text=text,
                claim_image=self.images[[c.image for c in claims]].to(device),
                candidates=cands,
                mask=mask,
                scale=self.scale,
                **extra,
            )
        )


def _frozen_embeddings(encoder: DualEncoder, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{text: [D] float32 on the CPU}``: the text tower's embeddings as it is now (before
    training), in eval mode (no dropout) and without gradients, 64 texts at a time."""
    unique = list(dict.fromkeys(texts))
    module = encoder.model
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            parts = [
                encoder.encode_tokens(encoder.tokenize(unique[i : i + 64])).float().cpu()
                for i in range(0, len(unique), 64)
            ]
    finally:
        module.train(was_training)
    table = torch.cat(parts)
    return {t: table[i] for i, t in enumerate(unique)}
