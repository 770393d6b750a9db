"""`mechtune trace`: causal tracing of negation in a dual encoder's text tower."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from mechtune.cli._common import console, progress_bar
from mechtune.eval.figures import alpha_bars, cte_heatmap
from mechtune.interp.pairs import build_trace_pairs, pairs_from_records, read_pairs_file
from mechtune.interp.ratios import MIN_GAP_SHARE
from mechtune.interp.result import TraceConfig, TraceResult, trace
from mechtune.interp.tracing import TraceError
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import World, WorldConfig, load_world, make_world


def _images(encoder: Any, world: World) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for lo in range(0, len(world.images), 256):
            out.append(encoder.encode_images(world.images[lo : lo + 256]))
    return torch.cat(out)


def run_trace(
    model: str,
    pairs: str,
    out: Path,
    world: World,
    split: str,
    seed: int,
    min_gap_share: float,
    per_study: int,
) -> TraceResult:
    """Library-level orchestration behind the command (also used by the demo)."""
    encoder = load_dual_encoder(model)
    rows = {s.study_id: i for i, s in enumerate(world.studies)}
    if pairs == "default":
        chosen = [(int(i), world.studies[int(i)]) for i in world.indices(split)]
        build = build_trace_pairs(chosen, encoder, seed=seed, per_study=per_study)
    else:

        def image_row(value: Any) -> int:
            if isinstance(value, int):
                return value
            if value not in rows:
                raise TraceError(
                    f"{pairs}: image {value!r} is neither a row nor a study id of the world"
                )
            return rows[value]

        build = pairs_from_records(read_pairs_file(pairs), encoder, image_row)
    console.print(
        f"pairs: {build.candidates} candidates, {len(build.pairs)} kept, "
        f"rejected {dict(build.rejected) or 0}"
    )
    if not build.pairs:
        raise TraceError(
            f"{pairs}: no length-matched pair to trace (rejected: {dict(build.rejected)})"
        )
    console.print(f"embedding {len(world.images)} images ...")
    images = _images(encoder, world)
    config = TraceConfig(min_gap_share=min_gap_share, seed=seed)
    distinct = len({(p.correct, p.foil) for p in build.pairs})
    with progress_bar("trace distinct text pairs", distinct) as advance:
        result = trace(
            encoder,
            build.pairs,
            images,
            config,
            counts={**build.to_dict(), "model": model, "split": split},
            progress=advance,
        )
    result.save(out)
    cte_heatmap(
        result.cte.numpy(),
        result.roles,
        out / "cte_heatmap.png",
        title=f"CTE by layer and role: {model}",
    )
    alpha_bars(
        result.cte_layer.numpy(),
        result.cte_layer_low.numpy(),
        result.cte_layer_high.numpy(),
        result.alpha.numpy(),
        out / "alpha.png",
    )
    return result


def print_result(result: TraceResult) -> None:
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


def trace_command(
    model: Annotated[
        str, typer.Option(help="Model spec: hf:..., openclip:..., phantom:default")
    ] = "phantom:default",
    pairs: Annotated[
        str, typer.Option(help="JSONL of {correct, foil, image}, or 'default'.")
    ] = "default",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/trace"),
    world: Annotated[
        Path | None, typer.Option(help="A world folder for images; default: render one.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Studies in the rendered world.", min=10)] = 1000,
    split: Annotated[str, typer.Option(help="Patient split the default pairs come from.")] = "test",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    min_gap_share: Annotated[
        float,
        typer.Option(
            help="Exclude pairs whose |S_corr - S_foil| is below this share of the median "
            "|S_corr - S_foil| (0: only exact ties).",
            min=0.0,
            max=1.0,
        ),
    ] = MIN_GAP_SHARE,
    per_study: Annotated[int, typer.Option(help="Present and absent facts per study.", min=1)] = 2,
) -> None:
    """Trace where negation is processed: CTE per layer and token role, and alpha_l."""
    the_world = load_world(world) if world is not None else make_world(WorldConfig.seeded(n, seed))
    result = run_trace(model, pairs, out, the_world, split, seed, min_gap_share, per_study)
    print_result(result)
    console.print(f"wrote {out}")
