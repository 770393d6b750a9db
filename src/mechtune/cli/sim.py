"""`mechtune sim ...`: the phantom chest X-ray world and its CLIP model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechtune.cli._common import console, progress_bar
from mechtune.eval.figures import contact_sheet
from mechtune.sim.render import RenderConfig, Renderer
from mechtune.sim.reports import ReportConfig
from mechtune.sim.world import WorldConfig, make_world, save_world, showcase_studies

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
