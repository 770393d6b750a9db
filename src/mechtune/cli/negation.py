"""`mechtune negation trace|train|eval|study`: the negation half on any dual encoder and
any image-study source. Thin: options become a recipe and run options, and the work is
done by :mod:`mechtune.pipelines.negation`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mechtune.cli._common import (
    console,
    data_source,
    finish_report,
    progress_bar,
    record_run,
    training_launch,
)
from mechtune.cli._tracking import (
    EvalEveryOpt,
    ReportToOpt,
    TrackingDirOpt,
    tracking_folder,
)
from mechtune.errors import ConfigError
from mechtune.interp.ratios import MIN_GAP_SHARE
from mechtune.interp.result import TraceConfig, TraceResult
from mechtune.models.spec import parse_spec
from mechtune.pipelines import negation as pipeline
from mechtune.pipelines.negation_config import load_recipe
from mechtune.pipelines.negation_controls import RANDOM_ALPHA, alpha_permutations
from mechtune.pipelines.negation_study import study_alpha
from mechtune.train.distributed import check_launch_shards, launched_processes
from mechtune.train.methods import methods_for, reads_alpha

app: typer.Typer = typer.Typer(
    help="The negation half: trace, train, evaluate, or run the whole study.",
    no_args_is_help=True,
)

CACHE_ENV = "MECHTUNE_CACHE"


def default_cache_dir() -> Path:
    """``$MECHTUNE_CACHE/image-embeddings``, else ``~/.cache/mechtune/image-embeddings``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "mechtune"
    return base / "image-embeddings"


# -- shared options ------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model spec (hf:PATH, openclip:NAME, phantom:default); default: the "
        "recipe's, else phantom:default.",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Image-study source: a MIMIC-CXR-JPG or CheXpert folder, a manifest, or a "
        "saved phantom world; default: the recipe's.",
    ),
]
RecipeOpt = Annotated[
    Path | None, typer.Option("--recipe", help="A negation recipe YAML (recipes/).")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Device of the model: cpu, cuda, cuda:1, mps.")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="Weights' dtype: float32, bfloat16, float16, auto (the checkpoint's; the "
        "default). Similarities, CTE ratios and losses stay float32.",
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help=f"Image-embedding cache; default ${CACHE_ENV}/image-embeddings or "
        "~/.cache/mechtune/image-embeddings.",
    ),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Embed every image afresh; write no cache.")
]
UncertainOpt = Annotated[
    str,
    typer.Option(
        "--uncertain", help="Uncertain labels and report mentions: skip, present, absent."
    ),
]
FreeformOpt = Annotated[
    Path | None,
    typer.Option(
        "--freeform",
        help="Free-form claim sets to score beside the template ones: a file of the "
        "packaged set's schema (YAML or JSONL); default: the recipe's freeform, else the "
        "hand-written set shipped with mechtune.",
    ),
]
NoFreeformOpt = Annotated[
    bool, typer.Option("--no-freeform", help="Score no free-form claim sets.")
]
FactsOpt = Annotated[
    bool,
    typer.Option(
        "--report-facts/--no-report-facts",
        help="Add side, zone and size from the reports to the label findings.",
    ),
]


def _recipe(
    recipe: Path | None, model: str | None, data: Path | None
) -> pipeline.NegationStudyConfig:
    base = load_recipe(recipe) if recipe is not None else pipeline.NegationStudyConfig()
    changes: dict[str, Any] = {}
    if model is not None:
        changes["model"] = model
    if data is not None:
        changes["data"] = str(data)
    return replace(base, **changes) if changes else base


def _with_freeform(
    settings: pipeline.NegationStudyConfig,
    freeform: Path | None,
    no_freeform: bool,
    max_studies: int | None = None,
) -> pipeline.NegationStudyConfig:
    """``settings`` with the free-form options applied (``ConfigError`` when both
    ``--freeform`` and ``--no-freeform`` are given), the file checked before any data is
    read (``DataError`` naming the file, set and value)."""
    if freeform is not None and no_freeform:
        raise ConfigError("--freeform and --no-freeform exclude each other; pass one")
    changes: dict[str, Any] = {}
    if freeform is not None:
        changes["freeform"] = str(freeform)
    if no_freeform:
        changes["freeform"] = None
    if max_studies is not None:
        changes["freeform_max_studies"] = max_studies
    settings = replace(settings, **changes) if changes else settings
    pipeline.study_freeform(settings)
    return settings


def _data_path(recipe: pipeline.NegationStudyConfig) -> Path:
    if recipe.data is None:
        raise ConfigError("no data: pass --data DIR or give the recipe a data: key")
    return Path(recipe.data)


def _options(
    settings: pipeline.NegationStudyConfig,
    device: str,
    dtype: str | None,
    cache_dir: Path | None,
    no_cache: bool,
) -> Any:
    """The run options, after the checks that need no data: the model spec's scheme, the
    device and the dtype (``ConfigError`` before anything is read or loaded)."""
    parse_spec(settings.model)
    cache = None if no_cache else (cache_dir or default_cache_dir())
    return pipeline.RunOptions(device=device, dtype=dtype, cache_dir=cache)


def _record(out: Path, settings: pipeline.NegationStudyConfig, device: str) -> None:
    """``out/provenance.json`` for a negation command: the recipe, model, data (with its
    manifests' hashes), seeds and device."""
    record_run(
        out,
        recipe=settings,
        model=settings.model,
        data=_data_path(settings),
        seeds=sorted({settings.data_seed, *settings.seeds}),
        device=device,
    )


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ConfigError(f"--split must be one of {', '.join(allowed)}, got {split!r}")


def _open(recipe: pipeline.NegationStudyConfig, uncertain: str, report_facts: bool) -> Any:
    return data_source(_data_path(recipe), uncertain, False, report_facts)


def _embedded(encoder: Any, source: Any, recipe: Any, options: Any) -> pipeline.StudyData:
    with progress_bar("embed images", len(source)) as advance:
        return pipeline.study_data(
            encoder, source, recipe.model, options, console.print, progress=advance
        )


# -- trace ---------------------------------------------------------------------------------


def print_trace(result: TraceResult) -> None:
    table = Table(
        "layer",
        "CTE_l [95% CI]",
        "median",
        "top-5% share",
        "alpha_l",
        title="Per-layer causal tracing effect (CTE_l: gap-weighted mean over pairs)",
        title_justify="left",
    )
    for layer in range(result.n_layers + 1):
        table.add_row(
            "emb" if layer == 0 else str(layer),
            f"{result.cte_layer[layer]:.3f} [{result.cte_layer_low[layer]:.3f}, "
            f"{result.cte_layer_high[layer]:.3f}]",
            f"{result.cte_layer_median[layer]:.3f}",
            f"{result.top5_share[layer]:.2f}",
            f"{result.alpha[layer]:.2f}",
        )
    console.print(table)
    counts, agg = result.counts, result.aggregation
    console.print(
        f"peak at layer {result.peak_layer()}; {counts['aggregated']} pairs aggregated; "
        f"excluded: {counts['excluded_small_gap']} with |S_corr - S_foil| < "
        f"{agg['min_gap_share']} x median = {agg['gap_floor']:.2g}, "
        f"{counts['excluded_zero_gap']} with a zero gap; pooling: {agg.get('pooling', '?')}"
    )


def trace_figures(
    result: TraceResult, folder: Path, title: str, trace: dict[str, Any] | None = None
) -> None:
    """The CTE heatmap and the per-layer CTE / alpha bars in ``folder``. ``trace``: a
    study's ``results["trace"]``, whose alpha (of its ``alpha_source`` and ``alpha_norm``)
    the bars show in place of the trace's own min-max alpha."""
    from mechtune.eval.figures import alpha_bars, cte_heatmap

    cte_heatmap(result.cte.numpy(), result.roles, folder / "cte_heatmap.png", title=title)
    alpha, alpha_title = result.alpha.numpy(), "alpha_l = min-max normalised CTE_l"
    if trace is not None and trace.get("alpha") is not None:
        import numpy as np

        alpha = np.asarray(trace["alpha"], dtype=float)
        alpha_title = f"alpha_l = {trace['alpha_norm']} of the {trace['alpha_source']} CTE"
    alpha_bars(
        result.cte_layer.numpy(),
        result.cte_layer_low.numpy(),
        result.cte_layer_high.numpy(),
        alpha,
        folder / "alpha.png",
        alpha_title,
    )


@app.command("trace")
def trace_command(
    model: ModelOpt = None,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "runs/negation-trace"
    ),
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="JSONL of {correct, foil, image (study id or row)}; default: "
            "pairs built from the split's findings."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Patient split the built pairs come from.")] = "train",
    per_study: Annotated[
        int | None,
        typer.Option(help="Present and absent facts per study (default: recipe's).", min=1),
    ] = None,
    max_pairs: Annotated[
        int | None, typer.Option(help="Trace at most this many pairs (default: recipe's).", min=1)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the pairs' wording (default: recipe's data_seed).")
    ] = None,
    min_gap_share: Annotated[
        float,
        typer.Option(
            help="Exclude pairs whose |S_corr - S_foil| is below this share of the median "
            "|S_corr - S_foil| (0: only exact ties).",
            min=0.0,
            max=1.0,
        ),
    ] = MIN_GAP_SHARE,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    uncertain: UncertainOpt = "skip",
    report_facts: FactsOpt = True,
) -> None:
    """Trace where negation is processed: CTE per layer and token role, and alpha_l."""
    settings = _recipe(recipe, model, data)
    _check_split(split, ("train", "val", "test"))
    options = _options(settings, device, dtype, cache_dir, no_cache)
    source = _open(settings, uncertain, report_facts)
    if pairs is not None:  # a bad line fails before any image is embedded
        studies = source.studies()
        pipeline.pairs_file_rows(pairs, studies, [source.split_of(s) for s in studies], split)
    encoder = options.load(settings.model)
    study = _embedded(encoder, source, settings, options)
    data_seed = settings.data_seed if seed is None else seed
    build = pipeline.trace_pairs(
        encoder,
        study,
        split=split,
        seed=data_seed,
        per_study=per_study or settings.trace_per_study,
        max_pairs=max_pairs or (None if pairs is not None else settings.trace_max_pairs),
        pairs_file=pairs,
    )
    console.print(
        f"pairs: {build.candidates} candidates, {len(build.pairs)} kept, "
        f"rejected {dict(build.rejected) or 0}"
    )
    result = pipeline.trace_model(
        encoder,
        study,
        build,
        TraceConfig(min_gap_share=min_gap_share, seed=data_seed),
        {
            "model": settings.model,
            "split": split,
            "data": str(_data_path(settings)),
            **pipeline.weights_info(encoder),
        },
        track=progress_bar,
    )
    result.save(out)
    trace_figures(result, out, f"CTE by layer and role: {settings.model}")
    print_trace(result)
    _record(out, settings, device)
    console.print(f"wrote {out}")
    finish_report(out)


# -- train ---------------------------------------------------------------------------------


@app.command("train")
def train_command(
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="A registered negation method: "
            + ", ".join(m for m in methods_for("negation") if m != "zero-shot")
            + " (negclip: full fine-tuning of the text blocks).",
        ),
    ],
    model: ModelOpt = None,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    alpha: Annotated[
        Path | None,
        typer.Option(
            "--alpha",
            help="A trace folder (negation trace --out); needed by nast, random-alpha and "
            "effective-lr. alpha is the recipe's alpha_norm of its alpha_source profile.",
        ),
    ] = None,
    permutation: Annotated[
        int,
        typer.Option(
            "--permutation",
            help="random-alpha: which permutation of alpha to train (the study's "
            "runs/random-alpha/seed<k>-p<j> is --permutation j; drawn from the recipe's "
            "data_seed).",
            min=0,
        ),
    ] = 0,
    steps: Annotated[
        int | None, typer.Option(help="Optimiser steps (default: recipe's).", min=1)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Training seed (default: recipe's first).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path(
        "runs/negation-train"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")
    ] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    uncertain: UncertainOpt = "skip",
    report_facts: FactsOpt = True,
    report_to: ReportToOpt = "none",
    tracking_dir: TrackingDirOpt = None,
    eval_every: EvalEveryOpt = None,
) -> None:
    """Train one method on the train-split patients; writes checkpoints, then the adapter
    (OUT/adapter) or text-block weights (OUT/weights.safetensors)."""
    from mechtune.train.checkpoint import checkpoint_folders
    from mechtune.train.tracking import check_report_to

    check_report_to(report_to)
    settings = _recipe(recipe, model, data)
    if method not in methods_for("negation") or method == "zero-shot":
        trainable = [m for m in methods_for("negation") if m != "zero-shot"]
        raise ConfigError(f"--method must be one of {', '.join(trainable)}, got {method!r}")
    if checkpoint_folders(out) and not resume:
        raise ConfigError(
            f"{out} already holds checkpoints: pass --resume to continue them, or choose "
            "another --out"
        )
    loop = settings.loop if steps is None else replace(settings.loop, steps=steps)
    loop = replace(loop, seed=settings.seeds[0] if seed is None else seed)
    if eval_every is not None:
        loop = replace(loop, eval_every=eval_every)
    traced_model = "another model"
    if permutation and method != RANDOM_ALPHA:
        raise ConfigError(f"--permutation is read by --method {RANDOM_ALPHA} only, not {method}")
    if alpha is not None:
        traced = TraceResult.load(alpha)
        alpha_values = study_alpha(traced, settings)
        if method == RANDOM_ALPHA:
            alpha_values = alpha_permutations(alpha_values, permutation + 1, settings.data_seed)[
                permutation
            ]
        traced_model = traced.counts.get("model", traced_model)
    elif reads_alpha(method, loop.beta):
        raise ConfigError(
            f"--method {method} needs --alpha TRACE_DIR (from `mechtune negation trace`)"
        )
    else:
        alpha_values = None
    check_launch_shards(loop.shards, launched_processes(), "the recipe's loop.shards")
    with training_launch(device, report_to, tracking_folder(out, tracking_dir)) as launch:
        # under a launch each process loads the model on its own device (launch.device)
        options = _options(settings, launch.device, dtype, cache_dir, no_cache)
        source = _open(settings, uncertain, report_facts)
        encoder = options.load(settings.model)
        if alpha_values is not None and len(alpha_values) != len(encoder.text_layers) + 1:
            raise ConfigError(
                f"--alpha {alpha}: {len(alpha_values)} values (a trace of {traced_model}), "
                f"but {settings.model} has {len(encoder.text_layers)} text blocks, so "
                f"{len(encoder.text_layers) + 1} are needed; trace this model first"
            )
        with launch.main_first():  # the main process fills the image cache, the others read it
            study = _embedded(encoder, source, settings, options)
        examples = pipeline.training_data(study, settings)
        held_claims = pipeline.validation_claims(
            study, loop, settings.data_seed, settings.holdout_conditions
        )
        held_freeform = pipeline.validation_freeform(study, settings, loop)
        if alpha_values is None:
            import torch

            alpha_values = torch.ones(len(encoder.text_layers) + 1)
        spread = (
            f", {loop.shards // launch.processes} of {loop.shards} shards per process on "
            f"{launch.processes} processes"
            if launch.processes > 1
            else ""
        )
        if examples.removed:
            console.print(
                f"held out of training: {', '.join(settings.holdout_conditions)}; removed "
                + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in examples.removed.items())
            )
        console.print(
            f"{method}: {loop.steps} steps on {len(examples.captions)} captions and "
            f"{len(examples.claims)} claim sets of train-split patients{spread} ..."
        )
        pipeline.train_model(
            encoder,
            method,
            study,
            examples,
            alpha_values,
            loop,
            out,
            settings.model,
            accelerator=launch.accelerator,
            track=progress_bar,
            tracker=launch.tracker,
            evaluate=pipeline.validation(encoder, study, held_claims, held_freeform),
            holdout=settings.holdout_conditions,
        )
        if launch.is_main:
            _record(out, settings, device)
            console.print(f"wrote {out}")
            finish_report(out)


# -- eval and study ------------------------------------------------------------------------
# ``negation eval`` and ``negation study`` live in mechtune.cli.negation_eval and
# mechtune.cli.negation_study; importing them registers the commands on ``app``, and their
# functions stay importable from here.
from mechtune.cli.negation_eval import (  # noqa: E402
    eval_command,
    evaluate,
    print_report,
    report_markdown,
)
from mechtune.cli.negation_study import (  # noqa: E402
    run_grid,
    run_study,
    study_command,
    study_figures,
)

__all__ = [
    "app",
    "default_cache_dir",
    "eval_command",
    "evaluate",
    "print_report",
    "report_markdown",
    "run_grid",
    "run_study",
    "study_command",
    "study_figures",
    "trace_figures",
]
