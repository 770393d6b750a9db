"""The report's content as plain data: sections of tables, figures and examples, which
the Jinja2 template renders (:mod:`mechtune.report.render`). Nothing here formats HTML."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cell:
    """One table cell: ``text`` as shown; ``note`` as the hover text (e.g. each seed's
    interval); ``kind``: "" (plain), "num", "paper" (a published number), "up" / "down"
    (a paired difference whose interval excludes 0), or "na"."""

    text: str
    note: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Table:
    """A table: ``columns`` names, ``rows`` of cells (one per column), ``caption`` (what
    the numbers are: units, intervals, split) and ``notes`` under it (n/a reasons)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    caption: str = ""
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class Figure:
    """An embedded figure: ``mime`` "image/png" or "image/svg+xml", ``data`` its base64
    bytes, ``source`` the file it came from (or "rendered from FILE")."""

    title: str
    caption: str
    mime: str
    data: str
    source: str
    wide: bool = False


@dataclass(frozen=True)
class Example:
    """One worked example: a heading, the ``columns`` of its rows, and ``rows`` of cells
    (e.g. each candidate claim with every model's score)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    caption: str = ""


@dataclass
class Section:
    """One part of a run (a study, an evaluation, a training run); ``path`` is the
    folder it was read from, relative to the run folder."""

    id: str
    title: str
    path: str
    summary: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    timings: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Report:
    """The whole report: ``run`` (``provenance.json`` or None), ``headline`` (one-line results
    up front), the sections, the timings and the problems met while reading the run
    (unreadable files: shown, never dropped)."""

    title: str
    run_dir: str
    run: dict[str, Any] | None
    sections: list[Section]
    headline: list[str] = field(default_factory=list)
    timings: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- number formatting ---------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def estimate_parts(est: Any) -> tuple[float, float | None, float | None] | None:
    """(value, low, high) of an Estimate or its JSON dict; None when missing or NaN."""
    if est is None:
        return None
    value: Any
    low: Any
    high: Any
    if isinstance(est, Mapping):
        value, low, high = est.get("value"), est.get("low"), est.get("high")
    else:
        value, low, high = (getattr(est, k, None) for k in ("value", "low", "high"))
    if not _finite(value):
        return None
    return (
        float(value),
        float(low) if _finite(low) else None,
        float(high) if _finite(high) else None,
    )


def interval_text(est: Any, scale: float = 100.0, digits: int = 1) -> str:
    """``"44.9 [40.1, 49.8]"`` (value and 95% interval, times ``scale``); "n/a" when
    missing."""
    parts = estimate_parts(est)
    if parts is None:
        return "n/a"
    value, low, high = parts
    text = f"{scale * value:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
    return text


def seeds_cell(estimates: Sequence[Any], scale: float = 100.0, digits: int = 1) -> Cell:
    """One seed: its value and interval. Several: the mean over seeds and the range of
    the seeds' values, each seed's interval in the hover note. "n/a" (kind "na") when
    any seed lacks the metric."""
    parts = [estimate_parts(e) for e in estimates]
    if not parts or any(p is None for p in parts):
        return Cell("n/a", kind="na")
    if len(parts) == 1:
        return Cell(interval_text(estimates[0], scale, digits), kind="num")
    values = [p[0] for p in parts if p is not None]
    mean = scale * sum(values) / len(values)
    note = "; ".join(
        f"seed {i}: {interval_text(e, scale, digits)}" for i, e in enumerate(estimates)
    )
    return Cell(
        f"{mean:.{digits}f} ({scale * min(values):.{digits}f}–{scale * max(values):.{digits}f})",
        note=note,
        kind="num",
    )


def delta_cell(diff: Any) -> Cell:
    """A paired difference (:class:`mechtune.eval.metrics.PairedDifference`) in
    percentage points with its interval and McNemar p; kind "up"/"down" when the interval
    excludes 0."""
    if diff is None:
        return Cell("–", kind="na")
    kind = ""
    low: Any = getattr(diff, "low", None)
    high: Any = getattr(diff, "high", None)
    if _finite(low) and _finite(high):
        kind = "up" if low > 0 else "down" if high < 0 else ""
    return Cell(diff.pp(), kind=kind)


def number_cell(value: Any, fmt: str = "{:.1f}", kind: str = "num") -> Cell:
    """A plain number (None/NaN: n/a)."""
    if not _finite(value):
        return Cell("n/a", kind="na")
    return Cell(fmt.format(value), kind=kind)


__all__ = [
    "Cell",
    "Example",
    "Figure",
    "Report",
    "Section",
    "Table",
    "delta_cell",
    "estimate_parts",
    "interval_text",
    "number_cell",
    "seeds_cell",
]
