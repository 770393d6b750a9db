"""The `mechtune` command line. Thin: options become config dataclasses, work is done by
library functions."""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow.parquet as pq
import typer
from rich.markup import escape
from rich.table import Table

from mechtune import __version__
from mechtune.cli import data as data_cli
from mechtune.cli import negation as negation_cli
from mechtune.cli import paraphrase as paraphrase_cli
from mechtune.cli import sae as sae_cli
from mechtune.cli import sim as sim_cli
from mechtune.cli._common import (
    MechtuneGroup,
    console,
    data_source,
    finish_report,
    progress_bar,
    record_run,
)
from mechtune.cli._tracking import ReportToOpt, TrackingDirOpt, make_tracker, tracking_folder
from mechtune.data.check import DEFAULT_MAX_DISAGREEMENT
from mechtune.data.io import write_json
from mechtune.data.polarity_check import clinical_available

app = typer.Typer(
    help="mechtune: trace, then prescribe. Measure, locate and fix negation and paraphrase "
    "failures in medical vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # typer's --install/--show-completion depend on detecting the calling shell, which a
    # test cannot pin (CI has none); they are left out rather than shipped untested
    add_completion=False,
    cls=MechtuneGroup,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(sim_cli.app, name="sim")
app.add_typer(negation_cli.app, name="negation")
app.add_typer(paraphrase_cli.app, name="paraphrase")
app.add_typer(sae_cli.app, name="sae")


def _version(value: bool) -> None:
    if value:
        console.print(f"mechtune {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """mechtune command line."""


def _examples(out: Path) -> Table:
    """A few generated claims, so the user sees what the data looks like."""
    rows = pq.read_table(out / "contextual" / "claims.parquet").slice(0, 4000).to_pylist()
    rng = random.Random(0)
    kinds = [
        [r for r in rows if r["polarity"] == "affirmative"],
        [r for r in rows if r["contralateral"]],
        [r for r in rows if r["polarity"] == "negated" and not r["contralateral"]],
    ]
    picks = [rng.choice(kind) for kind in kinds if kind]  # a tiny run may lack a kind
    table = Table(
        "correct claim",
        "hard negatives (flipped attribute)",
        title="Example claim sets",
        title_justify="left",
    )
    for r in picks:
        negs = "\n".join(f"{t} ({a})" for t, a in zip(r["negatives"], r["flipped"], strict=True))
        table.add_row(r["correct"], negs)
    return table


MIMIC_DIR = "mimic-cxr-jpg"  # the demo's world, exported as a MIMIC-CXR-JPG user has it
QUESTIONS_FILE = "questions.jsonl"  # the PSF-Med style questions `sim export` writes beside it


def _world(out: Path, n: int, seed: int) -> Any:
    """Render the phantom world, save it to OUT/world, draw the contact sheet, and export
    the world in MIMIC-CXR-JPG layout to OUT/mimic-cxr-jpg (what the data build reads)."""
    from mechtune.eval.figures import contact_sheet
    from mechtune.sim.export import export_mimic
    from mechtune.sim.world import WorldConfig, make_world, save_world, showcase_studies

    with progress_bar("render phantom world", n) as advance:
        world = make_world(WorldConfig.seeded(n, seed), progress=advance)
    save_world(world, out / "world")
    sheet = showcase_studies(32, seed)
    contact_sheet(
        world_images(sheet, seed),
        sheet,
        out / "figures" / "phantom_contact_sheet.png",
        title="Phantom radiographs (L marks the patient's left)",
    )
    target = out / MIMIC_DIR
    if target.exists():  # the export refuses a non-empty folder: a rerun replaces it
        shutil.rmtree(target)
    export = export_mimic(world, target, seed=seed, track=progress_bar)
    console.print(
        f"exported the world in MIMIC-CXR-JPG layout to {target} "
        f"({export.counts['images']} images, {export.counts['reports']} reports)"
    )
    return world


def _zero_shot(out: Path, source: Any, recipe: Any, options: Any, quick: bool) -> dict:
    """The shipped phantom CLIP's zero-shot blind spot on the test patients of the export,
    through ``negation eval``'s path (OUT/zero-shot: eval.json, table.md)."""
    console.print("evaluating the shipped phantom CLIP (locked MiniLM text tower) ...")
    return negation_cli.evaluate(
        recipe,
        source,
        out / "zero-shot",
        options,
        adapter=None,
        split="test",
        probes=not quick,
        figure=out / "figures" / "zero_shot_blind_spot.png",
    )


def _paraphrase_study(out: Path, config: Any, tracker: Any | None = None) -> None:
    """The paraphrase study as `mechtune paraphrase study --model phantom:vqa --questions
    OUT/mimic-cxr-jpg/questions.jsonl --data OUT/mimic-cxr-jpg` runs it: the questions the
    export wrote beside its images, read as a user's PSF-Med file is."""
    export = out / MIMIC_DIR
    folder = out / "paraphrase"
    paraphrase_cli.run_study(config, export / QUESTIONS_FILE, export, folder, tracker=tracker)
    for name in ("flip_auc_by_layer.png", "flip_rate.png"):
        shutil.copyfile(folder / "figures" / name, out / "figures" / name)
    console.print(
        "[bold]Paraphrase consistency on held-out paraphrase families, test patients[/] "
        f"(also in {folder / 'table.md'}):"
    )
    console.print((folder / "table.md").read_text(), highlight=False, soft_wrap=True, markup=False)


@dataclass(frozen=True)
class DemoPlan:
    """What ``mechtune demo`` runs: studies for the data build and zero-shot world, and
    the two study configs (their worlds, seeds and training budgets)."""

    n: int
    seed: int
    negation: Any  # NegationStudyConfig (its data: the MIMIC-CXR-JPG export)
    paraphrase: Any  # ParaphraseStudyConfig


def demo_plan(n: int, seed: int, quick: bool, out: Path = Path("runs/demo")) -> DemoPlan:
    """The demo's settings from its options.

    ``n`` studies for the data build, the zero-shot world and the negation study's world;
    the paraphrase study reads the first ``n // 3`` train and ``n // 3`` test questions of
    the questions file the export writes (its cost grows with the test questions).
    ``seed`` seeds every world, sampler and training run. The training budgets are the
    demo's, smaller than the recipes' (80 steps per negation method instead of 150, 80
    steps of 16 questions per consistency range), so the whole demo stays near 10 minutes
    on 2 cores; every method and layer range still gets the same budget. The negation
    study runs zero-shot, uniform LoRA, NAST and the random-alpha control with one
    permutation of alpha.
    ``quick`` (the CI smoke test): at most 600 studies and a few steps of everything, the
    random-alpha control included.
    """
    from mechtune.pipelines.negation import NegationStudyConfig
    from mechtune.pipelines.paraphrase import ParaphraseStudyConfig

    n = min(n, 600) if quick else n
    # the random-alpha control (one permutation of the traced alpha) beside NAST: does
    # the trace pick better blocks than chance? (the recipes run 3 permutations)
    negation = NegationStudyConfig(
        model="phantom:default",
        data=str(out / MIMIC_DIR),
        data_seed=seed,
        seeds=(seed,),
        methods=("zero-shot", "uniform-lora", "nast", "random-alpha"),
        random_alpha_permutations=1,
    )
    negation = replace(negation, loop=replace(negation.loop, steps=80))
    paraphrase = ParaphraseStudyConfig(
        max_questions=n // 3,
        seed=seed,
        seeds=(seed,),
        sae_steps=150,
        sae_reports=500,
        analysis_sets=200,
    )
    paraphrase = replace(
        paraphrase, lora=replace(paraphrase.lora, steps=80, batch_size=16, checkpoint_every=40)
    )
    if quick:
        negation = replace(
            negation,
            trace_max_pairs=40,
            loop=replace(
                negation.loop, steps=10, caption_batch=16, claim_batch=16, checkpoint_every=10
            ),
        )
        paraphrase = replace(
            paraphrase,
            sae_steps=40,
            sae_reports=100,
            analysis_sets=60,
            ranges=("sae",),
            lora=replace(paraphrase.lora, steps=5, batch_size=8, checkpoint_every=5),
        )
    return DemoPlan(n, seed, negation, paraphrase)


def world_images(studies: list, seed: int) -> np.ndarray:
    from mechtune.sim.render import RenderConfig, Renderer

    return Renderer(RenderConfig(seed=seed)).render(studies)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    n: Annotated[
        int,
        typer.Option(
            "--n",
            help="Synthetic studies of the data, the zero-shot and the negation worlds; "
            "the paraphrase study reads n // 3 train and test questions of its export.",
            min=200,
        ),
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of every world, sampler and training run.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="A small, fast run (CI smoke test).")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the polarity check.")
    ] = True,
    report_to: ReportToOpt = "none",
    tracking_dir: TrackingDirOpt = None,
) -> None:
    """The main job, offline: data, the phantom world, the negation study (trace, NAST vs
    uniform LoRA and the random-alpha control) and the paraphrase study (flip rate, SAE
    analysis, consistency LoRA).

    Writes OUT/world (phantom radiographs and reports), OUT/mimic-cxr-jpg (the same world
    as MIMIC-CXR-JPG lays out its files), OUT/data/{polarity,contextual,paraphrase}
    (benchmarks built from that folder by the MIMIC reader, with manifests, checked by an
    independent negation detector),
    OUT/zero-shot (eval.json, table.md), OUT/negation and OUT/paraphrase (results.json,
    table.md, adapters, SAEs), OUT/figures/*.png and OUT/timings.json (seconds per stage),
    and prints the tables. With --report-to, the training runs are tracked under
    TRACKING_DIR/negation and TRACKING_DIR/paraphrase (default OUT/tracking).
    """
    from mechtune.train.distributed import refuse_launch

    refuse_launch("mechtune demo", "mechtune negation train or mechtune paraphrase train")
    tracking = tracking_folder(out, tracking_dir)
    negation_tracker = make_tracker(report_to, out, tracking / "negation")
    paraphrase_tracker = make_tracker(report_to, out, tracking / "paraphrase")
    start = time.perf_counter()
    timings: dict[str, float] = {}

    clock = [start]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        timings[stage] = round(now - clock[0], 1)
        clock[0] = now

    plan = demo_plan(n, seed, quick, out)
    _world(out, plan.n, plan.seed)
    lap("world: render, save, export as MIMIC-CXR-JPG")
    # The data build reads the export as a MIMIC-CXR-JPG user's data is read: labels,
    # official splits, and side and size from the reports (when medspacy is installed).
    source = data_source(out / MIMIC_DIR, "skip", False, report_facts=clinical_available())
    results = data_cli.build_kinds(
        ["polarity", "contextual", "paraphrase"],
        out / "data",
        source,
        plan.seed,
        data_cli.Fmt.parquet,
        check,
        DEFAULT_MAX_DISAGREEMENT,
        nested=True,
    )
    console.print(_examples(out / "data"))
    lap("data: read the export (report facts), build and check")
    # The negation part runs as `negation eval` and `negation study --model phantom:default
    # --data OUT/mimic-cxr-jpg` do, on the source just read (image embeddings cached in
    # OUT/cache).
    options = negation_cli.pipeline.RunOptions(cache_dir=out / "cache")
    _zero_shot(out, source, plan.negation, options, quick)
    lap("zero-shot evaluation")
    negation_cli.run_study(plan.negation, source, out / "negation", options, negation_tracker)
    lap("negation study")
    _paraphrase_study(out, plan.paraphrase, paraphrase_tracker)
    lap("paraphrase study")
    write_json(out / "timings.json", {**timings, "total": round(sum(timings.values()), 1)})
    console.print(
        "stage seconds: " + ", ".join(f"{k.split(':')[0]} {v}" for k, v in timings.items()),
        highlight=False,
    )
    ctx = results["contextual"].counts
    console.print(
        f"[bold]done[/] in {time.perf_counter() - start:.1f} s: {plan.n} studies -> "
        f"{results['polarity'].counts['tables']['mcq']['rows']} MCQ pairs, "
        f"{ctx['pairs']} claim pairs ({ctx['contralateral_claim_sets']} contralateral claim sets), "
        f"{results['paraphrase'].counts['tables']['paraphrases']['rows']} paraphrase sets; "
        f"figures in {out / 'figures'}"
    )
    # at the end, when the data manifests exist and their hashes can be recorded
    record_run(
        out,
        recipe={"negation": plan.negation, "paraphrase": plan.paraphrase},
        model=f"{plan.negation.model} (negation), {plan.paraphrase.model} (paraphrase)",
        data=out / MIMIC_DIR,
        data_paths=(out / "world", out / "data"),
        seeds=[plan.seed],
        device="cpu",
    )
    finish_report(out)


@app.command("report")
def report_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder (any study, eval, train or demo --out).")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write (default RUN_DIR/report.html)."),
    ] = None,
) -> None:
    """Write one self-contained report.html for a run folder: what was run, provenance,
    the tables with intervals, paired differences and the papers' numbers, the figures,
    examples and timings. It loads nothing from the network."""
    from mechtune.report.render import write_report

    path, report = write_report(run_dir, out)
    for problem in report.problems:
        console.print(f"could not read {escape(problem)}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {escape(str(path))}: {len(report.sections)} sections, "
        f"{sum(len(s.figures) for s in report.sections)} figures",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
