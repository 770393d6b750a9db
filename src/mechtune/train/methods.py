"""Fine-tuning methods, registered by name with their task and config class.

Negation (dual encoders, :class:`LoopConfig`), all on the same data and budget:
``zero-shot`` (no training), ``uniform-lora`` (NAST loss, beta = 0), ``nast`` (gradients
of block l scaled by alpha_l ** beta), ``negclip`` (hard negatives in the contrastive batch,
full fine-tuning of the text blocks) and ``negbench`` (contrastive + multiple-choice loss on
negated multi-condition options, uniform LoRA). Training examples come from the
contextual builder on a world's train-split patients (train phrasing families only).

Paraphrase (yes/no VLMs, :class:`ConsistencyConfig`): ``consistency-lora``, PSF-Med's
LoRA on chosen language-model layers with answer CE + symmetric KL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
from mechtune.errors import ConfigError, DataError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.yes_no import YesNoVLM
from mechtune.sim.world import World
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample, ConsistencyTrainer
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
    balance_polarity: bool = True,
) -> NegationData:
    """Single negated captions and claim sets of one split, in one family pool.

    Most conditions are absent in most studies, so about two thirds of the claim sets have
    a negated correct claim; trained on them as drawn, every method learns to prefer "No
    ..." wording and overshoots (the affirmative-negation gap flips sign). With
    ``balance_polarity`` the minority polarity's claim sets are repeated, in order, until
    both polarities are equally many, so uniform sampling sees each half the time.
    """
    contextual = contextual or ContextualConfig(
        seed=world.config.seed, split_fractions=world.config.split_fractions
    )
    captions, mcq = [], []
    by_polarity: dict[str, list[ClaimExample]] = {"affirmative": [], "negated": []}
    polarity = PolarityConfig(
        seed=contextual.seed,
        families="heldout" if heldout else "train",
        split_fractions=contextual.split_fractions,
    )
    for row in world.indices(split):
        study = world.studies[int(row)]
        claim_sets, caps = study_records(study, contextual)
        captions += [CaptionExample(c.text, int(row)) for c in caps if c.heldout_family == heldout]
        for cs in claim_sets:
            if cs.heldout_family == heldout:
                by_polarity.setdefault(cs.polarity, []).append(
                    ClaimExample(cs.candidates, int(row))
                )
        if passes_row_filter(study, polarity):
            q = make_mcq(study, polarity, split)
            options = [q.negated_options[q.correct_index]]
            options += [o for i, o in enumerate(q.negated_options) if i != q.correct_index]
            mcq.append(ClaimExample(tuple(options), int(row)))
    if balance_polarity:
        claims = _balanced(list(by_polarity.values()))
    else:
        claims = [c for group in by_polarity.values() for c in group]
    return NegationData(captions, claims, mcq)


def _balanced(groups: list[list[ClaimExample]]) -> list[ClaimExample]:
    """Each non-empty group repeated cyclically up to the largest group's size."""
    size = max((len(g) for g in groups), default=0)
    return [g[i % len(g)] for g in groups if g for i in range(size)]


Method = Callable[
    [DualEncoder, torch.Tensor, NegationData, torch.Tensor, LoopConfig, Path], DualEncoder
]
ParaphraseMethod = Callable[
    [YesNoVLM, Any, Sequence[ConsistencyExample], ConsistencyConfig, Path], YesNoVLM
]


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: the task it fixes, its config class, and how to run it."""

    name: str
    task: str  # "negation" (dual encoders) or "paraphrase" (yes/no VLMs)
    config: type
    run: Callable[..., Any]


METHODS: dict[str, MethodEntry] = {}
TASK_CONFIGS = {"negation": LoopConfig, "paraphrase": ConsistencyConfig}


def register(name: str, task: str = "negation") -> Callable[[Callable[..., Any]], Any]:
    if task not in TASK_CONFIGS:
        raise ConfigError(f"unknown task {task!r}; known: {sorted(TASK_CONFIGS)}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METHODS:
            raise ConfigError(f"method {name!r} is already registered")
        METHODS[name] = MethodEntry(name, task, TASK_CONFIGS[task], fn)
        return fn

    return wrap


def methods_for(task: str) -> list[str]:
    return sorted(n for n, m in METHODS.items() if m.task == task)


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
            raise DataError(
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
    entry = _entry(name, "negation")
    torch.manual_seed(config.seed)
    return entry.run(encoder, images, data, torch.as_tensor(alpha), config, Path(out))


@register("consistency-lora", task="paraphrase")
def consistency_lora(
    vlm: YesNoVLM,
    images: Any,
    examples: Sequence[ConsistencyExample],
    config: ConsistencyConfig,
    out: Path,
) -> YesNoVLM:
    """PSF-Med's targeted LoRA: CE + w * symmetric KL on ``config.layers``."""
    ConsistencyTrainer(vlm, config, out).fit(images, examples, resume=True)
    return vlm


def run_paraphrase_method(
    name: str,
    vlm: YesNoVLM,
    images: Any,
    examples: Sequence[ConsistencyExample],
    config: ConsistencyConfig,
    out: str | Path,
) -> YesNoVLM:
    """Train ``vlm`` in place with a registered paraphrase method (resuming from ``out``)."""
    entry = _entry(name, "paraphrase")
    torch.manual_seed(config.seed)
    return entry.run(vlm, images, examples, config, Path(out))


def _entry(name: str, task: str) -> MethodEntry:
    if name not in METHODS or METHODS[name].task != task:
        known = ", ".join(methods_for(task))
        raise ConfigError(f"unknown {task} method {name!r}; registered: {known}")
    return METHODS[name]
