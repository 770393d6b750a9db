"""The negation study (:func:`run_negation_study`), on any dual encoder and any
image-study source, from the stages of :mod:`mechtune.pipelines.negation`:

1. trace the base model on **train-split** patients (the test split never chooses
   anything) and turn the chosen CTE profile into alpha_l (``alpha_source``,
   ``alpha_norm``: :mod:`mechtune.interp.alpha`);
2. for each run of the plan (each method once per seed; random-alpha once per seed and
   alpha permutation: :mod:`mechtune.pipelines.negation_controls`): start from the base
   weights, train on the train-split patients' captions and claim sets (train phrasing
   families), evaluate on ``eval_split`` patients (in-distribution and held-out
   families);
3. report R@1/R@5, claim accuracy, accuracy by polarity, the affirmative-negation gap,
   polarity-MCQ accuracy, update share (top-3/top-5 blocks by CTE) and retention, each
   with a 95% interval; across seeds, mean and range; each method minus uniform LoRA on
   the same items (:mod:`mechtune.pipelines.negation_report`) and NAST minus its
   controls.

A grid of studies: :mod:`mechtune.pipelines.negation_grid`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mechtune.data.freeform import FreeformSets
from mechtune.data.io import atomic_write_text, dumps_json, to_jsonable, write_json
from mechtune.data.mentions import mentions
from mechtune.data.sources.base import ImageStudySource
from mechtune.errors import ConfigError
from mechtune.eval.negation import eval_claim_sets, select_claim_examples
from mechtune.eval.update_share import update_share
from mechtune.interp.alpha import alpha_from_trace, alpha_variants, cte_profile
from mechtune.interp.result import TraceConfig, TraceResult
from mechtune.models.dual_encoder import DualEncoder
from mechtune.pipelines.negation import (
    Log,
    StudyData,
    evaluate_model,
    study_data,
    study_freeform,
    trace_model,
    trace_pairs,
    train_model,
    training_data,
    validation,
    validation_claims,
    validation_freeform,
    weights_info,
)
from mechtune.pipelines.negation_config import NegationStudyConfig, RunOptions
from mechtune.pipelines.negation_controls import (
    RANDOM_ALPHA,
    StudyRun,
    alpha_permutations,
    control_comparisons,
    control_table,
    controls_record,
    run_plan,
)
from mechtune.pipelines.negation_report import (
    block_update_norms,
    block_weights,
    paired_comparisons,
    results_table,
)
from mechtune.progress import Tracker, stage
from mechtune.train.methods import METHODS, NegationData, method_config, reads_alpha
from mechtune.train.negation import ClaimExample
from mechtune.train.tracking import Tracker as RunTracker


def _quiet(_message: str) -> None:
    return None


__all__ = [
    "INPUT_KEYS",
    "StudyInputs",
    "holdout_record",
    "reused_report",
    "run_key",
    "run_negation_study",
    "run_plan",
    "study_alpha",
    "study_claim_examples",
    "study_inputs",
    "study_run",
    "trace_record",
]


def study_claim_examples(
    runs: dict[str, list[dict[str, Any]]], claim_sets: list[Any], limit: int = 6
) -> list[dict[str, Any]]:
    """The study's example claim sets (:func:`mechtune.eval.negation.select_claim_examples`)
    scored by every method's first run: those NAST (else the last method) gets right and
    zero-shot (else the first method) gets wrong first."""
    scores = {
        m: dict(zip(r[0]["items"]["claims"]["id"], r[0]["items"]["claims"]["scores"], strict=True))
        for m, r in runs.items()
        if r and "scores" in r[0]["items"]["claims"]
    }
    if not scores:
        return []
    names = list(scores)
    reference = "zero-shot" if "zero-shot" in scores else names[0]
    target = "nast" if "nast" in scores else names[-1]
    if reference == target:
        return select_claim_examples(claim_sets, scores, limit=limit)
    return select_claim_examples(
        claim_sets, scores, reference=reference, target=target, limit=limit
    )


@dataclass
class StudyInputs:
    """What every run of a study shares: the base model (``base``, the retention
    reference), the items with their image embeddings (``data``) and the trace of the
    train-split patients (``traced``). A grid whose cells change none of the settings
    these depend on (:data:`INPUT_KEYS`) computes them once."""

    base: DualEncoder
    data: StudyData
    traced: TraceResult


# The settings StudyInputs depend on (besides the source and the run options).
INPUT_KEYS = ("model", "data_seed", "trace_per_study", "trace_max_pairs")


def study_inputs(
    recipe: NegationStudyConfig,
    source: ImageStudySource,
    options: RunOptions,
    log: Log = _quiet,
    track: Tracker | None = None,
) -> StudyInputs:
    """Load ``recipe.model``, embed every item's image and trace the train-split
    patients (``recipe``'s :data:`INPUT_KEYS`). ``track`` gets the embedding and tracing
    stages."""
    base = options.load(recipe.model)
    with stage(track, "embed images", len(source)) as advance:
        data = study_data(base, source, recipe.model, options, log, progress=advance)
    build = trace_pairs(
        base,
        data,
        split="train",
        seed=recipe.data_seed,
        per_study=recipe.trace_per_study,
        max_pairs=recipe.trace_max_pairs,
    )
    log(f"tracing {len(build.pairs)} pairs of {len(data.rows('train'))} train-split items ...")
    traced = trace_model(
        base,
        data,
        build,
        TraceConfig(seed=recipe.data_seed),
        {"split": "train", "model": recipe.model, **weights_info(base)},
        track=track,
    )
    return StudyInputs(base, data, traced)


def study_alpha(traced: Any, recipe: NegationStudyConfig) -> torch.Tensor:
    """The alpha ``[L+1]`` a study trains with: ``recipe.alpha_norm`` (temperature
    ``recipe.alpha_tau``) of the trace's ``recipe.alpha_source`` profile
    (:func:`~mechtune.interp.alpha.alpha_from_trace`)."""
    return alpha_from_trace(traced, recipe.alpha_source, recipe.alpha_norm, recipe.alpha_tau)


def trace_record(traced: TraceResult, recipe: NegationStudyConfig, alpha: Any) -> dict[str, Any]:
    """``results["trace"]``: the alpha the runs used with its source, normalisation and
    temperature; the per-layer CTE with its 95% interval; every source's profile and its
    alpha under every normalisation (:func:`~mechtune.interp.alpha.alpha_variants`); and
    the pair counts."""
    return {
        "alpha": torch.as_tensor(alpha).tolist(),
        "alpha_source": recipe.alpha_source,
        "alpha_norm": recipe.alpha_norm,
        "alpha_tau": recipe.alpha_tau,
        "cte_layer": traced.cte_layer.tolist(),
        "cte_layer_low": traced.cte_layer_low.tolist(),
        "cte_layer_high": traced.cte_layer_high.tolist(),
        "variants": alpha_variants(traced, recipe.alpha_tau),
        "counts": traced.counts,
    }


def run_negation_study(
    recipe: NegationStudyConfig,
    source: ImageStudySource,
    out: str | Path,
    options: RunOptions | None = None,
    log: Log | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
    *,
    inputs: StudyInputs | None = None,
    run_prefix: str = "",
    shared: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run every run of ``recipe`` (:func:`~mechtune.pipelines.negation_controls.run_plan`)
    on ``source``; write ``results.json``, ``table.md``, the trace (``trace/``) and each
    run's checkpoints and adapter (``runs/<method>/seed<k>/``, random-alpha's
    ``seed<k>-p<j>``). alpha is ``recipe.alpha_norm`` of the ``recipe.alpha_source``
    profile of the trace (:func:`~mechtune.interp.alpha.alpha_from_trace`); the
    random-alpha runs train its permutations
    (:func:`~mechtune.pipelines.negation_controls.alpha_permutations`). ``inputs``: the
    model, embeddings and trace when the caller has them (:func:`study_inputs`; a grid
    shares them). ``track`` gets a stage for each long step: embedding the images,
    tracing, each run's training and evaluation. With ``tracker``, each training run is
    a session ``<run_prefix><method>/<run>``; ``recipe.loop.eval_every`` > 0 evaluates
    each on the val split (:func:`validation_claims`). A rerun resumes every run from
    its checkpoints. A recipe with a grid is refused (ConfigError): see
    :mod:`mechtune.pipelines.negation_grid`. A method that does not read alpha (:func:`~mechtune.train.methods.
    reads_alpha`) gets ones, as ``negation train`` without ``--alpha`` does.

    ``shared``: the reports of the grid's other cells by :func:`run_key`; a run whose key
    is there is not trained again (its report is reused, ``update_share`` recomputed for
    this study's profile, ``trained_in`` naming the folder that trained it), and each run
    trained here is added. With ``recipe.holdout_conditions``, training reads no text
    about them, ``results["holdout"]`` counts what was removed (:func:`holdout_record`)
    and each run's report holds their slice (``holdout``). Returns the results dict."""
    if recipe.grid is not None:
        raise ConfigError(
            f"the recipe has a grid ({', '.join(recipe.grid)}): run every cell with "
            "mechtune.pipelines.negation_grid.run_negation_grid (negation study does)"
        )
    out = Path(out)
    options = options or RunOptions()
    say = log or _quiet
    inputs = inputs or study_inputs(recipe, source, options, say, track)
    data, traced = inputs.data, inputs.traced
    traced.save(out / "trace")
    alpha = study_alpha(traced, recipe)
    profile = cte_profile(traced.cte_layer, traced.cte, traced.roles, recipe.alpha_source)
    cte_by_block = profile[1:].tolist()  # the blocks alpha ranks: update share's top-k
    permutations = (
        alpha_permutations(alpha, recipe.random_alpha_permutations, recipe.data_seed)
        if RANDOM_ALPHA in recipe.methods
        else []
    )
    freeform = study_freeform(recipe)  # a bad file fails before any training
    examples = training_data(data, recipe)
    held_claims = validation_claims(data, recipe.loop, recipe.data_seed, recipe.holdout_conditions)
    held_freeform = validation_freeform(data, recipe, recipe.loop)
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in run_plan(recipe):
        run_alpha = alpha if run.permutation is None else permutations[run.permutation]
        if not reads_alpha(run.method, recipe.loop.beta):
            run_alpha = torch.ones_like(run_alpha)
        key = run_key(run, recipe, run_alpha)
        saved = out / "runs" / run.method / run.name / REPORT_FILE
        if shared is not None and key in shared:
            say(f"{run.method}, {run.name}: the same run as {shared[key]['trained_in']}")
            report = reused_report(shared[key], run, cte_by_block)
        elif (cached := saved_report(saved, key, cte_by_block)) is not None:
            say(f"{run.method}, {run.name}: trained and evaluated before ({saved})")
            report = cached
            if shared is not None:
                report["run_key"] = key
                report["trained_in"] = str(saved.parent)
                shared[key] = report
        else:
            report = study_run(
                run,
                recipe,
                options,
                inputs,
                run_alpha,
                examples,
                (held_claims, held_freeform),
                cte_by_block,
                out,
                say,
                freeform=freeform,
                track=track,
                tracker=tracker,
                run_name=f"{run_prefix}{run.method}/{run.name}",
            )
            # as JSON reads it back (block keys as strings): a resumed study's runs equal
            report = json.loads(dumps_json(report))
            write_json(saved, {"run_key": key, "report": report})
            if shared is not None:
                report["run_key"] = key
                report["trained_in"] = str(out / "runs" / run.method / run.name)
                shared[key] = report
        runs.setdefault(run.method, []).append(report)
    results: dict[str, Any] = {
        "config": recipe.to_dict(),
        "data": to_jsonable(source.description),
        "image_cache": data.cache,
        "trace": trace_record(traced, recipe, alpha),
        "runs": runs,
    }
    if recipe.holdout_conditions:
        results["holdout"] = holdout_record(
            recipe, examples, traced, len(held_claims), len(held_freeform)
        )
    controls = controls_record(recipe, alpha, permutations)
    if controls:
        results["controls"] = controls
    results["paired"] = to_jsonable(paired_comparisons(results))
    results["paired_controls"] = to_jsonable(control_comparisons(results))
    results["examples"] = study_claim_examples(
        runs, eval_claim_sets(data.eval_set(recipe.eval_split), recipe.data_seed)
    )
    write_json(out / "results.json", results)
    table = "\n\n".join(t for t in (results_table(results), control_table(results)) if t)
    atomic_write_text(out / "table.md", table + "\n")
    return results


def holdout_record(
    recipe: NegationStudyConfig,
    examples: NegationData,
    traced: TraceResult,
    validation_claim_sets: int,
    validation_freeform_items: int,
) -> dict[str, Any]:
    """``results["holdout"]``: the held-out conditions; what was removed from training
    (:attr:`~mechtune.train.negation_data.NegationData.removed`) and what was kept
    (captions, claim sets after balancing, MCQs); the validation claim sets and
    free-form items left to ``eval_every`` (none about a held-out condition); and how
    many traced pairs name a held-out condition: the trace only chooses alpha (no weight
    is trained on its pairs), so they are counted, not removed."""
    conditions = recipe.holdout_conditions
    return {
        "conditions": list(conditions),
        "removed": dict(examples.removed),
        "kept": {
            "captions": len(examples.captions),
            "claim_sets": len(examples.claims),
            "mcq": len(examples.mcq),
        },
        "validation": {
            "template_claim_sets": validation_claim_sets,
            "freeform_items": validation_freeform_items,
        },
        "trace_pairs_naming_it": sum(
            p.get("condition") in conditions
            or mentions(str(p.get("correct", "")), conditions)
            or mentions(str(p.get("foil", "")), conditions)
            for p in traced.pairs
        ),
    }


def run_key(run: StudyRun, recipe: NegationStudyConfig, alpha: Any) -> str:
    """A digest of everything a study run's report depends on but the trace's profile:
    the method, its training seed, the settings it trains with (after the method's
    overrides: :func:`~mechtune.train.methods.method_config`; none for zero-shot), the
    alpha it is given, the model, and the data and evaluation settings. Two grid cells
    whose runs share a key train and evaluate the same run (uniform LoRA across cells
    that change beta or alpha, for one)."""
    trains = METHODS[run.method].loss is not None
    loop = replace(recipe.loop, seed=run.seed)
    payload = {
        "method": run.method,
        "seed": run.seed,
        "loop": method_config(run.method, alpha, loop).to_dict() if trains else None,
        "alpha": [round(float(a), 9) for a in torch.as_tensor(alpha).reshape(-1).tolist()],
        **{
            k: getattr(recipe, k)
            for k in (
                "model",
                "data_seed",
                "balance_polarity",
                "eval_split",
                "probes",
                "freeform",
                "freeform_max_studies",
                "holdout_conditions",
            )
        },
    }
    blob = dumps_json(payload, indent=None, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


REPORT_FILE = "report.json"
"""A study run's evaluated report beside its checkpoints: ``{"run_key", "report"}``."""


def saved_report(path: Path, key: str, cte_by_block: list[float]) -> dict[str, Any] | None:
    """The report a finished run saved at ``path`` (:data:`REPORT_FILE`) when it was
    trained and evaluated with the same settings (its :func:`run_key` is ``key``), with
    its update share recomputed for this study's profile ``cte_by_block`` (the key leaves
    the trace out); None when there is none or the settings differ (the run is then
    resumed from its checkpoints and evaluated again). A resumed study therefore spends
    no time on runs it has already evaluated. The key covers settings, not code: delete
    ``report.json`` files to re-evaluate finished runs after changing the evaluation."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a torn or foreign file: evaluate again (the write is atomic)
    if not isinstance(saved, dict) or saved.get("run_key") != key:
        return None
    report = saved.get("report")
    if not isinstance(report, dict):
        return None
    with_share(report, cte_by_block)
    return report


def with_share(report: dict[str, Any], cte_by_block: list[float]) -> None:
    """Set ``report["update_share"]`` (top-3/top-5) from its ``update_norms`` over the
    blocks ``cte_by_block`` ranks highest; a report without norms (zero-shot) is left
    as it is."""
    norms = {int(b): float(v) for b, v in (report.get("update_norms") or {}).items()}
    if norms:
        report["update_share"] = top_shares(norms, cte_by_block)


def top_shares(norms: dict[int, float], cte_by_block: list[float]) -> dict[str, float | None]:
    """``{"top3": share, "top5": share}`` of the update ``norms`` (block -> ||delta W||)
    in the blocks ``cte_by_block`` ranks highest (:func:`update_share`). A share is None
    (n/a in the table) where it is undefined: a tower of fewer blocks than k, or an update
    that is zero everywhere (early stopping that kept the untrained step 0)."""
    moved = sum(norms.values()) > 0
    return {
        f"top{k}": update_share(norms, cte_by_block, k)
        if moved and k <= len(cte_by_block)
        else None
        for k in (3, 5)
    }


def reused_report(
    report: dict[str, Any], run: StudyRun, cte_by_block: list[float]
) -> dict[str, Any]:
    """Another cell's report of the same run (:func:`run_key`) for this study: its
    update share recomputed over this study's top blocks ``cte_by_block``, no training
    time spent (``train_seconds`` 0)."""
    out = copy.deepcopy(report)
    out["seed"] = run.seed
    out["train_seconds"] = 0.0  # trained in another study: no time spent here
    if run.permutation is not None:
        out["permutation"] = run.permutation
    with_share(out, cte_by_block)
    return out


def study_run(
    run: StudyRun,
    recipe: NegationStudyConfig,
    options: RunOptions,
    inputs: StudyInputs,
    alpha: Any,
    examples: NegationData,
    held: tuple[list[ClaimExample], list[ClaimExample]],
    cte_by_block: list[float],
    out: Path,
    say: Log,
    *,
    track: Tracker | None,
    tracker: RunTracker | None,
    run_name: str,
    freeform: FreeformSets | None = None,
) -> dict[str, Any]:
    """Train one run of a study from the base weights (resuming from
    ``out/runs/<method>/<run>``) with ``alpha``, evaluate it on ``recipe.eval_split``
    and return its report: the metrics, ``seed``, ``train_seconds``, random-alpha's
    ``permutation``, ``kept`` (with ``loop.keep_best``: the step whose weights were
    kept, its criterion and metrics), and for a trained method the per-block update norms and the share
    of them in the top-3/top-5 blocks of ``cte_by_block``. ``freeform``: the free-form
    claim sets (:func:`~mechtune.pipelines.negation.study_freeform`) scored beside the
    template ones, at most ``recipe.freeform_max_studies`` studies per set. ``held``:
    the validation claim sets and free-form items of ``eval_every``
    (:func:`validation_claims`, :func:`validation_freeform`)."""
    encoder = options.load(recipe.model)
    initial = block_weights(encoder.model)
    say(f"{run.method}, {run.name}: training ...")
    start = time.perf_counter()
    loop = replace(recipe.loop, seed=run.seed)
    train_model(
        encoder,
        run.method,
        inputs.data,
        examples,
        alpha,
        loop,
        out / "runs" / run.method / run.name,
        recipe.model,
        track=track,
        tracker=tracker,
        run_name=run_name,
        evaluate=validation(encoder, inputs.data, *held),
        holdout=recipe.holdout_conditions,
    )
    seconds = time.perf_counter() - start
    report = to_jsonable(
        evaluate_model(
            encoder,
            inputs.data,
            split=recipe.eval_split,
            seed=recipe.data_seed,
            probes=recipe.probes,
            base=inputs.base,
            track=track,
            freeform=freeform,
            freeform_max_studies=recipe.freeform_max_studies,
            holdout=recipe.holdout_conditions,
        )
    )
    report["train_seconds"] = round(seconds, 1)
    report["seed"] = run.seed
    trained = out / "runs" / run.method / run.name / "train.json"
    if recipe.loop.keep_best is not None and trained.is_file():
        # the step whose weights were evaluated (early stopping): train.json's "kept"
        report["kept"] = json.loads(trained.read_text(encoding="utf-8")).get("kept")
    if run.permutation is not None:
        report["permutation"] = run.permutation
    if run.method != "zero-shot":
        norms = block_update_norms(encoder.model, initial)
        report["update_norms"] = norms
        report["update_share"] = top_shares(norms, cte_by_block)
    return report
