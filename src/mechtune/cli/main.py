"""The `mechtune` command line. Thin: options become config dataclasses, work is done by
library functions."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.table import Table

from mechtune import __version__
from mechtune.cli import data as data_cli
from mechtune.cli._common import console, study_source
from mechtune.data.check import DEFAULT_MAX_DISAGREEMENT

app = typer.Typer(
    help="mechtune: trace, then prescribe. Measure, locate and fix negation and paraphrase "
    "failures in medical vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_cli.app, name="data")


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
    picks = [
        rng.choice([r for r in rows if r["polarity"] == "affirmative"]),
        rng.choice([r for r in rows if r["contralateral"]]),
        rng.choice([r for r in rows if r["polarity"] == "negated" and not r["contralateral"]]),
    ]
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    n: Annotated[int, typer.Option("--n", help="Synthetic studies.", min=10)] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="A small, fast run (CI smoke test).")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the polarity check.")
    ] = True,
) -> None:
    """The main job: build the offline benchmark and training data on synthetic studies.

    Writes OUT/data/{polarity,contextual,paraphrase} with manifests, runs the independent
    polarity check, and prints a summary.
    """
    start = time.perf_counter()
    n = min(n, 300) if quick else n
    source = study_source(None, n, seed, "skip", False)
    results = data_cli.build_kinds(
        ["polarity", "contextual", "paraphrase"],
        out / "data",
        source,
        seed,
        data_cli.Fmt.parquet,
        check,
        DEFAULT_MAX_DISAGREEMENT,
        nested=True,
    )
    console.print(_examples(out / "data"))
    ctx = results["contextual"].counts
    console.print(
        f"[bold]done[/] in {time.perf_counter() - start:.1f} s: {n} studies -> "
        f"{results['polarity'].counts['tables']['mcq']['rows']} MCQ pairs, "
        f"{ctx['pairs']} claim pairs ({ctx['contralateral_claim_sets']} contralateral claim sets), "
        f"{results['paraphrase'].counts['tables']['paraphrases']['rows']} paraphrase sets -> {out}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
