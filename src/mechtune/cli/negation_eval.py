"""`mechtune negation eval`: every negation metric of a model, or of a trained adapter,
on one split (split from :mod:`mechtune.cli.negation`, whose ``app`` the command is
registered on)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mechtune import __version__
from mechtune.cli._common import console, finish_report, progress_bar
from mechtune.cli.negation import (
    CacheOpt,
    DataOpt,
    DeviceOpt,
    DtypeOpt,
    FactsOpt,
    FreeformOpt,
    ModelOpt,
    NoCacheOpt,
    NoFreeformOpt,
    RecipeOpt,
    UncertainOpt,
    _check_split,
    _embedded,
    _open,
    _options,
    _recipe,
    _record,
    _with_freeform,
    app,
)
from mechtune.data.io import atomic_write_text, to_jsonable, write_json
from mechtune.eval.negation import summary_rows
from mechtune.pipelines import negation as pipeline


def print_report(report: dict[str, Any], title: str) -> None:
    table = Table(
        "metric",
        "in-distribution phrasing",
        "held-out phrasing",
        title=title,
        title_justify="left",
    )
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    for metric, reason in report.get("not_available", {}).items():
        console.print(f"n/a {metric}: {escape(reason)}", highlight=False)


def report_markdown(report: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "| metric | in-distribution phrasing | held-out phrasing |"]
    lines.append("|---|---|---|")
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in summary_rows(report)]
    reasons = report.get("not_available", {})
    if reasons:
        lines += ["", *(f"- n/a {k}: {v}" for k, v in reasons.items())]
    return "\n".join(lines) + "\n"


def evaluate(
    settings: pipeline.NegationStudyConfig,
    source: Any,
    out: Path,
    options: Any,
    *,
    adapter: Path | None,
    split: str,
    probes: bool,
    figure: Path | None = None,
) -> dict[str, Any]:
    """What ``negation eval`` runs (also the demo's zero-shot evaluation): writes
    OUT/eval.json and OUT/table.md, prints the table, returns the report."""
    from mechtune.eval.figures import blind_spot_chart

    encoder = options.load(settings.model)
    study = _embedded(encoder, source, settings, options)
    base, check = None, None
    if adapter is not None:
        base = encoder
        encoder, check = pipeline.apply_adapter(
            options.load(settings.model), adapter, spec=settings.model
        )
    report = pipeline.evaluate_model(
        encoder,
        study,
        split=split,
        seed=settings.data_seed,
        probes=probes,
        base=base,
        track=progress_bar,
        freeform=pipeline.study_freeform(settings),
        freeform_max_studies=settings.freeform_max_studies,
        holdout=settings.holdout_conditions,
    )
    if check is not None:
        report["adapter_check"] = check
    else:
        report["not_available"]["retention"] = (
            "retention needs --adapter: it is the drift of everyday-sentence embeddings "
            "from the base model's"
        )
    report.update(pipeline.weights_info(encoder))
    label = f"{settings.model}{' + adapter' if adapter else ''}"
    for example in report.get("examples", []):  # the scores under the model's name
        example["scores"] = {label: example["scores"]["score"]}
    report["seed"] = settings.data_seed
    report["mechtune"] = __version__
    report["model"] = settings.model
    report["adapter"] = None if adapter is None else str(adapter)
    report["data"] = to_jsonable(source.description)
    write_json(out / "eval.json", report, sort_keys=True)
    if adapter is not None:
        from mechtune.train.model_card import card_from_eval

        for card in card_from_eval(adapter, out / "eval.json"):
            console.print(f"updated the model card {card}")
    title = (
        f"{settings.model}{' + ' + str(adapter) if adapter else ''}: {split} split, "
        f"{report['studies']} studies of {len(set(study.eval_set(split).patients))} "
        "patients, 95% intervals clustered by patient"
    )
    atomic_write_text(out / "table.md", report_markdown(report, title))
    if report["claims"]:
        blind_spot_chart(report["claims"], figure or out / "blind_spot.png")
    print_report(report, title)
    return report


@app.command("eval")
def eval_command(
    model: ModelOpt = None,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    adapter: Annotated[
        Path | None,
        typer.Option(help="What `negation train` wrote: a run folder or its adapter folder."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="Patient split to evaluate: test (report), val (choose), train.")
    ] = "test",
    probes: Annotated[
        bool, typer.Option("--probes/--no-probes", help="Linear probes on image embeddings.")
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the claim sets' wording (default: recipe's).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "runs/negation-eval"
    ),
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    uncertain: UncertainOpt = "skip",
    report_facts: FactsOpt = True,
    freeform: FreeformOpt = None,
    no_freeform: NoFreeformOpt = False,
    freeform_max_studies: Annotated[
        int | None,
        typer.Option(
            help="Studies scored per free-form claim set at most (default: recipe's).", min=1
        ),
    ] = None,
) -> None:
    """R@1/R@5, claim accuracy by attribute and polarity, the gap, polarity MCQ,
    contralateral negation, the free-form claim sets (the split's half) and retention
    (with --adapter), each with a 95% interval."""
    _check_split(split, ("val", "test", "train"))
    settings = _recipe(recipe, model, data)
    if seed is not None:
        settings = replace(settings, data_seed=seed)
    settings = _with_freeform(settings, freeform, no_freeform, freeform_max_studies)
    options = _options(settings, device, dtype, cache_dir, no_cache)
    source = _open(settings, uncertain, report_facts)
    evaluate(settings, source, out, options, adapter=adapter, split=split, probes=probes)
    _record(out, settings, device)
    console.print(f"wrote {out}")
    finish_report(out)
