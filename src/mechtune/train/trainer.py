"""The one trainer of both tasks: optimiser, accumulation/DDP shards, checkpoints, exact
resume and the final save.

A task (:class:`TrainTask`) says how to draw a global batch from the sampler's generator
and how to compute the loss terms of one shard of it; the trainer owns everything else:

- the trainable parameters (LoRA on the site's blocks, or the blocks themselves under full
  fine-tuning), behind the fence of
  :func:`~mechtune.train.lora.trainable_block_parameters`;
- the optimiser the settings name (``optimizer``: AdamW, or SGD with ``momentum``;
  :mod:`mechtune.train.optimizers`) with NAST's per-block scaling
  (:mod:`mechtune.train.scaling`): gradients scaled by ``scales[l]``
  (``scaling="gradient"``) or one parameter group per block with learning rate
  ``lr * scales[l]`` (``scaling="lr"``); which of the two survives the optimiser is
  derived in docs/optimizers.md;
- the global batch split into ``task.shards`` shards: accumulated in one process, spread
  evenly over the ranks under DDP (``accelerate``; ``task.shards`` a multiple of the number
  of processes), gradients averaged either way;
- checkpoints that resume exactly (weights, optimiser, the sampler's and torch's random
  streams, step, history; :mod:`mechtune.train.checkpoint`) and the final result
  (:func:`~mechtune.train.checkpoint.save_trained`);
- the logged loss terms, kept on the device and moved to the host once per logging
  interval (:meth:`Trainer.flush`), not once per step: reading a CUDA tensor's value makes
  the host wait for every queued kernel, so a per-step read would stop the host from
  queueing the next step's work while the device runs this one. The interval is the
  checkpoint interval (``checkpoint_every``, where the history is persisted) and the end of
  :meth:`Trainer.fit`;
- experiment tracking (:mod:`mechtune.train.tracking`, with a :class:`Tracker` that is
  enabled): per step the loss terms, each block's gradient norm (computed on the device
  and carried to the host with the terms, in the same single transfer per flush) and its
  effective learning rate or gradient factor; and every ``eval_every`` steps a read-only
  validation metric (``evaluate``), whose values are kept in :attr:`Trainer.evals` and
  ``train.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import PeftModel
from torch import nn

from mechtune.errors import ConfigError
from mechtune.train.checkpoint import (
    checkpoint_folders,
    load_latest_checkpoint,
    save_checkpoint,
    save_trained,
)
from mechtune.train.lora import (
    LoraSettings,
    LoraSite,
    apply_lora,
    enable_block_finetune,
    trainable_block_parameters,
)
from mechtune.train.model_card import CardFacts
from mechtune.train.optimizers import build_optimizer
from mechtune.train.scaling import scaled_gradients
from mechtune.train.selection import BestKeeper
from mechtune.train.tracking import Tracker, block_tag

SCALINGS = ("gradient", "lr")
# Settings a resumed run may change: how long it runs, how often it checkpoints and
# evaluates (read-only), and gradient checkpointing (recomputation gives the same
# gradients, so a run may resume on a smaller GPU with it on).
RESUME_FREE = frozenset({"steps", "checkpoint_every", "eval_every", "gradient_checkpointing"})
# Settings added after checkpoints were first written, with the value every older run
# trained under: a checkpoint whose config lacks one is read as having this value.
# (A task's config that lacks one, such as the consistency task's, is not compared on it.)
ADDED_SETTINGS: dict[str, Any] = {
    "optimizer": "adamw",
    "momentum": 0.0,
    "batch_polarity": False,
    "margin_weight": 0.0,
    "margin": 1.0,
    "retention_weight": 0.0,
    "retention_kind": "cosine",
    "retention_batch": 32,
    "mcq_weight": 0.0,
    "mcq_batch": 32,
    "keep_best": None,
}
# A validation metric: reads the model being trained (in eval mode, without gradients)
# and returns {metric: value}, logged as ``eval/<metric>``.
Evaluate = Callable[[], Mapping[str, float]]


class TrainSettings(Protocol):
    """The settings every task's config gives the trainer."""

    @property
    def steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def momentum(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    @property
    def eval_every(self) -> int: ...
    @property
    def lora(self) -> LoraSettings | None: ...

    def to_dict(self) -> dict[str, Any]: ...


class TrainTask(Protocol):
    """What a task supplies: batches and loss terms.

    ``shards``: how many equal shards (micro-batches) a global batch splits into: the
    negation task's ``LoopConfig.shards``, the consistency task's ``grad_accum``.
    ``sample`` draws the global batch from ``generator`` only (so a resumed run replays
    it); ``loss_terms`` returns the named float32 scalar terms of shard ``shard`` of
    ``shards`` (``"loss"`` is back-propagated, each shard's a mean over its examples),
    computed by the task's loss module.
    """

    shards: int

    def sample(self, generator: torch.Generator) -> Any: ...

    def loss_terms(self, batch: Any, shard: int, shards: int) -> dict[str, torch.Tensor]: ...


def check_shards(shards: int, processes: int) -> None:
    """Under DDP each of ``processes`` ranks must take the same number (at least one) of
    the global batch's ``shards``: an empty rank has no loss to back-propagate, and
    unequal counts would weight examples unequally in the averaged gradient. Raises
    ConfigError naming both numbers otherwise (for the consistency task the shards are
    ``grad_accum`` micro-batches, for the negation task ``LoopConfig.shards``)."""
    if processes < 1 or shards < processes or shards % processes:
        raise ConfigError(
            f"under DDP the global batch's shards ({shards}: the consistency task's "
            f"grad_accum micro-batches, the negation task's shards) must be a multiple of "
            f"the number of processes ({processes}), so that every process takes the same "
            "number of shards, at least one"
        )


class Trainer:
    """Trains ``module`` on ``task``; checkpoints and results go to ``out``.

    ``site``: where the trainable blocks are. ``settings.lora`` None means full
    fine-tuning of those blocks, else LoRA on them (peft, injected in place).
    ``scales``: ``[site.n_layers]`` per-block factors (None: all 1), applied as
    ``scaling`` says. ``accelerator``: an ``accelerate.Accelerator`` for DDP, whose
    number of processes must divide ``task.shards`` (:func:`check_shards`).
    ``tracker``: where the per-step values go (:mod:`mechtune.train.tracking`; None or
    disabled: nowhere, and no gradient norm is computed); ``evaluate``: the validation
    metric run every ``settings.eval_every`` steps (:meth:`fit`); ``keep_best``: a
    criterion of :data:`~mechtune.train.selection.KEEP_BEST`: the run ends with the
    weights of the best evaluated step (step 0, the untrained model, included), recorded
    in ``train.json`` as ``"kept"`` (:mod:`mechtune.train.selection`). Raises ConfigError for
    an unknown scaling, a scale vector of the wrong length, shards that the processes
    cannot share equally, a trainable parameter outside the blocks, ``eval_every`` > 0
    without ``evaluate``, or ``keep_best`` without ``eval_every``.
    """

    def __init__(
        self,
        module: nn.Module,
        site: LoraSite,
        task: TrainTask,
        settings: TrainSettings,
        out: str | Path,
        *,
        scales: torch.Tensor | None = None,
        scaling: str = "gradient",
        accelerator: Any | None = None,
        tracker: Tracker | None = None,
        evaluate: Evaluate | None = None,
        keep_best: str | None = None,
    ) -> None:
        if scaling not in SCALINGS:
            raise ConfigError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        if scales is not None and len(scales) != site.n_layers:
            raise ConfigError(
                f"scales has {len(scales)} entries; the model has {site.n_layers} blocks"
            )
        if accelerator is not None:
            check_shards(task.shards, accelerator.num_processes)
        if keep_best is not None and not settings.eval_every:
            raise ConfigError(f"keep_best ({keep_best!r}) needs eval_every > 0")
        if settings.eval_every and evaluate is None:
            raise ConfigError(
                f"eval_every is {settings.eval_every}, but no validation data was given to "
                "evaluate on; set eval_every to 0"
            )
        self.site, self.task, self.settings, self.out = site, task, settings, Path(out)
        self.scaling, self.accelerator = scaling, accelerator
        if settings.lora is None:
            self.model: nn.Module = enable_block_finetune(module, site)
        else:
            self.model = apply_lora(module, site, settings.lora)
        self.params = trainable_block_parameters(self.model, site)
        # on the host: the gradient hooks read one factor per parameter every step
        self.scales = torch.ones(site.n_layers) if scales is None else scales.detach().cpu()
        if scaling == "gradient":
            groups: list[dict[str, Any]] = [{"params": [p for _, p in self.params.values()]}]
        else:
            by_block: dict[int, list[Any]] = {}
            for layer, p in self.params.values():
                by_block.setdefault(layer, []).append(p)
            groups = [
                {"params": ps, "lr": settings.lr * float(self.scales[b])}
                for b, ps in sorted(by_block.items())
            ]
        self.optim = build_optimizer(
            groups,
            optimizer=settings.optimizer,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            momentum=settings.momentum,
        )
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        # Steps not yet flushed: (step, term names, [n_terms (+ n_blocks when tracking)]
        # float32 values on the device: the terms' means, then the blocks' gradient norms).
        self._pending: list[tuple[int, tuple[str, ...], torch.Tensor]] = []
        self.evaluate = evaluate
        self.evals: list[dict[str, float]] = []  # {"step", metric: value} per evaluation
        self._pending_evals: dict[int, dict[str, float]] = {}  # not yet sent to the tracker
        self.tracker = tracker if tracker is not None and tracker.enabled else None
        self.keeper = (
            BestKeeper(keep_best, {n: p for n, (_, p) in self.params.items()})
            if keep_best is not None
            else None
        )
        # the trained blocks, ascending, and each trainable parameter's place among them
        self.blocks = sorted({layer for layer, _ in self.params.values()})
        place = {b: i for i, b in enumerate(self.blocks)}
        first = next(p for _, p in self.params.values())
        self._grad_blocks = torch.tensor(
            [place[layer] for layer, _ in self.params.values()], device=first.device
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders under ``out``, oldest first."""
        return checkpoint_folders(self.out)

    def save(self) -> Path:
        """Write ``out/step_{step:06d}`` (see :func:`~mechtune.train.checkpoint.save_checkpoint`)
        with the history of every step so far (pending steps are flushed first: under DDP a
        collective, see :meth:`flush`)."""
        self.flush()
        params = {n: p for n, (_, p) in self.params.items()}
        state = {"config": self.settings.to_dict(), "history": self.history, "eval": self.evals}
        return save_checkpoint(
            self.out,
            self.step,
            params,
            self.optim,
            self.generator,
            state,
            self.model,
            extra=self.keeper.save if self.keeper is not None else None,
        )

    def resume(self) -> bool:
        """Load the newest checkpoint, if any. Returns whether one was loaded.

        Raises ConfigError when the checkpoint was written under other settings (any
        field but those in :data:`RESUME_FREE`, which a resumed run may change): its
        weights and optimiser state would not be the ones this run's settings give (an
        AdamW checkpoint holds moment estimates, an SGD one momentum buffers). A
        checkpoint older than a setting of :data:`ADDED_SETTINGS` counts as written with
        that setting's value then, so it resumes under the defaults only.
        """
        found = self.checkpoints()
        if found:
            saved = json.loads((found[-1] / "state.json").read_text(encoding="utf-8"))
            ours = self.settings.to_dict()
            added = {k: v for k, v in ADDED_SETTINGS.items() if k in ours}
            saved["config"] = {**added, **saved["config"]}
            free = RESUME_FREE
            changed = sorted(
                k
                for k in (set(ours) | set(saved["config"])) - free
                if ours.get(k) != saved["config"].get(k)
            )
            if changed:
                raise ConfigError(
                    f"{found[-1]} was written with other settings ({', '.join(changed)}); "
                    "resume with the same settings or use another output folder"
                )
        params = {n: p for n, (_, p) in self.params.items()}
        state = load_latest_checkpoint(self.out, params, self.optim, self.generator)
        if state is None:
            return False
        self.step, self.history = int(state["step"]), list(state["history"])
        self.evals = list(state.get("eval", []))
        if self.keeper is not None:
            self.keeper.load(found[-1], state)
        self._pending = []  # steps after the checkpoint are undone with their terms
        self._pending_evals = {}
        return True

    def save_result(
        self, method: str, *, base_model: str | None = None, task: str | None = None
    ) -> Path:
        """The trained result: a peft adapter in ``out/adapter/`` (LoRA) or the blocks'
        weights in ``out/weights.safetensors`` (full fine-tuning), ``out/train.json``
        with the whole history and the model card ``out/README.md`` (also in
        ``out/adapter/`` for LoRA; :meth:`card_facts`). Pending steps are flushed first;
        under DDP call it on every rank, as
        :func:`~mechtune.train.methods.run_paraphrase_method` does: the main process
        writes. ``base_model``: the model spec's hub id or local path (None: the
        transformers model's ``name_or_path``); ``task``: ``"negation"`` or
        ``"paraphrase"`` (None: from the settings, paraphrase when they have
        ``grad_accum``). With ``eval_every`` > 0, ``train.json`` also holds the
        evaluations (``"eval"``: :attr:`evals`)."""
        self.flush()
        main = self.accelerator is None or self.accelerator.is_main_process
        if main:
            info: dict[str, Any] = {
                "method": method,
                "config": self.settings.to_dict(),
                "step": self.step,
                "history": self.history,
            }
            if self.settings.eval_every:
                info["eval"] = self.evals
            if self.keeper is not None:
                info["kept"] = self.keeper.record(self.evals)
            save_trained(
                self.out,
                self.model,
                self.site,
                info,
                self.card_facts(base_model=base_model, task=task),
            )
        return self.out

    def card_facts(self, *, base_model: str | None = None, task: str | None = None) -> CardFacts:
        """The model card's facts of this run (see :meth:`save_result` for the
        arguments): the trainable parameters' count (those the optimiser updates) and
        every parameter of the model, adapters included; the per-block scales when they
        are not all 1."""
        if task is None:
            task = "paraphrase" if hasattr(self.settings, "grad_accum") else "negation"
        base = base_model
        if base is None:
            model = self.model.get_base_model() if isinstance(self.model, PeftModel) else None
            name = getattr(model if model is not None else self.model, "name_or_path", None)
            base = name if isinstance(name, str) and name else None
        inner = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        uniform = bool(torch.all(self.scales == 1))
        return CardFacts(
            base_model=base,
            task=task,
            trainable=sum(p.numel() for _, p in self.params.values()),
            total=sum(p.numel() for p in self.model.parameters()),
            peft=isinstance(self.model, PeftModel),
            model_class=type(inner).__name__,
            scales=None if uniform else tuple(float(s) for s in self.scales),
            scaling=self.scaling,
        )

    # -- training ---------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step on a global batch of ``task.shards`` shards.

        One process: every shard's loss is divided by the number of shards and
        back-propagated (gradient accumulation), so the gradient is the mean over shards.
        Under DDP with ``P`` processes, rank ``r`` takes shards ``r, r + P, r + 2P, ...``
        (``task.shards / P`` of them), accumulates their losses divided by that count, and
        the gradients are averaged across ranks: (1/P) Σ_r (P/S) Σ_{s of r} g_s
        = (1/S) Σ_s g_s, the single process's mean.

        Returns ``{term: tensor}``: this process's mean of each term over its shards, detached
        float32 0-d tensors on the model's device. Nothing is read back to the host: the
        step's terms wait for :meth:`flush`, which logs them (under DDP averaged over the
        ranks) in :attr:`history`. ``float(terms[k])`` reads one now, at the cost of a
        host-device sync.
        """
        batch = self.task.sample(self.generator)
        n = self.task.shards
        if self.accelerator is None:
            shards: Sequence[int] = range(n)
        else:
            shards = range(self.accelerator.process_index, n, self.accelerator.num_processes)
        count = len(shards)
        names: tuple[str, ...] = ()
        totals: torch.Tensor | None = None
        self.optim.zero_grad(set_to_none=True)
        scaled = (
            scaled_gradients(self.model, self.scales, self.site)
            if self.scaling == "gradient"
            else nullcontext()
        )
        with scaled:
            for shard in shards:
                terms = self.task.loss_terms(batch, shard, n)
                (terms["loss"] / count).backward()
                names = names or tuple(terms)
                values = torch.stack([terms[k].detach().float() for k in names]) / count
                totals = values if totals is None else totals + values
        if self.accelerator is not None:
            for _, p in self.params.values():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        assert totals is not None  # check_shards: every process takes at least one shard
        pending = totals if self.tracker is None else torch.cat([totals, self.grad_norms()])
        self.optim.step()
        self.step += 1
        self._pending.append((self.step, names, pending))
        return dict(zip(names, totals.unbind(), strict=True))

    def grad_norms(self) -> torch.Tensor:
        """``[len(blocks)]`` float32 on the device: per trained block (:attr:`blocks`,
        ascending), the L2 norm of the current gradients of its trainable parameters,
        sqrt(sum_p ||grad_p||²) (a parameter without a gradient adds 0). Reads nothing
        back to the host."""
        first = next(p for _, p in self.params.values())
        zero = torch.zeros((), device=first.device)
        squares = torch.stack(
            [
                zero if p.grad is None else p.grad.detach().float().square().sum()
                for _, p in self.params.values()
            ]
        )
        total = torch.zeros(len(self.blocks), device=first.device)
        return total.index_add_(0, self._grad_blocks, squares).sqrt()

    def rates(self) -> dict[str, float]:
        """The effective learning rate of each block, from the optimiser and the scales
        (host values, no device read): ``{"lr": lr}`` when every block's factor is 1;
        under ``scaling="lr"`` each block's parameter-group rate (``lr/block_<b>``);
        under ``scaling="gradient"`` the rate and each block's gradient factor
        (``grad_scale/block_<b>``)."""
        if bool(torch.all(self.scales == 1)):
            return {"lr": float(self.optim.param_groups[0]["lr"])}
        if self.scaling == "lr":  # one group per trained block, ascending (__init__)
            return {
                block_tag("lr", b): float(g["lr"])
                for b, g in zip(self.blocks, self.optim.param_groups, strict=True)
            }
        rates = {"lr": float(self.optim.param_groups[0]["lr"])}
        rates.update({block_tag("grad_scale", b): float(self.scales[b]) for b in self.blocks})
        return rates

    def flush(self) -> list[dict[str, float]]:
        """Log the steps since the last flush: their terms go to the host in ONE transfer
        (concatenated, then one ``tolist``) and are appended to :attr:`history`, one
        ``{"step", term: value}`` per step. Under DDP the concatenated terms of every rank
        are averaged in one collective first, so every rank logs the global mean, as one
        process would; every rank must then call it at the same step (:meth:`fit` does).
        Returns the new records (empty when no step is pending).

        With a tracker, each step's blocks' gradient norms travel in the same transfer
        (identical on every rank after the gradient average), and each step goes to the
        tracker (:mod:`mechtune.train.tracking`'s tags) with the block rates
        (:meth:`rates`) and the evaluations made at it."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        flat = torch.cat([values for _, _, values in pending])
        if self.accelerator is not None:
            flat = self.accelerator.reduce(flat.to(self.accelerator.device), reduction="mean")
        numbers = flat.tolist()
        records: list[dict[str, float]] = []
        at = 0
        rates = self.rates() if self.tracker is not None else {}
        for step, names, values in pending:
            record = dict(zip(names, numbers[at : at + len(names)], strict=True))
            records.append({"step": step, **record})
            if self.tracker is not None:
                norms = numbers[at + len(names) : at + len(values)]
                tags = {f"train/{name}": value for name, value in record.items()}
                tags.update(rates)
                tags.update(
                    {block_tag("grad_norm", b): n for b, n in zip(self.blocks, norms, strict=True)}
                )
                evals = self._pending_evals.pop(step, {})
                tags.update({f"eval/{name}": value for name, value in evals.items()})
                self.tracker.log(tags, step)
            at += len(values)
        self.history.extend(records)
        return records

    def run_evaluation(self) -> dict[str, float]:
        """Run ``evaluate`` on the model as it is now, read-only: in eval mode (no dropout),
        without gradients, with torch's random streams (CPU and the model's CUDA devices)
        restored afterwards, and back in train mode; so a run with evaluations trains
        exactly as one without. Appends ``{"step", metric: value}`` to :attr:`evals` and
        keeps the metrics for the tracker, logged with the step's terms at the next
        :meth:`flush`. Returns the metrics."""
        assert self.evaluate is not None
        devices = sorted(
            {p.device.index or 0 for _, p in self.params.values() if p.device.type == "cuda"}
        )
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                metrics = {name: float(value) for name, value in self.evaluate().items()}
        finally:
            self.model.train()
        self.evals.append({"step": self.step, **metrics})
        if self.tracker is not None:
            self._pending_evals[self.step] = metrics
        return metrics

    def fit(
        self,
        *,
        resume: bool = False,
        stop_after: int | None = None,
        progress: Callable[[int], None] | None = None,
        on_log: Callable[[list[dict[str, float]]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train to ``settings.steps``, checkpointing every ``checkpoint_every`` steps and
        at the last. ``resume`` continues from the newest checkpoint in ``out``;
        ``stop_after`` ends the run after that many steps, as a kill would; ``progress``
        is called with 1 after every step. The loss terms reach the host once per logging
        interval (:meth:`flush`): at every checkpoint step, at the last step and when
        ``stop_after`` ends the run; ``on_log`` then gets that interval's records (all
        processes under DDP). Every ``settings.eval_every`` steps (0: never) the main
        process runs the validation metric (:meth:`run_evaluation`) after the step; with
        ``keep_best`` it first evaluates the untrained model (step 0) and, once the run
        has reached ``settings.steps``, puts the best evaluated step's weights back
        (:class:`~mechtune.train.selection.BestKeeper`; the last checkpoint keeps the
        last step's, so a longer resumed run continues from there).
        Returns the history: one ``{"step", term: value}`` per step."""
        if resume:
            self.resume()
        done = 0
        self.model.train()
        main = self.accelerator is None or self.accelerator.is_main_process
        every = self.settings.checkpoint_every
        evaluate_every = self.settings.eval_every
        if main and self.keeper is not None and self.step == 0 and not self.evals:
            metrics = self.run_evaluation()  # the untrained model: the guarded criteria's base
            self.keeper.consider(self.evals, 0)
            if self.tracker is not None:  # no step 0 is ever flushed: log it now
                self._pending_evals.pop(0, None)
                self.tracker.log({f"eval/{k}": v for k, v in metrics.items()}, 0)
        while self.step < self.settings.steps:
            self.train_step()
            done += 1
            if main and evaluate_every and self.step % evaluate_every == 0:
                self.run_evaluation()
                if self.keeper is not None:
                    self.keeper.consider(self.evals, self.step)
            stopping = stop_after is not None and done >= stop_after
            checkpoint = self.step % every == 0 or self.step == self.settings.steps
            records = self.flush() if checkpoint or stopping else []
            if main and checkpoint:
                self.save()
            if on_log is not None and records:
                on_log(records)
            if progress is not None:
                progress(1)
            if stopping:
                break
        if self.keeper is not None and self.step >= self.settings.steps:
            self.keeper.restore()  # the best evaluated step's weights, not the last's
        self.model.eval()
        return self.history
