"""`mechtune sim ...`: the phantom chest X-ray world and its CLIP model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mechtune.cli._common import console, progress_bar
from mechtune.errors import ConfigError
from mechtune.eval.figures import contact_sheet
from mechtune.sim.export import MimicExportConfig, export_mimic
from mechtune.sim.render import RenderConfig, Renderer
from mechtune.sim.reports import ReportConfig
from mechtune.sim.world import WorldConfig, load_world, make_world, save_world, showcase_studies

app = typer.Typer(
    help="The phantom chest X-ray world: render, build, train the phantom CLIP and VQA head.",
    no_args_is_help=True,
)

SeedOpt = Annotated[int, typer.Option(help="Random seed: the same seed gives the same bytes.")]
SizeOpt = Annotated[int, typer.Option(help="Image side in pixels.", min=32)]


@app.command()
def render(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    n: Annotated[int, typer.Option("--n", help="Number of radiographs.", min=1)] = 64,
    seed: SeedOpt = 0,
    size: SizeOpt = 128,
    columns: Annotated[int, typer.Option(help="Images per row.", min=1)] = 8,
) -> None:
    """Write a labelled contact sheet; every condition appears when n allows."""
    studies = showcase_studies(n, seed)
    images = Renderer(RenderConfig(size=size, seed=seed)).render(studies)
    contact_sheet(
        images,
        studies,
        out,
        columns=columns,
        title="Phantom radiographs (L marks the patient's left)",
    )
    console.print(f"wrote {out} ({n} images)")


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="World folder to write.")],
    n: Annotated[int, typer.Option("--n", help="Number of studies.", min=1)] = 10000,
    seed: SeedOpt = 0,
    size: SizeOpt = 128,
    negative_rate: Annotated[
        float, typer.Option(help="Chance a pertinent absent condition is stated in a report.")
    ] = ReportConfig().negative_rate,
) -> None:
    """Render a world: images.npy + studies.jsonl (with reports) + manifest."""
    config = WorldConfig(
        n_studies=n,
        seed=seed,
        render=RenderConfig(size=size, seed=seed),
        report=ReportConfig(seed=seed, negative_rate=negative_rate),
    )
    with progress_bar(f"render {out}", n) as advance:
        world = make_world(config, progress=advance)
    save_world(world, out)
    console.print(
        f"wrote {n} studies ({len({s.patient_id for s in world.studies})} patients) to {out}"
    )


class Layout(str, Enum):
    mimic_cxr_jpg = "mimic-cxr-jpg"


class ImageFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"


EXPORT_DEFAULTS = MimicExportConfig()


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).")],
    layout: Annotated[
        Layout, typer.Option(help="On-disk layout to write (MIMIC-CXR-JPG's files and tables).")
    ] = Layout.mimic_cxr_jpg,
    n: Annotated[
        int | None,
        typer.Option("--n", help="Studies of a new world.", min=1, show_default="2000"),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the new world and of the export's choices (laterals, second "
            "frontals, ids, dates); with --from-world, of the choices only.",
            show_default="0, or the saved world's seed",
        ),
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Image side of a new world.", min=32, show_default="128")
    ] = None,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Image file format.")
    ] = ImageFormat[EXPORT_DEFAULTS.image_format],
    quality: Annotated[
        int, typer.Option(help="JPEG quality (with --format jpeg).", min=1, max=100)
    ] = EXPORT_DEFAULTS.jpeg_quality,
    from_world: Annotated[
        Path | None,
        typer.Option(help="Export this saved world folder instead of building one."),
    ] = None,
    questions: Annotated[
        bool,
        typer.Option(
            "--questions/--no-questions",
            help="Write questions.jsonl: PSF-Med paraphrase sets for every study, images "
            "relative to --out (the file `paraphrase` commands take with --questions).",
        ),
    ] = EXPORT_DEFAULTS.questions,
    questions_per_study: Annotated[
        int | None,
        typer.Option(
            help="Yes/no questions per study in questions.jsonl (validation and test "
            "studies get each twice: training and held-out paraphrase families).",
            min=1,
            show_default=str(EXPORT_DEFAULTS.questions_per_study),
        ),
    ] = None,
) -> None:
    """Write a phantom world as MIMIC-CXR-JPG lays out its files: images, gzipped label,
    metadata and split tables, reports, and the questions file (see mechtune.sim.export)."""
    if not questions and questions_per_study is not None:
        raise ConfigError("--questions-per-study sets the questions file; --no-questions omits it")
    if from_world is not None:
        if n is not None or size is not None:
            raise ConfigError(
                "--n and --size describe a new world; --from-world exports a saved one as it is"
            )
        world = load_world(from_world)
    else:
        world_seed = 0 if seed is None else seed
        config = WorldConfig(
            n_studies=2000 if n is None else n,
            seed=world_seed,
            render=RenderConfig(size=128 if size is None else size, seed=world_seed),
            report=ReportConfig(seed=world_seed),
        )
        with progress_bar("render phantom world", config.n_studies) as advance:
            world = make_world(config, progress=advance)
    result = export_mimic(
        world,
        out,
        image_format=image_format.value,
        jpeg_quality=quality,
        seed=world.config.seed if seed is None else seed,
        questions=questions,
        questions_per_study=(
            EXPORT_DEFAULTS.questions_per_study
            if questions_per_study is None
            else questions_per_study
        ),
        track=progress_bar,
    )
    c = result.counts
    console.print(
        f"wrote {c['studies']} studies ({c['images']} images, {c['lateral_only_studies']} "
        f"lateral-only studies) in {layout.value} layout to {out}"
    )
    if result.questions is not None:
        q = c["questions"]
        by_split = ", ".join(f"{k} {v}" for k, v in q["records_by_split"].items())
        console.print(
            f"wrote {q['records']} questions ({by_split}; {q['records_by_family_pool']['heldout']} "
            f"with held-out paraphrase families) for {q['studies_with_questions']} studies "
            f"to {result.questions}"
        )


@app.command("train-clip")
def train_clip(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")],
    seed: SeedOpt = 0,
    steps: Annotated[int, typer.Option(help="Optimiser steps.", min=1)] = 1000,
    n: Annotated[int, typer.Option("--n", help="Studies in the training world.", min=10)] = 10000,
    negative_rate: Annotated[
        float, typer.Option(help="Pertinent-negative rate of the training reports.")
    ] = ReportConfig().negative_rate,
    compare: Annotated[
        bool, typer.Option(help="Compare the result with the shipped default checkpoint.")
    ] = True,
) -> None:
    """Train the phantom CLIP image tower against locked MiniLM (rebuilds the default)."""
    from mechtune.sim.clip import default_checkpoint
    from mechtune.sim.train_clip import TrainCLIPConfig, compare_checkpoints, train_phantom_clip

    config = TrainCLIPConfig(seed=seed, steps=steps, n_studies=n, negative_rate=negative_rate)
    with progress_bar("train phantom CLIP", steps) as advance:

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "train":
                advance(1)

        model, log = train_phantom_clip(config, progress=progress)
    model.save(out, extra={"train": log})
    console.print(f"wrote {out} in {log['seconds']} s; final loss {log['history'][-1]['loss']:.3f}")
    if compare:
        diff = compare_checkpoints(out, default_checkpoint())
        console.print(f"largest |difference| from the shipped checkpoint: {diff:.3g}")


@app.command("train-vqa")
def train_vqa(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")],
    seed: SeedOpt = 0,
    steps: Annotated[int, typer.Option(help="Optimiser steps.", min=1)] = 600,
    n: Annotated[int, typer.Option("--n", help="Studies in the training world.", min=10)] = 6000,
    compare: Annotated[
        bool, typer.Option(help="Compare the result with the shipped default checkpoint.")
    ] = True,
) -> None:
    """Train the phantom VQA head on the narrow question register (rebuilds the default)."""
    from mechtune.sim.train_clip import compare_checkpoints
    from mechtune.sim.train_vqa import TrainVQAConfig, train_phantom_vqa
    from mechtune.sim.vqa import default_vqa_checkpoint

    config = TrainVQAConfig(seed=seed, steps=steps, n_studies=n)
    with progress_bar("train phantom VQA head", steps) as advance:

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "train":
                advance(1)

        model, log = train_phantom_vqa(config, progress=progress)
    model.save(out, extra={"train": log})
    val = log["val_register_accuracy"]["balanced_accuracy"]
    console.print(f"wrote {out} in {log['seconds']} s; val balanced accuracy {val:.3f}")
    if compare:
        diff = compare_checkpoints(out, default_vqa_checkpoint())
        console.print(f"largest |difference| from the shipped checkpoint: {diff:.3g}")
