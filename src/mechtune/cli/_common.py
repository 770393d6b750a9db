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
from typer.core import TyperGroup

from mechtune.data.importers import read_label_csv
from mechtune.data.schema import Study
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import MechtuneError

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


ERROR_EXIT = 2  # any MechtuneError (bad setting, bad input, failed gate) and missing files


def report_error(exc: BaseException) -> None:
    """Print one clean line for an error (no traceback)."""
    message = str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        message = f"{exc.filename}: no such file or folder"
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


class MechtuneGroup(TyperGroup):
    """The top-level command group: every ``MechtuneError`` (and a missing input file)
    raised by any subcommand becomes one message and exit code 2. Library code raises;
    only this entry point turns errors into exit codes."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (MechtuneError, FileNotFoundError) as exc:
            report_error(exc)
            raise typer.Exit(ERROR_EXIT) from None


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
    studies, report = read_label_csv(labels, uncertain=uncertain, skip_bad=skip_bad)
    skipped = sum(report.skipped.values())
    console.print(
        f"read {report.rows_read} rows from {labels}: kept {report.rows_kept}, "
        f"skipped {skipped} {dict(report.skipped) if skipped else ''}, "
        f"uncertain labels {report.uncertain_labels} (policy: {uncertain})"
    )
    return StudySource(studies, None, {"labels": report.to_dict()})
