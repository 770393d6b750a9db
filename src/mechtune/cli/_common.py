"""Shared CLI helpers: progress bars, error reporting, study sources, and the launch of a
training command under torchrun or ``accelerate launch`` (:func:`training_launch`)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
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
from mechtune.data.sources.base import ImageStudySource
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import ConfigError, MechtuneError, MissingExtraError
from mechtune.train.distributed import Launch, launch_rank, launched_processes, start_launch

# A log file or CI gets every table whole and no line wrapped at 80 columns (rich's width
# when the stream is not a terminal); a terminal keeps its own width.
LOG_WIDTH = 1000


def make_console(is_terminal: bool | None = None) -> Console:
    """The CLI's console on stderr: the terminal's width in a terminal; otherwise
    :data:`LOG_WIDTH` columns with soft wrapping, so tables print in full and long lines
    stay one line."""
    tty = sys.stderr.isatty() if is_terminal is None else is_terminal
    return Console(stderr=True, width=None if tty else LOG_WIDTH, soft_wrap=not tty)


console = make_console()


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
    """Print one clean line for an error (no traceback). Under a launch of several
    processes every process prints its own, the non-main ones prefixed ``rank R:``, even
    where :func:`training_launch` silenced their other output."""
    message = str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        message = f"{exc.filename}: no such file or folder"
    try:
        rank = launch_rank() if launched_processes() > 1 else 0
    except ConfigError:
        rank = 0
    prefix = f"rank {rank}: " if rank else ""
    quiet, console.quiet = console.quiet, False
    try:
        # the message is text, not markup: "mechtune[openclip]" must print as written
        console.print(
            f"[bold red]error:[/] {escape(prefix + message)}", highlight=False, soft_wrap=True
        )
    finally:
        console.quiet = quiet


@contextlib.contextmanager
def training_launch(
    device: str, report_to: str = "none", tracking_dir: Path | None = None
) -> Iterator[Launch]:
    """This process's :class:`~mechtune.train.distributed.Launch` for a training command
    (:func:`~mechtune.train.distributed.start_launch`: plain, or one rank of a torchrun /
    ``accelerate launch`` run, with its accelerator, model device and tracker for
    ``--report-to`` / ``--tracking-dir``). While the body
    runs, the console prints on the main process only, so the launch's summaries appear
    once; errors still print on every process (:func:`report_error`). A launch that ends
    without error leaves its process group (``accelerator.end_training()``)."""
    launch = start_launch(device, report_to=report_to, tracking_dir=tracking_dir)
    quiet = console.quiet
    console.quiet = quiet or not launch.is_main
    try:
        yield launch
    finally:
        console.quiet = quiet
    if launch.accelerator is not None:
        launch.accelerator.end_training()


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
    """Where a build's studies come from: a label CSV or the synthetic sampler.

    ``split_of`` is None: builders split these studies' patients by a seeded hash.
    """

    studies: list[Study] | None
    synthetic: SyntheticConfig | None
    description: dict[str, Any]
    split_of: Callable[[Study], str] | None = None

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
    labels: Path | None,
    n: int,
    seed: int,
    uncertain: str,
    skip_bad: bool,
    data: Path | None = None,
    report_facts: bool = True,
    reader_options: dict[str, Any] | None = None,
) -> StudySource | ImageStudySource:
    """The studies a build reads: an imaging-study folder or manifest (``data``), a label
    CSV (``labels``), or the synthetic sampler (``n`` studies from ``seed``).

    ``reader_options`` go to the ``data`` reader (``max_missing``, ``all_frontal``, ...).
    Raises ``ConfigError`` when both ``data`` and ``labels`` are given, or reader options
    without ``data``.
    """
    if reader_options and data is None:
        raise ConfigError(
            f"{', '.join(sorted(reader_options))}: reader options need --data (they set how "
            "an imaging-study folder is read)"
        )
    if data is not None:
        if labels is not None:
            raise ConfigError(
                f"--data {data} and --labels {labels} both name the studies; give one "
                "(a --data folder brings its own label CSV)"
            )
        return data_source(data, uncertain, skip_bad, report_facts, **(reader_options or {}))
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


def data_source(
    path: Path, uncertain: str, skip_bad: bool, report_facts: bool = True, **reader_options: Any
) -> ImageStudySource:
    """Open an imaging-study source (MIMIC-CXR-JPG or CheXpert folder, a manifest, a saved
    phantom world) and, when its items have reports and ``report_facts`` is on, add the
    reports' structured facts to the label findings. Prints what was read and skipped.

    Only options that differ from their defaults are passed on, so that a layout that has
    no labels (a saved world) still opens. Raises ``MissingExtraError`` when the items
    have reports, ``report_facts`` is on and medspacy is not installed.
    """
    from mechtune.data.polarity_check import clinical_available
    from mechtune.data.sources import open_source

    options: dict[str, Any] = dict(reader_options)
    if uncertain != "skip":
        options["uncertain"] = uncertain
    if skip_bad:
        options["skip_bad"] = True
    source = open_source(path, **options)
    console.print(f"read {source.report.summary()}", highlight=False, soft_wrap=True)
    with_reports = sum(1 for s in source if s.report)
    if report_facts and with_reports:
        if not clinical_available():
            raise MissingExtraError(
                f"{path}: {with_reports} items have reports; reading their facts needs "
                "medspacy (pip install 'mechtune[clinical]'), or pass --no-report-facts "
                "to use the labels alone"
            )
        source.with_report_facts(uncertain)
        facts = source.report.notes["report_facts"]
        console.print(
            f"report facts: {facts['reports']} reports read, {facts['changed']} items "
            f"gained facts, {facts['attributed']} findings with a side, zone or severity, "
            f"{facts['no_findings']} items with no finding (policy for uncertain "
            f"mentions: {uncertain})"
        )
    elif with_reports:
        console.print(f"report facts: off (--no-report-facts); {with_reports} reports unread")
    return source
