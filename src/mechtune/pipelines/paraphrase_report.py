"""The paraphrase study's table: per condition, held-out-family metrics and the paired
differences of the per-question flip indicator against the baseline and all-layer LoRA.

Reads the ``results.json`` dict :func:`mechtune.pipelines.paraphrase.run_paraphrase_study`
writes; the paired statistics are :func:`mechtune.eval.metrics.paired_items`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechtune.eval.metrics import PairedDifference, paired_items


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values or any(v is None or not np.isfinite(v) for v in values):
        return "n/a"
    mean = scale * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    lo, hi = scale * min(values), scale * max(values)
    return f"{mean:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


PAIRED_REFERENCES: tuple[tuple[str, str], ...] = (
    ("baseline", "Δ flip vs baseline"),
    ("all", "Δ flip vs all-layer LoRA"),
)


def _conditions(results: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(row label, reference key, reports) for the baseline, clamping and each LoRA range."""
    rows: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("baseline", "baseline", [results["baseline"]])
    ]
    if results.get("clamping"):
        a = results["clamping"]
        rows.append((f"clamp L{a['layer']} f{a['feature']}", "clamping", [a]))
    for name, reports in results["runs"].items():
        layers = reports[0]["layers"]
        label = f"LoRA {name} ({'all' if layers is None else _span(layers)})"
        if "same_as" in reports[0]:
            label += f", same runs as {reports[0]['same_as']}"
        rows.append((label, name, reports))
    return rows


def primary_view(results: dict[str, Any]) -> str:
    """The view the table reports: held-out paraphrase families where the questions label
    them, else all questions."""
    return "heldout" if "heldout" in results["baseline"] else "all"


def paired_rows(
    results: dict[str, Any], split: str | None = None
) -> list[tuple[str, str, dict[str, PairedDifference | None]]]:
    """Per condition: (row label, key, ``{reference: PairedDifference or None}``), the
    paired difference of the per-question flip indicator on ``split`` against the
    baseline and against all-layer LoRA (:data:`PAIRED_REFERENCES`): per question, flips
    averaged over each condition's seeds, a patient bootstrap of the mean difference, and
    McNemar's exact p when both sides have one seed. None for the reference itself, a
    reference that did not run, or reports without ``items``."""
    split = split or primary_view(results)
    conditions = _conditions(results)
    by_key = {key: reports for _, key, reports in conditions}
    out = []
    for label, key, reports in conditions:
        cells: dict[str, PairedDifference | None] = {}
        for ref, _ in PAIRED_REFERENCES:
            other = by_key.get(ref)
            if ref == key or other is None:
                cells[ref] = None
                continue
            if not all(split in r and "items" in r[split] for r in (*reports, *other)):
                cells[ref] = None
                continue
            cells[ref] = paired_items(
                [r[split]["items"] for r in reports], [r[split]["items"] for r in other], "flip"
            )
        out.append((label, key, cells))
    return out


def results_table(results: dict[str, Any]) -> str:
    """Markdown: held-out paraphrase families (all questions when the file labels no
    families; :func:`primary_view`) and the in-distribution flip rate, mean and range over
    seeds, and the paired differences of :func:`paired_rows` in percentage points with
    their 95% intervals."""
    view = primary_view(results)
    head = (
        "| condition | seeds | flip rate | pairwise flip | mean abs margin diff | accuracy | "
        "flip rate, in-dist | text-only agreement | "
        + " | ".join(f"{title} [95% interval]" for _, title in PAIRED_REFERENCES)
        + " |"
    )
    lines = [head, "|" + "---|" * (8 + len(PAIRED_REFERENCES))]
    paired = paired_rows(results)
    for (label, _, reports), (_, _, cells) in zip(_conditions(results), paired, strict=True):

        def vals(split: str, key: str, reps: list[dict[str, Any]] = reports) -> list[float]:
            return [
                r[split][key]["value"] if split in r and r[split].get(key) else float("nan")
                for r in reps
            ]

        deltas = []
        for ref, _ in PAIRED_REFERENCES:
            cell = cells[ref]
            deltas.append("–" if cell is None else cell.pp())
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    str(len(reports)),
                    _cell(vals(view, "flip_rate")),
                    _cell(vals(view, "pairwise_flip_rate")),
                    _cell(vals(view, "margin_difference"), scale=1.0, digits=2),
                    _cell(vals(view, "accuracy")),
                    _cell(vals("in_distribution", "flip_rate")),
                    _cell(vals(view, "text_only_agreement")),
                    *deltas,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Margin rows (:func:`mechtune.pipelines.paraphrase_eval.margin_rows`) by question,
    in variant order (0 = the original)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["question_id"]), []).append(row)
    for variants in out.values():
        variants.sort(key=lambda r: int(r["variant"]))
    return out


def _flips(variants: Sequence[Mapping[str, Any]]) -> bool:
    return any(v["answer"] != variants[0]["answer"] for v in variants[1:])


def select_question_examples(
    rows_by_condition: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    reference: str = "baseline",
    limit: int = 6,
) -> list[dict[str, Any]]:
    """Questions ``reference`` flips on, with every condition's margins per variant:
    first those that every other condition answers consistently ("fixed"), then the rest
    ("still flips somewhere"), each in question-id order. ``rows_by_condition``: condition
    -> margin rows over the same questions. Each example: ``id``, ``patient``, ``label``,
    ``texts`` (original first), ``margins`` (condition -> one margin per text, None where
    the model gave none) and ``why``."""
    if reference not in rows_by_condition:
        return []
    grouped = {c: _groups(rows) for c, rows in rows_by_condition.items()}
    base = grouped[reference]
    others = [c for c in grouped if c != reference]
    flipped = [q for q in sorted(base) if _flips(base[q]) and all(q in grouped[c] for c in others)]
    fixed = [q for q in flipped if others and not any(_flips(grouped[c][q]) for c in others)]
    rest = [q for q in flipped if q not in fixed]
    chosen: list[dict[str, Any]] = []
    for why, ids in (
        (f"{reference} flips; every other condition answers consistently", fixed),
        (f"{reference} flips, and so does another condition", rest),
    ):
        for q in ids[: limit - len(chosen)]:
            variants = base[q]
            chosen.append(
                {
                    "id": q,
                    "patient": variants[0]["patient_id"],
                    "label": variants[0]["label"],
                    "texts": [v["text"] for v in variants],
                    "margins": {
                        c: [
                            None if v["margin"] is None else round(float(v["margin"]), 4)
                            for v in grouped[c][q]
                        ]
                        for c in grouped
                    },
                    "why": why,
                }
            )
    return chosen


def _span(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"L{layers[0]}–{layers[-1]}" if len(layers) > 1 else f"L{layers[0]}"
    return ",".join(f"L{i}" for i in layers)


__all__ = [
    "PAIRED_REFERENCES",
    "paired_rows",
    "primary_view",
    "results_table",
    "select_question_examples",
]
