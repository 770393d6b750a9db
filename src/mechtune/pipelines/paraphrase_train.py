"""``mechtune paraphrase train`` and ``eval`` as functions: consistency LoRA on bound
questions, with resume checks and a reload fingerprint, and PSF-Med evaluation of a model
as loaded, with a trained adapter, or with an SAE feature clamped.

A training run folder holds the trainer's checkpoints (``step_<N>/``), the peft adapter
(``adapter/``), ``train.json`` (settings and loss history), ``run.json`` (what a resumed
run must share: method, model spec, dtype, questions file hash, data) and
``probe_margins.safetensors``: a few training questions' images and texts with the
trained model's margins, which :func:`apply_paraphrase_adapter` recomputes on reload.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechtune.data.io import (
    atomic_path,
    atomic_write_text,
    dumps_json,
    sha256_file,
    to_jsonable,
    write_json,
)
from mechtune.data.schema import ImageQuestion
from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae_analysis import feature_edit, margins
from mechtune.interp.sae_folders import Clamp
from mechtune.models.yes_no import YesNoVLM
from mechtune.pipelines.negation import RUN_FILE, check_resume, run_probe
from mechtune.pipelines.paraphrase_eval import (
    eval_table,
    evaluate_questions,
    jsonable,
    write_margins,
)
from mechtune.pipelines.questions import BoundQuestions, QuestionFileError, bind_questions
from mechtune.progress import Tracker
from mechtune.train.checkpoint import load_trained
from mechtune.train.consistency import ConsistencyConfig, consistency_examples
from mechtune.train.distributed import is_main_process, wait_for_everyone
from mechtune.train.methods import run_paraphrase_method
from mechtune.train.model_card import base_model_of
from mechtune.train.tracking import Tracker as RunTracker
from mechtune.train.trainer import Evaluate

METHOD = "consistency-lora"
PROBE_FILE = "probe_margins.safetensors"
PROBE_QUESTIONS = 4
# Margins are logits: float32 reloads reproduce them to ~1e-5; a bf16/fp16 side rounds
# activations by ~2**-8 relative, which moves a margin of a few logits by up to ~0.1.
MARGIN_TOLERANCE = {"float32": 1e-3, "half": 0.25}


def weights_dtype(vlm: YesNoVLM) -> str:
    """The dtype name of the model's weights (``float32``, ``bfloat16``, ...)."""
    return str(next(vlm.module.parameters()).dtype).removeprefix("torch.")


def run_identity(
    spec: str, vlm: YesNoVLM, questions: Path | None, data: Path | None
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoints."""
    return {
        "method": METHOD,
        "model": spec,
        "dtype": weights_dtype(vlm),
        "questions": None if questions is None else sha256_file(questions),
        "data": None if data is None else str(data),
    }


def train_consistency(
    vlm: YesNoVLM,
    bound: BoundQuestions,
    train: Sequence[ImageQuestion],
    config: ConsistencyConfig,
    out: Path,
    *,
    identity: dict[str, Any],
    log: Callable[[str], None] | None = None,
    accelerator: Any | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
    evaluate: Evaluate | None = None,
) -> dict[str, Any]:
    """Train ``vlm`` in place with consistency LoRA on ``train`` (rows into
    ``bound.images``), resuming from ``out`` after :func:`check_resume`; write
    ``run.json`` and the probe margins. Returns ``train.json``'s content.

    ``tracker``: the run is one tracker session named after the method, with the model
    and settings as hyperparameters; ``evaluate``: the validation metric of
    ``config.eval_every`` (:func:`~mechtune.train.validation.paraphrase_validation`).

    ``accelerator``: an ``accelerate.Accelerator`` for DDP (each process holds the same
    ``vlm`` on its own device; ``config.grad_accum`` a multiple of its processes, so the
    effective batch stays ``batch_size`` × ``grad_accum``). Only the main process writes;
    every process returns once the files are complete. ``track``: progress of the steps,
    with the loss (:func:`~mechtune.train.methods.fit_reporting`).

    Raises ConfigError when ``out`` holds a run of other settings or is past
    ``config.steps``, or when the processes cannot share the micro-batches; DataError for
    no questions or questions without paraphrases."""
    if not train:
        raise DataError("no train questions to train on")
    check_resume(out, identity, config.steps)
    wait_for_everyone(accelerator)  # every process has read the old run.json
    main = is_main_process(accelerator)
    if main:
        write_json(out / RUN_FILE, identity)
    if log is not None:
        effective = config.batch_size * config.grad_accum
        log(
            f"consistency LoRA on {len(train)} questions: {config.steps} steps of "
            f"{config.batch_size} x {config.grad_accum} (effective batch {effective}), "
            f"answer loss {config.answer_loss!r}, layers {config.lora.layers or 'all'}"
            + (
                ""
                if accelerator is None
                else f"; each of {accelerator.num_processes} processes takes "
                f"{config.grad_accum // accelerator.num_processes} of the "
                f"{config.grad_accum} micro-batches"
            )
        )
    hyper = {"method": METHOD, "model": identity["model"], "lora": config.to_dict()}
    session = tracker.session(METHOD, hyper) if tracker is not None else contextlib.nullcontext()
    with session:
        run_paraphrase_method(
            METHOD,
            vlm,
            bound.images,
            consistency_examples(train),
            config,
            out,
            accelerator=accelerator,
            base_model=base_model_of(identity["model"]),
            tracker=tracker,
            evaluate=evaluate,
            track=track,
        )
    if main:
        save_probe(vlm, bound, train, out / PROBE_FILE, identity)
    wait_for_everyone(accelerator)
    result: dict[str, Any] = json.loads((out / "train.json").read_text(encoding="utf-8"))
    return result


def bind_validation(
    vlm: YesNoVLM,
    *,
    questions: Path | None,
    data: Path | None,
    seed: int,
    skip_bad: bool = False,
    log: Callable[[str], None] | None = None,
) -> BoundQuestions:
    """The val-split questions that ``eval_every`` (``--eval-every``) evaluates on, bound
    to their images (:func:`~mechtune.pipelines.questions.bind_questions`). Raises
    ConfigError naming ``--eval-every`` when the questions carry no split labels or hold
    no val-split record (with the reason)."""
    try:
        bound = bind_questions(
            vlm, questions=questions, data=data, split="val", seed=seed, skip_bad=skip_bad, log=log
        )
    except QuestionFileError as exc:
        raise ConfigError(
            f"--eval-every (lora.eval_every) evaluates on val-split questions: {exc}"
        ) from None
    if not bound.split_labels:
        raise ConfigError(
            f"--eval-every (lora.eval_every) evaluates on val-split questions, but {questions} "
            "has no split labels; label records with a split, or set it to 0"
        )
    return bound


def save_probe(
    vlm: YesNoVLM,
    bound: BoundQuestions,
    train: Sequence[ImageQuestion],
    path: Path,
    identity: dict[str, Any],
) -> None:
    """The first :data:`PROBE_QUESTIONS` training questions' images (``uint8``), texts and
    the model's margins, for checking a reload (atomic write)."""
    from safetensors.torch import save_file

    chosen = list(train[:PROBE_QUESTIONS])
    texts = [q.record.question for q in chosen]
    pixels = [np.ascontiguousarray(bound.pixels[q.image]) for q in chosen]
    rows = list(range(len(chosen)))
    values = margins(vlm, vlm.prepare_images(pixels), rows, texts)
    # one tensor per question, copied: two questions may share an image array
    tensors = {f"image_{i}": torch.from_numpy(p.copy()) for i, p in enumerate(pixels)}
    tensors["margins"] = torch.from_numpy(np.asarray(values, dtype=np.float32))
    meta = {"model": identity["model"], "dtype": identity["dtype"], "texts": dumps_json(texts)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def apply_paraphrase_adapter(
    vlm: YesNoVLM, folder: Path, spec: str | None = None
) -> dict[str, Any]:
    """Apply what ``paraphrase train`` wrote (a run folder or its ``adapter/``) to a
    freshly loaded ``vlm`` (from ``spec``), in place, and check that the probe questions'
    margins are the trained model's (``{"max_abs_diff", "tolerance", "trained_dtype",
    "dtype"}``; ``max_abs_diff`` None when the run saved no probe, e.g. a plain peft
    folder).

    Raises DataError naming the folder when the run was trained on another model spec
    (before applying anything), when the adapter does not fit the model, or when the
    margins differ by more than :data:`MARGIN_TOLERANCE`.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    run, probe, meta = run_probe(folder, PROBE_FILE, spec)
    load_trained(vlm, run)
    dtype = weights_dtype(vlm)
    check: dict[str, Any] = {"adapter": str(folder), "max_abs_diff": None, "dtype": dtype}
    if not probe.is_file():
        return check
    trained_dtype = meta.get("dtype", "float32")
    tolerance = MARGIN_TOLERANCE["float32" if {dtype, trained_dtype} == {"float32"} else "half"]
    tensors = load_file(str(probe))
    texts = json.loads(meta["texts"])
    pixels = [tensors[f"image_{i}"].numpy() for i in range(len(texts))]
    now = margins(vlm, vlm.prepare_images(pixels), list(range(len(texts))), texts)
    diff = float(np.abs(now - tensors["margins"].numpy()).max()) if texts else 0.0
    check.update(max_abs_diff=diff, tolerance=tolerance, trained_dtype=trained_dtype)
    if diff > tolerance:
        raise DataError(
            f"{folder}: the reloaded model's probe margins differ from the trained model's by "
            f"{diff:.3g} logits (tolerance {tolerance:g}; trained in {trained_dtype}, loaded "
            f"in {dtype}); the adapter does not reproduce its run"
        )
    return check


def evaluate_paraphrase(
    vlm: YesNoVLM,
    bound: BoundQuestions,
    questions: Sequence[ImageQuestion],
    out: Path,
    *,
    clamp: Clamp | None = None,
    extra: dict[str, Any] | None = None,
    seed: int = 0,
    track: Tracker | None = None,
) -> dict[str, Any]:
    """PSF-Med's metrics of ``questions`` (views, strategies; with ``clamp``'s feature
    clamped at its layer), written to ``out``: ``eval.json`` (the metrics with ``extra``
    provenance), ``table.md`` and ``margins.csv``. Returns the JSON-ready report.
    ``track``: progress of the margins."""
    if clamp is not None:
        n_layers = len(vlm.layers)
        if clamp.layer >= n_layers:
            raise DataError(
                f"--clamp {clamp.folder}: the SAE reads layer {clamp.layer}; the model has "
                f"blocks 0..{n_layers - 1}"
            )
        with feature_edit(vlm, clamp.sae, clamp.layer, clamp.feature, clamp.value):
            report, rows = evaluate_questions(vlm, bound.images, questions, seed=seed, track=track)
    else:
        report, rows = evaluate_questions(vlm, bound.images, questions, seed=seed, track=track)
    result = jsonable(
        {
            **(extra or {}),
            "clamp": None if clamp is None else clamp.describe(),
            "questions": len(questions),
            "metrics": report,
        }
    )
    write_json(out / "eval.json", result)
    atomic_write_text(out / "table.md", eval_table(report))
    write_margins(rows, out / "margins.csv")
    return dict(result)


def evaluate_answers_file(
    path: Path,
    out: Path,
    *,
    skip_bad: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """PSF-Med's metrics from recorded answers (:func:`mechtune.data.answers.
    read_answer_records`; the MedGemma record's columns by default): margins, images
    and labels the file lacks make their metrics None, with the reason. Writes
    ``eval.json`` and ``table.md``."""
    from mechtune.data.answers import read_answer_records
    from mechtune.pipelines.paraphrase_eval import evaluate_groups

    groups, report = read_answer_records(path, skip_bad=skip_bad)
    skipped = sum(report.skipped.values())
    if log is not None:
        log(
            f"read {report.rows_read} rows from {path}: {report.groups_kept} groups kept, "
            f"{skipped} rows skipped {dict(report.skipped) if skipped else ''}".rstrip()
        )
    if not groups:
        raise DataError(f"{path}: no usable answer groups")
    metrics = evaluate_groups(groups, seed=seed)
    result = to_jsonable({"answers": {"path": str(path), **report.to_dict()}, "metrics": metrics})
    write_json(out / "eval.json", result)
    atomic_write_text(out / "table.md", eval_table(metrics))
    return dict(result)


__all__ = [
    "MARGIN_TOLERANCE",
    "METHOD",
    "PROBE_FILE",
    "apply_paraphrase_adapter",
    "bind_validation",
    "evaluate_answers_file",
    "evaluate_paraphrase",
    "run_identity",
    "save_probe",
    "train_consistency",
    "weights_dtype",
]
