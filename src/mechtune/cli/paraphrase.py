"""`mechtune paraphrase eval|train|study`: the paraphrase half on any yes/no VLM, any
PSF-Med style questions file and any images. Thin: options become settings, and the work
is done by :mod:`mechtune.pipelines.paraphrase_train` and
:mod:`mechtune.pipelines.paraphrase`.

Every command takes ``--model SPEC --questions FILE --data DIR``
(:mod:`mechtune.pipelines.questions` says how records find their images): ``--data`` is an
image-study source, or any folder the questions' image paths are relative to.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mechtune.cli._common import (
    console,
    finish_report,
    progress_bar,
    record_run,
    training_launch,
)
from mechtune.cli._tracking import (
    EvalEveryOpt,
    ReportToOpt,
    TrackingDirOpt,
    make_tracker,
    tracking_folder,
)
from mechtune.errors import ConfigError
from mechtune.pipelines.questions import BoundQuestions, bind_questions
from mechtune.train.distributed import check_launch_shards, launched_processes, refuse_launch

app = typer.Typer(
    help="The paraphrase half: evaluate flips, train consistency LoRA, or run the study.",
    no_args_is_help=True,
)

# -- shared options ------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="A yes/no VLM spec: hf:DIR (a saved image-text-to-text model such as "
        "MedGemma) or phantom:vqa; default: the recipe's, else phantom:vqa.",
    ),
]
QuestionsOpt = Annotated[
    Path | None,
    typer.Option(
        "--questions",
        help="PSF-Med style records (JSONL or a JSON array); default: the data's own.",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="An image-study source (MIMIC-CXR-JPG, CheXpert, manifest, phantom export) or "
        "any folder the questions' image paths are relative to.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="Device: cpu, cuda, cuda:1.")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="Weights' dtype: float32, bfloat16, float16, auto (the checkpoint's; the "
        "default). Margins and losses stay float32.",
    ),
]
SkipOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Skip bad question records (counted), don't fail.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed (default: the recipe's).")]
RecipeOpt = Annotated[
    Path | None,
    typer.Option("--recipe", help="A paraphrase study recipe YAML (recipes/consistency-*.yaml)."),
]


def _recipe(recipe: Path | None) -> Any:
    from mechtune.pipelines.paraphrase import ParaphraseRecipe, load_paraphrase_recipe

    return (
        load_paraphrase_recipe(recipe)
        if recipe is not None
        else ParaphraseRecipe(_default_config())
    )


def _default_config() -> Any:
    from mechtune.pipelines.paraphrase import ParaphraseStudyConfig

    return ParaphraseStudyConfig()


def _load(spec: str, device: str, dtype: str | None) -> Any:
    from mechtune.models.precision import resolve_device, resolve_dtype
    from mechtune.models.vlm_spec import load_yes_no_vlm, parse_vlm_spec

    parse_vlm_spec(spec)
    resolve_device(device)
    resolve_dtype(dtype)
    return load_yes_no_vlm(spec, device=device, dtype=dtype)


def _bind(
    vlm: Any,
    questions: Path | None,
    data: Path | None,
    split: str | None,
    seed: int,
    skip_bad: bool,
) -> BoundQuestions:
    bound = bind_questions(
        vlm,
        questions=questions,
        data=data,
        split=split,
        seed=seed,
        skip_bad=skip_bad,
        log=lambda m: console.print(escape(m), highlight=False),
    )
    console.print(f"{len(bound.sets)} question sets on {len(bound.pixels)} images")
    return bound


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"15-19"`` or ``"15,16,17"`` (or a mix, ``"0,3-5"``) -> block indices; None: all.
    Raises ConfigError for anything else."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                if last < first:
                    raise ValueError
                out.extend(range(first, last + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected blocks such as 15-19 or 15,16,17") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ConfigError(f"--layers {text!r}: expected distinct blocks >= 0")
    return tuple(out)


def _record(
    out: Path,
    recipe: Any,
    model: str | None,
    questions: Path | None,
    data: Path | None,
    device: str,
    seeds: list[int],
) -> None:
    """``out/provenance.json`` for a paraphrase command: the questions file is the data (its
    folder's manifests are hashed), the images folder is searched for manifests too."""
    record_run(
        out,
        recipe=recipe,
        model=model,
        data=questions,
        data_paths=(data,),
        seeds=seeds,
        device=device,
    )


def _print_table(path: Path) -> None:
    console.print(path.read_text(encoding="utf-8"), highlight=False, soft_wrap=True, markup=False)


# -- eval ------------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option("--model", help="A yes/no VLM spec.")] = "phantom:vqa",
    questions: QuestionsOpt = None,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for eval.json, table.md.")] = (
        Path("runs/paraphrase-eval")
    ),
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", help="A paraphrase train run folder (or its adapter/)."),
    ] = None,
    clamp: Annotated[
        str | None,
        typer.Option(
            "--clamp",
            help="SAE_DIR:FEATURE:VALUE: clamp one SAE feature at the SAE's layer, e.g. "
            "saes/layer_17:3818:0.",
        ),
    ] = None,
    answers: Annotated[
        Path | None,
        typer.Option(
            "--answers",
            help="Recorded answers (CSV or JSONL; the MedGemma record's columns): metrics "
            "without a model. Metrics that need margins or images show n/a.",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Split of a labelled questions file to evaluate.")
    ] = "test",
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap and own-question seed.")] = 0,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """PSF-Med's metrics with 95% intervals: flip rate, pairwise flip rate, mean |margin
    difference|, accuracy, text-only agreement, swap sensitivity; by view and strategy;
    per-question margins in margins.csv."""
    from mechtune.pipelines import paraphrase_train as run

    if answers is not None:
        given = [
            name
            for name, value in (
                ("--questions", questions),
                ("--data", data),
                ("--adapter", adapter),
                ("--clamp", clamp),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"--answers evaluates recorded answers; {', '.join(given)} need a model"
            )
        run.evaluate_answers_file(
            answers, out, skip_bad=skip_bad, seed=seed, log=lambda m: console.print(escape(m))
        )
        _print_table(out / "table.md")
        console.print(f"wrote {out / 'eval.json'}")
        _record(out, None, None, None, answers, device, [seed])
        finish_report(out)
        return
    from mechtune.interp.sae_folders import parse_clamp

    clamped = None if clamp is None else parse_clamp(clamp)
    vlm = _load(model, device, dtype)
    extra: dict[str, Any] = {"model": model, "device": device, "dtype": run.weights_dtype(vlm)}
    if adapter is not None:
        extra["adapter"] = run.apply_paraphrase_adapter(vlm, adapter, model)
        diff = extra["adapter"]["max_abs_diff"]
        console.print(
            f"applied {adapter}"
            + ("" if diff is None else f" (probe margins reproduce to {diff:.2g} logits)")
        )
    bound = _bind(vlm, questions, data, split, seed, skip_bad)
    extra["input"] = bound.info
    run.evaluate_paraphrase(
        vlm, bound, bound.sets, out, clamp=clamped, extra=extra, seed=seed, track=progress_bar
    )
    if adapter is not None and clamped is None:
        from mechtune.train.model_card import card_from_eval

        for card in card_from_eval(adapter, out / "eval.json"):
            console.print(f"updated the model card {card}")
    _print_table(out / "table.md")
    console.print(f"wrote {out / 'eval.json'}, {out / 'margins.csv'}")
    _record(out, None, model, questions, data, device, [seed])
    finish_report(out)


# -- train -----------------------------------------------------------------------------------


@app.command("train")
def train_command(
    model: ModelOpt = None,
    questions: QuestionsOpt = None,
    data: DataOpt = None,
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Language blocks that get LoRA: 15-19 or 15,16,17; all."),
    ] = None,
    recipe: RecipeOpt = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimiser steps (default: recipe's).")
    ] = None,
    answer_loss: Annotated[
        str | None,
        typer.Option(
            "--answer-loss",
            help="vocab: first-token cross-entropy over the vocabulary (the released "
            "adapter's); binary: cross-entropy on the yes/no margin. Default: recipe's.",
        ),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option("--grad-accum", min=1, help="Micro-batches per step (default: recipe's)."),
    ] = None,
    seed: SeedOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path(
        "runs/paraphrase-train"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")
    ] = False,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    report_to: ReportToOpt = "none",
    tracking_dir: TrackingDirOpt = None,
    eval_every: EvalEveryOpt = None,
) -> None:
    """Consistency LoRA (answer loss + w * symmetric KL of the yes/no distributions of a
    question and a paraphrase) on the train split; checkpoints, then OUT/adapter (peft)."""
    from mechtune.pipelines import paraphrase_train as run
    from mechtune.train.checkpoint import checkpoint_folders
    from mechtune.train.tracking import check_report_to
    from mechtune.train.validation import paraphrase_validation

    check_report_to(report_to)
    settings = _recipe(recipe)
    spec = model or settings.config.model
    data = data if data is not None else settings.data
    questions = questions if questions is not None else settings.questions
    if checkpoint_folders(out) and not resume:
        raise ConfigError(
            f"{out} already holds checkpoints: pass --resume to continue them, or choose "
            "another --out"
        )
    lora = settings.config.lora
    changes: dict[str, Any] = {"seed": settings.config.seeds[0] if seed is None else seed}
    for name, value in (
        ("steps", steps),
        ("answer_loss", answer_loss),
        ("grad_accum", grad_accum),
        ("eval_every", eval_every),
    ):
        if value is not None:
            changes[name] = value
    config = replace(lora, lora=replace(lora.lora, layers=parse_layers(layers)), **changes)
    setting = "--grad-accum" if grad_accum is not None else "the recipe's lora.grad_accum"
    check_launch_shards(config.grad_accum, launched_processes(), setting)
    with training_launch(device, report_to, tracking_folder(out, tracking_dir)) as launch:
        # under a launch each process loads the model on its own device (launch.device)
        vlm = _load(spec, launch.device, dtype)
        bound = _bind(vlm, questions, data, "train", config.seed, skip_bad)
        evaluate = None
        if config.eval_every:
            held = run.bind_validation(
                vlm,
                questions=questions,
                data=data,
                seed=config.seed,
                skip_bad=skip_bad,
                log=lambda m: console.print(escape(m), highlight=False),
            )
            console.print(f"every {config.eval_every} steps: {len(held.sets)} val questions")
            evaluate = paraphrase_validation(vlm, held.images, held.sets)
        identity = run.run_identity(spec, vlm, questions, data)
        result = run.train_consistency(
            vlm,
            bound,
            bound.sets,
            config,
            out,
            identity=identity,
            log=console.print,
            accelerator=launch.accelerator,
            track=progress_bar,
            tracker=launch.tracker,
            evaluate=evaluate,
        )
        last = result["history"][-1] if result["history"] else {}
        terms = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
        console.print(f"step {result['step']}: {terms}")
        console.print(f"wrote {out / 'adapter'} and {out / 'train.json'}")
        if launch.is_main:
            _record(out, config, spec, questions, data, device, [config.seed])
            finish_report(out)


# -- study -----------------------------------------------------------------------------------


def run_study(
    config: Any,
    questions: Path | None,
    data: Path | None,
    out: Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    skip_bad: bool = False,
    tracker: Any | None = None,
) -> dict[str, Any]:
    """What ``paraphrase study`` runs after reading its settings (also the demo's), its
    SAE and LoRA training tracked by ``tracker`` (:class:`~mechtune.train.tracking.
    Tracker`). Refuses a launch of several processes (ConfigError): use ``paraphrase
    train``."""
    from mechtune.pipelines.paraphrase import run_paraphrase_study

    refuse_launch("mechtune paraphrase study", "mechtune paraphrase train")

    vlm = _load(config.model, device, dtype)
    bound = _bind(vlm, questions, data, None, config.seed, skip_bad)
    console.print(
        f"paraphrase study of {config.model}: SAEs at "
        f"{'all layers' if config.sae_layers is None else list(config.sae_layers)}, "
        f"consistency LoRA on {', '.join(config.ranges)} layers"
        + (f" and {config.random_ranges} random ranges" if config.random_ranges else "")
        + f", {config.lora.steps} steps "
        f"of {config.lora.batch_size} x {config.lora.grad_accum} questions, seeds "
        f"{list(config.seeds)} ..."
    )
    results = run_paraphrase_study(
        config,
        bound,
        out,
        vlm=vlm,
        device=device,
        dtype=dtype,
        log=lambda m: console.print(escape(m), highlight=False),
        track=progress_bar,
        tracker=tracker,
    )
    study_figures(results, out / "figures")
    return results


def study_figures(results: dict[str, Any], folder: Path) -> None:
    """The flip-AUC by layer and the flip rates per condition."""
    from mechtune.eval.figures import auc_by_layer_chart, flip_rate_chart

    analysis = results["analysis"]
    auc_by_layer_chart(
        {int(k): v for k, v in analysis["auc_by_layer"].items()},
        {int(k): tuple(v) for k, v in analysis["auc_ci_by_layer"].items()},
        analysis["chosen_layers"],
        folder / "flip_auc_by_layer.png",
        shuffled={
            int(k): (v.get("low"), v.get("high"))
            for k, v in (analysis.get("auc_shuffled_by_layer") or {}).items()
        },
    )
    rows = {"baseline": results["baseline"]}
    if results.get("clamping"):
        rows["clamping"] = results["clamping"]
    for name, reports in results["runs"].items():
        rows[f"LoRA {name}"] = reports[0]
    views = [v for v in ("heldout", "in_distribution", "all") if v in results["baseline"]][:2]
    flip_rate_chart(
        {name: {v: r[v]["flip_rate"]["value"] for v in views} for name, r in rows.items()},
        folder / "flip_rate.png",
    )


@app.command("study")
def study_command(
    recipe: RecipeOpt = None,
    model: ModelOpt = None,
    questions: QuestionsOpt = None,
    data: DataOpt = None,
    saes: Annotated[
        Path | None,
        typer.Option(
            "--saes",
            help="Analyse these SAEs (layer_<L>[_<variant>]/ folders: sae train output or "
            "Gemma Scope 2) instead of training them.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder.")] = Path(
        "runs/paraphrase-study"
    ),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the recipe, the questions, the data and the model spec; load no "
            "weights and train nothing.",
        ),
    ] = False,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    report_to: ReportToOpt = "none",
    tracking_dir: TrackingDirOpt = None,
) -> None:
    """Baseline, SAE analysis, clamping, and consistency LoRA on all / SAE-chosen / early /
    late layers at the same budget; writes results.json, table.md, figures, adapters."""
    tracker = make_tracker(report_to, out, tracking_dir)
    settings = _recipe(recipe)
    config = settings.config
    changes: dict[str, Any] = {}
    if model is not None:
        changes["model"] = model
    if saes is not None:
        changes["saes"] = str(saes)
    if changes:
        try:
            config = replace(config, **changes)
        except ConfigError as exc:
            raise ConfigError(f"{recipe or 'the default settings'}: {exc}") from None
    data = data if data is not None else settings.data
    questions = questions if questions is not None else settings.questions
    if not dry_run:
        refuse_launch("mechtune paraphrase study", "mechtune paraphrase train")
    if dry_run:
        from mechtune.pipelines.dry_run import paraphrase_dry_run

        for line in paraphrase_dry_run(config, questions, data, device=device, dtype=dtype):
            console.print(escape(line), highlight=False, soft_wrap=True)
        return
    run_study(
        config,
        questions,
        data,
        out,
        device=device,
        dtype=dtype,
        skip_bad=skip_bad,
        tracker=tracker,
    )
    console.print(
        f"[bold]Paraphrase consistency, {config.eval_split} questions[/] "
        f"(also in {out / 'table.md'}):"
    )
    _print_table(out / "table.md")
    _record(out, config, config.model, questions, data, device, list(config.seeds))
    finish_report(out)


__all__ = ["app", "parse_layers", "run_study", "study_figures"]
