"""The tracking options every train and study command shares (``--report-to``,
``--tracking-dir``, and ``--eval-every`` on the train commands), and the tracker they
make (:mod:`mechtune.train.tracking`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechtune.train.tracking import REPORT_TO, TRACKING_DIR, Tracker, check_report_to

ReportToOpt = Annotated[
    str,
    typer.Option(
        "--report-to",
        help=f"Log training while it runs to {', '.join(REPORT_TO[1:])} (needs "
        "mechtune[tracking]): loss terms, per-block learning rates (or gradient factors) "
        "and gradient norms, periodic eval metrics; none: no tracking.",
    ),
]
TrackingDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--tracking-dir",
        help=f"Where the tracker writes (TensorBoard event files, W&B run files); "
        f"default OUT/{TRACKING_DIR}.",
    ),
]
EvalEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-every",
        min=0,
        help="Every N steps measure a validation metric on the val split and log it "
        "(eval/...; 0: never). Default: the recipe's eval_every.",
    ),
]


def tracking_folder(out: Path, tracking_dir: Path | None) -> Path:
    """``--tracking-dir``, or ``OUT/tracking``."""
    return tracking_dir if tracking_dir is not None else out / TRACKING_DIR


def make_tracker(report_to: str, out: Path, tracking_dir: Path | None) -> Tracker:
    """The tracker of a command that runs in one process (a study, the demo, ``sae
    train``): checks ``--report-to`` and its package first (ConfigError,
    MissingExtraError), before any work."""
    check_report_to(report_to)
    return Tracker(report_to, tracking_folder(out, tracking_dir))


__all__ = [
    "EvalEveryOpt",
    "ReportToOpt",
    "TrackingDirOpt",
    "make_tracker",
    "tracking_folder",
]
