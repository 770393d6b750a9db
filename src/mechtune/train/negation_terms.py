"""Extra loss terms of the negation task, against the "prefer No" shortcut (issue 18).

Trained on claim sets, a tuned text tower can learn to prefer negated wording instead of
reading negation: on hand-written sentences, affirmative accuracy fell while negated
accuracy rose. Each term below is a :class:`~mechtune.train.negation.LoopConfig` setting,
off (weight 0) by default; :func:`with_negation_terms` adds the ones switched on to a
method's loss, so the trainer logs each term and back-propagates

    loss = base loss + margin_weight * L_margin + retention_weight * L_retention
           + mcq_weight * L_mcq.

- :class:`PairMarginTerm` (``margin_weight``, ``margin``): a hinge on the gap between
  the correct claim and its *negation twin* (the foil stating the same finding with the
  other existence), averaged within each polarity and then over the two, so affirmative
  and negated claims pull equally whatever the batch holds;
- :class:`RetentionTerm` (``retention_weight``, ``retention_kind``, ``retention_batch``):
  keeps the tuned tower's embeddings of affirmative sentences near the frozen tower's
  (cosine), or its image-text distributions (KL);
- :class:`MCQTerm` (``mcq_weight``, ``mcq_batch``): NegBench's multiple-choice
  cross-entropy over negated multi-condition options (Alhamoud et al., CVPR 2025), the
  claim loss of :class:`~mechtune.train.losses.ClaimLoss` on MCQ options, the same term
  the ``negbench`` method trains with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mechtune.errors import ConfigError, DataError
from mechtune.train.losses import ClaimLoss, NegationBatch

RETENTION_KINDS: tuple[str, ...] = ("cosine", "kl")


class PairMarginTerm(nn.Module):
    """The symmetric pair margin: for claim set i with image embedding v_i, correct claim
    c_i and negation twin t_i (all L2-normalised),

        h_i = max(0, margin - scale * (<v_i, c_i> - <v_i, t_i>)),
        L_margin = mean over the polarities present of (mean of h_i over that polarity's
                   sets),

    the hinge ranking loss with a margin (Weston et al., 2011, WSABIE; as in VSE++,
    Faghri et al., BMVC 2018, eq. 1, with the twin as the one contrastive example) on the
    temperature-scaled similarities, in logit units. Averaging within a polarity first
    weighs affirmative and negated claims alike: a shortcut that prefers "No" wording
    gains on negated sets exactly what it loses on affirmative ones. Sets without a twin
    (``twin`` -1) count in neither polarity; with none at all the term is 0.
    Raises ConfigError for a negative margin.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if not margin >= 0:
            raise ConfigError(f"margin must be >= 0, got {margin}")
        self.margin = margin

    def forward(
        self,
        image: torch.Tensor,
        candidates: torch.Tensor,
        twin: torch.Tensor,
        affirmative: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        """``image [C, D]``, ``candidates [C, K, D]`` (index 0 correct), ``twin [C]`` long
        (the twin's index, -1: none), ``affirmative [C]`` bool -> ``{"margin": []}``."""
        has = twin >= 0
        index = twin.clamp(min=0)
        rows = torch.arange(len(image), device=image.device)
        correct = (candidates[:, 0] * image).sum(-1)  # [C]
        opposite = (candidates[rows, index] * image).sum(-1)  # [C]
        hinge = F.relu(self.margin - scale * (correct - opposite))
        groups = torch.stack([has & affirmative, has & ~affirmative]).to(hinge.dtype)  # [2, C]
        counts = groups.sum(-1)  # [2]
        means = (groups * hinge).sum(-1) / counts.clamp(min=1)
        present = (counts > 0).to(hinge.dtype)
        return {"margin": (means * present).sum() / present.sum().clamp(min=1)}


class RetentionTerm(nn.Module):
    """Retention of the frozen text tower on affirmative sentences.

    ``kind="cosine"``: L = mean_j (1 - <e_j, f_j>), e_j the tuned and f_j the frozen
    tower's normalised embedding of sentence j (the embedding-drift measure of
    :func:`mechtune.eval.retention.embedding_drift`, as a loss).
    ``kind="kl"``: over the R sentences and their R images v_k, the text-to-image
    distributions p_j = softmax_k(scale * <f_j, v_k>) of the frozen tower and q_j of the
    tuned one, L = mean_j KL(p_j || q_j): distillation of the frozen model's image-text
    logits, as ZSCL does against zero-shot degradation (Zheng et al., ICCV 2023, §3.2).
    Raises ConfigError for an unknown kind.
    """

    def __init__(self, kind: str = "cosine") -> None:
        super().__init__()
        if kind not in RETENTION_KINDS:
            raise ConfigError(f"retention_kind must be one of {RETENTION_KINDS}, got {kind!r}")
        self.kind = kind

    def forward(
        self,
        tuned: torch.Tensor,
        frozen: torch.Tensor,
        image: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        """``tuned, frozen, image: [R, D]`` normalised (row j: sentence j and its image)
        -> ``{"retention": []}``."""
        if self.kind == "cosine":
            return {"retention": (1 - (tuned * frozen).sum(-1)).mean()}
        target = F.log_softmax(scale * frozen @ image.T, dim=-1)
        predicted = F.log_softmax(scale * tuned @ image.T, dim=-1)
        kl = F.kl_div(predicted, target, log_target=True, reduction="batchmean")
        return {"retention": kl}


class MCQTerm(nn.Module):
    """NegBench's multiple-choice term: :class:`~mechtune.train.losses.ClaimLoss` (the
    cross-entropy of the correct option, index 0, against the others) on MCQ options."""

    def __init__(self) -> None:
        super().__init__()
        self.claim = ClaimLoss()

    def forward(
        self,
        image: torch.Tensor,
        options: torch.Tensor,
        mask: torch.Tensor,
        scale: torch.Tensor | float,
    ) -> dict[str, torch.Tensor]:
        """``image [M, D]``, ``options [M, K, D]``, ``mask [M, K]`` -> ``{"mcq": []}``."""
        return {"mcq": self.claim(image, options, mask, scale)["claim"]}


class NegationObjective(nn.Module):
    """A method's loss plus the weighted extra terms (module docstring). ``base`` returns
    named terms with ``"loss"``; the batch must carry the tensors each switched-on term
    reads (:class:`~mechtune.train.negation.NegationTask` fills them). Raises DataError
    when it does not."""

    def __init__(self, base: nn.Module, config: Any) -> None:
        super().__init__()
        self.base = base
        self.weights = {
            "margin": config.margin_weight,
            "retention": config.retention_weight,
            "mcq": config.mcq_weight,
        }
        self.margin = PairMarginTerm(config.margin)
        self.retention = RetentionTerm(config.retention_kind)
        self.mcq = MCQTerm()

    def forward(self, batch: NegationBatch) -> dict[str, torch.Tensor]:
        terms = dict(self.base(batch))
        total = terms["loss"]
        if self.weights["margin"]:
            if batch.twin is None or batch.affirmative is None:
                raise DataError("margin_weight > 0 needs the claim sets' twins and polarities")
            terms.update(
                self.margin(
                    batch.claim_image, batch.candidates, batch.twin, batch.affirmative, batch.scale
                )
            )
            total = total + self.weights["margin"] * terms["margin"]
        if self.weights["retention"]:
            if batch.retention_text is None or batch.retention_frozen is None:
                raise DataError("retention_weight > 0 needs affirmative sentences in the batch")
            assert batch.retention_image is not None
            terms.update(
                self.retention(
                    batch.retention_text, batch.retention_frozen, batch.retention_image, batch.scale
                )
            )
            total = total + self.weights["retention"] * terms["retention"]
        if self.weights["mcq"]:
            if batch.mcq_image is None or batch.mcq_options is None or batch.mcq_mask is None:
                raise DataError("mcq_weight > 0 needs MCQ options in the batch")
            terms.update(self.mcq(batch.mcq_image, batch.mcq_options, batch.mcq_mask, batch.scale))
            total = total + self.weights["mcq"] * terms["mcq"]
        terms["loss"] = total
        return terms


def uses_negation_terms(config: Any) -> bool:
    """Whether any extra term of ``config`` (a LoopConfig) has a weight above 0."""
    return bool(config.margin_weight or config.retention_weight or config.mcq_weight)


def with_negation_terms(base: nn.Module, config: Any) -> nn.Module:
    """``base`` itself when every extra term is off (so a default run trains exactly as
    before), else :class:`NegationObjective` of ``base`` and ``config``'s terms."""
    return NegationObjective(base, config) if uses_negation_terms(config) else base


__all__ = [
    "RETENTION_KINDS",
    "MCQTerm",
    "NegationObjective",
    "PairMarginTerm",
    "RetentionTerm",
    "uses_negation_terms",
    "with_negation_terms",
]
