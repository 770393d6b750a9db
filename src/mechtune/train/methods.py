"""Negation fine-tuning methods, registered by name, all on the same data and budget.

``zero-shot`` (no training), ``uniform-lora`` (NAST loss, beta = 0), ``nast`` (gradients
of block l scaled by alpha_l ** beta), ``negclip`` (hard negatives in the contrastive batch,
full fine-tuning of the text blocks) and ``negbench`` (contrastive + multiple-choice loss on
negated multi-condition options, uniform LoRA). Training examples come from the
contextual builder on a world's train-split patients (train phrasing families only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
from mechtune.models.dual_encoder import DualEncoder
from mechtune.sim.world import World
from mechtune.train.loop import CaptionExample, ClaimExample, LoopConfig, Trainer


@dataclass(frozen=True)
class NegationData:
    captions: list[CaptionExample]
    claims: list[ClaimExample]
    mcq: list[ClaimExample] = field(default_factory=list)  # NegBench-style options


def negation_examples(
    world: World,
    contextual: ContextualConfig | None = None,
    split: str = "train",
    heldout: bool = False,
) -> NegationData:
    """Single negated captions and claim sets of one split, in one family pool."""
    contextual = contextual or ContextualConfig(
        seed=world.config.seed, split_fractions=world.config.split_fractions
    )
    captions, claims, mcq = [], [], []
    polarity = PolarityConfig(
        seed=contextual.seed,
        families="heldout" if heldout else "train",
        split_fractions=contextual.split_fractions,
    )
    for row in world.indices(split):
        study = world.studies[int(row)]
        claim_sets, caps = study_records(study, contextual)
        captions += [CaptionExample(c.text, int(row)) for c in caps if c.heldout_family == heldout]
        claims += [
            ClaimExample(cs.candidates, int(row))
            for cs in claim_sets
            if cs.heldout_family == heldout
        ]
        if passes_row_filter(study, polarity):
            q = make_mcq(study, polarity, split)
            options = [q.negated_options[q.correct_index]]
            options += [o for i, o in enumerate(q.negated_options) if i != q.correct_index]
            mcq.append(ClaimExample(tuple(options), int(row)))
    return NegationData(captions, claims, mcq)


Method = Callable[
    [DualEncoder, torch.Tensor, NegationData, torch.Tensor, LoopConfig, Path], DualEncoder
]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    def wrap(fn: Method) -> Method:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = fn
        return fn

    return wrap


@register("zero-shot")
def zero_shot(
    encoder: DualEncoder,
    images: torch.Tensor,
    data: NegationData,
    alpha: torch.Tensor,
    config: LoopConfig,
    out: Path,
) -> DualEncoder:
    return encoder


def _trained(claims_of: Callable[[NegationData], list[ClaimExample]], **overrides: Any) -> Method:
    """A method that trains with ``config`` changed by ``overrides`` on chosen claims."""

    def method(
        encoder: DualEncoder,
        images: torch.Tensor,
        data: NegationData,
        alpha: torch.Tensor,
        config: LoopConfig,
        out: Path,
    ) -> DualEncoder:
        claims = claims_of(data)
        if not claims:
            raise ValueError(
                "no training claims for this method (for negbench: no train "
                "study passes the polarity row filter)"
            )
        trainer = Trainer(encoder, alpha, replace(config, **overrides), out)
        trainer.fit(images, data.captions, claims, resume=True)
        return encoder

    return method


def _claim_sets(data: NegationData) -> list[ClaimExample]:
    return data.claims


def _mcq_options(data: NegationData) -> list[ClaimExample]:
    return data.mcq


# uniform LoRA: the NAST loss with beta = 0 (every block weighted 1)
register("uniform-lora")(_trained(_claim_sets, beta=0.0))
# NAST: block l's gradients (or learning rate, config.scaling) weighted by alpha_l ** beta
register("nast")(_trained(_claim_sets))
# NegCLIP: hard negatives in the contrastive batch, full fine-tuning of the text blocks
register("negclip")(_trained(_claim_sets, beta=0.0, lora=None, loss="negclip"))
# NegBench: contrastive + multiple-choice loss on negated multi-condition options, uniform LoRA
register("negbench")(_trained(_mcq_options, beta=0.0))


def run_method(
    name: str,
    encoder: DualEncoder,
    images: torch.Tensor,
    data: NegationData,
    alpha: Sequence[float] | torch.Tensor,
    config: LoopConfig,
    out: str | Path,
) -> DualEncoder:
    """Train ``encoder`` in place with a registered method (resuming from ``out``)."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}")
    torch.manual_seed(config.seed)
    return METHODS[name](encoder, images, data, torch.as_tensor(alpha), config, Path(out))
