"""Figures for the report: the PNGs the commands wrote, embedded as base64, and the
training curves, drawn here from each run's ``train.json`` history as SVG (matplotlib)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechtune.errors import DataError
from mechtune.report.model import Figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embed_png(path: Path, title: str, caption: str, source: str) -> Figure:
    """``path``'s bytes as a base64 PNG figure. Raises
    :class:`~mechtune.errors.DataError` for a file that is not a PNG (the collector lists
    it as a problem of the report)."""
    raw = path.read_bytes()
    if not raw.startswith(PNG_MAGIC):
        raise DataError(f"{path}: not a PNG file (its first bytes are {raw[:8]!r})")
    return Figure(title, caption, "image/png", base64.b64encode(raw).decode("ascii"), source)


def _svg(fig: Any) -> str:
    buffer = io.BytesIO()
    # a fixed hash salt and no date: the same history gives the same bytes
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]], title: str, source: str
) -> Figure | None:
    """One panel per loss term; one line per run (``{run label: history}``, a history
    being ``train.json``'s ``[{"step", term: value}, ...]``). None when no run logged a
    step."""
    runs = {k: list(v) for k, v in histories.items() if v}
    if not runs:
        return None
    terms = list(dict.fromkeys(t for h in runs.values() for rec in h for t in rec if t != "step"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "mechtune"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    cols = min(3, len(terms))
    rows = -(-len(terms) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):
        for label, history in runs.items():
            points = [(r["step"], r[term]) for r in history if r.get(term) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, lw=1.2, label=label)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    data = _svg(fig)
    plt.close(fig)
    caption = (
        "Each loss term per optimiser step, and each validation metric (eval/...) where "
        "the run measured one, as logged in each run's train.json."
    )
    return Figure(title, caption, "image/svg+xml", data, source, wide=len(terms) > 1)


__all__ = ["embed_png", "training_curves"]
