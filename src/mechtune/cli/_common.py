"""Shared CLI helpers: progress bars, error reporting, study sources."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from mechtune.data.importers import DataFormatError, read_label_csv
from mechtune.data.schema import Study
from mechtune.data.synthetic import SyntheticConfig, sample_studies

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar; yields a callback that advances it by n."""
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@dataclass
class StudySource:
    """Where a build's studies come from: a label CSV or the synthetic sampler."""

    studies: list[Study] | None
    synthetic: SyntheticConfig | None
    description: dict[str, Any]

    def __len__(self) -> int:
        if self.studies is not None:
            return len(self.studies)
        assert self.synthetic is not None
        return self.synthetic.n_studies

    def __iter__(self) -> Iterator[Study]:
        if self.studies is not None:
            return iter(self.studies)
        assert self.synthetic is not None
        return sample_studies(self.synthetic)


def study_source(
    labels: Path | None, n: int, seed: int, uncertain: str, skip_bad: bool
) -> StudySource:
    """Load a label CSV (reporting skipped rows) or configure the synthetic sampler."""
    if labels is None:
        config = SyntheticConfig(n_studies=n, seed=seed)
        return StudySource(None, config, {"synthetic": config.to_dict()})
    try:
        studies, report = read_label_csv(labels, uncertain=uncertain, skip_bad=skip_bad)
    except (DataFormatError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    skipped = sum(report.skipped.values())
    console.print(
        f"read {report.rows_read} rows from {labels}: kept {report.rows_kept}, "
        f"skipped {skipped} {dict(report.skipped) if skipped else ''}, "
        f"uncertain labels {report.uncertain_labels} (policy: {uncertain})"
    )
    return StudySource(studies, None, {"labels": report.to_dict()})
