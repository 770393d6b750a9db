"""The paraphrase study: measure, locate with SAEs, clamp, fix, compare, on any yes/no VLM
and any questions file bound to images (:mod:`mechtune.pipelines.questions`).

A study is a function of (config with the model spec, bound questions, an output folder);
it renders nothing. ``mechtune.sim`` is one source of questions and images among others:
``mechtune sim export`` writes ``questions.jsonl`` beside its images, as a user's PSF-Med
style file sits beside MIMIC-CXR-JPG.

1. **Data.** The questions file's ``train`` records (SAEs, the flip analysis, LoRA) and
   its ``eval_split`` records (``val`` to choose settings, ``test`` to report); at most
   ``max_questions`` of each, in file order.
2. **Baseline.** PSF-Med's metrics (:mod:`mechtune.pipelines.paraphrase_eval`) on the
   evaluation questions: all, held-out and in-distribution paraphrase families where the
   file labels them, and per strategy.
3. **SAE analysis** on train pairs: SAEs at ``sae_layers`` (trained here, or loaded from
   ``saes``: ``mechtune sae train`` output or Gemma Scope 2 folders as downloaded);
   flip-prediction AUC by layer (with ``auc_shuffles``, beside its shuffled-label
   control: the AUC on shuffled flip labels and a permutation p per layer); feature
   attribution; a causal patch; the chosen layer range (AUC peak ± ``half_width``).
4. **Clamping** the causal candidate feature at inference, on the evaluation questions.
5. **Consistency LoRA** with the same budget on each layer range: all layers, the SAE
   range, the earliest and the latest layers of the same width, and ``random_ranges``
   random ranges of that width (the control of
   :mod:`mechtune.pipelines.paraphrase_controls`); each run starts from a freshly loaded
   model and resumes from its own checkpoints.
6. ``results.json``, ``table.md`` (:mod:`mechtune.pipelines.paraphrase_report`; paired
   differences of the per-question flip indicator, clustered by patient), the baseline's
   per-question margins (``margins.csv``) and the SAEs trained here.

The prepared image batch is reused by every freshly loaded copy of the model: LoRA adapts
language blocks only, never what ``YesNoVLM.prepare_images`` computes.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mechtune.data.io import atomic_write_text, to_jsonable, write_json
from mechtune.data.schema import ImageQuestion
from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae import SAE, SAEConfig
from mechtune.interp.sae_analysis import (
    AnalysisConfig,
    Dictionary,
    SAEAnalysis,
    analyse,
    feature_edit,
    paraphrase_pairs,
)
from mechtune.interp.sae_folders import load_layer_saes
from mechtune.interp.sae_saelens import save_saelens
from mechtune.interp.sae_stream import stream_and_train
from mechtune.interp.sae_train import SAETrainConfig
from mechtune.models.vlm_spec import load_yes_no_vlm
from mechtune.models.yes_no import YesNoVLM
from mechtune.pipelines.paraphrase_config import (
    RANGES,
    ParaphraseRecipe,
    ParaphraseStudyConfig,
    load_paraphrase_recipe,
)
from mechtune.pipelines.paraphrase_controls import RandomRanges, random_layer_ranges
from mechtune.pipelines.paraphrase_eval import evaluate_questions, write_margins
from mechtune.pipelines.paraphrase_report import (
    paired_rows,
    results_table,
    select_question_examples,
)
from mechtune.pipelines.questions import BoundQuestions, split_sets
from mechtune.progress import Tracker
from mechtune.train.consistency import ConsistencyConfig, consistency_examples
from mechtune.train.methods import run_paraphrase_method
from mechtune.train.model_card import base_model_of
from mechtune.train.tracking import Tracker as RunTracker
from mechtune.train.tracking import layer_sessions
from mechtune.train.validation import paraphrase_validation

PAPER = {  # PSF-Med (arXiv 2602.21428), MedGemma-4B on MIMIC binary questions, in %
    "baseline": {"flip": 14.6, "margin_diff": 1.63, "accuracy": 84.2},
    "clamping": {"flip": 10.8, "margin_diff": None, "accuracy": None},
    "targeted LoRA (L15-19)": {"flip": 4.4, "margin_diff": 0.33, "accuracy": 82.3},
}


# -- the stages, each a function of the config ----------------------------------------------


def study_sets(
    bound: BoundQuestions, config: ParaphraseStudyConfig
) -> tuple[list[ImageQuestion], list[ImageQuestion]]:
    """The train questions and the ``eval_split`` questions, at most ``max_questions`` of
    each in file order. Raises DataError when the questions carry no split labels or a
    split has fewer than two questions."""
    if not bound.split_labels:
        raise DataError(
            "the study needs questions labelled with splits (a 'split' of train / val / test "
            "per record): train questions to train on, and evaluation questions apart"
        )
    out = []
    for split in ("train", config.eval_split):
        sets = split_sets(bound.sets, split)
        if config.max_questions is not None:
            sets = sets[: config.max_questions]
        if len(sets) < 2:
            raise DataError(f"the questions hold {len(sets)} {split}-split record(s); need >= 2")
        out.append(sets)
    return out[0], out[1]


def sae_corpus(bound: BoundQuestions, config: ParaphraseStudyConfig) -> list[str]:
    """``sae_reports`` distinct train-patient reports (seeded by ``seed``): in-domain text,
    since the questions alone have too few distinct tokens for a dictionary."""
    reports = sorted(set(bound.corpus))
    return random.Random(config.seed).sample(reports, min(config.sae_reports, len(reports)))


def analysis_questions(
    train: Sequence[ImageQuestion], config: ParaphraseStudyConfig
) -> list[ImageQuestion]:
    """``analysis_sets`` training questions (seeded by ``seed``) for the flip analysis."""
    return random.Random(config.seed).sample(list(train), min(config.analysis_sets, len(train)))


def analysis_config(config: ParaphraseStudyConfig) -> AnalysisConfig:
    """The flip analysis's settings: the chosen range is the AUC peak ± ``half_width``;
    ``auc_shuffles`` shuffles of the flip labels for the AUC's control."""
    return AnalysisConfig(half_width=config.half_width, shuffles=config.auc_shuffles, seed=0)


def run_config(
    config: ParaphraseStudyConfig, layers: tuple[int, ...] | None, seed: int
) -> ConsistencyConfig:
    """The LoRA settings of one run: ``lora`` on ``layers`` (None: all) with ``seed``."""
    return replace(config.lora, lora=replace(config.lora.lora, layers=layers), seed=seed)


def analysis_layers(config: ParaphraseStudyConfig, n_layers: int) -> list[int]:
    """``sae_layers`` (all blocks when None); raises ConfigError for a block the model
    lacks."""
    layers = list(range(n_layers)) if config.sae_layers is None else list(config.sae_layers)
    bad = [i for i in layers if i >= n_layers]
    if bad:
        raise ConfigError(f"sae_layers {bad}: the model has blocks 0..{n_layers - 1}")
    return layers


# -- SAEs ------------------------------------------------------------------------------------


def train_question_saes(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    layers: Sequence[int],
    sae: SAEConfig,
    *,
    steps: int,
    corpus: Sequence[str] = (),
    per_image: bool = True,
    seed: int = 0,
    track: Tracker | None = None,
    **streaming: Any,
) -> tuple[dict[int, SAE], dict[int, dict[str, Any]]]:
    """One SAE per layer (shape and kind from ``sae``; ``d_in`` and ``layer`` are filled in),
    trained on the residual states at the readout positions of every question and
    paraphrase of ``questions`` plus the ``corpus`` texts (read with image row 0).

    The states stream (:func:`mechtune.interp.sae_stream.stream_and_train`): the model
    runs once into an on-disk store of shards, and each SAE trains from a fixed-size
    shuffle buffer, so memory does not grow with the token count; ``streaming`` passes
    ``batch``, ``chunk_tokens``, ``buffer_tokens`` and ``store_dir`` on. ``track`` gets a
    stage for the capture and one per layer trained.

    ``per_image=False`` reads each distinct text once, for models whose question states do
    not depend on the image (the phantom VQA's question encoder); otherwise each distinct
    (image, text) pair is read once."""
    first_row: dict[tuple[int, str], int] = {}
    for q in questions:
        for t in (q.record.question, *q.record.paraphrases):
            key = (q.image if per_image else 0, t)
            first_row.setdefault(key, q.image)
    for t in corpus:
        first_row.setdefault((0, t), 0)
    keys = sorted(first_row)
    if not keys:
        raise DataError("no questions to train SAEs on")
    return stream_and_train(
        vlm,
        images,
        [first_row[k] for k in keys],
        [t for _, t in keys],
        layers,
        sae,
        SAETrainConfig(steps=steps, seed=seed),
        track=track,
        **streaming,
    )


def study_saes(
    vlm: YesNoVLM,
    bound: BoundQuestions,
    train: Sequence[ImageQuestion],
    config: ParaphraseStudyConfig,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
) -> tuple[dict[int, Any], dict[int, dict[str, Any]], bool]:
    """The SAEs the analysis reads: loaded from ``saes`` (only the ``sae_layers``), or one
    TopK SAE (``sae_width``, ``sae_k``, ``sae_steps``) per ``sae_layers`` block trained on
    the residual states of the train questions plus :func:`sae_corpus` (with ``tracker``,
    each layer's loss terms go to a session ``saes/layer_<L>``,
    :func:`~mechtune.train.tracking.layer_sessions`). Returns the SAEs, their training
    reports (empty when loaded) and whether they were trained here."""
    layers = analysis_layers(config, len(vlm.layers))
    if config.saes is not None:
        wanted = None if config.sae_layers is None else layers
        loaded = load_layer_saes(Path(config.saes), wanted, config.sae_variant)
        bad = [layer for layer in loaded if layer >= len(vlm.layers)]
        if bad:
            raise ConfigError(f"saes {config.saes}: SAEs for layers {bad} the model lacks")
        return loaded, {}, False
    shape = SAEConfig(d_in=1, d_sae=config.sae_width, kind="topk", k=config.sae_k)
    hyper = {"model": config.model, "kind": "topk", "width": config.sae_width, "k": config.sae_k}
    hyper.update(steps=config.sae_steps, seed=config.seed)
    with layer_sessions(tracker or RunTracker(), "saes/", hyper) as progress:
        saes, reports = train_question_saes(
            vlm,
            bound.images,
            train,
            layers,
            replace(shape, model=config.model),
            steps=config.sae_steps,
            corpus=sae_corpus(bound, config),
            per_image=vlm.states_depend_on_image,
            seed=config.seed,
            track=track,
            progress=progress,
        )
    return saes, reports, True


def layer_ranges(chosen: Sequence[int], n_layers: int, names: Sequence[str]) -> dict[str, Any]:
    """``{name: layers}``: all (None), the SAE range, and the first/last blocks of the same
    width, so each targeted range trains the same number of blocks."""
    width = len(chosen)
    table: dict[str, Any] = {
        "all": None,
        "sae": tuple(chosen),
        "early": tuple(range(width)),
        "late": tuple(range(n_layers - width, n_layers)),
    }
    return {name: table[name] for name in names}


def study_ranges(
    config: ParaphraseStudyConfig, chosen: Sequence[int], n_layers: int
) -> tuple[dict[str, Any], RandomRanges | None]:
    """The layer ranges the study trains: ``ranges`` (:func:`layer_ranges`), then
    ``random_ranges`` random ranges of the SAE range's width, drawn by ``seed``
    (:func:`mechtune.pipelines.paraphrase_controls.random_layer_ranges`; None when off)."""
    ranges = layer_ranges(chosen, n_layers, config.ranges)
    if not config.random_ranges:
        return ranges, None
    drawn = random_layer_ranges(chosen, n_layers, config.random_ranges, config.seed)
    return {**ranges, **drawn.ranges}, drawn


def clamped_report(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    saes: Mapping[int, Dictionary],
    analysis: SAEAnalysis,
    track: Tracker | None = None,
) -> dict[str, Any] | None:
    """The metrics of ``questions`` with the analysis's causal candidate (the patched
    feature that recovered most margin) clamped at the peak layer (None when no feature
    was attributed). ``track``: progress of the margins."""
    if not analysis.patch:
        return None
    feature = int(analysis.patch["feature"])
    layer = analysis.peak_layer
    with feature_edit(vlm, saes[layer], layer, feature, analysis.clamp_value):
        report, _ = evaluate_questions(
            vlm,
            images,
            questions,
            track=track,
            description=f"evaluate with feature {feature} clamped: margins",
        )
    report.update(layer=layer, feature=feature, value=analysis.clamp_value)
    return report


# -- the study ---------------------------------------------------------------------------------


def run_paraphrase_study(
    config: ParaphraseStudyConfig,
    bound: BoundQuestions,
    out: str | Path,
    *,
    vlm: YesNoVLM | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
) -> dict[str, Any]:
    """Run every step on ``bound`` (questions bound to images prepared for
    ``config.model``) with ``vlm`` (loaded from ``config.model`` on ``device`` in ``dtype``
    when None; afresh for each LoRA run); write ``results.json``, ``table.md``,
    ``margins.csv`` (baseline), the SAEs trained here (``saes/layer_<L>``, SAELens layout)
    and the runs (``runs/<range>/seed<s>``: checkpoints, adapter, train.json).

    ``tracker``: the SAEs' training (sessions ``saes/layer_<L>``) and each LoRA run
    (``<range>/seed<s>``) are tracked; ``config.lora.eval_every`` > 0 evaluates each LoRA
    run on the val-split questions (ConfigError naming ``lora.eval_every`` when there
    are none).

    Returns the results dict. Raises ``VLMSpecError`` for a model that cannot be loaded,
    ``DataError`` for questions without split labels or too few of a split, and
    ``ConfigError`` for SAE layers the model lacks. ``track`` gets a stage for each long
    step: the margins of each evaluation, the SAEs' capture and training, the analysis,
    and each LoRA run's steps (with the loss).
    """
    out = Path(out)
    say = log or (lambda _msg: None)
    train_sets, eval_sets = study_sets(bound, config)
    held = split_sets(bound.sets, "val") if config.lora.eval_every else []
    if config.lora.eval_every and not held:
        raise ConfigError(
            f"lora.eval_every is {config.lora.eval_every}: it evaluates on val-split "
            "questions, and the questions hold none; set it to 0"
        )
    if vlm is None:
        vlm = load_yes_no_vlm(config.model, device=device, dtype=dtype)
    images = bound.images
    timings: dict[str, float] = {}

    start = time.perf_counter()
    say(f"baseline on {len(eval_sets)} {config.eval_split}-split questions ...")
    baseline, margin_table = evaluate_questions(
        vlm, images, eval_sets, seed=config.seed, track=track, description="baseline: margins"
    )
    write_margins(margin_table, out / "margins.csv")
    example_rows: dict[str, list[dict[str, Any]]] = {"baseline": margin_table}
    timings["baseline"] = time.perf_counter() - start

    start = time.perf_counter()
    saes, sae_reports, trained_here = study_saes(
        vlm, bound, train_sets, config, track=track, tracker=tracker
    )
    say(
        f"{'trained' if trained_here else 'loaded'} SAEs at layers {sorted(saes)}; "
        "analysing flips ..."
    )
    pairs = paraphrase_pairs(analysis_questions(train_sets, config))
    analysis = analyse(vlm, images, pairs, saes, analysis_config(config), track=track)
    timings["sae"] = time.perf_counter() - start
    if analysis.flip_pairs == 0 or analysis.flip_pairs == analysis.pairs:
        say(
            f"{analysis.flip_pairs} of {analysis.pairs} analysis pairs flip: the flip-prediction "
            f"AUC is undefined, so the SAE range falls back to the middle layers "
            f"{analysis.chosen_layers}; raise analysis_sets or use harder questions"
        )
    else:
        say(
            f"{analysis.flip_pairs} of {analysis.pairs} analysis pairs flip; flip-prediction AUC "
            f"peaks at layer {analysis.peak_layer}; chosen layers {analysis.chosen_layers}"
        )

    start = time.perf_counter()
    clamped = clamped_report(vlm, images, eval_sets, saes, analysis, track=track)
    timings["clamping"] = time.perf_counter() - start

    runs: dict[str, list[dict[str, Any]]] = {}
    ranges, drawn = study_ranges(config, analysis.chosen_layers, len(vlm.layers))
    if drawn is not None:
        spans = "; ".join(f"{k} {list(v)}" for k, v in drawn.ranges.items()) or "none"
        say(f"random ranges of width {drawn.width}: {spans}")
        if drawn.note:
            say(drawn.note)
    examples = consistency_examples(train_sets)
    trained: dict[Any, str] = {}
    for name, layers in ranges.items():
        if layers in trained:
            # Two names for the same layers (the SAE range can be the last blocks): the same
            # training would give the same weights, so the reports are shared, not recomputed.
            first = trained[layers]
            say(f"layers {name} are the same as {first}; reusing its runs")
            runs[name] = [{**r, "same_as": first} for r in runs[first]]
            continue
        trained[layers] = name
        for seed in config.seeds:
            span = "all" if layers is None else ", ".join(map(str, layers))
            say(f"consistency LoRA on layers {name} ({span}), seed {seed} ...")
            model = load_yes_no_vlm(config.model, device=device, dtype=dtype)
            start = time.perf_counter()
            settings = run_config(config, layers, seed)
            evaluate = (
                paraphrase_validation(model, images, held, setting="lora.eval_every")
                if held
                else None
            )
            hyper = {"method": "consistency-lora", "model": config.model, "range": name}
            session = (
                tracker.session(f"{name}/seed{seed}", {**hyper, "lora": settings.to_dict()})
                if tracker is not None
                else contextlib.nullcontext()
            )
            with session:
                run_paraphrase_method(
                    "consistency-lora",
                    model,
                    images,
                    examples,
                    settings,
                    out / "runs" / name / f"seed{seed}",
                    base_model=base_model_of(config.model),
                    tracker=tracker,
                    evaluate=evaluate,
                    track=track,
                )
            seconds = time.perf_counter() - start
            report, rows = evaluate_questions(
                model,
                images,
                eval_sets,
                seed=config.seed,
                track=track,
                description=f"evaluate LoRA {name} (seed {seed}): margins",
            )
            example_rows.setdefault(f"LoRA {name}", rows)
            report.update(seed=seed, layers=None if layers is None else list(layers))
            report["train_seconds"] = round(seconds, 1)
            runs.setdefault(name, []).append(report)

    results = to_jsonable(
        {
            "config": config.to_dict(),
            "data": bound.info,
            "counts": {
                "train_sets": len(train_sets),
                "eval_sets": len(eval_sets),
                "analysis_pairs": len(pairs),
            },
            "baseline": baseline,
            "sae": {
                "source": "trained" if trained_here else str(config.saes),
                "layers": {str(k): v for k, v in sae_reports.items()},
            },
            "analysis": analysis.to_dict(),
            "clamping": clamped,
            "runs": runs,
            **({} if drawn is None else {"random_ranges": drawn.to_dict()}),
            "seconds": {k: round(v, 1) for k, v in timings.items()},
        }
    )
    results["paired"] = to_jsonable({label: cells for label, _, cells in paired_rows(results)})
    results["examples"] = select_question_examples(example_rows)
    if trained_here:
        for layer, sae in saes.items():
            save_saelens(sae, out / "saes" / f"layer_{layer}")
    write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", results_table(results) + "\n")
    return results


__all__ = [
    "PAPER",
    "RANGES",
    "ParaphraseRecipe",
    "ParaphraseStudyConfig",
    "analysis_config",
    "analysis_layers",
    "analysis_questions",
    "clamped_report",
    "layer_ranges",
    "load_paraphrase_recipe",
    "run_config",
    "run_paraphrase_study",
    "sae_corpus",
    "study_ranges",
    "study_saes",
    "study_sets",
    "train_question_saes",
]
