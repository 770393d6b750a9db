"""Shared CLI helpers: progress bars, error reporting, study sources, and the launch of a
training command under torchrun or ``accelerate launch`` (:func:`training_launch`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from mechtune.cli._progress import ConsoleTracker
from mechtune.data.importers import read_label_csv
from mechtune.data.schema import Study
from mechtune.data.sources.base import ImageStudySource
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import ConfigError, MechtuneError, MissingExtraError
from mechtune.progress import Advance
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
# one tracker for the console: stages opened inside others share its live display
tracker = ConsoleTracker(console)


def progress_bar(
    description: str, total: int | None, *, completed: int = 0
) -> AbstractContextManager[Advance]:
    """One stage's progress on the CLI's console (:class:`~mechtune.cli._progress.ConsoleTracker`:
    a rich bar in a terminal, plain lines at a limited rate otherwise); yields its
    ``advance(n, **fields)``. ``progress_bar`` is itself a :class:`~mechtune.progress.Tracker`,
    passed as ``track`` to library functions."""
    return tracker(description, total, completed=completed)


HF_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


def quiet_library_bars(on: Console) -> bool:
    """Off a terminal, turn off the tqdm bars of huggingface_hub (downloads) and
    transformers (loading weights): in a log each of their carriage-return updates
    lands on one ever longer line. Sets ``HF_HUB_DISABLE_PROGRESS_BARS=1`` (read when
    those libraries are imported) and, if they already are, turns their bars off.
    A value the user set wins. Returns whether the bars were turned off."""
    if on.is_terminal or HF_BARS_ENV in os.environ:
        return False
    os.environ[HF_BARS_ENV] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return True


def current_context() -> Any:
    """The running command's context (typer >= 0.20 vendors click as ``typer._click``;
    older typer uses click itself), or None outside a command."""
    import importlib

    try:
        module = importlib.import_module("typer._click.globals")
    except ImportError:  # typer without a vendored click
        module = importlib.import_module("click")
    return module.get_current_context(silent=True)


def record_run(
    out: Path,
    *,
    recipe: Any = None,
    model: str | None = None,
    data: Any = None,
    data_paths: tuple[Any, ...] = (),
    seeds: Any = None,
    device: str | None = None,
) -> Path:
    """Write ``out/provenance.json`` (:func:`mechtune.report.provenance.write_run_record`) for the
    command being run: the command line with every option resolved (from click's current
    context), ``recipe`` (a config with ``to_dict``, or a dict), the model, the data, the
    seeds, the device, the versions and the data manifests' content hashes."""
    from mechtune.data.io import to_jsonable
    from mechtune.data.recipe import command_line
    from mechtune.report.provenance import write_run_record

    ctx = current_context()
    return write_run_record(
        out,
        command=None if ctx is None else command_line(ctx),
        recipe=None if recipe is None else to_jsonable(recipe),
        model=model,
        data=data,
        data_paths=data_paths,
        seeds=seeds,
        device=device,
    )


def finish_report(out: Path) -> Path | None:
    """Write ``out/report.html`` (:func:`mechtune.report.render.report_after`) and print
    its path; what could not be read is printed too."""
    from mechtune.report.render import report_after

    return report_after(out, lambda m: console.print(escape(m), highlight=False, soft_wrap=True))


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
    only this entry point turns errors into exit codes. Off a terminal, the libraries'
    own progress bars are turned off first (:func:`quiet_library_bars`)."""

    def invoke(self, ctx: Any) -> Any:
        quiet_library_bars(console)
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
        with progress_bar("read report facts", with_reports) as advance:
            source.with_report_facts(uncertain, progress=advance)
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
