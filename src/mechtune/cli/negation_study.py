"""`mechtune negation study`: every method x seed on the same data and budget, or every
cell of a recipe's grid, with the study's figures (split from :mod:`mechtune.cli.negation`,
whose ``app`` the command is registered on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mechtune.cli._common import console, finish_report, progress_bar
from mechtune.cli._tracking import ReportToOpt, TrackingDirOpt, make_tracker
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
    _data_path,
    _open,
    _options,
    _recipe,
    _record,
    _with_freeform,
    app,
    trace_figures,
)
from mechtune.interp.result import TraceResult
from mechtune.pipelines import negation as pipeline
from mechtune.pipelines.negation_study import run_negation_study
from mechtune.train.distributed import refuse_launch


def study_figures(results: dict[str, Any], folder: Path) -> None:
    """The study's figures in ``folder/figures``: the trace's CTE heatmap and alpha bars,
    and each method's update share by block, the blocks ranked by the CTE profile of the
    study's ``alpha_source`` (the ranking the table's top-k update share used)."""
    from mechtune.eval.figures import update_share_chart
    from mechtune.interp.alpha import cte_profile

    traced = TraceResult.load(folder / "trace")
    source = results.get("trace", {}).get("alpha_source") or results["config"]["alpha_source"]
    profile = cte_profile(traced.cte_layer, traced.cte, traced.roles, source)
    figures = folder / "figures"
    trace_figures(
        traced, figures, "CTE by layer and role (train-split pairs)", results.get("trace")
    )
    norms = {
        m: {int(k): v for k, v in runs[0]["update_norms"].items()}
        for m, runs in results["runs"].items()
        if "update_norms" in runs[0]
    }
    if norms:
        label = f"CTE at block output ({source} over roles)"
        update_share_chart(norms, profile[1:].tolist(), figures / "update_share.png", label)


def run_study(
    settings: pipeline.NegationStudyConfig,
    source: Any,
    out: Path,
    options: Any,
    tracker: Any | None = None,
) -> dict[str, Any]:
    """What ``negation study`` runs after opening the data (also the demo's), each
    training run tracked by ``tracker`` (:class:`~mechtune.train.tracking.Tracker`).
    Refuses a launch of several processes (ConfigError): use ``negation train`` under a
    launcher."""
    refuse_launch("mechtune negation study", "mechtune negation train")
    console.print(
        f"negation study of {settings.model} on {source.root}: {', '.join(settings.methods)}; "
        f"{settings.loop.steps} steps each, seeds {list(settings.seeds)} ..."
    )
    if settings.grid is not None:
        return run_grid(settings, source, out, options, tracker)
    results = run_negation_study(
        settings, source, out, options, log=console.print, track=progress_bar, tracker=tracker
    )
    study_figures(results, out)
    console.print(
        f"[bold]Negation methods on held-out phrasing families, {settings.eval_split} "
        f"patients[/] (also in {out / 'table.md'}):"
    )
    console.print((out / "table.md").read_text(), highlight=False, soft_wrap=True)
    return results


def run_grid(
    settings: pipeline.NegationStudyConfig,
    source: Any,
    out: Path,
    options: Any,
    tracker: Any | None = None,
) -> dict[str, Any]:
    """``negation study`` of a recipe with a grid: every cell a study in OUT/cells/<cell>
    (with its figures), finished cells skipped; OUT/grid.json and OUT/grid.md."""
    from mechtune.pipelines.negation_grid import CELLS, run_negation_grid

    record = run_negation_grid(
        settings, source, out, options, log=console.print, track=progress_bar, tracker=tracker
    )
    for cell in record["cells"]:
        folder = out / CELLS / cell["name"]
        cell_results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        study_figures(cell_results, folder)
    console.print(f"[bold]Grid of {len(record['cells'])} cells[/] (also in {out / 'grid.md'}):")
    console.print((out / "grid.md").read_text(), highlight=False, soft_wrap=True, markup=False)
    return record


@app.command("study")
def study_command(
    model: ModelOpt = None,
    data: DataOpt = None,
    recipe: RecipeOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder.")] = Path(
        "runs/negation-study"
    ),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check every recipe key, the data layout and the model spec; load no "
            "weights and train nothing.",
        ),
    ] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    uncertain: UncertainOpt = "skip",
    report_facts: FactsOpt = True,
    report_to: ReportToOpt = "none",
    tracking_dir: TrackingDirOpt = None,
    freeform: FreeformOpt = None,
    no_freeform: NoFreeformOpt = False,
) -> None:
    """Trace on train patients, train every method on the same data and budget, evaluate
    on test patients; writes results.json, table.md, figures, adapters."""
    from mechtune.pipelines.dry_run import dry_run_report

    tracker = make_tracker(report_to, out, tracking_dir)
    settings = _with_freeform(_recipe(recipe, model, data), freeform, no_freeform)
    if not dry_run:
        refuse_launch("mechtune negation study", "mechtune negation train")
    if dry_run:
        lines = dry_run_report(settings, _data_path(settings), dtype=dtype, device=device)
        for line in lines:
            console.print(escape(line), highlight=False, soft_wrap=True)
        return
    options = _options(settings, device, dtype, cache_dir, no_cache)
    source = _open(settings, uncertain, report_facts)
    run_study(settings, source, out, options, tracker)
    _record(out, settings, device)
    finish_report(out)
