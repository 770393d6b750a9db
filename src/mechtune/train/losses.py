"""The training losses as modules returning named terms, built in one place from the config.

Every negation loss takes one :class:`NegationBatch` (the step's embeddings); every loss
returns a dict of named scalar terms whose ``"loss"`` entry is what the trainer
back-propagates, so every term is logged. :func:`create_loss` is the only place a trainer
gets its loss from: a loss that is configured is the loss that runs.

- ``ContrastiveLoss``: the symmetric CLIP loss on (image, caption) rows (Radford et al.,
  2021, eq. in §2.3; NAST arXiv 2602.12498 §4 "L_CLIP");
- ``ClaimLoss``: cross-entropy of the correct claim (candidate 0) against its hard
  negatives, over padded candidate sets (NAST §4 "L_claim");
- ``NASTLoss``: lambda * L_CLIP + (1 - lambda) * L_claim (NAST §4);
- ``NegCLIPLoss``: the image-text contrastive loss with every image's hard-negative
  captions added to the text side of the batch (Yuksekgonul et al., ICLR 2023, "When and
  why vision-language models behave like bags-of-words", §5);
- ``ConsistencyLoss``: answer cross-entropy on a question and its paraphrase plus a
  weighted symmetric KL between their yes/no distributions (PSF-Med, arXiv 2602.21428),
  on one :class:`ConsistencyBatch`; the cross-entropy is over the whole vocabulary of the
  first answer token (``VocabConsistencyLoss``, the released adapter's) or binary on the
  margin (``BinaryConsistencyLoss``), as ``ConsistencyConfig.answer_loss`` picks.

The trainers cast embeddings, logits and margins to float32 before calling a loss.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mechtune.errors import ConfigError


@dataclass
class NegationBatch:
    """The embeddings of one training step (all L2-normalised, ``D`` = embedding width).

    ``caption_image [B, D]`` and ``caption_text [B, D]``: row i of one matches row i of the
    other (single negated captions). ``claim_image [C, D]``, ``candidates [C, K, D]`` with
    the correct claim at index 0, ``mask [C, K]`` True for real candidates (claim sets have
    different sizes). ``scale``: exp(logit scale), the temperature multiplying cosines.
    """

    caption_image: torch.Tensor
    caption_text: torch.Tensor
    claim_image: torch.Tensor
    candidates: torch.Tensor
    mask: torch.Tensor
    scale: torch.Tensor | float
    # Read only by the extra terms of mechtune.train.negation_terms (None when off):
    # twin [C] long, the index of each claim set's negation twin (-1: none), and
    # affirmative [C] bool, its correct claim's polarity (the pair margin);
    # retention_text / retention_frozen / retention_image [R, D]: affirmative sentences
    # embedded by the tuned and the frozen tower, and their images (retention);
    # mcq_image [M, D], mcq_options [M, K, D], mcq_mask [M, K]: MCQ options (NegBench).
    twin: torch.Tensor | None = None
    affirmative: torch.Tensor | None = None
    retention_text: torch.Tensor | None = None
    retention_frozen: torch.Tensor | None = None
    retention_image: torch.Tensor | None = None
    mcq_image: torch.Tensor | None = None
    mcq_options: torch.Tensor | None = None
    mcq_mask: torch.Tensor | None = None


class ContrastiveLoss(nn.Module):
    def forward(
        self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float
    ) -> dict[str, torch.Tensor]:
        """``image, text: [B, D]`` normalised, row i matching row i -> ``{"clip": []}``."""
        logits = scale * image @ text.T
        target = torch.arange(len(image), device=image.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return {"clip": loss}


class ClaimLoss(nn.Module):
    def forward(
        self,
        image: torch.Tensor,
        candidates: torch.Tensor,
        mask: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        """``image: [C, D]``, ``candidates: [C, K, D]`` (index 0 correct), ``mask: [C, K]``
        -> ``{"claim": []}``, the mean cross-entropy of candidate 0."""
        logits = scale * torch.einsum("bd,bkd->bk", image, candidates)
        logits = logits.masked_fill(~mask, float("-inf"))
        target = torch.zeros(len(image), dtype=torch.long, device=image.device)
        return {"claim": F.cross_entropy(logits, target)}


class NASTLoss(nn.Module):
    """``lam * L_CLIP(captions) + (1 - lam) * L_claim(claim sets)`` (NAST §4).

    Raises ConfigError unless ``0 <= lam <= 1``.
    """

    def __init__(self, lam: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"lam (lambda) must be in [0, 1], got {lam}")
        self.lam = lam
        self.clip = ContrastiveLoss()
        self.claim = ClaimLoss()

    def forward(self, batch: NegationBatch) -> dict[str, torch.Tensor]:
        terms = {
            **self.clip(batch.caption_image, batch.caption_text, batch.scale),
            **self.claim(batch.claim_image, batch.candidates, batch.mask, batch.scale),
        }
        terms["loss"] = self.lam * terms["clip"] + (1 - self.lam) * terms["claim"]
        return terms


class NegCLIPLoss(nn.Module):
    """NegCLIP: the symmetric contrastive loss with hard negatives on the text side.

    The batch's images are the captions' images then the claim sets' images (``B + C``
    rows); their positive texts are the captions then the correct claims. The text side of
    the image-to-text direction is every positive *and* every hard negative (the claim
    sets' other candidates, ``N`` in all), so each image must pick its own text among
    ``B + C + N``; the text-to-image direction is over positives only, as hard negatives
    have no image. Returns ``{"negclip_i2t", "negclip_t2i", "loss"}`` (loss = their mean).

    The ``C * (K - 1)`` negative slots are all scored and the padding ones set to -inf
    before the softmax, which is the loss over the ``N`` real ones: selecting them with the
    mask would give a shape that depends on the data, which CUDA reads back to the host.
    """

    def forward(self, batch: NegationBatch) -> dict[str, torch.Tensor]:
        images = torch.cat([batch.caption_image, batch.claim_image])  # [B + C, D]
        positives = torch.cat([batch.caption_text, batch.candidates[:, 0]])  # [B + C, D]
        negatives = batch.candidates[:, 1:].flatten(0, 1)  # [C * (K - 1), D], padding too
        texts = torch.cat([positives, negatives])  # [B + C + C * (K - 1), D]
        real = torch.cat([batch.mask.new_ones(len(positives)), batch.mask[:, 1:].flatten()])
        target = torch.arange(len(images), device=images.device)
        i2t_logits = (batch.scale * images @ texts.T).masked_fill(~real, float("-inf"))
        i2t = F.cross_entropy(i2t_logits, target)
        t2i = F.cross_entropy(batch.scale * positives @ images.T, target)
        return {"negclip_i2t": i2t, "negclip_t2i": t2i, "loss": (i2t + t2i) / 2}


def symmetric_kl(margin_a: torch.Tensor, margin_b: torch.Tensor) -> torch.Tensor:
    """``[B], [B] -> [B]``: KL(p‖q) + KL(q‖p) for p = sigmoid(a), q = sigmoid(b).

    For two Bernoulli distributions given by their log-odds this is the closed form
    (p − q)·(a − b) (expand both KLs; the log terms collapse to the log-odds difference).
    """
    return (torch.sigmoid(margin_a) - torch.sigmoid(margin_b)) * (margin_a - margin_b)


@dataclass
class ConsistencyBatch:
    """The model's answers on one (micro-)batch of B paraphrase pairs (float32).

    ``original [B, V]`` and ``paraphrase [B, V]``: next-token logits at the first answer
    position for the original question and its paraphrase (``V``: the model's answer
    vocabulary, :meth:`~mechtune.models.yes_no.YesNoVLM.first_token_logits`);
    ``original_margin [B]`` / ``paraphrase_margin [B]``: the model's yes-minus-no margins
    from those logits (``margin_from_logits``); ``answer [B]`` bool, True for "yes";
    ``answer_ids``: the canonical (yes, no) token ids, columns of the logits.
    """

    original: torch.Tensor
    paraphrase: torch.Tensor
    original_margin: torch.Tensor
    paraphrase_margin: torch.Tensor
    answer: torch.Tensor
    answer_ids: tuple[int, int]


class ConsistencyLoss(nn.Module, abc.ABC):
    """PSF-Med's consistency objective (arXiv 2602.21428, §4): an answer cross-entropy,
    averaged over the original question and one paraphrase, plus ``consistency_weight``
    times the symmetric KL between their yes/no distributions.

    A yes/no distribution is the softmax over the (yes, no) logits, which depends on the
    margin m = logit(yes) − logit(no) only: p(yes) = sigmoid(m). Pure consistency training
    collapses to one answer for every question, which the cross-entropy term prevents.
    Subclasses say which cross-entropy (:data:`CONSISTENCY_LOSSES`). Raises ConfigError
    for a negative weight.
    """

    def __init__(self, consistency_weight: float = 1.0) -> None:
        super().__init__()
        if consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {consistency_weight}")
        self.weight = consistency_weight

    @abc.abstractmethod
    def answer_ce(
        self, logits: torch.Tensor, margin: torch.Tensor, batch: ConsistencyBatch
    ) -> torch.Tensor:
        """The mean answer cross-entropy of one side (``logits [B, V]``, ``margin [B]``)."""

    def forward(self, batch: ConsistencyBatch) -> dict[str, torch.Tensor]:
        """-> ``{"answer_ce", "symmetric_kl", "loss"}`` (scalars; loss = ce + w * kl)."""
        ce = (
            self.answer_ce(batch.original, batch.original_margin, batch)
            + self.answer_ce(batch.paraphrase, batch.paraphrase_margin, batch)
        ) / 2
        kl = symmetric_kl(batch.original_margin, batch.paraphrase_margin).mean()
        return {"answer_ce": ce, "symmetric_kl": kl, "loss": ce + self.weight * kl}


class VocabConsistencyLoss(ConsistencyLoss):
    """The answer term of the released adapter ``saillab/medgemma-4b-targeted-lora-mimic-
    mt-12k`` (its model card: "cross-entropy on the first answer token + symmetric KL"):
    cross-entropy over the whole vocabulary of the first answer token towards the correct
    answer's canonical token, ``F.cross_entropy(logits [B, V], yes_id if answer else
    no_id)``. Unlike the binary form it also pushes down every other token (" Yes",
    "Maybe", an explanation's first word), so the answer becomes the model's next token.
    For a 2-way answer head (``V = 2``) it equals :class:`BinaryConsistencyLoss`."""

    def answer_ce(
        self, logits: torch.Tensor, margin: torch.Tensor, batch: ConsistencyBatch
    ) -> torch.Tensor:
        yes, no = batch.answer_ids
        target = torch.where(batch.answer.to(logits.device), yes, no)
        return F.cross_entropy(logits, target)


class BinaryConsistencyLoss(ConsistencyLoss):
    """The answer term as a binary cross-entropy on the margin: −log sigmoid(±m), the
    cross-entropy of the yes/no distribution alone (the rest of the vocabulary is free)."""

    def answer_ce(
        self, logits: torch.Tensor, margin: torch.Tensor, batch: ConsistencyBatch
    ) -> torch.Tensor:
        target = batch.answer.to(device=margin.device, dtype=margin.dtype)
        return F.binary_cross_entropy_with_logits(margin, target)


# ConsistencyConfig.answer_loss -> the loss "consistency" builds.
CONSISTENCY_LOSSES: dict[str, type[ConsistencyLoss]] = {
    "vocab": VocabConsistencyLoss,
    "binary": BinaryConsistencyLoss,
}
ANSWER_LOSSES = tuple(CONSISTENCY_LOSSES)


def _consistency_loss(config: Any) -> nn.Module:
    answer_loss = config.answer_loss
    if answer_loss not in CONSISTENCY_LOSSES:
        raise ConfigError(f"answer_loss must be one of {ANSWER_LOSSES}, got {answer_loss!r}")
    return CONSISTENCY_LOSSES[answer_loss](config.consistency_weight)


def _negation_loss(base: nn.Module, config: Any) -> nn.Module:
    from mechtune.train.negation_terms import with_negation_terms

    return with_negation_terms(base, config)


LOSS_FACTORIES: dict[str, Callable[[Any], nn.Module]] = {
    "nast": lambda config: _negation_loss(NASTLoss(config.lam), config),
    "negclip": lambda config: _negation_loss(NegCLIPLoss(), config),
    "consistency": _consistency_loss,
}
LOSSES = tuple(LOSS_FACTORIES)


def create_loss(name: str, config: Any) -> nn.Module:
    """The loss ``name`` built with the settings of ``config`` it reads (``lam`` of a
    :class:`~mechtune.train.negation.LoopConfig` for ``"nast"``, and for both negation
    losses the extra terms its ``margin_weight``, ``retention_weight`` and ``mcq_weight``
    switch on: :func:`mechtune.train.negation_terms.with_negation_terms`; ``answer_loss`` (a key of
    :data:`CONSISTENCY_LOSSES`) and ``consistency_weight`` of a
    :class:`~mechtune.train.consistency.ConsistencyConfig` for ``"consistency"``).

    The one place a loss is built: a method names its loss in the registry
    (:mod:`mechtune.train.methods`), and the trainer back-propagates what this returns.
    Raises ConfigError for an unknown name or answer loss.
    """
    factory = LOSS_FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"loss must be one of {LOSSES}, got {name!r}")
    return factory(config)
