"""Cheap validation metrics for :class:`~mechtune.train.trainer.Trainer`'s ``evaluate``
(run every ``eval_every`` steps, logged as ``eval/<metric>``): point values on at most
:data:`EVAL_LIMIT` validation-split items (the first, in order), no intervals; the
reported metrics with their intervals are the evaluation commands' (``negation eval``,
``paraphrase eval``).

- negation: **claim accuracy**, the share of claim sets whose correct claim (candidate 0)
  scores strictly highest against its image (the top-1 hit of
  :func:`mechtune.eval.metrics.claim_hits`; NAST arXiv 2602.12498 §5), on the template
  validation claim sets and, when given, on the free-form validation half by the
  polarity of the correct claim (every item, no limit);
- paraphrase: PSF-Med's (arXiv 2602.21428) **flip rate**, the share of question groups in
  which any paraphrase's answer differs from the original's, and **accuracy**, the share
  of all answers (originals and paraphrases) equal to the ground truth; an answer is yes
  when the yes/no margin is > 0 (:func:`mechtune.data.answers.answers_from_margins`).

The trainer calls them in eval mode without gradients (:meth:`~mechtune.train.trainer.
Trainer.run_evaluation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechtune.data.answers import answers_from_margins
from mechtune.data.schema import ImageQuestion
from mechtune.errors import ConfigError
from mechtune.interp.sae_analysis import margins
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.yes_no import YesNoVLM
from mechtune.train.negation import ClaimExample, _claim_tensors
from mechtune.train.trainer import Evaluate

EVAL_LIMIT = 512  # validation items per evaluation: claim sets, or question groups
CHUNK = 64  # claim sets encoded at once


def claim_accuracy(
    encoder: DualEncoder, images: torch.Tensor, claims: Sequence[ClaimExample]
) -> float:
    """Share of ``claims`` whose first candidate scores strictly highest (cosine
    similarity of the L2-normalised embeddings) against its image. ``images``: ``[N, D]``
    image embeddings the claim sets' ``image`` rows index. One host read per call."""
    hits = []
    for start in range(0, len(claims), CHUNK):
        chunk = list(claims[start : start + CHUNK])
        cands, mask = _claim_tensors(encoder, chunk)  # [C, K, D], [C, K]
        image = images[[c.image for c in chunk]].to(cands.device).float()  # [C, D]
        scores = torch.einsum("ckd,cd->ck", cands.float(), image)
        foils = scores[:, 1:].masked_fill(~mask[:, 1:], float("-inf")).amax(dim=1)
        hits.append(scores[:, 0] > foils)
    return float(torch.cat(hits).float().mean()) if hits else float("nan")


def negation_validation(
    encoder: DualEncoder,
    images: torch.Tensor,
    claims: Sequence[ClaimExample],
    limit: int = EVAL_LIMIT,
    setting: str = "eval_every",
    freeform: Sequence[ClaimExample] = (),
) -> Evaluate:
    """The negation trainer's ``evaluate``: ``{"claim_accuracy": ...}`` of the first
    ``limit`` validation claim sets (:func:`claim_accuracy`); with ``freeform`` (the
    free-form validation half's items, each labelled with its correct claim's polarity:
    :func:`mechtune.pipelines.negation.validation_freeform`), also the claim accuracy of
    all of them (``freeform_accuracy``) and of those whose correct claim is affirmative
    (``freeform_affirmative``) or negated (``freeform_negated``), NaN for an empty
    slice; what early stopping reads (:mod:`mechtune.train.selection`). Raises
    ConfigError naming ``setting`` when there is no claim set."""
    chosen = list(claims[:limit])
    if not chosen:
        raise ConfigError(
            f"{setting} > 0 evaluates on validation-split claim sets, and the data has none; "
            f"set {setting} to 0"
        )
    slices = {
        "freeform_accuracy": list(freeform),
        "freeform_affirmative": [c for c in freeform if c.polarity == "affirmative"],
        "freeform_negated": [c for c in freeform if c.polarity == "negated"],
    }

    def evaluate() -> dict[str, float]:
        metrics = {"claim_accuracy": claim_accuracy(encoder, images, chosen)}
        if freeform:
            metrics.update({k: claim_accuracy(encoder, images, v) for k, v in slices.items()})
        return metrics

    return evaluate


def paraphrase_scores(
    vlm: YesNoVLM, images: Any, questions: Sequence[ImageQuestion]
) -> dict[str, float]:
    """``{"flip_rate", "accuracy"}`` of ``questions`` (module docstring): the margins of
    every question and paraphrase on its own image, in batches."""
    rows = [q.image for q in questions for _ in range(1 + len(q.record.paraphrases))]
    texts = [t for q in questions for t in (q.record.question, *q.record.paraphrases)]
    flat = margins(vlm, images, rows, texts)
    per_set, at = [], 0
    for q in questions:
        n = 1 + len(q.record.paraphrases)
        per_set.append(flat[at : at + n])
        at += n
    groups = answers_from_margins([q.record for q in questions], per_set)
    flips = [any(v.answer != g.original_answer for v in g.variants) for g in groups]
    right = [a == g.ground_truth for g in groups for a in g.answers]
    return {"flip_rate": sum(flips) / len(flips), "accuracy": sum(right) / len(right)}


def paraphrase_validation(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    limit: int = EVAL_LIMIT,
    setting: str = "eval_every",
) -> Evaluate:
    """The consistency trainer's ``evaluate``: :func:`paraphrase_scores` of the first
    ``limit`` validation question groups. Raises ConfigError naming ``setting`` when
    there is none."""
    chosen = list(questions[:limit])
    if not chosen:
        raise ConfigError(
            f"{setting} > 0 evaluates on validation-split questions, and there are none "
            f"(no record of the 'val' split); set {setting} to 0"
        )
    return lambda: paraphrase_scores(vlm, images, chosen)


__all__ = [
    "EVAL_LIMIT",
    "claim_accuracy",
    "negation_validation",
    "paraphrase_scores",
    "paraphrase_validation",
]
