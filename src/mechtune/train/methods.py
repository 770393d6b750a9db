"""Fine-tuning methods, registered by name with their task, loss, data and overrides.

A method is one :func:`register` call: the task it fixes, the loss it trains with (a key
of :data:`~mechtune.train.losses.LOSS_FACTORIES`, built by
:func:`~mechtune.train.losses.create_loss` from the run's config, the only place a loss
is built), the training examples it reads, and the config fields it fixes. Every method
of a task runs through the same :class:`~mechtune.train.trainer.Trainer`.

Negation (dual encoders, :class:`~mechtune.train.negation.LoopConfig`), all on the same
data and budget: ``zero-shot`` (no training), ``uniform-lora`` (NAST loss, beta = 0),
``nast`` (block l weighted by alpha_l ** beta; NAST arXiv 2602.12498 §4), its two
controls ``random-alpha`` (NAST with the caller's alpha permuted across blocks:
:func:`mechtune.pipelines.negation_controls.alpha_permutations`) and ``effective-lr``
(uniform LoRA at the mean of lr * alpha_l ** beta over the blocks:
:func:`~mechtune.train.scaling.effective_lr`), ``negclip``
(hard negatives in the contrastive batch, full fine-tuning of the text blocks;
Yuksekgonul et al., ICLR 2023) and ``negbench`` (contrastive + multiple-choice loss on
negated multi-condition options, uniform LoRA; Alhamoud et al., CVPR 2025, NegBench).

Paraphrase (yes/no VLMs, :class:`~mechtune.train.consistency.ConsistencyConfig`):
``consistency-lora``, PSF-Med's LoRA on chosen language-model layers with answer CE
(over the vocabulary of the first answer token, or binary on the margin:
``ConsistencyConfig.answer_loss``) + symmetric KL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from mechtune.errors import ConfigError, DataError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.yes_no import YesNoVLM
from mechtune.progress import Tracker, stage
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample, ConsistencyTask
from mechtune.train.lora import (
    check_gradient_checkpointing,
    enable_gradient_checkpointing,
    lm_lora_site,
    text_lora_site,
)
from mechtune.train.losses import LOSSES, create_loss
from mechtune.train.negation import ClaimExample, LoopConfig, NegationTask
from mechtune.train.negation_data import NegationData
from mechtune.train.negation_data import negation_examples as negation_examples  # re-exported
from mechtune.train.scaling import block_scales, effective_lr
from mechtune.train.tracking import Tracker as RunTracker
from mechtune.train.trainer import Evaluate, Trainer

# -- the registry ---------------------------------------------------------------------------

TASK_CONFIGS: dict[str, type] = {"negation": LoopConfig, "paraphrase": ConsistencyConfig}

# The training examples a method reads, by task.
NEGATION_DATA: dict[str, Callable[[NegationData], list[ClaimExample]]] = {
    "claim_sets": lambda data: data.claims,
    "mcq": lambda data: data.mcq,
}
PARAPHRASE_DATA = ("paraphrase_sets",)


@dataclass(frozen=True)
class MethodEntry:
    """A registered method.

    ``task``: "negation" (dual encoders) or "paraphrase" (yes/no VLMs); ``config``: the
    task's config class; ``loss``: the loss it trains with (None: no training);
    ``data``: the examples it reads (negation: "claim_sets" or "mcq", beside the
    captions; paraphrase: "paraphrase_sets"); ``overrides``: config fields it fixes;
    ``lr_from_alpha``: the learning rate becomes the mean per-block rate
    :func:`~mechtune.train.scaling.effective_lr` of alpha and the config's beta (before
    the overrides apply).
    """

    name: str
    task: str
    config: type
    loss: str | None
    data: str | None
    overrides: Mapping[str, Any]
    summary: str
    lr_from_alpha: bool = False


METHODS: dict[str, MethodEntry] = {}


def register(
    name: str,
    *,
    task: str,
    loss: str | None,
    data: str | None,
    overrides: Mapping[str, Any] | None = None,
    summary: str = "",
    lr_from_alpha: bool = False,
) -> MethodEntry:
    """Register a method. Raises ConfigError for a taken name, an unknown task, loss or
    data, an override that is not a field of the task's config, or ``lr_from_alpha``
    outside the negation task."""
    if name in METHODS:
        raise ConfigError(f"method {name!r} is already registered")
    if task not in TASK_CONFIGS:
        raise ConfigError(f"unknown task {task!r}; known: {sorted(TASK_CONFIGS)}")
    if loss is not None and loss not in LOSSES:
        raise ConfigError(f"method {name!r}: loss must be one of {LOSSES}, got {loss!r}")
    known = NEGATION_DATA if task == "negation" else PARAPHRASE_DATA
    if (loss is None) != (data is None) or (data is not None and data not in known):
        raise ConfigError(
            f"method {name!r}: data must be one of {sorted(known)} when it trains "
            f"(None when it does not), got {data!r}"
        )
    if lr_from_alpha and task != "negation":
        raise ConfigError(f"method {name!r}: lr_from_alpha needs the negation task's alpha")
    config = TASK_CONFIGS[task]
    fields = {f.name for f in dataclass_fields(config)}
    bad = sorted(set(overrides or {}) - fields)
    if bad:
        raise ConfigError(f"method {name!r}: overrides {bad} are not fields of {config.__name__}")
    entry = MethodEntry(
        name,
        task,
        config,
        loss,
        data,
        MappingProxyType(dict(overrides or {})),
        summary,
        lr_from_alpha,
    )
    METHODS[name] = entry
    return entry


def methods_for(task: str) -> list[str]:
    """The registered methods of ``task``, sorted."""
    return sorted(n for n, m in METHODS.items() if m.task == task)


register("zero-shot", task="negation", loss=None, data=None, summary="the model as loaded")
register(
    "uniform-lora",
    task="negation",
    loss="nast",
    data="claim_sets",
    overrides={"beta": 0.0},
    summary="the NAST loss with every block weighted 1 (beta = 0)",
)
register(
    "nast",
    task="negation",
    loss="nast",
    data="claim_sets",
    summary="block l's gradients (or learning rate, config.scaling) weighted by alpha_l ** beta",
)
# The controls of issue 17: does the traced alpha pick better blocks than chance, and is
# NAST more than a smaller learning rate? Both keep NAST's loss, data and budget.
register(
    "random-alpha",
    task="negation",
    loss="nast",
    data="claim_sets",
    summary="NAST with the traced alpha permuted across blocks (the caller permutes it)",
)
register(
    "effective-lr",
    task="negation",
    loss="nast",
    data="claim_sets",
    overrides={"beta": 0.0},
    lr_from_alpha=True,
    summary="uniform LoRA at the mean over blocks of NAST's per-block rate lr * alpha_l ** beta",
)
register(
    "negclip",
    task="negation",
    loss="negclip",
    data="claim_sets",
    overrides={"beta": 0.0, "lora": None},
    summary="hard negatives in the contrastive batch, full fine-tuning of the text blocks",
)
# NegBench's objective is the CLIP loss plus a cross-entropy over the MCQ options, which
# is the NAST loss's form (lambda * L_CLIP + (1 - lambda) * CE over candidates).
register(
    "negbench",
    task="negation",
    loss="nast",
    data="mcq",
    overrides={"beta": 0.0},
    summary="contrastive + multiple-choice loss on negated multi-condition options",
)
register(
    "consistency-lora",
    task="paraphrase",
    loss="consistency",
    data="paraphrase_sets",
    summary="PSF-Med's LoRA on chosen LM layers: answer CE + w * symmetric KL",
)


def reads_alpha(name: str, beta: float) -> bool:
    """Whether negation method ``name`` trained with ``beta`` depends on alpha: its
    blocks are weighted by alpha ** beta (beta not fixed to 0 by the method), or its
    learning rate is their mean (``lr_from_alpha``). Raises ConfigError for an unknown
    method."""
    entry = _entry(name, "negation")
    if entry.loss is None or beta == 0:
        return False
    return entry.lr_from_alpha or entry.overrides.get("beta", beta) != 0


def _entry(name: str, task: str) -> MethodEntry:
    if name not in METHODS or METHODS[name].task != task:
        known = ", ".join(methods_for(task))
        raise ConfigError(f"unknown {task} method {name!r}; registered: {known}")
    return METHODS[name]


# -- running --------------------------------------------------------------------------------


def method_config(
    name: str, alpha: Sequence[float] | torch.Tensor, config: LoopConfig
) -> LoopConfig:
    """The settings negation method ``name`` trains with: ``config`` with the method's
    overrides, and for ``lr_from_alpha`` (effective-lr) the learning rate
    :func:`~mechtune.train.scaling.effective_lr` of ``alpha`` and the config's beta,
    computed before the overrides set beta to 0. Raises ConfigError for an unknown
    method."""
    entry = _entry(name, "negation")
    if entry.lr_from_alpha:
        config = replace(config, lr=effective_lr(alpha, config.beta, config.lr))
    return replace(config, **entry.overrides)


def negation_trainer(
    name: str,
    encoder: DualEncoder,
    images: torch.Tensor,
    data: NegationData,
    alpha: Sequence[float] | torch.Tensor,
    config: LoopConfig,
    out: str | Path,
    *,
    accelerator: Any | None = None,
    tracker: RunTracker | None = None,
    evaluate: Evaluate | None = None,
) -> Trainer:
    """The trainer of negation method ``name`` (which must train) on ``encoder``.

    ``images``: ``[N, D]`` image embeddings; ``alpha``: ``[n_blocks + 1]`` causal-tracing
    effects (embedding output, then each block's output); ``config`` with the method's
    overrides applied (``effective-lr``: its lr the mean per-block rate first); ``tracker`` and ``evaluate`` (needed when ``config.eval_every`` >
    0): see :class:`~mechtune.train.trainer.Trainer`; ``config.mcq_weight`` mixes in
    NegBench's term on ``data.mcq``, ``config.keep_best`` keeps the best evaluated step
    (:mod:`mechtune.train.selection`). Raises ConfigError for an unknown or non-training
    method, or ``mcq_weight`` on a method that trains on MCQs already (negbench), and
    DataError when the method's examples are empty.
    """
    entry = _entry(name, "negation")
    if entry.loss is None or entry.data is None:
        raise ConfigError(f"method {name!r} does not train")
    config = method_config(name, alpha, config)
    claims = NEGATION_DATA[entry.data](data)
    if not claims:
        raise DataError(
            f"no training examples ({entry.data}) for {name} (for negbench: no train "
            "study passes the polarity row filter)"
        )
    if config.mcq_weight and entry.data == "mcq":
        raise ConfigError(
            f"mcq_weight ({config.mcq_weight}) mixes NegBench's multiple-choice term into a "
            f"claim-set method; {name} already trains on the MCQ options: set it to 0"
        )
    task = NegationTask(
        encoder,
        images,
        data.captions,
        claims,
        create_loss(entry.loss, config),
        config,
        mcq=data.mcq if config.mcq_weight else (),
    )
    site = text_lora_site(encoder.model)
    scales = block_scales(alpha, config.beta, site.n_layers).float()
    return Trainer(
        encoder.model,
        site,
        task,
        config,
        out,
        scales=scales,
        scaling=config.scaling,
        accelerator=accelerator,
        tracker=tracker,
        evaluate=evaluate,
        keep_best=config.keep_best,
    )


def resumed_step(trainer: Trainer) -> int:
    """The step of ``trainer``'s newest checkpoint (``step_NNNNNN``), 0 when it has none:
    where :meth:`~mechtune.train.trainer.Trainer.fit` with ``resume`` starts."""
    found = trainer.checkpoints()
    return int(found[-1].name.rsplit("_", 1)[-1]) if found else 0


def fit_reporting(trainer: Trainer, track: Tracker | None, description: str) -> None:
    """``trainer.fit(resume=True)``, reporting to ``track`` (one stage of
    ``settings.steps`` steps, starting at the resumed checkpoint's step): every step, and
    at each logging interval the mean ``loss`` of its steps. The loss is only read when
    the trainer flushes its logged terms (:meth:`~mechtune.train.trainer.Trainer.flush`),
    so reporting adds no host-device sync."""
    start = min(resumed_step(trainer), trainer.settings.steps)
    with stage(track, description, trainer.settings.steps, completed=start) as advance:
        shown = [start]

        def stepped(_n: int) -> None:
            advance(max(trainer.step - shown[0], 0))
            shown[0] = trainer.step

        def logged(records: list[dict[str, float]]) -> None:
            losses = [r["loss"] for r in records if "loss" in r]
            if losses:
                advance(0, loss=sum(losses) / len(losses))

        trainer.fit(resume=True, progress=stepped, on_log=logged)


def run_method(
    name: str,
    encoder: DualEncoder,
    images: torch.Tensor,
    data: NegationData,
    alpha: Sequence[float] | torch.Tensor,
    config: LoopConfig,
    out: str | Path,
    *,
    accelerator: Any | None = None,
    base_model: str | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
    evaluate: Evaluate | None = None,
) -> DualEncoder:
    """Train ``encoder`` in place with negation method ``name``, resuming from the
    checkpoints in ``out``, and write the result there (``adapter/`` or
    ``weights.safetensors``, and ``train.json``; reload with
    :func:`~mechtune.train.checkpoint.load_trained`). ``zero-shot`` returns ``encoder``
    untouched and writes nothing. ``accelerator``: an ``accelerate.Accelerator`` for DDP
    (``config.shards`` a multiple of its processes; the main process writes).
    ``base_model``: the model spec's hub id or local path, for the model card
    (:meth:`~mechtune.train.trainer.Trainer.save_result`). ``track``: reports the steps
    and the loss (:func:`fit_reporting`); ``tracker`` (inside a session the caller opened)
    and ``evaluate``: :func:`negation_trainer`. Shapes and errors:
    :func:`negation_trainer`."""
    entry = _entry(name, "negation")
    torch.manual_seed(config.seed)
    if entry.loss is None:
        return encoder
    trainer = negation_trainer(
        name,
        encoder,
        images,
        data,
        alpha,
        config,
        out,
        accelerator=accelerator,
        tracker=tracker,
        evaluate=evaluate,
    )
    fit_reporting(trainer, track, f"train {name} (seed {config.seed})")
    trainer.save_result(name, base_model=base_model, task="negation")
    return encoder


def paraphrase_trainer(
    name: str,
    vlm: YesNoVLM,
    images: Any,
    examples: Sequence[ConsistencyExample],
    config: ConsistencyConfig,
    out: str | Path,
    *,
    accelerator: Any | None = None,
    tracker: RunTracker | None = None,
    evaluate: Evaluate | None = None,
) -> Trainer:
    """The trainer of paraphrase method ``name`` on ``vlm``'s language-model blocks.

    ``images``: whatever ``vlm.margin`` takes, indexed by the examples' ``image`` rows.
    ``accelerator``: an ``accelerate.Accelerator`` for DDP; its number of processes must
    divide ``config.grad_accum`` (each rank takes as many micro-batches). Raises
    ConfigError for an unknown method or micro-batches the ranks cannot share, DataError
    for empty examples. With ``config.gradient_checkpointing`` the model's blocks
    checkpoint their activations (:func:`~mechtune.train.lora.enable_gradient_checkpointing`,
    turned on after LoRA is injected; ConfigError for a model without transformers'
    checkpointing). ``tracker`` and ``evaluate`` (needed when ``config.eval_every`` > 0):
    see :class:`~mechtune.train.trainer.Trainer`."""
    entry = _entry(name, "paraphrase")
    config = replace(config, **entry.overrides)
    if entry.loss is None:
        raise ConfigError(f"method {name!r} does not train")
    if config.gradient_checkpointing:
        check_gradient_checkpointing(vlm.module)  # before LoRA goes into the model
    task = ConsistencyTask(vlm, images, examples, create_loss(entry.loss, config), config)
    trainer = Trainer(
        vlm.module,
        lm_lora_site(vlm),
        task,
        config,
        out,
        accelerator=accelerator,
        tracker=tracker,
        evaluate=evaluate,
    )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(vlm.module)
    return trainer


def run_paraphrase_method(
    name: str,
    vlm: YesNoVLM,
    images: Any,
    examples: Sequence[ConsistencyExample],
    config: ConsistencyConfig,
    out: str | Path,
    *,
    accelerator: Any | None = None,
    base_model: str | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
    evaluate: Evaluate | None = None,
) -> YesNoVLM:
    """Train ``vlm`` in place with paraphrase method ``name`` (resuming from ``out``) and
    write its adapter and ``train.json`` there (see :func:`run_method`; under DDP the main
    process writes; ``base_model`` names the base in the model card; ``track`` reports the
    steps and the loss, :func:`fit_reporting`; ``tracker`` and ``evaluate`` as
    :func:`paraphrase_trainer`). Shapes and errors: :func:`paraphrase_trainer`."""
    _entry(name, "paraphrase")
    torch.manual_seed(config.seed)
    trainer = paraphrase_trainer(
        name,
        vlm,
        images,
        examples,
        config,
        out,
        accelerator=accelerator,
        tracker=tracker,
        evaluate=evaluate,
    )
    fit_reporting(trainer, track, f"train {name} (seed {config.seed})")
    trainer.save_result(name, base_model=base_model, task="paraphrase")
    return vlm
